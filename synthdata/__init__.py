"""synthdata: study synthetic data (detectability, autophagy loops, real/synthetic mixes).

The library has no orchestration: runners in `loops/` drive it through Ray, and
`synthdata.tracking` writes what they produce to MLflow. `synthdata.run` and
`synthdata.detectability` (the Python API, `synthdata.api`) are the notebook's entry points.
"""
from synthdata.version import __version__

__all__ = ["__version__", "detectability", "run"]


def __getattr__(name: str):
    """`synthdata.run` and `synthdata.detectability` (synthdata.api), imported on first use: the CLI stays quick to start."""
    if name in ("detectability", "run"):
        from synthdata import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthdata' has no attribute {name!r}")
