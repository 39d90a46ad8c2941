"""synthdata: study synthetic data (detectability, autophagy loops, real/synthetic mixes).

The library has no orchestration: runners in `loops/` drive it through Ray, and
`synthdata.tracking` writes what they produce to MLflow.
"""
__version__ = "0.1.0"

__all__ = ["detectability", "run"]


def __getattr__(name: str):
    """`synthdata.run` and `synthdata.detectability` (synthdata.api), imported on first use: the CLI stays quick to start."""
    if name in __all__:
        from synthdata import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthdata' has no attribute {name!r}")
