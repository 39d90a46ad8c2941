"""Warm-started and pretrained loops: generation t starts from G(t-1)'s weights (loop.init: previous), generation 1
from pretrained weights (loop.pretrained), through resume and the shared first generations."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_study

from loops.autophagy import Arm, GenerationResult, ResumeState, run_arm
from synthdata.autophagy import study_context
from synthdata.data import make_splits
from synthdata.errors import SpecError
from synthdata.spec import DataSpec, PluginSpec, parse_spec

TINY_DIFFUSION = {"name": "diffusion", "channels": [8, 16], "train_steps": 3, "sampling_steps": 2, "warmup_steps": 0,
                  "batch_size": 32}


class Recorder:
    """A generator whose weights are one number: fit adds one to where it starts (0 from scratch); the calls are kept."""

    calls: list[float | None] = []

    def __init__(self, shape, num_classes, device="cpu"):
        self.shape, self.w = shape, torch.zeros(1)

    def fit(self, data, *, seed, progress=None, init=None):
        Recorder.calls.append(None if init is None else float(init["w"]))
        self.w = (init["w"] if init is not None else torch.zeros(1)) + 1
        return {}

    def sample(self, labels, *, seed):
        return torch.zeros(len(labels), *self.shape)

    def state_dict(self):
        return {"w": self.w.clone()}

    def load_state_dict(self, state):
        self.w = state["w"].clone()


def _recorded(init: str, resume: ResumeState | None = None, generations: int = 4) -> list[float | None]:
    spec = parse_spec(tiny_study(data={"limit": 60}, metrics=["detectability"], detector={"epochs": 1}, loop={"types": ["replace"], "generations": generations,
                                                                           "samples_per_generation": 30, "init": init}, generator=TINY_DIFFUSION))
    spec = spec.model_copy(update={"generator": PluginSpec.of(Recorder, {})})
    Recorder.calls = []
    events = [e for e in run_arm(spec, make_splits(DataSpec(limit=60)), Arm("replace", 0), resume=resume) if isinstance(e, GenerationResult)]
    assert all((e.state is not None) == (init == "previous") for e in events if e.generation >= 1)
    return Recorder.calls


def test_previous_starts_each_generation_from_the_last_and_scratch_never_does():
    assert _recorded("scratch") == [None, None, None, None]
    assert _recorded("previous") == [None, 1.0, 2.0, 3.0]  # generation t starts from G(t-1), which has t-1 steps of history
    # A resumed arm starts from the weights it kept: generation 3 from G2's (w = 2), then on.
    assert _recorded("previous", ResumeState(3, [], {"w": torch.full((1,), 2.0)})) == [2.0, 3.0]


def test_a_generator_that_cannot_warm_start_is_refused_when_the_file_is_validated():
    with pytest.raises(SpecError, match=r"loop.init: generator 'gaussian' cannot start from given weights"):
        parse_spec(tiny_study(loop={"init": "previous"}))
    with pytest.raises(SpecError, match=r"loop.pretrained: does not exist: no/such/dir"):
        parse_spec(tiny_study(generator=TINY_DIFFUSION, loop={"pretrained": "no/such/dir"}))
    with pytest.raises(SpecError, match=r"loop.pretrained_steps: applies with loop.pretrained only"):
        parse_spec(tiny_study(generator=TINY_DIFFUSION, loop={"pretrained_steps": 0}))


def test_a_pretrained_diffusers_model_starts_generation_one(tmp_path):
    """A tiny UNet the test saves itself (diffusers' save_pretrained): used as it is with 0 steps, fine-tuned otherwise."""
    from synthdata.generators import create_generator, draw_samples, pretrained_state
    from synthdata.runs import pretrained_weights
    from synthdata.seeds import Purpose, stream_seed

    splits = make_splits(DataSpec(limit=60))
    base = parse_spec(tiny_study(generator=TINY_DIFFUSION)).generator
    pretrained = create_generator(base, splits.train.shape, 10)
    pretrained.fit(splits.train, seed=123)
    pretrained.save_pretrained(tmp_path / "pretrained")

    def generation_one(steps: int | None) -> GenerationResult:
        spec = parse_spec(tiny_study(generator=TINY_DIFFUSION, metrics=["detectability"], detector={"epochs": 1}, data={"limit": 60}, loop={
            "types": ["replace"], "generations": 1, "samples_per_generation": 20, "pretrained": str(tmp_path / "pretrained"),
            "pretrained_steps": steps}))
        weights = pretrained_weights(spec.loop.pretrained, "unused: a local path", spec.generator, splits.train.shape, 10)
        context = study_context(spec, splits, pretrained=weights)  # the weights are read once, in the driver
        return next(e for e in run_arm(spec, splits, Arm("replace", 0), context=context)
                    if isinstance(e, GenerationResult) and e.generation == 1)

    as_is = generation_one(0)
    assert as_is.metrics["warm_start"] == 1.0 and "generator_loss" not in as_is.metrics  # sampled, not trained
    expected = draw_samples(pretrained, 20 + len(splits.heldout), splits.train, label_seed=stream_seed(0, Purpose.LABELS, 1),
                            sample_seed=stream_seed(0, Purpose.SAMPLES, 1))
    assert torch.equal(as_is.samples.images, expected.images[:20])  # exactly the pretrained model's samples
    tuned = generation_one(None)
    assert tuned.metrics["warm_start"] == 1.0 and "generator_loss" in tuned.metrics
    assert not torch.equal(tuned.samples.images, as_is.samples.images)
    # Weights of another architecture are refused, naming the path.
    from synthdata.errors import DataError

    other = parse_spec(tiny_study(generator={**TINY_DIFFUSION, "channels": [16, 16]})).generator
    with pytest.raises(DataError, match="pretrained: not weights of this study's generator"):
        pretrained_state(tmp_path / "pretrained", other, splits.train.shape, 10)


def test_a_warm_started_diffusion_loop_hands_its_weights_on_through_ray(local_ray, tracking_uri, tmp_path):
    """Generations 0-1 are shared by the two arms; each arm's generation 2 then starts from the shared G1, and generation
    3 from its own G2. The weights kept in MLflow are what a resume starts from."""
    import synthdata
    from synthdata.errors import DataError
    from synthdata.runs import child_runs, download_generator_state

    study = tiny_study(name="warm", generator=TINY_DIFFUSION, metrics=["detectability"], data={"limit": 100},
                       tracking={"report_dir": str(tmp_path / "runs")},
                       loop={"types": ["replace", "augment"], "generations": 3, "samples_per_generation": 40, "init": "previous"})
    result = synthdata.run(study, tracking_uri=tracking_uri, progress=False)
    assert not result.failed
    table = result.table.set_index(["arm", "generation"])
    for arm in ("replace/seed0", "augment/seed0"):
        assert pd_isna(table.loc[(arm, 1)].get("warm_start")) and table.loc[(arm, 2), "warm_start"] == 1.0
        assert table.loc[(arm, 3), "warm_start"] == 1.0
    run = next(r for r in child_runs(tracking_uri, result.parent_run_id) if r.info.run_name == "replace/seed0")
    spec = parse_spec(study)
    state = download_generator_state(tracking_uri, run.info.run_id, 3, spec.generator, (1, 8, 8), 10)
    from synthdata.generators import create_generator

    create_generator(spec.generator, (1, 8, 8), 10).load_state_dict(state)  # a whole, loadable generator

    # Another loop starts from that checkpoint through its MLflow URI, sampled as it is: its generation 1 is those weights.
    source = f"runs:/{run.info.run_id}/checkpoints/generation_003/generator"
    again = tiny_study(name="from_mlflow", generator=TINY_DIFFUSION, metrics=["detectability"], data={"limit": 100},
                       tracking={"report_dir": str(tmp_path / "runs")},
                       loop={"types": ["replace"], "generations": 1, "samples_per_generation": 40, "pretrained": source,
                             "pretrained_steps": 0})
    second = synthdata.run(again, tracking_uri=tracking_uri, progress=False)
    assert not second.failed and second.table.set_index("generation").loc[1, "warm_start"] == 1.0
    arm = next(r for r in child_runs(tracking_uri, second.parent_run_id) if r.info.run_name == "replace/seed0")
    started = download_generator_state(tracking_uri, arm.info.run_id, 1, spec.generator, (1, 8, 8), 10)
    assert started.keys() == state.keys() and all(torch.equal(started[k], state[k]) for k in state)
    # A URI that names nothing stops the study before any arm, in one line.
    missing = {**again, "loop": {**again["loop"], "pretrained": f"runs:/{run.info.run_id}/checkpoints/generation_009"}}
    with pytest.raises(DataError, match=r"loop.pretrained: runs:/\w+/checkpoints/generation_009: not found in"):
        synthdata.run(missing, tracking_uri=tracking_uri, progress=False)


def pd_isna(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def test_a_pretrained_directory_that_is_not_a_model_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(tiny_study(generator=TINY_DIFFUSION, loop={"pretrained": str(tmp_path / "junk")})))
    proc = subprocess.run([str(Path(sys.executable).parent / "synthdata"), "run", str(study), "--tracking-uri",
                           f"sqlite:///{tmp_path / 'm.db'}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {tmp_path / 'junk'}: not a diffusers model")
    assert not (tmp_path / "m.db").exists()  # refused before any run opened


def test_synthdata_pretrain_saves_a_start_that_knows_what_it_was_trained_on(tmp_path, capsys):
    """`synthdata pretrain` fits the study's generator on one seed's training split and saves it; a loop's seed whose
    held-out or test images were among that split's is told so (a per-seed split: seed 1's overlaps seed 0's)."""
    import yaml

    from synthdata.cli import main
    from synthdata.data import study_splits
    from synthdata.generators import pretrained_overlap, pretrained_state

    study = tiny_study(name="pre", generator=TINY_DIFFUSION, data={"limit": 100})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["pretrain", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "unet"), "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "unet" / "unet" / "config.json").is_file() and (tmp_path / "unet" / "pretrained.json").is_file()
    assert "start a loop from it with" in capsys.readouterr().out
    spec = parse_spec(study)
    splits = study_splits(spec.data, [0, 1])
    state = pretrained_state(tmp_path / "unet", spec.generator, splits[0].train.shape, 10)
    assert state  # loadable by the study's generator
    record, counts = pretrained_overlap(tmp_path / "unet", splits)
    overlap = {seed: n for seed, (n, _) in counts.items()}
    assert record["seed"] == 0 and record["train_steps"] == 2 and len(record["train_fingerprints"]) == len(splits[0].train)
    assert overlap[0] == 0 and overlap[1] > 0  # seed 0 evaluates on images the pretraining never saw; seed 1 does not
    # Same seed, same steps: the same weights (the fit draws from the seed's streams).
    assert main(["pretrain", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "again"), "--steps", "2", "--no-progress"]) == 0
    again = pretrained_state(tmp_path / "again", spec.generator, splits[0].train.shape, 10)
    assert all(torch.equal(state[k], again[k]) for k in state)
    # A bad step count, an --out that is a file, and a GPU that is not there are refused in one line.
    assert main(["pretrain", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "--steps: give a positive number" in capsys.readouterr().err
    (tmp_path / "taken").write_text("")
    assert main(["pretrain", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "taken"), "--steps", "2"]) == 2
    assert "a file is there" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["pretrain", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA GPU is visible here" in capsys.readouterr().err
