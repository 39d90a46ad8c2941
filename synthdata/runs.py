"""Reading a study back from MLflow: its study run, its arms' runs, their metrics, and what a resume needs.

The table, the report and `--resume` all read through here, so they agree on what a
study holds. `synthdata.tracking` writes; `synthdata.results` turns these rows into tables.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthdata.data import ImageSet, load_samples
from synthdata.errors import UserError
from synthdata.metrics.registry import COLLAPSED
from synthdata.tracking import DONE_METRIC, checkpoint_dir, mlflow_client


def study_run(uri: str, *, experiment: str | None = None, run_id: str | None = None) -> Any:
    """A study's parent run: `run_id` itself, or the latest study run in `experiment`."""
    client = mlflow_client(uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise UserError(f"run '{run_id}': not found in {uri}") from None
        if run.data.tags.get("synthdata.role") != "study":
            parent = run.data.tags.get("mlflow.parentRunId")
            hint = f" (it is a child of study run {parent})" if parent else ""
            raise UserError(f"run '{run_id}': not a synthdata study run{hint}")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"experiment '{experiment}': not found in {uri} (there: {', '.join(names) or 'none'})")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`synthdata.role` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"experiment '{experiment}': holds no synthdata study run")
    return runs[0]


def search_all(client: Any, experiment_ids: list[str], filter_string: str, page_size: int = 1000) -> list[Any]:
    """Every run that matches: `search_runs` returns at most `max_results` (1,000 at most) a call, so page on."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=page_size, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(uri: str, parent_id: str) -> list[Any]:
    """The arm runs of a study run (all of them, however many), by name."""
    client = mlflow_client(uri)
    parent = client.get_run(parent_id)
    runs = search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return sorted(runs, key=lambda r: r.info.run_name or "")


def _arm_row(run: Any, generation: int) -> dict:
    """The columns that say which arm a loop-table row is: arm, group (its line in a figure), loop type, seed."""
    p = run.data.params
    arm = run.data.tags.get("synthdata.arm", run.info.run_name)
    return {"arm": arm, "group": p.get("group", p.get("loop_type", arm)), "loop_type": p.get("loop_type", ""),
            "seed": int(p.get("seed", -1)), "generation": generation}


def loop_rows(uri: str, parent_id: str) -> list[dict]:
    """Every arm's metrics by generation (MLflow step), as loop-table rows."""
    client = mlflow_client(uri)
    rows: dict[tuple[str, int], dict] = {}
    for run in child_runs(uri, parent_id):
        for key in run.data.metrics:
            if key == DONE_METRIC:
                continue
            for m in client.get_metric_history(run.info.run_id, key):
                row = rows.setdefault((run.info.run_id, m.step), _arm_row(run, m.step))
                row[key] = m.value
    return list(rows.values())


def mix_rows(uri: str, parent_id: str) -> list[dict]:
    """One row per arm of a mix study: mode, ratio, seed, status and its last reported metrics."""
    rows = []
    for run in child_runs(uri, parent_id):
        p, m = run.data.params, run.data.metrics
        rows.append({"arm": run.info.run_name, "mode": p.get("mode"), "ratio": float(p.get("ratio", "nan")),
                     "seed": int(p.get("seed", -1)), "status": run.info.status, "epochs": int(m.get("epoch", 0)),
                     **{k: v for k, v in m.items() if k != "epoch"}})
    return rows


def mix_decisions(uri: str, parent_id: str) -> dict[str, str]:
    """Each finished mix arm's final right/wrong per test image (its `test_correct.json`, packed), by arm name."""
    import mlflow.artifacts

    out = {}
    for run in child_runs(uri, parent_id):
        if run.info.status != "FINISHED":
            continue
        try:
            data = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/test_correct.json")
        except Exception:  # an arm logged before decisions were kept: no McNemar test for it
            continue
        out[run.info.run_name] = data["correct"]
    return out


def finished_arms(uri: str, parent_id: str) -> list[tuple[str, dict[str, str], dict[str, float]]]:
    """(run name, params, metrics) of every finished arm of a study run (detect and guide studies: one set of metrics each)."""
    return [(r.info.run_name, dict(r.data.params), dict(r.data.metrics))
            for r in child_runs(uri, parent_id) if r.info.status == "FINISHED"]


@dataclass
class Resumable:
    """A study run that can be continued: its parent run and, per arm, its run and last finished generation."""

    parent_id: str
    status: str
    arm_runs: dict[str, str] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # arm -> last finished generation or epoch (-1: none)
    arm_status: dict[str, str] = field(default_factory=dict)  # arm -> its run's status when the study stopped
    collapsed: dict[str, int] = field(default_factory=dict)  # arm -> the generation its generator collapsed at (it ended there)


def find_resumable(uri: str, experiment: str, study: str, progress_metric: str = DONE_METRIC) -> tuple[Resumable | None, str | None]:
    """The latest run of `study` in `experiment`, with its spec hash; (None, None) when there is none.

    Each arm's progress is the last step of `progress_metric`: `generation_done` for loops, `epoch` for mixes.
    """
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`synthdata.study` = '{study}' and tags.`synthdata.role` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None, None
    parent = parents[0]
    found = Resumable(parent.info.run_id, parent.info.status)
    for run in child_runs(uri, parent.info.run_id):
        arm = run.data.tags.get("synthdata.arm", run.info.run_name)
        found.arm_runs[arm] = run.info.run_id
        found.arm_status[arm] = run.info.status
        history = client.get_metric_history(run.info.run_id, progress_metric)
        found.done[arm] = int(max((m.step for m in history), default=-1))
        if COLLAPSED in run.data.metrics:
            found.collapsed[arm] = int(run.data.metrics[COLLAPSED])
    return found, parent.data.tags.get("synthdata.spec_hash")


def study_to_resume(spec: Any, uri: str, progress_metric: str = DONE_METRIC) -> Resumable:
    """The latest run of this study, if it was made from this same study file; UserError otherwise (exit 2)."""
    from synthdata.spec import spec_hash

    found, fingerprint = find_resumable(uri, spec.experiment_name, spec.name, progress_metric)
    if found is None:
        raise UserError(f"--resume: no earlier run of study '{spec.name}' in experiment '{spec.experiment_name}' at {uri}")
    if fingerprint != spec_hash(spec):
        raise UserError(
            f"--resume: the latest run of study '{spec.name}' ({found.parent_id}) was made from a different study file; "
            "run without --resume, or give the study another name"
        )
    return found


def download_samples(uri: str, run_id: str, generation: int) -> ImageSet:
    """The samples a finished generation kept as its checkpoint."""
    return download_sample_set(uri, run_id, f"{checkpoint_dir(generation)}/samples.safetensors")


def download_generator_state(uri: str, run_id: str, generation: int, spec, shape: tuple[int, int, int], num_classes: int) -> dict:
    """The weights a finished generation kept in its checkpoint (what a warm-started loop resumes from)."""
    from synthdata.errors import DataError

    try:
        return pretrained_weights(f"runs:/{run_id}/{checkpoint_dir(generation)}", uri, spec, shape, num_classes)
    except DataError:
        raise UserError(f"--resume: generation {generation} kept no checkpoint, and loop.init: previous starts the next "
                        "generation from it (tracking.checkpoints: true)") from None


def pretrained_weights(source: Path | str, uri: str, spec, shape: tuple[int, int, int], num_classes: int) -> dict:
    """A loop's `loop.pretrained` weights as the generator's state_dict: from a local checkpoint, or from an MLflow
    artifact URI (`runs:/<run_id>/checkpoints/generation_003/generator`) read through the tracking store `uri`.
    DataError (one line, exit 2) when the URI names nothing there or the weights do not fit `spec`'s generator."""
    import mlflow.artifacts

    from synthdata.errors import DataError
    from synthdata.generators import pretrained_state
    from synthdata.spec.base import is_mlflow_uri

    if not is_mlflow_uri(source):
        return pretrained_state(Path(source), spec, shape, num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(source), dst_path=tmp, tracking_uri=uri))
        except Exception as err:
            raise DataError(f"loop.pretrained: {source}: not found in {uri} ({type(err).__name__}: {str(err)[:160]})") from None
        if local.is_dir() and not (local / "unet").is_dir() and (local / "generator").is_dir():
            local = local / "generator"  # the generation's checkpoint folder itself: its diffusers model
        elif local.is_dir() and (local / "generator.safetensors").is_file():
            local = local / "generator.safetensors"  # a state-only checkpoint (a generator without save_pretrained)
        try:
            return pretrained_state(local, spec, shape, num_classes)
        except DataError as err:  # name what the user wrote, not the download's temporary folder
            raise DataError(str(err).replace(str(local), f"loop.pretrained: {source}")) from None


def download_sample_set(uri: str, run_id: str, artifact_path: str) -> ImageSet:
    """A sample set a run kept as an artifact (a generation's samples, a mix seed's pool)."""
    import mlflow.artifacts

    from synthdata.data import shards_reference_path

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp, tracking_uri=uri)
        except Exception:  # not there as safetensors: a set drawn as shards is kept as a reference to them
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=shards_reference_path(artifact_path),
                                                       dst_path=tmp, tracking_uri=uri)
        return load_samples(Path(path))
