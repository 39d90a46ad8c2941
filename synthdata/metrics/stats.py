"""The statistics every table reports, each a standard test or interval from scipy.stats.

- One detector or classifier: an accuracy with its exact (Clopper-Pearson) interval and the
  one-sided binomial test against chance (`accuracy_with_ci`, `p_value_above_chance`); the
  AUC with DeLong's interval and its own test, Mann-Whitney's U (`auc_with_ci`, `rank_test_p`).
- Several seeds of one cell: the mean with a t interval for the mean (`mean_interval`), and
  one p-value for the cell (`combine_p_values`: a rule valid whatever the dependence between
  the seeds, since they share real data).
- Paired designs (two arms of one seed share real data and test set): the paired
  difference over seeds with its t interval and the paired t-test (`paired_difference`;
  where the seeds' differences are all equal, no interval and the exact sign-flip test,
  `sign_flip_p`: a zero spread over a few seeds is not certainty), and per seed
  McNemar's exact test on the two classifiers' decisions on the shared test set (`mcnemar_p`);
  with one seed, a difference's interval from the two estimates' own (`mover_difference`).
- Many cells in one study: Benjamini-Hochberg q-values (`q_values`).

Intervals are clipped to the range of what they estimate (`Interval.clip`; each metric's
range is in `synthdata.metrics.registry`), and `number` prints a value that rounds to 0 as
0, never -0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


def number(v: float, fmt: str = ".3f", signed: bool = False) -> str:
    """`v` in format `fmt` (with a sign when `signed`), never a negative zero: what rounds to 0 prints as 0."""
    sign = "+" if signed else ""
    text = f"{v:{sign}{fmt}}"
    zero = f"{0.0:{sign}{fmt}}"
    return zero if text.startswith("-") and text[1:] == zero.lstrip("+") else text


@dataclass(frozen=True)
class Interval:
    """An estimate with a 95% interval; `p` is its test against zero where one applies (nan otherwise)."""

    value: float
    low: float
    high: float
    n: int
    p: float = float("nan")

    def text(self, fmt: str = ".3f", signed: bool = False) -> str:
        """`0.912 [0.890, 0.934]`; a value without an interval (one seed's mean, a difference without spread) alone."""
        if math.isnan(self.value):
            return ""
        if math.isnan(self.low):
            return number(self.value, fmt, signed)
        return f"{number(self.value, fmt, signed)} [{number(self.low, fmt, signed)}, {number(self.high, fmt, signed)}]"

    def clip(self, bounds: tuple[float, float] | None) -> Interval:
        """The interval within `bounds` (where the estimated quantity lies); the estimate itself is left as it is."""
        if bounds is None or math.isnan(self.low):
            return self
        return replace(self, low=min(max(bounds[0], self.low), bounds[1]), high=max(min(bounds[1], self.high), bounds[0]))


def difference_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """Where a difference of two values within `bounds` lies: [lo - hi, hi - lo] (an accuracy's: [-1, 1])."""
    return None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])


def mean_interval(values: np.ndarray | list[float], confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> Interval:
    """The mean over seeds with Student's t interval for that mean (no interval from one seed), clipped to
    `bounds` where the quantity has them (an accuracy or an AUC lies in [0, 1], a distance in [0, inf))."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n).clip(bounds)


SIGN_FLIP_EXACT = 16  # up to this many seeds the sign-flip test enumerates every pattern (2^16 = 65,536)
SIGN_FLIP_DRAWS = 100_000  # beyond it, this many random patterns (a fixed stream: the same p every time)


def sign_flip_p(d: np.ndarray | list[float]) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test that differences over seeds are centred on 0.

    Under the null each seed's difference is as likely to have either sign (its two arms are
    exchangeable), so the p-value is the share of the 2^k sign patterns whose |mean| is at
    least the observed one: exact, without the t-test's normality, and honest with few seeds,
    where its smallest value is 2^(1-k) (k = 2: 0.5; k = 5: 0.0625). Up to `SIGN_FLIP_EXACT`
    seeds every pattern is enumerated; beyond, `SIGN_FLIP_DRAWS` random ones give (hits + 1) /
    (draws + 1). nan with fewer than two differences.
    """
    d = np.asarray(d, dtype=np.float64)
    d = d[~np.isnan(d)]
    k = len(d)
    if k < 2:
        return float("nan")
    observed = abs(d.sum())
    slack = 1e-12 * max(1.0, float(np.abs(d).sum()))  # equal sums in exact arithmetic count as equal
    if k <= SIGN_FLIP_EXACT:
        signs = 1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)
        return float((np.abs(signs @ d) >= observed - slack).mean())
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(SIGN_FLIP_DRAWS, k))
    return float(((np.abs(signs @ d) >= observed - slack).sum() + 1) / (SIGN_FLIP_DRAWS + 1))


def paired_difference(a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95,
                      bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of a - b over pairs (seeds) with its t interval and the paired t-test's two-sided p-value.

    Differences that are all equal have no spread: the t interval would have zero width and
    the t-test a p of 0, as if a few seeds were certainty; there is then no interval, and the
    p is the exact sign-flip test's (`sign_flip_p`), what the seeds can show: its floor,
    2^(1-k) with k <= 16 seeds (1 where every difference is 0). `bounds`: where a - b lies.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[~np.isnan(d)]
    est = mean_interval(d, confidence)
    if est.n < 2:
        return est
    if np.ptp(d) <= 1e-12 * max(1.0, abs(est.value)):  # no spread: the t statistic is undefined
        return Interval(est.value, float("nan"), float("nan"), est.n, sign_flip_p(d))
    return Interval(est.value, est.low, est.high, est.n, float(stats.ttest_1samp(d, 0.0).pvalue)).clip(bounds)


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
