"""Data-parallel training: images per second with 1 and 2 workers (one thread each) at the same global batch.

    .venv/bin/python -m bench.parallel                      # the quickstart's diffusion UNet and the small CNN, digits
    .venv/bin/python -m bench.parallel --update-readme
    .venv/bin/python -m bench.parallel --device cuda        # (two workers then share the one GPU)

What an arm with `resources.workers_per_arm: 2` runs: the arm (this process, rank 0) and one
Ray actor take their part of every batch and average gradients (`synthdata.parallel`). The
baseline is this process training alone, one thread, measured in the same run. Models: the
quickstart's diffusion generator (its UNet) and the detector's small CNN, on the digits, at
several global batch sizes: the all-reduce of the gradients costs the same per step whatever
the batch, the compute grows with it, so the ratio grows with the batch. (A 32x32 UNet takes
about 20 s a step on one thread of this host: a GPU's size, see the GPU check.)

"Final loss" checks the steps are one process's: 2 workers at seed 0 against 1 worker at seeds
0, 1, 2 (the seed-to-seed spread). The issue's target: at least 1.6x images/s with 2 workers.
Writes bench/parallel.json; with --update-readme the table between the parallel markers of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from bench.run import REPO, machine, update_readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="32,128,512", help="The diffusion UNet's global batch sizes, comma-separated.")
    ap.add_argument("--cnn-batches", default="128,1024", help="The small CNN's.")
    ap.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per row (after 2 untimed).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()

    import ray

    from bench.run import quickstart_generator
    from synthdata.classifiers import train_classifier
    from synthdata.data import load_digits_set
    from synthdata.fitting import fit_generator
    from synthdata.parallel import TrainingGroup
    from synthdata.spec import ClassifierSpec, DiffusionSpec

    torch.set_num_threads(1)
    data = load_digits_set()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # Ray's workers
    ray.init(num_cpus=2, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False, logging_level="ERROR")

    def diffusion(batch: int, steps: int) -> DiffusionSpec:
        return quickstart_generator().model_copy(update={"train_steps": steps, "batch_size": batch, "warmup_steps": 1})

    def classifier(batch: int, steps: int) -> ClassifierSpec:
        return ClassifierSpec(train_steps=steps, epochs=1, batch_size=batch)

    def train(model: str, batch: int, steps: int, seed: int = 0) -> float:
        """Train `steps` steps; the final loss (the generator's) or nan (a classifier's)."""
        if model == "diffusion UNet":
            return fit_generator(diffusion(batch, steps), data, seed=seed, device=args.device)[1]["generator_loss"]
        train_classifier(classifier(batch, steps), data.images, data.labels, 10, seed=seed, device=args.device)
        return float("nan")

    @ray.remote(num_cpus=1)
    def halves(model: str, batch: int) -> float:
        """Seconds for `args.steps` steps in a Ray worker alone, no all-reduce (two run at once, at half the batch)."""
        torch.set_num_threads(1)
        train(model, batch, 2)
        start = time.perf_counter()
        train(model, batch, 2)
        short = time.perf_counter() - start
        start = time.perf_counter()
        train(model, batch, 2 + args.steps)
        return time.perf_counter() - start - short

    def timed(model: str, batch: int) -> tuple[float, float]:
        """Images per second over `args.steps` steps: the time of 2 + steps minus the time of 2, both after a warm-up
        (the first call imports and allocates, in every worker), so start-up is left out."""
        train(model, batch, 2)
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
    for model, batches in (("diffusion UNet", args.batches), ("small CNN", args.cnn_batches)):
        for batch in (int(b) for b in batches.split(",")):
            one, loss_one = timed(model, batch)
            with group.active():
                two, loss_two = timed(model, batch)
            spread = [train(model, batch, 2 + args.steps, seed) for seed in (1, 2)] if model == "diffusion UNet" else []
            # The most two workers could give here: two independent halves at once, nothing exchanged.
            group.close()
            ceiling = args.steps * batch / max(ray.get([halves.remote(model, batch // 2) for _ in range(2)]))
            group = TrainingGroup(2, gpus_per_worker=0.5 if args.device == "cuda" else 0, device=args.device)
            row = {"model": model, "batch": batch, "one_images_per_s": one, "two_images_per_s": two, "ratio": two / one,
                   "halves_ratio": ceiling / one, "loss_one": loss_one, "loss_two": loss_two,
                   "loss_seeds": [loss_one, *spread]}
            print(f"{model}, batch {batch}: 1 worker {one:.1f} images/s, 2 workers {two:.1f} ({two / one:.2f}x; two "
                  f"halves, nothing exchanged: {ceiling / one:.2f}x)", file=sys.stderr, flush=True)
            rows.append(row)
    group.close()
    ray.shutdown()

    lines = ["| model | global batch | 1 worker, images/s | 2 workers, images/s | 2 vs 1 | target 1.6x | two halves, nothing "
             "exchanged, vs 1 | final loss, 2 workers (1 worker: seeds 0, 1, 2) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        loss = (f"{r['loss_two']:.4f} ({', '.join(f'{v:.4f}' for v in r['loss_seeds'])})"
                if r["model"] == "diffusion UNet" else "-")
        lines.append(f"| {r['model']} | {r['batch']} | {r['one_images_per_s']:.1f} | {r['two_images_per_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {'met' if r['ratio'] >= 1.6 else 'missed'} | {r['halves_ratio']:.2f}x | {loss} |")
    info = machine(args.device)
    text = (f"Machine: {info['cpu']}, {info['cores']} cores; {len(data)} digits, {args.steps} timed steps "
            f"per row, one thread per worker; starting the group (once per arm, not timed above) took {start_s:.1f} s.\n\n"
            + "\n".join(lines))
    print(text)
    result = {"machine": info, "n": len(data), "steps": args.steps, "group_start_s": start_s, "rows": rows,
              "command": " ".join(sys.argv)}
    (REPO / "bench" / "parallel.json").write_text(json.dumps(result, indent=1))
    if args.update_readme:
        update_readme("parallel", text)


if __name__ == "__main__":
    main()
