"""The quickstart study end to end: `synthdata run` against the same study as a plain script.

    .venv/bin/python -m bench.study                      # studies/quickstart.yaml, ~16 min on 2 CPU cores
    .venv/bin/python -m bench.study --generations 1 --train-steps 60   # a smoke run of the harness

The plain script is the study as a practitioner writes it from the diffusers training
examples (`train_unconditional.py`): one process with torch's default threads (all
cores), the arms one after another; each generation's UNet trained by a loop over a
`DataLoader` (fp32, AdamW, cosine schedule with warm-up, EMA, gradient clipping: what the
examples do, and what synthdata's fit does), sampled by DDIM in the examples' evaluation
batches of 16, and measured by synthdata's own metric code (the same either way). Like any
loop over arms, it trains generation 1 once per arm.

Writes bench/study.json; with --update-readme, also the table between the study markers of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from bench.run import REPO, machine, update_readme, yaml_load
from synthdata.metrics.registry import progress_metrics
from synthdata.spec import LoopStudy, parse_spec

COMPARED = tuple(m for m in progress_metrics() if m != "fitted_variance")  # what both runs' last generations are compared on


class PlainDiffusion:
    """The quickstart's UNet, trained and sampled the way the diffusers training examples do it."""

    def __init__(self, spec, shape: tuple[int, int, int], num_classes: int) -> None:
        self.spec, self.shape, self.num_classes = spec, shape, num_classes

    def fit(self, data, *, seed: int) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel
        from torch.utils.data import DataLoader, TensorDataset

        from synthdata.generators.diffusion import build_unet

        spec = self.spec
        torch.manual_seed(seed)
        model = build_unet(spec, self.shape, self.num_classes)
        self.scheduler = DDPMScheduler(num_train_timesteps=spec.train_timesteps, beta_schedule=spec.beta_schedule, clip_sample=True)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        lr_schedule = get_cosine_schedule_with_warmup(opt, min(spec.warmup_steps, spec.train_steps // 2), spec.train_steps)
        ema = EMAModel(model.parameters(), decay=spec.ema_decay, use_ema_warmup=True)
        loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=spec.batch_size, shuffle=True, drop_last=True)
        model.train()
        step = 0
        while step < spec.train_steps:
            for x0, y in loader:
                noise = torch.randn_like(x0)
                t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),))
                loss = F.mse_loss(model(self.scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                lr_schedule.step()
                ema.step(model.parameters())
                step += 1
                if step == spec.train_steps:
                    break
        ema.copy_to(model.parameters())
        self.model = model.eval()

    def sample(self, labels: torch.Tensor, *, seed: int, batch_size: int = 16) -> torch.Tensor:
        """The same DDIM steps as synthdata's sampler, in the examples' evaluation batches."""
        from diffusers import DDIMScheduler

        from synthdata.generators.diffusion import ddim_sample

        torch.manual_seed(seed)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(self.spec.sampling_steps)
        eps = lambda x, t, y: self.model(x, t, class_labels=y).sample  # noqa: E731
        return torch.cat([ddim_sample(eps, scheduler, torch.randn(len(y), *self.shape), y) for y in labels.split(batch_size)])


def plain_study(spec: LoopStudy) -> tuple[float, pd.DataFrame, dict[str, float]]:
    """The study as one script: wall seconds, its per-generation table, and seconds per stage."""
    from loops.loop import arms_of
    from synthdata.autophagy import build_training_set, measure_samples, study_context
    from synthdata.data import ImageSet, make_splits
    from synthdata.generators import draw_samples
    from synthdata.seeds import Purpose, stream_seed

    torch.set_num_threads(os.cpu_count() or 1)  # torch's default: what a script gets
    start = time.perf_counter()
    splits = make_splits(spec.data, seed=0)
    context = study_context(spec, splits)
    real, loop = splits.train, spec.loop
    n, n_eval = loop.samples_per_generation, len(splits.heldout)
    rows, stages = [], defaultdict(float)
    for arm in arms_of(spec):
        s = arm.spec_for(spec)

        def seed_of(generation: int, purpose: Purpose) -> int:  # the loop's own seeds
            return stream_seed(arm.seed, purpose, generation)

        t0 = time.perf_counter()
        m = measure_samples(s, splits, context, real, splits.heldout.images, lambda p: seed_of(0, p), "cpu", real_reference=True)
        stages["metrics"] += time.perf_counter() - t0
        rows.append({"arm": arm.name, "generation": 0, **m})
        fixed_order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed_of(0, Purpose.ORDER)))
        history: list[ImageSet] = []
        for t in range(1, loop.generations + 1):
            train_set = build_training_set(arm.loop_type, splits, history, real_fraction=loop.real_fraction,
                                           generator=torch.Generator().manual_seed(seed_of(t, Purpose.FRESH)), fixed_order=fixed_order)
            gen = PlainDiffusion(s.generator, real.shape, real.num_classes)
            t0 = time.perf_counter()
            gen.fit(train_set, seed=seed_of(t, Purpose.FIT))
            t1 = time.perf_counter()
            drawn = draw_samples(gen, n + n_eval, real, label_seed=seed_of(t, Purpose.LABELS), sample_seed=seed_of(t, Purpose.SAMPLES))
            t2 = time.perf_counter()
            samples = ImageSet(drawn.images[:n], drawn.labels[:n], real.num_classes, real.levels)
            m = measure_samples(s, splits, context, samples, drawn.images[n:], lambda p: seed_of(t, p), "cpu")
            stages["fit"] += t1 - t0
            stages["sample"] += t2 - t1
            stages["metrics"] += time.perf_counter() - t2
            rows.append({"arm": arm.name, "generation": t, **m})
            history = history + [samples] if arm.loop_type == "accumulate" else [samples]
            print(f"plain script: {arm.name} generation {t}/{loop.generations} "
                  f"(fit {t1 - t0:.0f}s, sample {t2 - t1:.0f}s)", file=sys.stderr, flush=True)
    return time.perf_counter() - start, pd.DataFrame(rows), dict(stages)


def synthdata_study(study: dict, workdir: Path) -> tuple[float, pd.DataFrame]:
    """`synthdata run` on the study, as a user runs it (its own local Ray and MLflow store): wall seconds and table."""
    import yaml

    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    exe = Path(sys.executable).parent / "synthdata"
    cmd = [str(exe), "run", str(path), "--no-progress", "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, pd.read_csv(workdir / "runs" / study["name"] / "results.csv")


def final_metrics(table: pd.DataFrame, generations: int) -> dict[str, dict[str, float]]:
    last = table[table["generation"] == generations]
    return {row["arm"]: {k: float(row[k]) for k in COMPARED if k in row} for _, row in last.iterrows()}


def table_md(r: dict) -> str:
    m = r["machine"]
    st = r["plain_stages"]
    rows = [
        ("plain script (arms in turn, all cores, DataLoader, batches of 16)", f"{r['plain_s']:.0f} s",
         f"fit {st['fit']:.0f}s, sample {st['sample']:.0f}s, metrics {st['metrics']:.0f}s"),
        ("`synthdata run` (arms in parallel on Ray, shared generation 1, MLflow)", f"{r['synthdata_s']:.0f} s",
         "start-up, feature extractor and logging included"),
        ("  speed-up", f"{r['speedup']:.2f}x", "target 1.5x"),
    ]
    for arm, vals in r["final_synthdata"].items():
        base = r["final_plain"].get(arm, {})
        cells = ", ".join(f"{k} {vals[k]:.3f} vs {base.get(k, float('nan')):.3f}" for k in vals)
        rows.append((f"  last generation, {arm}", "synthdata vs plain", cells))
    head = (f"Study: {r['study']} ({r['generations']} generations, {r['train_steps']} generator steps); "
            f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}")
    return "\n".join([head, "", "| run | wall | notes |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=str(REPO / "studies" / "quickstart.yaml"))
    p.add_argument("--generations", type=int, help="Fewer generations (a smoke run; the README table is left alone).")
    p.add_argument("--train-steps", type=int, help="Fewer generator steps (a smoke run).")
    p.add_argument("--out", default=str(REPO / "bench" / "study.json"))
    p.add_argument("--update-readme", action="store_true", help="Also put the table into bench/README.md.")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    study = yaml_load(Path(args.study))
    smoke = args.generations is not None or args.train_steps is not None
    if args.generations:
        study["loop"]["generations"] = args.generations
    if args.train_steps:
        study["generator"]["train_steps"] = args.train_steps
    spec = parse_spec(study)

    with tempfile.TemporaryDirectory() as tmp:
        print("synthdata run ...", file=sys.stderr, flush=True)
        ours_s, ours = synthdata_study(study, Path(tmp))
    print("plain script ...", file=sys.stderr, flush=True)
    plain_s, plain, stages = plain_study(spec)
    T = spec.loop.generations
    r = {"machine": machine("cpu"), "study": spec.name, "generations": T, "train_steps": spec.generator.train_steps,
         "synthdata_s": ours_s, "plain_s": plain_s, "speedup": plain_s / ours_s, "plain_stages": stages,
         "final_synthdata": final_metrics(ours, T), "final_plain": final_metrics(plain, T)}
    Path(args.out).write_text(json.dumps(r, indent=2))
    text = table_md(r)
    print(text)
    if args.update_readme and not smoke:
        update_readme("study", text)


if __name__ == "__main__":
    main()
