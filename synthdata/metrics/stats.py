"""Binomial statistics shared by the metrics: exact intervals and tests for an accuracy."""
from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its exact (Clopper-Pearson) 95% interval."""

    value: float
    ci_low: float
    ci_high: float
    correct: int
    total: int

    def as_metrics(self, name: str) -> dict[str, float]:
        """Flat MLflow metric names: `name`, `name_ci_low`, `name_ci_high`."""
        return {name: self.value, f"{name}_ci_low": self.ci_low, f"{name}_ci_high": self.ci_high}


def accuracy_with_ci(correct: int, total: int, confidence: float = 0.95) -> Accuracy:
    """Accuracy `correct/total` with an exact binomial interval."""
    ci = binomtest(correct, total).proportion_ci(confidence_level=confidence, method="exact")
    return Accuracy(correct / total, float(ci.low), float(ci.high), correct, total)


def p_value_above_chance(correct: int, total: int, chance: float = 0.5) -> float:
    """One-sided exact binomial p-value for accuracy > chance (the C2ST test of Lopez-Paz & Oquab)."""
    return float(binomtest(correct, total, chance, alternative="greater").pvalue)
