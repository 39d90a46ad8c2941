"""Detector guidance inside the toolkit: the guide study end to end, and guided sampling in loops and mixes.

Tiny configs: what is checked here is the wiring (same noise at every scale, a fresh
detector per scale, the real reference, MLflow runs, the report), not the science;
that is `test_guidance.py`'s closed-form cases.
"""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from helpers import tiny_study

from synthdata.spec import parse_spec

TINY_DIFFUSION = {"name": "diffusion", "channels": [8, 16], "attention": False, "train_steps": 30, "batch_size": 64,
                  "sampling_steps": 5, "warmup_steps": 5}
TINY_GUIDANCE = {"train_steps": 40, "width": 8, "batch_size": 32}


def _guide_study(**extra) -> dict:
    study = {
        "name": "guided", "kind": "guide", "data": {"source": "digits", "limit": 200},
        "generator": TINY_DIFFUSION, "guidance": TINY_GUIDANCE,
        "detector": {"epochs": 2, "batch_size": 64}, "downstream": {"epochs": 2, "batch_size": 64},
        "guide": {"scales": [0, 4], "seeds": [0], "samples_per_scale": 100},
    }
    study.update(extra)
    return study


def test_guide_study_validation():
    spec = parse_spec(_guide_study())
    assert spec.guide.scales == (0.0, 4.0) and spec.guidance.train_steps == 40
    parse_spec(_guide_study(guidance={"scale": 0, "train_steps": 40}))  # the reference's guidance block, pasted: fine
    bad = [
        (_guide_study(guide={"scales": [1, 2]}), "guide.scales: include 0"),
        (_guide_study(guidance={"scale": 2}), "guidance.scale: a guide study samples at every one of guide.scales"),
        (_guide_study(generator={"name": "gaussian"}), "guidance: detector guidance steers a diffusion generator"),
        (tiny_study(guidance={"scale": 1.0}), "guidance: detector guidance steers a diffusion generator"),
        (tiny_study(loop={"sweep": {"guidance.scale": [0, 1]}}), "guidance: detector guidance steers a diffusion generator"),
        (_guide_study(loop={"generations": 2}), "loop: not used by a guide study"),
    ]
    from synthdata.errors import SpecError

    for study, needle in bad:
        with pytest.raises(SpecError, match=re.escape(needle)):
            parse_spec(study)


def test_guide_study_runs_every_scale_from_the_same_noise(local_ray, tracking_uri, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from synthdata.cli import main
    from synthdata.report import build_report
    from synthdata.results import guide_table
    from synthdata.runs import finished_arms, study_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "guide.yaml").write_text(yaml.safe_dump(_guide_study()))
    code = main(["run", "guide.yaml", "--tracking-uri", tracking_uri, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "study 'guided': 3 arms" in out and "unguided" in out and "w = 4" in out and "real data" in out
    parent = study_run(tracking_uri, experiment="guided")
    assert parent.info.status == "FINISHED" and parent.data.tags["synthdata.kind"] == "guide"
    t = guide_table(finished_arms(tracking_uri, parent.info.run_id)).set_index("arm")
    assert list(t.index) == ["real/seed0", "scale=0/seed0", "scale=4/seed0"]
    for run in ("scale=0/seed0", "scale=4/seed0"):
        row = t.loc[run]
        assert 0 <= row["detectability"] <= 1 and 0 <= row["guiding_detectability"] <= 1 and row["guiding_loss"] > 0
        assert 0 <= row["downstream_accuracy"] <= 1 and row["detectability_n_eval"] > 0
    assert "guiding_detectability" not in t.columns or pd_isna(t.loc["real/seed0", "guiding_detectability"])
    # The generator and its classifier were trained once: every scale carries the same fit.
    assert t.loc["scale=0/seed0", "generator_loss"] == t.loc["scale=4/seed0", "generator_loss"]

    client = MlflowClient(tracking_uri)
    grids = [a.path for a in client.list_artifacts(
        client.search_runs([parent.info.experiment_id], "attributes.run_name = 'scale=4/seed0'")[0].info.run_id, "samples")]
    assert grids == ["samples/grid.png"]
    figures = {p.name for p in (tmp_path / "runs" / "guided" / "figures").glob("*.png")}
    assert {"detectability_vs_scale.png", "downstream_accuracy_vs_scale.png"} <= figures
    page = build_report(tracking_uri, tmp_path / "report", run_id=parent.info.run_id)
    text = page.read_text()
    assert "guiding clf" in text and "Δ detectability" in text and "scale=4/seed0" in text
    # The figures against the scale and one grid per measured set are embedded (the loop report's
    # browser test covers how such a page renders).
    figures = len(list((tmp_path / "report").glob("*_vs_scale.png")))
    assert figures >= 3 and text.count("<img") == figures + 3


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_scale_zero_is_plain_sampling_and_guidance_changes_the_samples():
    """At scale 0 the wrapper samples exactly as the generator does; at a scale > 0 the same noise lands elsewhere."""
    from synthdata.data import make_splits
    from synthdata.generators import create_generator
    from synthdata.guidance import with_guidance
    from synthdata.spec import DiffusionSpec, GuidanceSpec

    splits = make_splits(parse_spec(_guide_study()).data, seed=0)
    generator = create_generator(DiffusionSpec(**TINY_DIFFUSION), splits.train.shape, 10)
    generator.fit(splits.train, seed=0)
    guided, info = with_guidance(generator, GuidanceSpec(scale=4.0, **TINY_GUIDANCE), splits.train, seed=0)
    labels = torch.arange(10).repeat(3)
    plain = generator.sample(labels, seed=3)
    torch.testing.assert_close(guided.at(0.0).sample(labels, seed=3), plain)
    steered = guided.sample(labels, seed=3)
    assert steered.shape == plain.shape and (steered - plain).abs().mean() > 1e-3
    assert torch.isfinite(steered).all() and info["guiding_loss"] > 0 and "guiding_val_loss" not in info

    # With a validation split the guide keeps its best weights, and says which step they came from.
    spec = GuidanceSpec(scale=4.0, **{**TINY_GUIDANCE, "train_steps": 60}, val_fraction=0.2)
    _, info = with_guidance(generator, spec, splits.train, seed=0)
    assert 0 < info["guiding_best_step"] <= 60 and 0 < info["guiding_val_loss"] < 2


def test_guided_pools_and_loop_generations():
    """A mix pool and a loop generation drawn with guidance log the guiding classifier's figures."""
    from loops.autophagy import Arm, GenerationResult, run_arm
    from synthdata.data import make_splits
    from synthdata.mixing import make_pool
    from synthdata.spec import DiffusionSpec, GuidanceSpec

    study = {**_guide_study(), "kind": "loop", "guidance": {**TINY_GUIDANCE, "scale": 2.0}, "metrics": ["detectability"],
             "loop": {"types": ["replace"], "generations": 1, "samples_per_generation": 100}}
    del study["guide"]
    spec = parse_spec(study)
    splits = make_splits(spec.data, seed=0)
    results = [e for e in run_arm(spec, splits, Arm("replace", 0)) if isinstance(e, GenerationResult)]
    assert [r.generation for r in results] == [0, 1]
    assert results[1].metrics["guiding_loss"] > 0 and results[1].metrics["time_guidance_s"] > 0
    assert 0 <= results[1].metrics["detectability"] <= 1

    pool, info = make_pool(DiffusionSpec(**TINY_DIFFUSION), splits.train, 50, seed=0,
                           guidance=GuidanceSpec(scale=2.0, **TINY_GUIDANCE))
    plain, plain_info = make_pool(DiffusionSpec(**TINY_DIFFUSION), splits.train, 50, seed=0)
    assert "guiding_loss" in info and "guiding_loss" not in plain_info
    assert torch.equal(pool.labels, plain.labels) and not torch.equal(pool.images, plain.images)

    # A detect study's generator source with guidance is the same guided draw.
    from synthdata.sources import load_source
    from synthdata.spec import GeneratorSource

    source = GeneratorSource(type="generator", generator=DiffusionSpec(**TINY_DIFFUSION), size=50,
                             guidance=GuidanceSpec(scale=2.0, **TINY_GUIDANCE))
    torch.testing.assert_close(load_source(source, splits.train, seed=0).images, pool.images)


def test_arms_that_fail_are_recorded_and_the_others_finish(local_ray, tracking_uri):
    """The arm loop shared by detect and guide studies: a raising task fails its own run, with the reason, only."""
    from dataclasses import dataclass

    from mlflow.tracking import MlflowClient

    from loops.ray_tools import wait_arms
    from synthdata.tracking import StudyTracker

    @dataclass(frozen=True)
    class Arm:
        name: str
        fail: bool

    def arm_value(fail: bool) -> float:  # defined here: Ray ships it by value, workers cannot import tests
        if fail:
            raise ValueError("boom")
        return 0.75

    tracker = StudyTracker(tracking_uri, "arms", "arms", {})
    task = local_ray.remote(arm_value).options(num_cpus=1, max_retries=0)
    refs = {}
    for cell in (Arm("good", False), Arm("bad", True)):
        tracker.start_arm(cell.name, {})
        refs[task.remote(cell.fail)] = cell
    seen = {}
    failed = wait_arms(refs, tracker, lambda cell, value: seen.setdefault(cell.name, f"{cell.name}: {value}"),
                        desc="arms", show_progress=False)
    tracker.end("FAILED" if failed else "FINISHED")
    assert failed == {"bad": "ValueError: boom"} and seen == {"good": "good: 0.75"}
    client = MlflowClient(tracking_uri)
    runs = {name: client.get_run(run_id) for name, run_id in tracker.arm_runs.items()}
    assert runs["good"].info.status == "FINISHED" and runs["bad"].info.status == "FAILED"
    assert runs["bad"].data.tags["synthdata.failure"] == "ValueError: boom"
