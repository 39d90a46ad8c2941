"""The `synthdata` command: `validate` a study file, `run` it.

Bad input (a study file that does not validate, a missing data path, an unreadable
image) prints one line naming the file and field and exits with code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from synthdata.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthdata", description="Study synthetic data: detectability, autophagy loops, mixes.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="Check a study file and print its resolved spec.")
    v.add_argument("study", help="Path to a YAML study file.")
    v.add_argument("--quiet", "-q", action="store_true", help="Print nothing when the file is valid.")

    r = sub.add_parser("run", help="Run a study on Ray and log it to MLflow.")
    r.add_argument("study", help="Path to a YAML study file.")
    r.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    r.add_argument("--no-progress", action="store_true", help="Do not draw progress bars.")
    r.add_argument("--resume", action="store_true", help="Continue the study's latest run from each arm's last finished generation.")
    return p


def _validate(args: argparse.Namespace) -> int:
    import yaml

    from synthdata.spec import load_spec

    spec = load_spec(args.study)
    if not args.quiet:
        print(f"{args.study}: valid {spec.kind} study '{spec.name}'")
        print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    from synthdata.spec import load_spec

    spec = load_spec(args.study)  # validate before importing Ray or touching MLflow
    if spec.kind == "mix":
        if args.resume:
            raise UserError(f"{args.study}: --resume applies to loop studies; a mix study's trials are rerun")
        from loops.mix import format_mix_table, run_mix_study

        result = run_mix_study(spec, address=args.address, tracking_uri=args.tracking_uri, show_progress=not args.no_progress)
        table = format_mix_table(result.table) if not result.table.empty else "(no trial finished)"
        what = f"{len(result.table)} trials"
    else:
        from loops.runner import format_table, run_loop_study

        result = run_loop_study(
            spec, address=args.address, tracking_uri=args.tracking_uri, show_progress=not args.no_progress, resume=args.resume
        )
        table, what = format_table(result.table), f"{len(result.table)} rows"
    print()
    print(f"study '{spec.name}': {what} in {result.seconds:.0f}s  (MLflow parent run {result.parent_run_id})")
    print(table)
    if result.figures:
        print(f"figures: {result.figures[0].parent}/ ({', '.join(p.stem for p in result.figures)})")
    for arm, reason in result.failed.items():
        print(f"{arm} FAILED: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


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
        return {"validate": _validate, "run": _run}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
