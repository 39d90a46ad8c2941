"""The loop library in-process (no Ray): training sets per loop type, arms, events, seeding."""
import pytest
import torch
from helpers import tiny_study

from loops.autophagy import Arm, GenerationResult, Progress, ResumeState, run_arm
from loops.loop import arms_of, share_groups
from synthdata.autophagy import build_training_set
from synthdata.data import ImageSet, Splits, ToyTruth, make_splits, study_splits
from synthdata.spec import parse_spec


def _set(n: int, value: float) -> ImageSet:
    return ImageSet(torch.full((n, 1, 2, 2), value), torch.zeros(n, dtype=torch.long), 1)


def _splits(real: ImageSet, truth=None) -> Splits:
    return Splits(real, real, real, truth)


def test_training_set_per_loop_type():
    real = ImageSet(torch.arange(10.0)[:, None, None, None].expand(10, 1, 2, 2), torch.zeros(10, dtype=torch.long), 1)
    s1, s2 = _set(4, 100.0), _set(4, 200.0)
    splits = _splits(real)
    for loop_type in ("replace", "augment", "fresh", "accumulate"):
        assert build_training_set(loop_type, splits, []) is real  # generation 1 trains on real data
    replace = build_training_set("replace", splits, [s1, s2])
    assert len(replace) == 4 and replace.images.eq(200).all()  # only the latest samples
    augment = build_training_set("augment", splits, [s2])
    assert len(augment) == 14 and torch.equal(augment.images[:10], real.images)  # the fixed real set plus samples
    accumulate = build_training_set("accumulate", splits, [s1, s2])
    assert len(accumulate) == 18 and accumulate.images[10:14].eq(100).all() and accumulate.images[14:].eq(200).all()
    # A real fraction of 0.6 with 4 samples: 6 real images, the same ones every generation for augment.
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    a1 = build_training_set("augment", splits, [s1], real_fraction=0.6, fixed_order=order)
    a2 = build_training_set("augment", splits, [s2], real_fraction=0.6, fixed_order=order)
    assert len(a1) == 10 and torch.equal(a1.images[:6], a2.images[:6])
    # fresh: a new real draw each generation (half by default).
    f1 = build_training_set("fresh", splits, [s1], generator=torch.Generator().manual_seed(1))
    f2 = build_training_set("fresh", splits, [s1], generator=torch.Generator().manual_seed(2))
    assert len(f1) == 8 and f1.images[4:].eq(100).all()
    assert not torch.equal(f1.images[:4], f2.images[:4])


def test_fresh_draws_new_samples_of_the_truth_for_toy_sources():
    real = ImageSet(torch.zeros(10, 2, 1, 1), torch.zeros(10, dtype=torch.long), 1, levels=None)
    truth = ToyTruth(torch.tensor([[5.0, 5.0]]), std=0.1)
    samples = ImageSet(torch.zeros(4, 2, 1, 1), torch.zeros(4, dtype=torch.long), 1, levels=None)
    fresh = build_training_set("fresh", _splits(real, truth), [samples], real_fraction=0.5)
    assert len(fresh) == 8
    assert (fresh.images[:4] - 5).abs().max() < 1  # drawn from N(5, 0.1^2), not from the stored real set


def test_arms_cover_loop_types_sweeps_and_seeds():
    spec = parse_spec(tiny_study(loop={"types": ["replace", "fresh"], "seeds": [0, 1], "sweep": {"generator.temperature": [0.9, 1.0]}}))
    arms = arms_of(spec)
    assert len(arms) == 8
    assert arms[0].name == "replace/temperature=0.9/seed0" and arms[0].group == "replace temperature=0.9"
    assert arms[0].spec_for(spec).generator.temperature == 0.9
    assert arms[0].params()["generator.temperature"] == "0.9"


def _results(events) -> list[GenerationResult]:
    return [e for e in events if isinstance(e, GenerationResult)]


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("time_")}


def test_run_arm_yields_each_generation_once_and_is_deterministic():
    spec = parse_spec(tiny_study(loop={"generations": 3}))
    splits = make_splits(spec.data, seed=0)
    res = _results(run_arm(spec, splits, Arm("replace", 0)))
    assert [r.generation for r in res] == [0, 1, 2, 3]
    assert res[1].metrics["train_set_size"] == len(splits.train)
    assert res[2].metrics["train_set_size"] == 300  # replace: only generation 1's samples
    assert res[0].samples is None and len(res[1].samples) == 300 and res[1].checkpoint is not None
    for r in res:
        assert 0 <= r.metrics["detectability"] <= 1 and 0 <= r.metrics["downstream_accuracy"] <= 1
        assert r.metrics["detectability_ci_low"] <= r.metrics["detectability"] <= r.metrics["detectability_ci_high"]
    again = _results(run_arm(spec, splits, Arm("replace", 0)))
    assert [_strip(r.metrics) for r in again] == [_strip(r.metrics) for r in res]  # same seed, same numbers
    aug = _results(run_arm(spec, splits, Arm("augment", 0)))
    assert aug[2].metrics["train_set_size"] == len(splits.train) + 300


def test_generations_0_and_1_are_the_same_for_every_loop_type():
    # What lets the runner compute them once for arms that differ only in their loop type (loops.loop.share_groups).
    spec = parse_spec(tiny_study(loop={"types": ["replace", "augment", "fresh", "accumulate"], "generations": 1},
                                 metrics=["detectability"]))
    splits = make_splits(spec.data, seed=0)
    runs = {t: _results(run_arm(spec, splits, Arm(t, 0))) for t in spec.loop.types}
    first = runs["replace"]
    for t, res in runs.items():
        assert [_strip(r.metrics) for r in res] == [_strip(r.metrics) for r in first], t
        assert torch.equal(res[1].samples.images, first[1].samples.images), t
    assert all(len(g) == 1 for g in share_groups(spec, arms_of(spec), {}))  # toy fits: cheaper than sharing them
    diff = parse_spec(tiny_study(generator={"name": "diffusion"}, loop={"types": spec.loop.types, "seeds": [0, 1]}))
    groups = share_groups(diff, arms_of(diff), {})
    assert [[a.name for a in g] for g in groups] == [[f"{t}/seed{s}" for t in spec.loop.types] for s in (0, 1)]
    resumed = share_groups(diff, arms_of(diff), {"fresh/seed0": ResumeState(1)})  # a resumed arm goes on alone
    names = [[a.name for a in g] for g in resumed]
    assert ["replace/seed0", "augment/seed0", "accumulate/seed0"] in names and ["fresh/seed0"] in names and len(names) == 3


def test_a_resumed_arm_repeats_exactly_what_an_uninterrupted_one_computes():
    spec = parse_spec(tiny_study(loop={"types": ["accumulate"], "generations": 3}))
    splits = make_splits(spec.data, seed=0)
    full = _results(run_arm(spec, splits, Arm("accumulate", 0)))
    resumed = _results(run_arm(spec, splits, Arm("accumulate", 0), resume=ResumeState(2, [full[1].samples])))
    assert [r.generation for r in resumed] == [2, 3]
    assert [_strip(r.metrics) for r in resumed] == [_strip(r.metrics) for r in full[2:]]


def test_feature_metrics_in_the_loop():
    from synthdata.autophagy import study_context

    spec = parse_spec(tiny_study(metrics=["features"], loop={"generations": 1}, features={"epochs": 2}))
    splits = make_splits(spec.data, seed=0)
    res = _results(run_arm(spec, splits, Arm("replace", 0), context=study_context(spec, splits)))
    for r in res:
        assert {"fd", "kd", "precision", "recall", "density", "coverage", "diversity"} <= set(r.metrics)
    assert res[0].metrics["fd"] < res[1].metrics["fd"]  # real train vs real held-out is the floor


COLLAPSING = {  # a replace loop whose variance reaches 0 in float32 around generation 10: ridge 0, temperature 0.01
    "name": "collapse",
    "data": {"source": "gaussian", "toy": {"dim": 1, "classes": 1, "std": 1.0, "train": 20, "heldout": 2, "test": 2}},
    "generator": {"name": "gaussian", "ridge": 0.0, "temperature": 0.01},
    "metrics": ["toy"],
    "loop": {"types": ["replace"], "generations": 30, "samples_per_generation": 20},
}


def test_a_collapsed_generator_ends_its_arm_with_the_generation_not_an_error():
    from loops.autophagy import Collapse
    from synthdata.generators import Collapsed, create_generator
    from synthdata.spec import GaussianSpec

    # A class whose samples are all alike has a singular fit: Collapsed, saying which class and its variance.
    flat = ImageSet(torch.full((6, 1, 1, 1), 0.3), torch.zeros(6, dtype=torch.long), 1, levels=None)
    with pytest.raises(Collapsed, match=r"covariance of class 0 is singular \(mean variance 0\)"):
        create_generator(GaussianSpec(ridge=0.0), (1, 1, 1), 1).fit(flat, seed=0)

    spec = parse_spec(COLLAPSING)
    splits = study_splits(spec.data, [0])[0]
    events = [e for e in run_arm(spec, splits, Arm("replace", 0)) if not isinstance(e, Progress)]
    *results, last = events
    # The variance shrinks 100-fold per generation from 1: below float32's resolution at 0.3 (var < 1e-14) by about 8.
    assert isinstance(last, Collapse) and 5 <= last.generation <= 20 and "class 0 is singular" in last.reason, last
    c = last.generation
    assert [r.generation for r in results] == list(range(c))  # every generation before it, finite
    assert 0 < results[-1].metrics["fitted_variance"] < 1e-12
    # Resumed from the generation before, the arm collapses at the same generation.
    again = list(run_arm(spec, splits, Arm("replace", 0), resume=ResumeState(c - 1, [results[c - 2].samples])))
    assert [type(e).__name__ for e in again] == ["GenerationResult", "Collapse"] and again[-1].generation == c


def test_a_fit_singular_on_the_real_data_is_an_error_not_a_collapse():
    # Two real points per class in three dimensions: a full covariance of rank 1, singular without a ridge.
    study = {**COLLAPSING, "data": {"source": "gaussian", "toy": {"dim": 3, "train": 2, "heldout": 2, "test": 2}},
             "generator": {"name": "gaussian", "ridge": 0.0}}
    spec = parse_spec(study)
    with pytest.raises(ValueError, match=r"^generation 1 \(fitted on the real training set\): the fitted covariance of class 0 "):
        list(run_arm(spec, study_splits(spec.data, [0])[0], Arm("replace", 0)))
