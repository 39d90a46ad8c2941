"""MLflow tracking: one experiment per study, a parent run per study, a child run per arm.

The study driver is the only process that writes to MLflow: arms stream their results
back through Ray and the driver logs them. One writer means no "database is locked"
on a local SQLite store and exactly one value per metric and generation.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from synthdata.data import ImageSet

T = TypeVar("T")
DEFAULT_DB = "mlflow.db"
DONE_METRIC = "generation_done"  # logged with a generation's metrics: the generation's commit marker


def checkpoint_dir(generation: int) -> str:
    return f"checkpoints/generation_{generation:03d}"


def save_samples(samples: ImageSet, path: Path) -> None:
    """Samples as safetensors: quantized images as uint8 codes of their levels (exact), else float32."""
    from safetensors.torch import save_file

    if samples.levels is not None and samples.levels <= 256:
        codes = torch.round((samples.images.clamp(-1, 1) + 1) * (samples.levels - 1) / 2).to(torch.uint8)
        tensors = {"images": codes}
    else:
        tensors = {"images": samples.images.float().contiguous()}
    tensors["labels"] = samples.labels.long().contiguous()
    meta = {"levels": str(samples.levels), "num_classes": str(samples.num_classes)}
    save_file(tensors, str(path), metadata=meta)


def load_samples(path: Path) -> ImageSet:
    """Inverse of `save_samples` (safetensors only: no pickle is ever loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    levels = None if meta["levels"] == "None" else int(meta["levels"])
    if images.dtype == torch.uint8:
        images = images.float() * (2 / (levels - 1)) - 1
    return ImageSet(images, labels, int(meta["num_classes"]), levels)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.

    A relative SQLite path is made absolute so that Ray workers and the UI agree on it.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


_READY: set[str] = set()  # tracking URIs whose store this process has opened


def mlflow_client(uri: str):
    """An MlflowClient; a SQLite store is created (or its schema migrated) by one process at a time.

    Several processes opening a new SQLite store at once (trials, workers, a second
    driver) would otherwise race on creating its tables.
    """
    from mlflow.tracking import MlflowClient

    if uri in _READY or not uri.startswith("sqlite:///"):
        return _RetryLocked(MlflowClient(tracking_uri=uri))
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=600):
        client = _RetryLocked(MlflowClient(tracking_uri=uri))
        client.search_experiments(max_results=1)  # opens the store: tables, migrations
    _READY.add(uri)
    return client


def _retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call `fn`, retrying with backoff while SQLite says "database is locked".

    SQLite allows one writer at a time; under many concurrent writers its busy timeout
    can run out. A failed write is rolled back, so retrying it never logs twice.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class _RetryLocked:
    """An MlflowClient whose every call is retried while SQLite says "database is locked"."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _retry_locked(attr, *args, **kwargs)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating it once (artifacts beside a SQLite store, not in the cwd)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)  # another process created it first
        if exp is None:
            raise
        return exp.experiment_id


@dataclass
class Resumable:
    """A study run that can be continued: its parent run and, per arm, its run and last finished generation."""

    parent_id: str
    status: str
    arm_runs: dict[str, str] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # arm -> last finished generation (-1: none)


def find_resumable(uri: str, experiment: str, study: str) -> tuple[Resumable | None, str | None]:
    """The latest run of `study` in `experiment`, with its spec hash; (None, None) when there is none."""
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
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    for run in children:
        arm = run.data.tags.get("synthdata.arm", run.info.run_name)
        found.arm_runs[arm] = run.info.run_id
        history = client.get_metric_history(run.info.run_id, DONE_METRIC)
        found.done[arm] = int(max((m.step for m in history), default=-1))
    return found, parent.data.tags.get("synthdata.spec_hash")


def download_samples(uri: str, run_id: str, generation: int) -> ImageSet:
    """The samples a finished generation kept as its checkpoint."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{checkpoint_dir(generation)}/samples.safetensors", dst_path=tmp, tracking_uri=uri
        )
        return load_samples(Path(path))


class StudyTracker:
    """Writes one study's runs. Create it in the driver, after the spec and data are validated."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        study: str,
        params: dict[str, str],
        tags: dict[str, str] | None = None,
        resume: Resumable | None = None,
    ) -> None:
        self.uri = uri
        self.client = mlflow_client(uri)
        self.experiment_id = get_or_create_experiment(uri, experiment)
        self.study = study
        self.params = params
        self.arm_runs: dict[str, str] = {}
        self.flush_every_s = 2.0
        self._pending: dict[str, list] = {}
        self._pending_since: dict[str, float] = {}  # when each arm's oldest unwritten metric was buffered
        self._flushed: dict[str, float] = {}
        if resume is not None:  # continue the same runs, so each metric keeps one value per generation
            self.parent_id = resume.parent_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for arm, run_id in resume.arm_runs.items():
                self.arm_runs[arm] = run_id
                self.client.update_run(run_id, status="RUNNING")
            return
        base_tags = {"synthdata.study": study, "synthdata.role": "study", **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=study, tags=base_tags)
        self.parent_id = run.info.run_id
        self._log_params(self.parent_id, params)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def start_arm(self, arm: str, params: dict[str, str]) -> str:
        """A child run named after the arm (`replace/seed0`), with the study's params plus the arm's."""
        if arm in self.arm_runs:  # resumed
            return self.arm_runs[arm]
        run = self.client.create_run(
            self.experiment_id,
            run_name=arm,
            tags={"mlflow.parentRunId": self.parent_id, "synthdata.study": self.study, "synthdata.role": "arm", "synthdata.arm": arm},
        )
        self._log_params(run.info.run_id, {**self.params, **params})
        self.arm_runs[arm] = run.info.run_id
        return run.info.run_id

    def log_generation(
        self,
        arm: str,
        generation: int,
        metrics: dict[str, float],
        grid: np.ndarray | None = None,
        samples: ImageSet | None = None,
        generator_state: dict[str, torch.Tensor] | None = None,
        keep_samples: bool = True,
    ) -> None:
        """Artifacts first (sample grid, checkpoint), then all metrics at step=generation in one batch.

        The batch carries `generation_done` as well, so a generation counts as finished
        exactly when its metrics are in: a study killed half-way through a generation
        left no metric of it, and a resume redoes it without logging anything twice.
        """
        from mlflow.entities import Metric

        run_id = self.arm_runs[arm]
        if grid is not None:
            self.client.log_image(run_id, grid, artifact_file=f"samples/generation_{generation:03d}.png")
        samples = samples if keep_samples else None
        if samples is not None or generator_state is not None:
            with tempfile.TemporaryDirectory() as tmp:
                if samples is not None:
                    save_samples(samples, Path(tmp) / "samples.safetensors")
                if generator_state is not None:
                    from safetensors.torch import save_file

                    save_file(generator_state, str(Path(tmp) / "generator.safetensors"))
                self.client.log_artifacts(run_id, tmp, artifact_path=checkpoint_dir(generation))
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, generation) for k, v in metrics.items() if np.isfinite(v)]
        items.append(Metric(DONE_METRIC, float(generation), ts, generation))
        self._pending.setdefault(arm, []).extend(items)
        self._pending_since.setdefault(arm, time.monotonic())
        if time.monotonic() - self._flushed.get(arm, 0.0) >= self.flush_every_s:
            self.flush(arm)

    def log_metrics(self, arm: str, metrics: dict[str, float], step: int = 0) -> None:
        """Metrics of a run that has one set of them (a detect study's cell), in one batch."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(self.arm_runs[arm], metrics=items)

    def flush(self, arm: str | None = None) -> None:
        """Write buffered metrics (all arms when `arm` is None), each arm's in as few batches as MLflow allows.

        Fast generations (toy loops) are buffered for up to `flush_every_s` so that
        thousands of generations cost a few writes; slow ones are written at once.
        """
        for name in [arm] if arm is not None else list(self._pending):
            items = self._pending.pop(name, [])
            self._pending_since.pop(name, None)
            for i in range(0, len(items), 1000):  # MLflow's log_batch limit
                self.client.log_batch(self.arm_runs[name], metrics=items[i : i + 1000])
            self._flushed[name] = time.monotonic()

    def flush_due(self) -> None:
        """Write the buffer of every arm whose oldest unwritten metric has waited `flush_every_s`.

        Called by the driver on each turn of its loop: a finished generation reaches MLflow
        within about that time even when nothing else of its arm follows soon.
        """
        now = time.monotonic()
        for name, since in list(self._pending_since.items()):
            if now - since >= self.flush_every_s:
                self.flush(name)

    def note_retry(self, arm: str, count: int, reason: str) -> None:
        """Record on the arm's run that its worker was lost and the arm restarted."""
        self.flush(arm)
        run_id = self.arm_runs[arm]
        self.client.set_tag(run_id, "synthdata.retries", str(count))
        self.client.set_tag(run_id, "synthdata.last_retry_reason", reason[:5000])

    def tag_arm(self, arm: str, key: str, value: str) -> None:
        """A tag on the arm's run (how it ran, e.g. which generations it shared with other arms)."""
        self.client.set_tag(self.arm_runs[arm], key, value[:5000])

    def save_results(self, out_dir: Path, table, text: str) -> None:
        """The study's table as `results.txt` (what was printed) and `results.csv`, in `out_dir` and on the study run."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.txt").write_text(text + "\n")
        table.to_csv(out_dir / "results.csv", index=False)
        self.log_table("results.txt", text)
        self.log_table("results.csv", table.to_csv(index=False))

    def log_table(self, name: str, text: str) -> None:
        self.client.log_text(self.parent_id, text, name)

    def log_figures(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.parent_id, str(path), artifact_path="figures")

    def end_arm(self, arm: str, status: str = "FINISHED", reason: str | None = None) -> None:
        self.flush(arm)
        run_id = self.arm_runs[arm]
        if reason:
            self.client.set_tag(run_id, "synthdata.failure", reason[:5000])
        self.client.set_terminated(run_id, status)

    def end(self, status: str = "FINISHED") -> None:
        """End the study run and any arm run still open (a study never leaves a run RUNNING)."""
        self.flush()
        for arm, run_id in self.arm_runs.items():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED" if status != "FINISHED" else status)
        self.client.set_terminated(self.parent_id, status)


def sample_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """A uint8 HxWxC grid of images in [-1, 1], upscaled so small images stay visible."""
    from torchvision.utils import make_grid

    scale = max(1, 32 // images.shape[-1])
    x = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    return (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
