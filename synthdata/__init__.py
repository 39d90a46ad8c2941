"""synthdata: study synthetic data (detectability, autophagy loops, real/synthetic mixes).

The library has no orchestration: runners in `loops/` drive it through Ray, and
`synthdata.tracking` writes what they produce to MLflow.
"""
__version__ = "0.1.0"
