"""Scale: memory and time per image as a study's data grows, real data and samples read from disk per batch.

    .venv/bin/python -m bench.scale                       # 2k, 10k, 50k images per side at 32x32, 10k at 64x64
    .venv/bin/python -m bench.scale --sizes 2000,20000 --no-big --update-readme
    .venv/bin/python -m bench.scale --data data/scale --sizes 50000,60000 --data-only   # the README's CIFAR-sized runs

Procedurally generated RGB class folders (10 classes): "real" images are smooth colour
fields with a class-coloured disc; "generated" ones the same with a little more noise, so
a detector has something to find. Each detect point is one `synthdata detect --real REAL
--generated g=GEN --epochs 2` as a user runs it, and each loop point one `synthdata run`
of a two-generation replace loop (the example VAE plug-in, tiny), in a fresh folder with
its own SQLite store. Memory is sampled every 0.25 s over the command's whole process tree (the driver,
the local Ray it starts and every worker): the peak of the sum of resident sets, the
largest single process at that moment, and what each kind of process held then.
Targets: peak memory at 20k and 50k at most 1.3x that at 2k; time per image
at 50k within 1.3x of that at 10k.

Writes bench/scale.json; with --update-readme the table between the scale markers of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.run import REPO, machine, update_readme

CACHE = Path(os.environ.get("SYNTHDATA_BENCH_DATA", "/tmp/synthdata-scale"))
CLASSES = 10


def procedural_images(n: int, size: int, generated: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 RGB images (n, size, size, 3) and their labels: a colour gradient and a disc whose colour is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    yy, xx = np.mgrid[0:size, 0:size] / size
    hue = labels / CLASSES
    colour = np.stack([np.sin(2 * np.pi * (hue + k / 3)) * 0.5 + 0.5 for k in range(3)], 1)  # (n, 3)
    cy, cx = rng.uniform(0.3, 0.7, (2, n))
    radius = rng.uniform(0.15, 0.3, n)
    disc = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < radius[:, None, None] ** 2
    background = (0.3 + 0.4 * (yy[None, ..., None] * rng.uniform(0, 1, (n, 1, 1, 3)) + xx[None, ..., None] * rng.uniform(0, 1, (n, 1, 1, 3))))
    images = np.where(disc[..., None], colour[:, None, None, :], background)
    images = images + rng.normal(0, 0.06 if generated else 0.03, images.shape)
    return np.clip(images * 255, 0, 255).astype(np.uint8), labels


def make_folder(kind: str, n: int, size: int, where: Path | None = None) -> Path:
    """A class folder (real) or a flat folder (generated) of n PNGs, made once and kept (in CACHE by default)."""
    from PIL import Image

    root = (where or CACHE) / f"{kind}_{n}_{size}"
    if (root / ".done").exists():
        return root
    generated = kind == "generated"
    for start in range(0, n, 5000):
        images, labels = procedural_images(min(5000, n - start), size, generated, seed=start + (10**6 if generated else 0))
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root if generated else root / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{start + i:06d}.png")
    (root / ".done").write_text("")
    return root


def _kind(p) -> str:
    """What a process of the study is: the driver, one of Ray's own, or a worker."""
    try:
        cmd = " ".join(p.cmdline())
    except Exception:
        return "?"
    for key, name in (("synthdata detect", "driver"), ("synthdata run", "driver"), ("raylet", "raylet"), ("gcs_server", "gcs"), ("ray::", "ray workers"),
                      ("default_worker", "ray workers"), ("dashboard", "ray dashboard/agents"), ("agent", "ray dashboard/agents"),
                      ("log_monitor", "ray monitors"), ("monitor", "ray monitors")):
        if key in cmd:
            return name
    return "other"


def measured(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; its wall time, the peak of its process tree's summed resident memory, and who held what then."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"sum": 0, "largest": 0, "by_kind": {}}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss, kinds = [], defaultdict(int)
            for p in procs:
                try:
                    r = p.memory_info().rss
                except psutil.Error:
                    continue
                rss.append(r)
                kinds[_kind(p)] += r
            if rss and sum(rss) > peak["sum"]:
                peak.update(sum=sum(rss), largest=max(rss), by_kind=dict(kinds), processes=len(rss))
            stop.wait(0.25)

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    return {"wall_s": wall, "peak_gb": peak["sum"] / 1e9, "largest_gb": peak["largest"] / 1e9, "processes": peak.get("processes", 0),
            "by_kind_gb": {k: round(v / 1e9, 2) for k, v in sorted(peak["by_kind"].items(), key=lambda kv: -kv[1])},
            "table": out.strip().splitlines()[-3:]}


def detect_point(n: int, size: int, epochs: int, where: Path | None = None) -> dict:
    real, gen = make_folder("real", n, size, where), make_folder("generated", n, size, where)
    disk = sum(f.stat().st_size for f in real.rglob("*.png")) + sum(f.stat().st_size for f in gen.rglob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).parent / "synthdata"), "detect", "--real", str(real), "--generated", f"g={gen}",
               "--epochs", str(epochs), "--no-progress", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--name", f"scale{n}"]
        r = measured(cmd, Path(tmp))
    r.update(n=n, size=size, png_mb=disk / 1e6, s_per_image=r["wall_s"] / (2 * n))
    print(f"detect {n} x {size}px per side: peak {r['peak_gb']:.2f} GB (largest {r['largest_gb']:.2f}), {r['wall_s']:.0f} s",
          file=sys.stderr, flush=True)
    return r


def loop_point(n: int, size: int, where: Path | None = None, gpu: bool = False) -> dict:
    """studies/scale_loop.yaml on the n real images (a two-generation `replace` loop, tiny VAE, one-epoch detector and
    downstream classifier), each generation drawing n samples: `synthdata run` of a study file, as a user runs it."""
    import yaml

    real = make_folder("real", n, size, where)
    # The shipped study (studies/scale_loop.yaml) at this size: its models, its loop, n real images and n samples.
    study = yaml.safe_load((REPO / "studies" / "scale_loop.yaml").read_text())
    study.update(name=f"scale_loop{n}", data={"source": "folder", "root": str(real)})
    study["loop"]["samples_per_generation"] = n
    study["tracking"] = {"sample_grid": False}
    study["resources"] = {"cpus_per_arm": 4, "gpus_per_arm": 1} if gpu else {"cpus_per_arm": 2}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "study.yaml").write_text(yaml.safe_dump(study))
        cmd = [str(Path(sys.executable).parent / "synthdata"), "run", "study.yaml", "--no-progress",
               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        r = measured(cmd, Path(tmp))
    r.update(n=n, size=size, png_mb=sum(f.stat().st_size for f in real.rglob("*.png")) / 1e6, s_per_image=r["wall_s"] / (3 * n))
    print(f"loop {n} x {size}px: peak {r['peak_gb']:.2f} GB (largest {r['largest_gb']:.2f}), {r['wall_s']:.0f} s",
          file=sys.stderr, flush=True)
    return r


def table(points: list[dict]) -> str:
    base = next((p for p in points if p["n"] == min(q["n"] for q in points) and p["size"] == 32), points[0])
    ten = next((p for p in points if p["n"] == 10000 and p["size"] == 32), None)
    lines = ["| images per side | size | PNG on disk | peak memory, all processes | vs smallest | largest process | wall | "
             "time per image | vs 10k |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        vs10 = f"{p['s_per_image'] / ten['s_per_image']:.2f}x" if ten and p["size"] == 32 else "-"
        lines.append(f"| {p['n']:,} | {p['size']}x{p['size']} | {p['png_mb']:.0f} MB | {p['peak_gb']:.2f} GB | "
                     f"{p['peak_gb'] / base['peak_gb']:.2f}x | {p['largest_gb']:.2f} GB | {p['wall_s']:.0f} s | "
                     f"{p['s_per_image'] * 1e3:.2f} ms | {vs10} |")
    parts = ", ".join(f"{k} {v:.2f} GB" for k, v in base["by_kind_gb"].items())
    lines += ["", f"At its peak the {base['n']:,}-image run held: {parts} ({base['processes']} processes)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,10000,50000", help="Images per side at 32x32, comma-separated.")
    ap.add_argument("--no-big", action="store_true", help="Skip the 64x64 point (10k per side).")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--data", default=None, help=f"Where the image folders are made and kept (default {CACHE}).")
    ap.add_argument("--data-only", action="store_true", help="Only make the folders (real and generated, at 32x32).")
    ap.add_argument("--no-loop", action="store_true", help="Skip the two-generation loop points.")
    ap.add_argument("--loop-only", action="store_true", help="Only the loop points (no detect study).")
    ap.add_argument("--gpu", action="store_true", help="The loop arm on one GPU (gpus_per_arm: 1).")
    ap.add_argument("--out", default=None, help="Where the figures go (default bench/scale.json; bench/scale_loop.json "
                    "with --loop-only, so that a loop run leaves the detect figures as they are).")
    args = ap.parse_args()
    args.out = args.out or str(REPO / "bench" / ("scale_loop.json" if args.loop_only else "scale.json"))
    where = Path(args.data).resolve() if args.data else CACHE  # the study files are written in a temporary folder
    if args.data_only:
        for n in args.sizes.split(","):
            print(make_folder("real", int(n), 32, where), make_folder("generated", int(n), 32, where))
        return
    points = [] if args.loop_only else [detect_point(int(n), 32, args.epochs, where) for n in args.sizes.split(",")]
    if not args.no_big and not args.loop_only:
        points.append(detect_point(10000, 64, args.epochs, where))
    loops = [] if args.no_loop else [loop_point(int(n), 32, where, args.gpu) for n in args.sizes.split(",")]
    result = {"machine": machine("cuda" if args.gpu else "cpu"), "detect": points, "loop": loops, "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    where_run = f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores."
    if points:
        text = "A detect study (`synthdata detect --epochs 2`, real against generated):\n\n" + table(points)
        print(text)
        if args.update_readme:
            update_readme("scale", f"{where_run}\n\n{text}")
    if loops:  # a block of its own: a --loop-only run leaves the detect table as it is
        text = ("`studies/scale_loop.yaml` at each size (`synthdata run`: a two-generation `replace` loop, tiny VAE; each "
                "generation draws as many samples as there are real images; time per image counts the real set and both "
                "generations' samples):\n\n" + table(loops))
        print(text)
        if args.update_readme:
            update_readme("scale-loop", f"{where_run} `{' '.join(['python -m bench.scale', *sys.argv[1:]])}`\n\n{text}")


if __name__ == "__main__":
    main()
