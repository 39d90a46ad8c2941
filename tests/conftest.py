"""Shared fixtures: tiny study specs, a temporary MLflow store, a real local Ray."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]


def tiny_study(**overrides) -> dict:
    """A study that runs in seconds: the toy Gaussian generator, short classifier training."""
    study = {
        "name": "tiny",
        "generator": {"name": "gaussian", "covariance": "diag"},
        "detector": {"epochs": 3, "batch_size": 64},
        "downstream": {"epochs": 3, "batch_size": 64},
        "loop": {"types": ["replace", "augment"], "generations": 2, "samples_per_generation": 300},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict) and key != "generator":
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray for the whole session, two CPUs, no dashboard."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
