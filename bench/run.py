"""synthdata benchmarks: per-stage throughput, ratios against baselines measured in the same run, and the machine.

    .venv/bin/python -m bench.run            # real sizes (quickstart model), ~10 min on 2 CPU cores
    .venv/bin/python -m bench.run --quick    # smaller step counts, ~4 min
    .venv/bin/python bench/run.py --device cuda
    .venv/bin/python bench/run.py --probes     # also torch.compile of the training step

Writes bench/results.json; with --update-readme, also the table in bench/README.md (between its markers).
Every ratio compares two things measured here, now, on this machine:

- generator training: synthdata's loop vs a plain loop as the diffusers training examples
  write it (DataLoader over the data set, fp32, no tricks) for the same UNet and steps;
- MFU: the training step's FLOPs (torch's FlopCounterMode) per second over a matmul peak;
- orchestration: the same arm run in-process vs as a Ray task (the way studies run it);
- Tune: two trials on two CPUs at once vs one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from synthdata.data import load_digits_set
from synthdata.spec import DiffusionSpec, parse_spec

REPO = Path(__file__).resolve().parents[1]


def machine(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn: Callable[[], object], device: str, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, synchronising the GPU."""
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: str) -> float:
    """Achieved fp32 FLOP/s of a large square matmul: the machine's practical peak."""
    n = 8192 if device == "cuda" else 1536
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    reps = 20 if device == "cuda" else 3
    # Best of many short runs: on a shared machine the slow ones are other people's load, not the peak.
    t = timed(lambda: [a @ b for _ in range(reps)], device, repeat=10)
    return 2 * n**3 * reps / t


def quickstart_generator() -> DiffusionSpec:
    return parse_spec(yaml_load(REPO / "studies" / "quickstart.yaml")).generator


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def train_step_flops(spec: DiffusionSpec, data, device: str) -> float:
    """FLOPs of one training step (forward and backward) of the quickstart UNet, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from synthdata.generators.diffusion import build_unet

    model = build_unet(spec, data.shape, data.num_classes).to(device)
    x = data.images[: spec.batch_size].to(device)
    t = torch.randint(0, 1000, (len(x),), device=device)
    y = data.labels[: len(x)].to(device)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x, t, class_labels=y).sample, x).backward()
    return float(counter.get_total_flops())


def ours_training(spec: DiffusionSpec, data, device: str) -> float:
    from synthdata.generators.diffusion import DiffusionGenerator

    gen = DiffusionGenerator(spec, data.shape, data.num_classes, device)
    return timed(lambda: gen.fit(data, seed=0), device)


def baseline_training(spec: DiffusionSpec, data, device: str) -> float:
    """The plain loop of the diffusers training examples: DataLoader, fp32, the same UNet, optimizer and steps."""
    from diffusers import DDPMScheduler
    from torch.utils.data import DataLoader, TensorDataset

    from synthdata.generators.diffusion import build_unet

    def run() -> None:
        torch.manual_seed(0)
        model = build_unet(spec, data.shape, data.num_classes).to(device)
        scheduler = DDPMScheduler(num_train_timesteps=spec.train_timesteps, beta_schedule=spec.beta_schedule)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
        loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=spec.batch_size, shuffle=True, drop_last=True)
        step = 0
        while step < spec.train_steps:
            for x0, y in loader:
                x0, y = x0.to(device), y.to(device)
                noise = torch.randn_like(x0)
                t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=device)
                loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step == spec.train_steps:
                    break

    return timed(run, device)


def sampling(spec: DiffusionSpec, data, n: int, device: str) -> float:
    from synthdata.generators.diffusion import DiffusionGenerator

    gen = DiffusionGenerator(spec, data.shape, data.num_classes, device)
    gen.model.eval()
    labels = torch.arange(n) % data.num_classes
    return timed(lambda: gen.sample(labels, seed=0), device)


def baseline_sampling(spec: DiffusionSpec, data, n: int, device: str, batch_size: int = 16) -> float:
    """Sampling as the diffusers training examples do it: the same DDIM steps, in batches of their eval_batch_size (16)."""
    from synthdata.generators.diffusion import DiffusionGenerator

    gen = DiffusionGenerator(spec.model_copy(update={"sample_batch_size": batch_size}), data.shape, data.num_classes, device)
    gen.model.eval()
    labels = torch.arange(n) % data.num_classes
    return timed(lambda: gen.sample(labels, seed=0), device)


def precision_training(spec: DiffusionSpec, data, device: str) -> tuple[float, float]:
    """Our generator training in fp32 and with `precision: auto` (bf16 autocast + TF32 where the device has them)."""
    from synthdata import compute

    walls = []
    for mode in ("fp32", "auto"):
        compute.set_precision(mode)
        walls.append(min(ours_training(spec, data, device) for _ in range(2)))
    compute.set_precision("auto")
    return walls[0], walls[1]


def compile_probe(spec: DiffusionSpec, data, device: str, steps: int = 20) -> dict[str, float]:
    """torch.compile of the quickstart UNet: compile time, then training ms/step and a sampling forward, against eager."""
    from synthdata.generators.diffusion import build_unet

    out: dict[str, float] = {}
    x0, y = data.images[: spec.batch_size].to(device), data.labels[: spec.batch_size].to(device)
    xs, ys = data.images[:512].to(device), data.labels[:512].to(device)
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_unet(spec, data.shape, data.num_classes).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
        forward = torch.compile(model) if mode == "compiled" else model

        def step() -> None:
            t = torch.randint(0, 1000, (len(x0),), device=device)
            loss = F.mse_loss(forward(x0, t, class_labels=y).sample, x0)
            opt.zero_grad()
            loss.backward()
            opt.step()

        out[f"{mode}_first_step_s"] = timed(step, device)  # compiling happens here
        out[f"{mode}_step_ms"] = 1000 * timed(lambda: [step() for _ in range(steps)], device) / steps
        with torch.no_grad():
            forward(xs, torch.tensor(500, device=device), class_labels=ys)  # (re)compiles for inference
            out[f"{mode}_sample_forward_ms"] = 1000 * timed(
                lambda: forward(xs, torch.tensor(500, device=device), class_labels=ys), device, repeat=5)
    return out


def classifier_training(data, epochs: int, device: str) -> tuple[float, int]:
    from synthdata.classifiers import train_classifier
    from synthdata.spec import ClassifierSpec

    spec = ClassifierSpec(epochs=epochs)
    t = timed(lambda: train_classifier(spec, data.images, data.labels, data.num_classes, seed=0, device=device), device)
    return t, epochs * (len(data) // spec.batch_size) * spec.batch_size


def detectability_time(data, device: str) -> float:
    from synthdata.metrics.detectability import detectability
    from synthdata.spec import ClassifierSpec

    half = len(data) // 2
    x = data.images
    return timed(lambda: detectability(x[:half // 2], x[half // 2 : half], x[half:half + 200], x[half + 200 : half + 400],
                                       ClassifierSpec(epochs=10), seed=0, device=device), device)


def one_generation(steps: int, device: str, repeat: int = 2) -> tuple[dict[str, float], float, float]:
    """One quickstart arm generation (plus the real reference) in-process and as a Ray task: stage times and both walls."""
    import ray

    from loops.autophagy import Arm, GenerationResult, run_arm
    from loops.loop import arm_task
    from loops.ray_tools import init_ray
    from synthdata.data import make_splits

    study = yaml_load(REPO / "studies" / "quickstart.yaml")
    study["generator"]["train_steps"] = steps
    study["loop"] = {**study["loop"], "generations": 1, "types": ["replace"]}
    spec = parse_spec(study)
    splits = make_splits(spec.data, seed=0)
    arm = Arm("replace", 0)
    init_ray(None)
    threads = torch.get_num_threads()
    remote = ray.remote(arm_task).options(num_cpus=1, max_retries=0)
    # A warm worker, as in a study where the arm's worker is already up and has imported
    # the library (a study pays that once per worker): start-up is measured apart.
    start = time.perf_counter()
    ray.get(ray.remote(_warm_up).options(num_cpus=1).remote())
    worker_start = time.perf_counter() - start
    splits_ref = ray.put(splits)
    inproc, via_ray = [], []
    for _ in range(repeat):  # alternated, best of each: this machine's load moves single runs by 5-10%
        start = time.perf_counter()
        results = [e for e in run_arm(spec, splits, arm, device=device) if isinstance(e, GenerationResult)]
        inproc.append(time.perf_counter() - start)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for ref in remote.remote(spec, splits_ref, arm, None, None):
            ray.get(ref)
        via_ray.append(time.perf_counter() - start)
    stages = {k: v for k, v in results[-1].metrics.items() if k.startswith("time_")}
    stages["time_reference_s"] = results[0].metrics.get("time_metrics_s", float("nan"))
    stages["ray_worker_start_s"] = worker_start
    return stages, min(inproc), min(via_ray)


def _warm_up() -> None:
    """What an arm's worker imports on its first generation."""
    import loops.autophagy  # noqa: F401
    import synthdata.generators.diffusion  # noqa: F401
    import synthdata.metrics.downstream  # noqa: F401


def tune_efficiency(steps: int) -> tuple[float, float]:
    """Two identical Tune trials (1 CPU each, a classifier training) at once vs one after another."""
    from ray import tune

    from loops.ray_tools import init_ray

    init_ray(None)
    data = load_digits_set()

    def trainable(config: dict) -> None:
        import torch

        from synthdata.classifiers import train_classifier
        from synthdata.spec import ClassifierSpec

        torch.set_num_threads(1)
        train_classifier(ClassifierSpec(train_steps=steps), data.images, data.labels, 10, seed=config["seed"])
        tune.report({"done": 1})

    walls: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):  # alternated, best of each
        for concurrent in (1, 2):
            tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space={"seed": tune.grid_search([0, 1])},
                               tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                               run_config=tune.RunConfig(verbose=0, storage_path=str(Path("/tmp") / "synthdata-bench-tune")))
            start = time.perf_counter()
            tuner.fit()
            walls[concurrent].append(time.perf_counter() - start)
    return min(walls[1]), min(walls[2])


def table(r: dict) -> str:
    """The results as a markdown table."""
    rows = [
        ("matmul peak (fp32)", f"{r['peak_flops'] / 1e9:.1f} GFLOP/s", f"{r['threads']} thread(s)"),
        ("generator training, synthdata", f"{r['train_ours_ips']:.0f} img/s", f"{r['train_steps']} steps x batch {r['batch']}"),
        ("generator training, plain diffusers-style loop", f"{r['train_base_ips']:.0f} img/s", "baseline, same UNet and steps"),
        ("  ratio synthdata / baseline", f"{r['train_ratio']:.2f}x", "target 1.5x"),
        ("  MFU of the training step", f"{100 * r['mfu']:.1f}%", f"{r['step_gflop']:.2f} GFLOP per step"),
        *([("generator training, precision auto (bf16 + TF32)", f"{r['train_auto_ips']:.0f} img/s",
            f"fp32: {r['train_fp32_ips']:.0f} img/s; speed-up {r['precision_ratio']:.2f}x")] if "precision_ratio" in r else []),
        ("sampling (DDIM, 25 steps), synthdata", f"{r['sample_ips']:.0f} img/s", f"{r['sample_n']} images, batches of 512"),
        ("sampling, diffusers-examples batches", f"{r['sample_base_ips']:.0f} img/s",
         f"batches of 16; synthdata {r['sample_ratio']:.2f}x faster"),
        *([("torch.compile (probe)", f"{r['compile']['compiled_step_ms']:.0f} ms/step",
            f"eager {r['compile']['eager_step_ms']:.0f} ms/step; sampling forward {r['compile']['compiled_sample_forward_ms']:.0f} "
            f"vs {r['compile']['eager_sample_forward_ms']:.0f} ms; compiling took {r['compile']['compiled_first_step_s']:.0f} s")]
          if "compile" in r else []),
        ("classifier training (detector/downstream CNN)", f"{r['clf_ips']:.0f} img/s", "digits, batch 128"),
        ("detectability (train + score a detector)", f"{r['detect_s']:.2f} s", "~450 vs 450 images, 10 epochs"),
        ("one generation in-process", f"{r['gen_inproc_s']:.1f} s", "quickstart arm: " + ", ".join(
            f"{k.removeprefix('time_').removesuffix('_s')} {v:.1f}s" for k, v in r["stages"].items() if k.startswith("time_"))),
        ("one generation through the plain baseline", f"{r['gen_base_s']:.1f} s",
         f"composed from the stage speeds above; synthdata {r['study_ratio']:.2f}x faster"),
        (f"  a quickstart generation ({r['quickstart_steps']} steps)", f"{r['gen_quickstart_s']:.0f} s",
         f"its fit scaled from the one above; synthdata {r['quickstart_ratio']:.2f}x faster per generation, "
         "1 thread each (the study end to end, against the 1.5x target: bench/study.py)"),
        ("one generation as a Ray task", f"{r['gen_ray_s']:.1f} s", f"overhead {100 * r['ray_overhead']:+.1f}% (target < 5%); "
                                                                     f"worker start-up {r['stages']['ray_worker_start_s']:.1f}s apart"),
        ("2 Tune trials, sequential", f"{r['tune_seq_s']:.1f} s", "1 CPU each"),
        ("2 Tune trials, in parallel", f"{r['tune_par_s']:.1f} s", f"speed-up {r['tune_speedup']:.2f}x (target 1.8x)"),
    ]
    m = r["machine"]
    head = f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
    lines = [head, "", "| stage | result | notes |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Fewer steps: a smoke run of the harness.")
    p.add_argument("--update-readme", action="store_true", help="Also put the table into bench/README.md.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the single-process stages (an arm gets 1 CPU).")
    p.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    p.add_argument("--probes", action="store_true", help="Also time torch.compile of the training step (minutes on a CPU).")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's boxes and hints are not for a benchmark log
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    torch.set_num_threads(args.threads)
    device = args.device
    steps = 40 if args.quick else 150
    spec = quickstart_generator().model_copy(update={"train_steps": steps})
    data = load_digits_set()
    r: dict = {"machine": machine(device), "threads": args.threads, "quick": args.quick, "train_steps": steps, "batch": spec.batch_size}

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say("matmul peak ...")
    r["peak_flops"] = matmul_peak(device)
    say("generator training: synthdata vs baseline ...")
    # Alternate and keep the best of two, so neither side gets the cold start.
    ours = min(ours_training(spec, data, device) for _ in range(2))
    base = min(baseline_training(spec, data, device) for _ in range(2))
    imgs = steps * spec.batch_size
    r.update(train_ours_ips=imgs / ours, train_base_ips=imgs / base, train_ratio=base / ours)
    flops = train_step_flops(spec, data, device)
    r.update(step_gflop=flops / 1e9, mfu=flops * steps / ours / r["peak_flops"])
    if device == "cuda":
        say("generator training: fp32 vs precision auto (bf16) ...")
        fp32, auto = precision_training(spec, data, device)
        r.update(train_fp32_ips=imgs / fp32, train_auto_ips=imgs / auto, precision_ratio=fp32 / auto)
    say("sampling: synthdata vs the diffusers examples' batches ...")
    r["sample_n"] = 256 if args.quick else 1000
    r["sample_ips"] = r["sample_n"] / min(sampling(spec, data, r["sample_n"], device) for _ in range(2))
    r["sample_base_ips"] = r["sample_n"] / min(baseline_sampling(spec, data, r["sample_n"], device) for _ in range(2))
    r["sample_ratio"] = r["sample_ips"] / r["sample_base_ips"]
    if args.probes:
        say("probe: torch.compile of the UNet ...")
        r["compile"] = compile_probe(spec, data, device)
    say("classifier training, detectability ...")
    t, seen = classifier_training(data, 3 if args.quick else 10, device)
    r["clf_ips"] = seen / t
    r["detect_s"] = detectability_time(data, device)
    say("one generation, in-process and through Ray ...")
    r["stages"], r["gen_inproc_s"], r["gen_ray_s"] = one_generation(steps, device)
    r["ray_overhead"] = r["gen_ray_s"] / r["gen_inproc_s"] - 1
    # The same generation through the plain baseline: its fit and sampling at the baseline's
    # measured speeds (above), the metrics unchanged (they are the same code either way).
    st = r["stages"]
    r["gen_base_s"] = (r["gen_inproc_s"] + st["time_fit_s"] * (r["train_ratio"] - 1)
                       + st["time_sample_s"] * (r["sample_ratio"] - 1))
    r["study_ratio"] = r["gen_base_s"] / r["gen_inproc_s"]
    # The same for the quickstart as configured: its generator trains for more steps than the bench's.
    qs_steps = quickstart_generator().train_steps
    fit_qs = st["time_fit_s"] * qs_steps / steps
    ours_qs = r["gen_inproc_s"] + fit_qs - st["time_fit_s"]
    r.update(quickstart_steps=qs_steps, gen_quickstart_s=ours_qs,
             quickstart_ratio=(ours_qs + fit_qs * (r["train_ratio"] - 1) + st["time_sample_s"] * (r["sample_ratio"] - 1)) / ours_qs)
    say("Tune: 2 trials sequential vs parallel ...")
    r["tune_seq_s"], r["tune_par_s"] = tune_efficiency(100 if args.quick else 400)
    r["tune_speedup"] = r["tune_seq_s"] / r["tune_par_s"]
    torch.set_num_threads(args.threads)
    late_peak = matmul_peak(device)  # again at the end: the peak is the best the machine showed in this run
    if late_peak > r["peak_flops"]:
        r["mfu"] *= r["peak_flops"] / late_peak
        r["peak_flops"] = late_peak

    Path(args.out).write_text(json.dumps(r, indent=2, default=float))
    text = table(r)
    print(text)
    if args.update_readme and not args.quick:
        update_readme("results", text)


def update_readme(marker: str, text: str) -> None:
    """Put `text` between `<!-- marker -->` and `<!-- /marker -->` in bench/README.md (only when asked: --update-readme)."""
    readme = REPO / "bench" / "README.md"
    body = readme.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start in body and end in body:
        readme.write_text(body[: body.index(start) + len(start)] + "\n" + text + "\n" + body[body.index(end):])


if __name__ == "__main__":
    main()
