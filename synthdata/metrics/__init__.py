"""Metrics of generated data: detectability (a classifier two-sample test) and downstream accuracy."""
