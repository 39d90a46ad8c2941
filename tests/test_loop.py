"""The loop library in-process (no Ray): training sets per loop type, events, seeding."""
import torch

from loops.autophagy import Arm, GenerationResult, Progress, build_training_set, run_arm
from synthdata.data import ImageSet, make_splits
from synthdata.spec import parse_spec

from conftest import tiny_study


def _set(n: int, value: float) -> ImageSet:
    return ImageSet(torch.full((n, 1, 2, 2), value), torch.zeros(n, dtype=torch.long), 1)


def test_training_set_per_loop_type():
    real, prev = _set(10, 0.0), _set(4, 1.0)
    assert build_training_set("replace", real, None) is real
    assert build_training_set("augment", real, None) is real
    replace = build_training_set("replace", real, prev)
    assert len(replace) == 4 and replace.images.eq(1).all()  # only the previous samples
    augment = build_training_set("augment", real, prev)
    assert len(augment) == 14 and augment.images[:10].eq(0).all()  # the fixed real set plus samples


def test_run_arm_yields_each_generation_once_and_is_deterministic():
    spec = parse_spec(tiny_study(loop={"generations": 3}))
    splits = make_splits(spec.data, seed=0)

    def results(arm):
        return [e for e in run_arm(spec, splits, arm) if isinstance(e, GenerationResult)]

    events = list(run_arm(spec, splits, Arm("replace", 0)))
    assert any(isinstance(e, Progress) for e in events)
    res = [e for e in events if isinstance(e, GenerationResult)]
    assert [r.generation for r in res] == [0, 1, 2, 3]
    assert res[1].metrics["train_set_size"] == len(splits.train)
    assert res[2].metrics["train_set_size"] == 300  # replace: only generation 1's samples
    for r in res:
        assert 0 <= r.metrics["detectability"] <= 1 and 0 <= r.metrics["downstream_accuracy"] <= 1
        assert r.metrics["detectability_ci_low"] <= r.metrics["detectability"] <= r.metrics["detectability_ci_high"]
    again = results(Arm("replace", 0))
    assert _same_except_time(again, res)  # same seed, same numbers
    aug = results(Arm("augment", 0))
    assert aug[2].metrics["train_set_size"] == len(splits.train) + 300


def _same_except_time(a, b) -> bool:
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time_")}  # noqa: E731
    return all(strip(x.metrics) == strip(y.metrics) for x, y in zip(a, b))
