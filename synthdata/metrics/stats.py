"""The statistics every table reports, each a standard test or interval from scipy.stats.

- One detector or classifier: an accuracy with its exact (Clopper-Pearson) interval and the
  one-sided binomial test against chance (`accuracy_with_ci`, `p_value_above_chance`); the
  AUC with DeLong's interval and its own test, Mann-Whitney's U (`auc_with_ci`, `rank_test_p`).
- Several seeds of one cell: the mean with a t interval for the mean (`mean_interval`), and
  one p-value for the cell (`combine_p_values`: a rule valid whatever the dependence between
  the seeds, since they share real data).
- Paired designs (two arms of one seed share real data and test set): the paired
  difference over seeds with its t interval and test (`paired_difference`), and per seed
  McNemar's exact test on the two classifiers' decisions on the shared test set (`mcnemar_p`);
  with one seed, a difference's interval from the two estimates' own (`mover_difference`).
- Many cells in one study: Benjamini-Hochberg q-values (`q_values`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


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
    ci = stats.binomtest(correct, total).proportion_ci(confidence_level=confidence, method="exact")
    return Accuracy(correct / total, float(ci.low), float(ci.high), correct, total)


def p_value_above_chance(correct: int, total: int, chance: float = 0.5) -> float:
    """One-sided exact binomial p-value for accuracy > chance (the C2ST test of Lopez-Paz & Oquab)."""
    return float(stats.binomtest(correct, total, chance, alternative="greater").pvalue)


def auc_with_ci(scores_positive: np.ndarray, scores_negative: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """ROC-AUC (P(score of a positive > score of a negative), ties count half) with DeLong's interval.

    DeLong et al. (1988): the AUC is a two-sample U-statistic; its variance is estimated from
    each sample's structural components. The interval is Wald's, clipped to [0, 1].
    """
    x = np.asarray(scores_positive, dtype=np.float64)
    y = np.asarray(scores_negative, dtype=np.float64)
    m, n = len(x), len(y)
    # Midranks give each placement without an m x n matrix: V10_i = P(Y < x_i) + P(Y = x_i) / 2.
    ranks_all = stats.rankdata(np.concatenate([x, y]))
    v10 = (ranks_all[:m] - stats.rankdata(x)) / n
    v01 = 1.0 - (ranks_all[m:] - stats.rankdata(y)) / m
    auc = float(v10.mean())
    se = math.sqrt((v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0))
    z = stats.norm.ppf(0.5 + confidence / 2)
    return auc, float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))


def rank_test_p(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """One-sided Mann-Whitney p-value that positives score higher than negatives: the AUC's own test against 0.5."""
    return float(stats.mannwhitneyu(scores_positive, scores_negative, alternative="greater").pvalue)


def combine_p_values(p_values: np.ndarray | list[float]) -> float:
    """One p-value from the seeds' p-values of one cell, valid under any dependence between them.

    Rüschendorf (1982): with K p-values, K/r times the r-th smallest is a p-value whatever
    their joint law (by Markov's inequality on how many fall below a threshold). r = ceil(K/2)
    takes the median: at most twice the median p. Seeds of a study share the real data, so a
    rule that assumes independence (Fisher's) would not be valid here.
    """
    p = np.sort(np.asarray(p_values, dtype=np.float64))
    p = p[~np.isnan(p)]
    if not len(p):
        return float("nan")
    k = len(p)
    r = math.ceil(k / 2)
    return float(min(1.0, k / r * p[r - 1]))


def q_values(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): reject where q <= alpha to keep the FDR at alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


@dataclass(frozen=True)
class Interval:
    """An estimate with a 95% interval; `p` is its test against zero where one applies (nan otherwise)."""

    value: float
    low: float
    high: float
    n: int
    p: float = float("nan")

    def text(self, fmt: str = ".3f", signed: bool = False) -> str:
        """`0.912 [0.890, 0.934]`; a value without an interval (one seed's mean) alone."""
        sign = "+" if signed else ""
        if math.isnan(self.value):
            return ""
        if math.isnan(self.low):
            return f"{self.value:{sign}{fmt}}"
        return f"{self.value:{sign}{fmt}} [{self.low:{sign}{fmt}}, {self.high:{sign}{fmt}}]"


def mean_interval(values: np.ndarray | list[float], confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> Interval:
    """The mean over seeds with Student's t interval for that mean (no interval from one seed), clipped to
    `bounds` where the quantity has them (an accuracy or an AUC lies in [0, 1])."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return Interval(mean, low, high, n)


def paired_difference(a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95) -> Interval:
    """Mean of a - b over pairs (seeds) with its t interval and the paired t-test's two-sided p-value."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[~np.isnan(d)]
    est = mean_interval(d, confidence)
    if est.n < 2:
        return est
    if np.ptp(d) <= 1e-12 * max(1.0, abs(est.value)):  # no spread: the t statistic is undefined
        return Interval(est.value, est.value, est.value, est.n, 0.0 if est.value != 0 else 1.0)
    return Interval(est.value, est.low, est.high, est.n, float(stats.ttest_1samp(d, 0.0).pvalue))


def mover_difference(a: float, a_low: float, a_high: float, b: float, b_low: float, b_high: float) -> Interval:
    """a - b with a 95% interval built from each estimate's own 95% interval (MOVER; Newcombe 1998, Zou & Donner 2008).

    For one seed, where there is no spread over seeds to use. It treats a and b as
    independent, which is conservative when they share test images (positively correlated).
    """
    d = a - b
    return Interval(d, d - math.hypot(a - a_low, b_high - b), d + math.hypot(a_high - a, b - b_low), 1)


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact two-sided test that two classifiers are equally accurate on the same test images.

    Only the discordant images count: under the null each is as likely to favour a as b.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def pack_decisions(correct: np.ndarray) -> str:
    """A classifier's right/wrong on each test image as hex bits: what McNemar's test pairs across arms."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_decisions(packed: str, n: int) -> np.ndarray:
    """`pack_decisions` undone: n booleans, in test-set order."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))[:n].astype(bool)
