"""synthdata: study synthetic data (detectability, autophagy loops, real/synthetic mixes).

The library has no orchestration: runners in `loops/` drive it through Ray, and
`synthdata.tracking` writes what they produce to MLflow. `synthdata.run`,
`synthdata.detectability` and `synthdata.pretrain` (the Python API, `synthdata.api`) are the
notebook's entry points.
"""
from synthdata.version import __version__

__all__ = ["__version__", "detectability", "pretrain", "run"]


def __getattr__(name: str):
    """`synthdata.run`, `.detectability` and `.pretrain` (synthdata.api), imported on first use: the CLI starts quickly."""
    if name in ("detectability", "pretrain", "run"):
        from synthdata import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthdata' has no attribute {name!r}")
