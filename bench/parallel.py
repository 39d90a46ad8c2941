"""Data-parallel training: images per second with 1 and 2 workers (one thread each) at the same global batch.

    .venv/bin/python -m bench.parallel                      # 32x32 RGB images, the diffusion UNet and the small CNN
    .venv/bin/python -m bench.parallel --update-readme
    .venv/bin/python -m bench.parallel --device cuda        # (two workers then share the one GPU)

What an arm with `resources.workers_per_arm: 2` runs: the arm (this process, rank 0) and one
Ray actor take their part of every batch and average gradients (`synthdata.parallel`). The
baseline is this process training alone, one thread, measured in the same run. Models and sizes:
the diffusion generator (UNet channels 32, 64) and the detector's small CNN, on procedurally
generated 32x32 RGB images (`bench.scale.procedural_images`), at several global batch sizes:
the all-reduce of the gradients costs the same per step whatever the batch, the compute grows
with it, so the ratio grows with the batch.

"Final loss" checks the steps are one process's: 2 workers at seed 0 against 1 worker at seeds
0, 1, 2 (the seed-to-seed spread). The issue's target: at least 1.6x images/s with 2 workers.
Writes bench/parallel.json; with --update-readme the table between the parallel markers of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bench.run import REPO, machine, update_readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="Training images.")
    ap.add_argument("--batches", default="64,256", help="Global batch sizes, comma-separated.")
    ap.add_argument("--steps", type=int, default=12, help="Timed optimizer steps per row (after 2 untimed).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()

    import ray

    from bench.scale import procedural_images
    from synthdata.classifiers import train_classifier
    from synthdata.data import ImageSet
    from synthdata.fitting import fit_generator
    from synthdata.parallel import TrainingGroup
    from synthdata.spec import ClassifierSpec, DiffusionSpec

    torch.set_num_threads(1)
    codes, labels = procedural_images(args.n, 32, False, seed=0)
    images = torch.from_numpy(codes).permute(0, 3, 1, 2).float() / 127.5 - 1
    data = ImageSet(images, torch.from_numpy(labels).long(), 10)
    ray.init(num_cpus=2, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False, logging_level="ERROR")

    def diffusion(batch: int, steps: int) -> DiffusionSpec:
        return DiffusionSpec(channels=(32, 64), train_steps=steps, batch_size=batch, lr=2e-3, warmup_steps=1)

    def classifier(batch: int, steps: int) -> ClassifierSpec:
        return ClassifierSpec(train_steps=steps, epochs=1, batch_size=batch)

    def train(model: str, batch: int, steps: int, seed: int = 0) -> float:
        """Train `steps` steps; the final loss (the generator's) or nan (a classifier's)."""
        if model == "diffusion UNet":
            return fit_generator(diffusion(batch, steps), data, seed=seed, device=args.device)[1]["generator_loss"]
        train_classifier(classifier(batch, steps), data.images, data.labels, 10, seed=seed, device=args.device)
        return float("nan")

    def timed(model: str, batch: int) -> tuple[float, float]:
        """Images per second over `args.steps` steps (the time of 2 + steps minus the time of 2: start-up excluded)."""
        start = time.perf_counter()
        train(model, batch, 2)
        short = time.perf_counter() - start
        start = time.perf_counter()
        loss = train(model, batch, 2 + args.steps)
        return args.steps * batch / (time.perf_counter() - start - short), loss

    started = time.perf_counter()
    group = TrainingGroup(2, gpus_per_worker=0.5 if args.device == "cuda" else 0, device=args.device)
    start_s = time.perf_counter() - started
    rows = []
    for model in ("diffusion UNet", "small CNN"):
        for batch in (int(b) for b in args.batches.split(",")):
            one, loss_one = timed(model, batch)
            with group.active():
                two, loss_two = timed(model, batch)
            spread = [train(model, batch, 2 + args.steps, seed) for seed in (1, 2)] if model == "diffusion UNet" else []
            row = {"model": model, "batch": batch, "one_images_per_s": one, "two_images_per_s": two, "ratio": two / one,
                   "loss_one": loss_one, "loss_two": loss_two, "loss_seeds": [loss_one, *spread]}
            print(f"{model}, batch {batch}: 1 worker {one:.1f} images/s, 2 workers {two:.1f} ({two / one:.2f}x)",
                  file=sys.stderr, flush=True)
            rows.append(row)
    group.close()
    ray.shutdown()

    lines = ["| model | global batch | 1 worker, images/s | 2 workers, images/s | 2 vs 1 | target 1.6x | final loss, 2 workers "
             "(1 worker: seeds 0, 1, 2) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        loss = (f"{r['loss_two']:.4f} ({', '.join(f'{v:.4f}' for v in r['loss_seeds'])})"
                if r["model"] == "diffusion UNet" else "-")
        lines.append(f"| {r['model']} | {r['batch']} | {r['one_images_per_s']:.1f} | {r['two_images_per_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {'met' if r['ratio'] >= 1.6 else 'missed'} | {loss} |")
    info = machine(args.device)
    text = (f"Machine: {info['cpu']}, {info['cores']} cores; {args.n} procedural 32x32 RGB images, {args.steps} timed steps "
            f"per row, one thread per worker; starting the group (once per arm, not timed above) took {start_s:.1f} s.\n\n"
            + "\n".join(lines))
    print(text)
    result = {"machine": info, "n": args.n, "steps": args.steps, "group_start_s": start_s, "rows": rows,
              "command": " ".join(sys.argv)}
    (REPO / "bench" / "parallel.json").write_text(json.dumps(result, indent=1))
    if args.update_readme:
        update_readme("parallel", text)


if __name__ == "__main__":
    main()
