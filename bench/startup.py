"""Start-up cost: a toy study of milliseconds of work, end to end, against the floor Ray and one worker set.

    .venv/bin/python -m bench.startup               # 3 runs of each command, ~2 min on 2 CPU cores
    .venv/bin/python -m bench.startup --runs 5 --update-readme

Every figure is a whole process timed from outside (its median over the runs), so imports,
Ray's start and stop, the worker's imports, MLflow's store, figures and the exit all count:

- the study: `synthdata run` of a 1-D Gaussian `replace` loop of three generations, each
  run in a fresh folder (a new SQLite store, as a first study has);
- `synthdata validate` of the same file (no Ray, no MLflow);
- the parts: importing torch, mlflow, ray; `ray.init()` and shutdown; and the floor, `ray.init()`
  plus one task whose worker imports what an arm imports, then shutdown (what is left when
  everything else overlaps). The study's ratio to that floor is the overhead left.

Writes bench/startup.json; with --update-readme also the table between the startup markers of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.run import REPO, machine, update_readme

STUDY = {
    "name": "startup", "data": {"source": "gaussian", "toy": {"dim": 1, "train": 20, "heldout": 100, "test": 100}},
    "generator": {"name": "gaussian"}, "metrics": ["toy"],
    "loop": {"types": ["replace"], "generations": 3, "samples_per_generation": 20},
    "tracking": {"sample_grid": False, "checkpoints": False},
}
PY = sys.executable
PARTS = {
    "import torch": [PY, "-c", "import torch"],
    "import mlflow": [PY, "-c", "import mlflow"],
    "import ray": [PY, "-c", "import ray"],
    "ray.init() + shutdown": [PY, "-c", "import ray; ray.init(include_dashboard=False, logging_level='ERROR'); ray.shutdown()"],
    "floor: ray.init() + one arm worker's imports": [
        PY, "-c", "import ray; ray.init(include_dashboard=False, logging_level='ERROR');"
        "f = ray.remote(lambda: __import__('loops.autophagy')); ray.get(f.remote()); ray.shutdown()"],
}


def wall(cmd: list[str], cwd: Path, fresh: bool = False) -> float:
    """Seconds one run of `cmd` takes (in a fresh folder of `cwd` when `fresh`)."""
    where = Path(tempfile.mkdtemp(dir=cwd)) if fresh else cwd
    start = time.perf_counter()
    subprocess.run(cmd, cwd=where, check=True, capture_output=True, env={**os.environ, "RAY_ADDRESS": ""})
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "startup.json"))
    p.add_argument("--update-readme", action="store_true", help="Also put the table into bench/README.md.")
    args = p.parse_args()
    exe = str(Path(PY).parent / "synthdata")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = tmp / "startup.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        commands = {"synthdata run (toy study)": ([exe, "run", str(study), "--no-progress"], True),
                    "synthdata validate": ([exe, "validate", str(study), "-q"], False),
                    **{name: (cmd, False) for name, cmd in PARTS.items()}}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so a slow minute of the machine touches every command alike
            for name, (cmd, fresh) in commands.items():
                times[name].append(wall(cmd, tmp, fresh))
    medians = {name: statistics.median(v) for name, v in times.items()}
    floor = medians["floor: ray.init() + one arm worker's imports"]
    r = {"machine": machine("cpu"), "runs": args.runs, "seconds": times, "median_s": medians,
         "study_over_floor": medians["synthdata run (toy study)"] / floor}
    Path(args.out).write_text(json.dumps(r, indent=2))
    lines = [f"Start-up, median of {args.runs} runs each ({r['machine']['cpu']}, {r['machine']['cores']} cores):", "",
             "| command | median | min-max |", "| --- | --- | --- |"]
    lines += [f"| {name} | {medians[name]:.2f} s | {min(v):.2f}-{max(v):.2f} s |" for name, v in times.items()]
    lines += ["", f"The toy study takes {r['study_over_floor']:.2f}x the floor (Ray's start and stop and one worker's imports)."]
    text = "\n".join(lines)
    print(text)
    if args.update_readme:
        update_readme("startup", text)


if __name__ == "__main__":
    main()
