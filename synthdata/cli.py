"""The `synthdata` command: `validate` a study file, `run` it, `pretrain` its generator, `report` on it from MLflow,
`prepare` an image folder as one zip file.

Bad input (a study file that does not validate, a missing data path, an unreadable
image) prints one line naming the file and field and exits with code 2.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from synthdata.errors import UserError

if TYPE_CHECKING:
    from synthdata.spec import StudySpec


STUDY_HELP = "A YAML study file, or the name of a shipped study (quickstart, mad_gaussian, ...: `synthdata.studies`)."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthdata", description="Study synthetic data: detectability, autophagy loops, mixes.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="Check a study file and print its resolved spec.")
    v.add_argument("study", help=STUDY_HELP)
    v.add_argument("--quiet", "-q", action="store_true", help="Print nothing when the file is valid.")

    r = sub.add_parser("run", help="Run a study on Ray and log it to MLflow.")
    r.add_argument("study", help=STUDY_HELP)
    r.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    r.add_argument("--no-progress", action="store_true", help="Do not draw progress bars.")
    r.add_argument("--resume", action="store_true", help="Continue the study's latest run from each arm's last finished generation.")

    pre = sub.add_parser("pretrain", help="Train a study's generator on one seed's real training split and save it "
                         "(a pretrained start: loop.pretrained).")
    pre.add_argument("study", help="A study file with a generator section, or a shipped study's name (its data, split and "
                     "generator are used).")
    pre.add_argument("--out", required=True, help="Where to save it: a diffusers directory (or a .safetensors file).")
    pre.add_argument("--seed", type=int, default=0, help="Whose real training split and random streams (default: 0).")
    pre.add_argument("--steps", type=int, default=None, help="Optimizer steps (default: the generator's train_steps).")
    pre.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu or cuda (default: cpu).")
    pre.add_argument("--no-progress", action="store_true", help="Do not draw a progress bar.")

    prep = sub.add_parser("prepare", help="Write an image folder as one uncompressed zip of PNGs with its labels "
                          "(data.root of a folder study; read a batch at a time).")
    prep.add_argument("folder", help="An image folder: one sub-folder per class, or flat (one class).")
    prep.add_argument("--out", required=True, help="The zip to write (e.g. data/cifar10-train.zip).")
    prep.add_argument("--image-size", type=int, default=None, help="Resize every image to this square size (bicubic).")
    prep.add_argument("--no-progress", action="store_true", help="Do not draw a progress bar.")

    rep = sub.add_parser("report", help="Build an HTML page, tables and figures for a study from what MLflow holds.")
    rep.add_argument("study", nargs="?", help="A study file, or the name of its MLflow experiment (the latest study run in it).")
    rep.add_argument("--run", default=None, help="A study run id instead (the parent run of a study).")
    rep.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study file's, $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    rep.add_argument("--out", default=None, help="Folder for index.html and the PNGs (default: <report_dir>/<study>/report).")

    d = sub.add_parser("detect", help="How detectable are generated images? Real vs each source, and what the detector keys on.",
                       description="Without a study file, the options build a detect study. Its detector is trained "
                       "as the options say (--epochs 15, --val-fraction 0.1, --patience 3 unless given: the best epoch "
                       "on a validation split, early stopping), where a study file's `detector:` section defaults to "
                       "epochs 10, val_fraction 0, patience null (every epoch, the last one kept).")
    d.add_argument("study", nargs="?", help="A detect study file (kind: detect) or a shipped one's name; or build one "
                   "with the options below.")
    d.add_argument("--real", default="digits", help="digits, mnist, fashion_mnist, cifar10, or an image folder (one sub-folder per class).")
    d.add_argument("--data-root", default=None, help="Where a torchvision data set lies (default: data).")
    d.add_argument("--generated", action="append", default=[], metavar="NAME=PATH",
                   help="A source: diffusers pipeline directory, image folder or .safetensors sample set (repeatable).")
    d.add_argument("--detector", default="cnn", help="cnn or a timm model name (resnet18, convnext_tiny, ...).")
    d.add_argument("--epochs", type=int, default=15, help="Detector training epochs (default: 15).")
    d.add_argument("--val-fraction", type=float, default=0.1,
                   help="Stratified validation split that picks the best epoch (default: 0.1; 0: none).")
    d.add_argument("--patience", type=int, default=3,
                   help="Early stopping after this many validation checks without a better loss (default: 3).")
    d.add_argument("--seeds", default=None, help="Comma-separated seeds (default: 0).")
    d.add_argument("--sizes", default=None, help="Sample-size curve: training images per class, comma-separated.")
    d.add_argument("--bands", default=None, help="Frequency-band analysis: radii as fractions of Nyquist, e.g. 0.25,0.5.")
    d.add_argument("--crops", default=None, help="Crop-size analysis: crop sizes in pixels, comma-separated.")
    d.add_argument("--name", default="detect", help="Study (and MLflow experiment) name.")
    d.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    d.add_argument("--tracking-uri", default=None, help="MLflow tracking URI.")
    d.add_argument("--no-progress", action="store_true", help="Do not draw progress bars.")
    return p


def _validate(args: argparse.Namespace) -> int:
    from synthdata.spec import load_spec, spec_yaml

    spec = load_spec(args.study)
    if not args.quiet:
        print(f"{args.study}: valid {spec.kind} study '{spec.name}'")
        print(spec_yaml(spec).rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    from synthdata.spec import load_spec

    return _run_spec(load_spec(args.study), args, source=str(Path(args.study).resolve()))  # validated before Ray or MLflow


def _run_spec(spec: StudySpec, args: argparse.Namespace, source: str = "synthdata detect") -> int:
    """Run a validated study of any kind, print its table, and exit 1 if any arm failed."""
    from synthdata.tracking import check_tracking_server, resolve_tracking_uri

    # A wrong tracking URI is told in a second or two, before the study's imports (torch, Ray) take their seconds.
    check_tracking_server(resolve_tracking_uri(args.tracking_uri or spec.tracking.uri))
    from loops import runner_for
    from loops.study import run_study

    runner = runner_for(spec.kind)
    result = run_study(spec, runner, address=args.address, tracking_uri=args.tracking_uri, show_progress=not args.no_progress,
                       resume=getattr(args, "resume", False), source=source)  # `synthdata detect` has no --resume
    table = runner.format_table(result.table) if not result.table.empty else "(no arm finished)"
    print()
    print(f"study '{spec.name}': {len(result.table)} {'rows' if spec.kind == 'loop' else 'arms'} in {result.seconds:.0f}s  "
          f"(MLflow parent run {result.parent_run_id})")
    print(table)
    if result.figures:
        print(f"figures: {result.figures[0].parent}/ ({', '.join(p.stem for p in result.figures)})")
    for name, reason in result.failed.items():
        print(f"{name} FAILED: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


def _source_of(text: str, flag: str) -> tuple[str, dict]:
    """`NAME=PATH` (or PATH, named after it) -> a source entry: pipeline dir, image folder or sample set."""
    name, _, path = text.rpartition("=") if "=" in text else ("", "", text)
    p = Path(path)
    name = name or p.stem or p.name
    if (p / "model_index.json").is_file():
        return name, {"type": "pipeline", "path": path}
    if p.is_dir():
        return name, {"type": "folder", "path": path}
    if p.suffix == ".safetensors":
        return name, {"type": "samples", "path": path}
    raise UserError(f"{flag} {text}: not a diffusers pipeline directory, an image folder or a .safetensors sample set")


def _numbers(text: str | None, cast, flag: str) -> list:
    if not text:
        return []
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: give comma-separated numbers, got {text!r}") from None


def _detect(args: argparse.Namespace) -> int:
    """`synthdata detect`: a detect study built from the command line, run like a study file."""
    from synthdata.spec import parse_spec
    from synthdata.spec.base import DATA_SOURCES, TORCHVISION_SOURCES

    if args.study:
        from synthdata.spec import load_spec

        spec = load_spec(args.study)
        if spec.kind != "detect":
            raise UserError(f"{args.study}: kind: {spec.kind}; `synthdata detect` runs detect studies")
        return _run_spec(spec, args, source=str(Path(args.study).resolve()))
    if not args.generated:
        raise UserError("detect: give a study file, or --generated NAME=PATH (one or more)")
    sources = dict(_source_of(g, "--generated") for g in args.generated)
    real = Path(args.real)
    named = args.real in DATA_SOURCES and args.real not in ("folder", "gaussian")
    data = {"source": args.real} if named else {"source": "folder", "root": str(real)}
    if args.real in TORCHVISION_SOURCES:
        data["root"] = args.data_root or "data"
    study = {
        "name": args.name, "kind": "detect", "data": data,
        "detector": {"name": args.detector, "epochs": args.epochs, "val_fraction": args.val_fraction,
                     "patience": args.patience if args.val_fraction > 0 else None},
        "detect": {"sources": sources, "seeds": _numbers(args.seeds, int, "--seeds") or [0],
                   "sample_sizes": _numbers(args.sizes, int, "--sizes"), "crop_sizes": _numbers(args.crops, int, "--crops"),
                   "bands": {"radii": _numbers(args.bands, float, "--bands")}},
    }
    return _run_spec(parse_spec(study, source="synthdata detect"), args)


def _pretrain(args: argparse.Namespace) -> int:
    """`synthdata pretrain`: the study's generator, fitted on seed's real training split, saved for `loop.pretrained`."""
    import json

    from synthdata.api import pretrain
    from synthdata.generators import PRETRAINED_RECORD
    from synthdata.spec import load_spec

    spec = load_spec(args.study)
    if "generator" not in type(spec).model_fields:
        raise UserError(f"{args.study}: a {spec.kind} study has no generator to pretrain")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps: give a positive number of optimizer steps, got {args.steps}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible here (use --device cpu)")
    out = Path(args.out)
    if out.is_file() and out.suffix != ".safetensors":
        raise UserError(f"--out {args.out}: a file is there; give a new or empty directory (or a .safetensors path)")
    path = pretrain(spec, args.out, seed=args.seed, train_steps=args.steps, device=args.device, progress=not args.no_progress)
    record = json.loads((path if path.is_dir() else path.parent).joinpath(PRETRAINED_RECORD).read_text())
    loss = f", final loss {record['fit']['generator_loss']:.4f}" if "generator_loss" in record["fit"] else ""
    print(f"pretrained {spec.generator.name} on seed {args.seed}'s real training split in {record['seconds']:.0f}s{loss}: "
          f"{path}\nstart a loop from it with  loop: {{pretrained: {path}, pretrained_steps: 0}}  "
          f"(and the same split: data.split_seed or seed {args.seed})")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """`synthdata prepare`: a folder's images decoded once (a corrupt one is named) and stored as a zip with labels."""
    import time

    from synthdata.imagestore import scan_folder, write_zip

    folder, out = Path(args.folder), Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out {args.out}: give a path ending in .zip")
    if args.image_size is not None and not 4 <= args.image_size <= 512:
        raise UserError(f"--image-size: give 4 to 512 pixels, got {args.image_size}")
    flat = folder.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    files, labels, classes = scan_folder(folder, "folder", classes=not flat)
    start = time.perf_counter()
    meta = write_zip(files, labels, classes, out, size=args.image_size, progress=not args.no_progress)
    print(f"prepared {len(files)} images {tuple(meta['shape'])} of {max(len(classes), 1)} class(es) in "
          f"{time.perf_counter() - start:.0f}s: {out} ({out.stat().st_size / 2**20:.1f} MiB)\n"
          f"use it as  data: {{source: folder, root: {out}}}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from synthdata.spec import load_spec
    from synthdata.tracking import check_tracking_server, resolve_tracking_uri

    if args.study is None and args.run is None:
        raise UserError("report: name a study file, an experiment, or --run RUN_ID")
    experiment, uri, out = args.study, args.tracking_uri, args.out
    if args.study and args.study.endswith((".yaml", ".yml")):
        spec = load_spec(args.study)
        experiment, uri = spec.experiment_name, uri or spec.tracking.uri
        out = out or Path(spec.tracking.report_dir) / spec.name / "report"
    uri = resolve_tracking_uri(uri)
    check_tracking_server(uri)
    from synthdata.report import build_report

    page = build_report(uri, out or Path("runs") / (experiment or args.run) / "report",
                        experiment=None if args.run else experiment, run_id=args.run)
    print(f"report: {page}  (open it in a browser; the PNGs are beside it)")
    return 0


def _resolve_study(args: argparse.Namespace) -> None:
    """A bare study name that is no file here names a shipped study (`synthdata run quickstart`, from any directory)."""
    from synthdata import studies

    if getattr(args, "study", None) and args.command != "report":  # report's bare name is an MLflow experiment's
        if studies.is_name(args.study) and args.study not in studies.names():
            raise UserError(f"{args.study}: no such study file, nor a shipped study of that name "
                            f"(shipped: {', '.join(studies.names())})")
        args.study = studies.resolve(args.study)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `synthdata` console command."""
    args = _parser().parse_args(argv)
    # Library chatter (deprecations, Ray/MLflow notices) is not for the study's reader.
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own bars are the progress
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        _resolve_study(args)
        return {"validate": _validate, "run": _run, "pretrain": _pretrain, "detect": _detect, "report": _report,
                "prepare": _prepare}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM during a study (loops.study.StudyStopped): one line
        print(f"stopped: {stop}" if str(stop) else "interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)


def entry() -> None:
    """The console command: `main`, then a quick exit.

    Everything a study writes is written by the time `main` returns (MLflow calls are
    synchronous, files are closed), so after stopping the local Ray the process ends at once
    instead of spending a second or two tearing down torch, MLflow and matplotlib modules.
    `kill -USR1 <pid>` prints every thread's Python stack, to see where a driver waits.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    code = main()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # the local Ray this command started: no process of it is left behind
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
