"""A user's toy generator whose fit takes at least `seconds` (`generator: {name: slow_generator:SlowGaussian}`): a
study of it runs long enough, on any machine, to be killed part-way (tests/test_checkpoints.py)."""
from __future__ import annotations

import time

from synthdata.generators.gaussian import GaussianGenerator
from synthdata.spec.generators import GaussianSpec


class SlowGaussian(GaussianGenerator):
    """The built-in diagonal Gaussian, sleeping `seconds` before each fit."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, device: str = "cpu", seconds: float = 0.3) -> None:
        super().__init__(GaussianSpec(covariance="diag"), shape, num_classes, device)
        self.seconds = seconds

    def fit(self, data, *, seed: int, progress=None) -> dict[str, float]:
        time.sleep(self.seconds)
        return super().fit(data, seed=seed, progress=progress)
