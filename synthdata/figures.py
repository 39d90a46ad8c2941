"""Figures from a study's tables (seaborn, written as PNG).

Loop studies: one figure per metric, the metric against generation, one line per loop
type (or arm group), a band over seeds. Mix studies: accuracy against the synthetic
ratio, a line per mode. They take the tables the runners build, or ones rebuilt from MLflow.
Also the sample grids every study logs.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from synthdata.metrics.registry import METRIC, UNIT, figure_metrics

if TYPE_CHECKING:
    import numpy as np
    import torch


def _pyplot():
    """pyplot (file output only) and seaborn with the project's theme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _save(fig, path: Path) -> Path:
    """Lay out, write as PNG and close: every figure of the project is written the same way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_figures(table: pd.DataFrame, out_dir: str | Path, group: str = "group", title: str = "") -> list[Path]:
    """Write `<metric>.png` for every known metric in `table`; return the paths.

    `table` needs columns `generation`, `group` (the line: loop type, plus any swept
    value) and one column per metric; rows of the same group and generation from
    different seeds make the band (the mean with a 95% t interval within the metric's range; the median and IQR
    on a log axis).
    The y axis names the metric; the title says the rest (feature space, what the band is).
    """
    plt, sns = _pyplot()
    out_dir = Path(out_dir)
    paths = []
    table = table.copy()
    # Colour by loop type, line style by swept value ("replace temperature=0.9" -> "temperature=0.9").
    hue = "loop_type" if "loop_type" in table else group
    table["swept"] = table[group].astype(str).str.partition(" ")[2] if hue == "loop_type" else ""
    style = "swept" if table["swept"].nunique() > 1 else None
    short = table["generation"].max() <= 20
    for info in figure_metrics():
        metric, label = info.name, info.label
        if metric not in table or table[metric].notna().sum() == 0:
            continue
        data = table[["generation", hue, "swept", metric]].dropna(subset=[metric])
        positive = data[metric][data[metric] > 0]
        # Collapse is exponential: show it on a log axis, with a band that stays positive there.
        log = bool(len(positive)) and (data[metric] >= 0).all() and positive.min() < 1e-2 * positive.max()
        fig, ax = plt.subplots(figsize=(7.6, 4.2))
        sns.lineplot(data=data, x="generation", y=metric, hue=hue, style=style, marker="o" if short else None,
                     estimator="median" if log else "mean", errorbar=("pi", 50) if log else partial(t_interval, bounds=info.bounds),
                     ax=ax)
        if metric == "detectability":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_ylabel(label.split(" (")[0])  # the long label would not fit beside the axis
        if log:
            ax.set_yscale("log")
            label += "\n(median, IQR over seeds)"
        elif "seed" in table and table["seed"].nunique() > 1:
            label += "\n(mean, 95% t interval over seeds)"
        ax.set_title(f"{title}: {label}" if title else label, fontsize=11)
        if short:
            ax.set_xticks(sorted(data["generation"].unique()))
        ax.legend(title=None, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        paths.append(_save(fig, out_dir / f"{metric}.png"))
    return paths


def t_interval(values, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """seaborn's error bar: a 95% t interval for the mean over seeds (none from one seed), not a spread, clipped
    to `bounds` (the metric's range: a distance's band never reaches below 0)."""
    from synthdata.metrics.stats import mean_interval

    est = mean_interval(values, bounds=bounds)
    return (est.value, est.value) if est.n < 2 else (est.low, est.high)


unit_interval = partial(t_interval, bounds=UNIT)  # accuracies' error bars


def mix_figure(table: pd.DataFrame, path: Path, title: str, metric: str = "downstream_accuracy") -> Path:
    """Downstream accuracy against the synthetic ratio r, a line per mode: the mean over seeds with its 95% t interval."""
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    data = table[table[metric].notna()]
    sns.lineplot(data=data, x="ratio", y=metric, hue="mode", marker="o", errorbar=partial(t_interval, bounds=METRIC[metric].bounds),
                 err_style="bars", ax=ax)
    ax.set_xlabel("r  (augment: synthetic images added per real one; replace: share of real swapped)", fontsize=9)
    ax.set_ylabel("downstream accuracy (real test set)\nmean over seeds, 95% t interval", fontsize=9)
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def mix_difference_figure(differences: pd.DataFrame, path: Path, title: str) -> Path:
    """Each mode's accuracy minus real-only against r (`synthdata.results.differences_to_real_only`), paired by seed,
    with its 95% t interval: above the dashed zero, the synthetic images helped."""
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for (mode, g), color in zip(differences.groupby("mode", sort=True), sns.color_palette()):
        err = [(g["difference"] - g["low"]).fillna(0), (g["high"] - g["difference"]).fillna(0)]
        ax.errorbar(g["ratio"], g["difference"], yerr=err, marker="o", capsize=4, color=color, label=mode)
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("r  (augment: synthetic images added per real one; replace: share of real swapped)", fontsize=9)
    ax.set_ylabel("accuracy minus real-only (paired by seed)\nmean, 95% t interval", fontsize=9)
    ax.legend(frameon=False)
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def confusion_figure(counts, classes: list[str], path: Path, title: str = "") -> Path:
    """A multi-way detector's confusion matrix: rows the true source, each row normalised, counts in the cells."""
    import numpy as np

    plt, sns = _pyplot()
    counts = np.asarray(counts)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(share, annot=counts, fmt="d", cmap="Blues", vmin=0, vmax=1, xticklabels=classes, yticklabels=classes,
                cbar_kws={"label": "share of the row"}, ax=ax)
    ax.set_xlabel("predicted source")
    ax.set_ylabel("true source")
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def _seed_interval(g: pd.DataFrame) -> pd.Series:
    """One cell's detectability with a 95% interval: its own for one seed, a t interval of the mean for several."""
    from synthdata.metrics.stats import mean_interval

    if len(g) == 1:
        return g[["detectability", "detectability_ci_low", "detectability_ci_high"]].iloc[0]
    est = mean_interval(g["detectability"], bounds=UNIT)
    return pd.Series({"detectability": est.value, "detectability_ci_low": est.low, "detectability_ci_high": est.high})


def detect_figures(table: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[Path]:
    """The detect study's figures: accuracy per source, against sample size, per frequency band, per crop size."""
    plt, sns = _pyplot()
    out_dir = Path(out_dir)
    paths = []
    ylabel = "detectability (held-out accuracy)"

    def save(fig, ax, name: str, subtitle: str) -> None:
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {subtitle}" if title else subtitle, fontsize=11)
        paths.append(_save(fig, out_dir / name))

    pairs = table[table["analysis"].isin(["pair", "real_vs_real"])].copy()
    if not pairs.empty:
        pairs["against"] = pairs.apply(lambda r: "real (baseline)" if r["analysis"] == "real_vs_real" else r["source"], axis=1)
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * pairs["against"].nunique(), 4.2))
        means = pairs.groupby("against", sort=False).apply(_seed_interval, include_groups=False)
        ax.bar(means.index, means["detectability"], color=sns.color_palette()[: len(means)])
        ax.errorbar(means.index, means["detectability"], fmt="none", ecolor="black", capsize=4,
                    yerr=[means["detectability"] - means["detectability_ci_low"], means["detectability_ci_high"] - means["detectability"]])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("real against")
        save(fig, ax, "detectability_by_source.png", "real vs each source (95% interval; several seeds: of the mean)")
    for analysis, name, xlabel, subtitle in (("size", "detectability_vs_sample_size.png", "training images per class", "against sample size"),
                                             ("crop", "detectability_vs_crop_size.png", "crop size (pixels)", "on random crops")):
        rows = table[table["analysis"] == analysis].copy()
        if rows.empty:
            continue
        rows["x"] = pd.to_numeric(rows["setting"].str.extract(r"([\d.]+)$")[0])
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        sns.lineplot(data=rows, x="x", y="detectability", hue="source", marker="o", errorbar=unit_interval, ax=ax)
        if analysis == "size":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        save(fig, ax, name, subtitle)
    bands = table[table["analysis"] == "band"]
    if not bands.empty:
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        sns.barplot(data=bands, x="setting", y="detectability", hue="source", errorbar=unit_interval, ax=ax)
        ax.set_xlabel("frequency band kept (radius as a fraction of Nyquist)")
        ax.set_ylim(0, 1.02)
        save(fig, ax, "detectability_by_band.png", "per frequency band")
    return paths


def guide_figures(table: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[Path]:
    """Each metric against the guidance scale (mean, 95% t interval over seeds), the real data's value dashed.

    The detectability figure shows the fresh detector and the guiding classifier side by
    side: guidance can fool the classifier it follows without fooling a new one.
    """
    plt, sns = _pyplot()
    out_dir = Path(out_dir)
    guided = table[table["scale"] != "real"].copy()
    guided["w"] = pd.to_numeric(guided["scale"])
    real = table[table["scale"] == "real"]
    paths = []
    for info in figure_metrics():
        metric, label = info.name, info.label
        if metric not in guided or guided[metric].notna().sum() == 0:
            continue
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        if metric == "detectability" and "guiding_detectability" in guided:
            both = guided.melt(id_vars=["w", "seed"], value_vars=["detectability", "guiding_detectability"], var_name="judge")
            both["judge"] = both["judge"].map({"detectability": "fresh detector (trained after sampling)",
                                               "guiding_detectability": "guiding classifier (last step)"})
            sns.lineplot(data=both, x="w", y="value", hue="judge", marker="o", errorbar=unit_interval, ax=ax)  # both accuracies
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
            if "detectability" in real and real["detectability"].notna().any():
                ax.axhline(real["detectability"].mean(), color="green", linestyle=":", linewidth=1, label="real vs real")
            ax.legend(fontsize=9, frameon=False)
        else:
            sns.lineplot(data=guided, x="w", y=metric, marker="o", errorbar=partial(t_interval, bounds=info.bounds), ax=ax)
        if metric in real and real[metric].notna().any() and metric != "detectability":
            ax.axhline(real[metric].mean(), color="green", linestyle="--", linewidth=1, label="real data")
            ax.legend(fontsize=9, frameon=False)
        ax.set_xlabel("guidance scale w (0: unguided)")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(guided["w"].unique()))
        ax.set_title(f"{title}: {label}" if title else label, fontsize=11)
        paths.append(_save(fig, out_dir / f"{metric}_vs_scale.png"))
    return paths


def sample_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """A uint8 HxWxC grid of images in [-1, 1], upscaled so small images stay visible."""
    import numpy as np
    import torch
    from torchvision.utils import make_grid

    scale = max(1, 32 // images.shape[-1])
    x = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    return (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
