"""Benchmarks (not tests): run as modules from the repository root, `python -m bench.run`, `python -m bench.study`."""
