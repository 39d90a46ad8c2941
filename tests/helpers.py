"""Helpers the tests share (fixtures live in conftest.py): a tiny study, the repo root, a PNG writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_study(**overrides) -> dict:
    """A study that runs in seconds: the toy Gaussian generator, short classifier training."""
    study = {
        "name": "tiny",
        "generator": {"name": "gaussian", "covariance": "diag"},
        "detector": {"epochs": 1, "batch_size": 64},  # one epoch: tests that need a trained classifier ask for more
        "downstream": {"epochs": 1, "batch_size": 64},
        "loop": {"types": ["replace", "augment"], "generations": 2, "samples_per_generation": 300},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict) and key != "generator":
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def ray_workers(title: str) -> list:
    """This process's local Ray's workers whose title starts with `title` (Ray titles a worker `ray::<task or actor
    method>`). Only descendants: a Ray another test process started (pytest-xdist) is not ours to kill."""
    import psutil

    def title_of(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    return [p for p in psutil.Process().children(recursive=True) if title_of(p).startswith(title)]


def load_blobs(n: int = 240, size: int = 8, classes: int = 3, channels_last: bool = True, seed: int = 0):
    """A user's own data loader (`data.source: helpers:load_blobs`): class k is a bright square at place k, uint8."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, k : k + 3, k : k + 3, :] = 230
    return (images if channels_last else images.transpose(0, 3, 1, 2)), labels


def failing_loader(**params):
    """A loader that cannot find its files."""
    raise FileNotFoundError("no such archive: /data/blobs.tar")


def tiny_mlp(in_channels: int, num_classes: int, image_size: int, hidden: int = 64):
    """A user's own classifier factory (`detector: {name: helpers:tiny_mlp, params: {hidden: 32}}`)."""
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def kill_a_worker_when(ready, title: str, running, timeout: float = 240, poll: float = 0.1) -> int | None:
    """SIGKILL the first Ray worker titled `title` once `ready()` holds, as a lost node would; its pid (None: never).

    Polls while `running()` (the study's thread is alive) for at most `timeout` seconds.
    """
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and running():
        if ready():
            workers = ray_workers(title)
            if workers:
                workers[0].kill()
                return workers[0].pid
        time.sleep(poll)
    return None
