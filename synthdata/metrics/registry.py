"""The one list of metric names: what each MLflow metric is called on a table, a figure and a progress line.

Tables, figures, progress lines, the report and bench all read it, so a metric is named
and formatted the same everywhere. `better` says which way is good for a generator's
samples ("higher", "lower", or None where neither is, like a fitted variance), and
`bounds` where its values lie ([0, 1] for accuracies, [0, inf) for distances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the MLflow metric name
    label: str  # an axis label: what it is, in words
    header: str  # a table's column header
    fmt: str  # format spec of a value
    better: str | None = None  # "higher" | "lower" | None
    interval: bool = False  # logged with `<name>_ci_low` / `<name>_ci_high` (a 95% interval)
    figure: bool = True  # worth a figure against generation / scale
    progress: bool = False  # shown on a progress line when a generation finishes
    # Where the values lie, (low, high), required of every metric: every interval of a table and band of a figure
    # is clipped to it (a distance's t interval over seeds never reaches below 0).
    bounds: tuple[float, float] = field(kw_only=True)


INF = float("inf")
UNIT = (0.0, 1.0)  # accuracies, probabilities and shares
NONNEGATIVE = (0.0, INF)  # distances, variances, densities, times
REAL = (-INF, INF)  # estimates that can fall below 0: the unbiased kernel distance (an MMD^2 estimate)
COLLAPSED = "collapsed_at_generation"  # a loop arm's generation whose fit became singular (its generator collapsed)
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("detectability", "detectability (held-out accuracy)", "detectability", ".3f", "lower", interval=True, progress=True, bounds=UNIT),
    MetricInfo("guiding_detectability", "guiding classifier's verdict (held-out accuracy)", "guiding clf's verdict", ".3f",
               "lower", figure=False, bounds=UNIT),
    MetricInfo("downstream_accuracy", "downstream accuracy (real test set)", "downstream acc", ".3f", "higher", interval=True,
               progress=True, bounds=UNIT),
    MetricInfo("detectability_jsd_lower_bound", "JSD lower bound (nats)", "JSD bound", ".3f", "lower", bounds=(0.0, math.log(2))),
    MetricInfo("fd", "Fréchet distance (features trained in the study; not FID)", "FD", ".2f", "lower", progress=True,
               bounds=NONNEGATIVE),
    MetricInfo("kd", "kernel distance (features trained in the study; not KID)", "KD", ".4f", "lower", bounds=REAL),
    MetricInfo("fid", "FID (Inception features)", "FID", ".2f", "lower", progress=True, bounds=NONNEGATIVE),
    MetricInfo("kid", "KID (Inception features)", "KID", ".4f", "lower", bounds=REAL),
    MetricInfo("precision", "precision", "prec", ".2f", "higher", bounds=UNIT),
    MetricInfo("recall", "recall", "rec", ".2f", "higher", bounds=UNIT),
    MetricInfo("density", "density", "density", ".2f", "higher", bounds=NONNEGATIVE),
    MetricInfo("coverage", "coverage", "cov", ".2f", "higher", bounds=UNIT),
    MetricInfo("diversity", "diversity (per-class spread / real)", "diversity", ".2f", "higher", bounds=NONNEGATIVE),
    MetricInfo("fitted_variance", "fitted variance", "fitted var", ".4f", progress=True, bounds=NONNEGATIVE),
    MetricInfo("fitted_mean_error", "|fitted mean - true mean|", "mean error", ".3f", "lower", bounds=NONNEGATIVE),
    MetricInfo("w2_to_truth", "W2 distance to the true distribution", "W2 to truth", ".3f", "lower", bounds=NONNEGATIVE),
    MetricInfo("time_fit_s", "generator training time (s)", "fit s", ".0f", figure=False, bounds=NONNEGATIVE),
    MetricInfo("time_sample_s", "sampling time (s)", "sample s", ".0f", figure=False, bounds=NONNEGATIVE),
    MetricInfo(COLLAPSED, "generation at which the generator collapsed (its fit singular)", "collapsed at", ".0f",
               figure=False, bounds=(1.0, INF)),
)
METRIC = {m.name: m for m in METRICS}


def figure_metrics() -> list[MetricInfo]:
    """The metrics worth a figure, in the order a reader wants them."""
    return [m for m in METRICS if m.figure]


def progress_metrics() -> list[str]:
    """The metric names a progress line shows when a generation finishes."""
    return [m.name for m in METRICS if m.progress]
