"""MLflow tracking: one experiment per study, a parent run per study, a child run per arm.

The study driver is the only process that writes to MLflow: arms stream their results
back through Ray and the driver logs them. One writer means no "database is locked"
on a local SQLite store and exactly one value per metric and generation.
"""
from __future__ import annotations

import time
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.

    A relative SQLite path is made absolute so that Ray workers and the UI agree on it.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating it once (artifacts beside a SQLite store, not in the cwd)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


class StudyTracker:
    """Writes one study's runs. Create it in the driver, after the spec and data are validated."""

    def __init__(self, uri: str, experiment: str, study: str, params: dict[str, str], tags: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.client = _client(uri)
        self.experiment_id = get_or_create_experiment(uri, experiment)
        base_tags = {"synthdata.study": study, "synthdata.role": "study", **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=study, tags=base_tags)
        self.parent_id = run.info.run_id
        self.study = study
        self.params = params
        self._log_params(self.parent_id, params)
        self.arm_runs: dict[str, str] = {}

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def start_arm(self, arm: str, params: dict[str, str]) -> str:
        """A child run named after the arm (`replace/seed0`), with the study's params plus the arm's."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=arm,
            tags={"mlflow.parentRunId": self.parent_id, "synthdata.study": self.study, "synthdata.role": "arm", "synthdata.arm": arm},
        )
        self._log_params(run.info.run_id, {**self.params, **params})
        self.arm_runs[arm] = run.info.run_id
        return run.info.run_id

    def log_generation(self, arm: str, generation: int, metrics: dict[str, float], grid: np.ndarray | None = None) -> None:
        """Metrics at step=generation, and the sample grid as `samples/generation_XXX.png`."""
        from mlflow.entities import Metric

        run_id = self.arm_runs[arm]
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, generation) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(run_id, metrics=items)
        if grid is not None:
            self.client.log_image(run_id, grid, artifact_file=f"samples/generation_{generation:03d}.png")

    def log_table(self, name: str, text: str) -> None:
        self.client.log_text(self.parent_id, text, name)

    def end_arm(self, arm: str, status: str = "FINISHED", reason: str | None = None) -> None:
        run_id = self.arm_runs[arm]
        if reason:
            self.client.set_tag(run_id, "synthdata.failure", reason[:5000])
        self.client.set_terminated(run_id, status)

    def end(self, status: str = "FINISHED") -> None:
        """End the study run and any arm run still open (a study never leaves a run RUNNING)."""
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
