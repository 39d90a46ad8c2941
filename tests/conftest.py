"""Shared fixtures: a temporary MLflow store and a real local Ray (helpers.py has the tiny study)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if "SYNTHDATA_CACHE" not in os.environ:  # reference statistics: this test process's own, never the user's ~/.cache
    import tempfile

    os.environ["SYNTHDATA_CACHE"] = tempfile.mkdtemp(prefix="synthdata-cache-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes on two cores: one intra-op thread each (two 2-thread OpenMP pools spin against each other).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """Every test leaves Ctrl-C's handler and the stop record as it found them: a test that changes them changes what
    later tests in its worker see (a stop test once failed at random, in a random order, on Ctrl-C's handler). A test
    that leaves them changed fails here, naming itself, and they are put back. (SIGTERM's is Ray's once a Ray starts
    in the process, as in a user's; a study sets its own while it runs.)"""
    import signal

    from loops.stopping import STOPS, clear_stops

    before = signal.getsignal(signal.SIGINT)
    yield
    after, stops = signal.getsignal(signal.SIGINT), list(STOPS)
    if before is not None:
        signal.signal(signal.SIGINT, before)
    clear_stops()
    assert after is before and not stops, f"the test left Ctrl-C's handler {after!r} (was {before!r}) or stops {stops} behind"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made, once: a new store runs every schema migration (0.6 s and more)."""
    from synthdata.tracking import mlflow_client

    path = tmp_path_factory.mktemp("store") / "empty.db"
    mlflow_client(f"sqlite:///{path}")
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, empty_store: Path) -> str:
    """A test's own MLflow store: a copy of the empty one (what a new store holds once opened, made in milliseconds).
    Tests about creating a store (a refused study leaves none) name their own path instead."""
    import shutil

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray for the whole session, two CPUs, no dashboard."""
    import ray

    # Its workers (for this process and for the drivers tests start on it with --address) import the tests' own
    # plug-ins (slow_generator, helpers) as a user's installed ones: a raylet's workers start from its environment.
    # (Set while Ray starts, then put back: this process's other subprocesses keep the environment they had.)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), before]))
    try:
        # "local": a new Ray of its own, never one that `ray start` (the cluster tests) left on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    yield ray
    ray.shutdown()
