"""A study's results as tables: rows collected while it runs, or read back from MLflow (`synthdata.runs`), and their text forms.

A loop study's table has one row per (arm, generation); a mix, detect or guide study's
has one row per arm. The runners print and save these; `synthdata report` rebuilds them
from MLflow. Names, headers and formats of metrics come from `synthdata.metrics.registry`.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from synthdata.metrics.registry import METRIC

DONE_METRIC = "generation_done"  # a loop arm's commit marker per generation (see synthdata.tracking), not a result
# What each table shows, in reading order (headers and formats from the registry).
LOOP_COLUMNS = ("detectability", "downstream_accuracy", "detectability_jsd_lower_bound", "fid", "precision", "recall",
                "coverage", "diversity", "fitted_variance", "w2_to_truth", "time_fit_s")
GUIDE_COLUMNS = ("detectability", "guiding_detectability", "downstream_accuracy", "fid", "precision", "recall", "diversity",
                 "time_sample_s")
Arms = list[tuple[str, dict[str, str], dict[str, float]]]  # (run name, params, metrics) of each arm


def _value(v: float, name: str, ci: tuple[float, float] | None = None) -> str:
    """A metric's value in its registry format, with its interval when given."""
    fmt = METRIC[name].fmt
    return f"{v:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci is not None else "")


def results_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of (arm, generation), one per generation, sorted for reading."""
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).drop(columns=[DONE_METRIC], errors="ignore")
    return table.drop_duplicates(["arm", "generation"], keep="last").sort_values(["arm", "generation"]).reset_index(drop=True)


def format_table(table: pd.DataFrame, max_rows: int = 60) -> str:
    """arm x generation x metric, with 95% intervals beside the accuracies.

    Larger studies (many seeds or generations) print `summary_table` instead; the CSV
    written beside the figures has every row.
    """
    if len(table) > max_rows:
        return summary_table(table)
    return loop_display(table).to_string(index=False)


def loop_display(table: pd.DataFrame) -> pd.DataFrame:
    """The loop table as text columns for reading: intervals beside accuracies, a few digits per metric."""
    out = pd.DataFrame({"arm": table["arm"], "gen": table["generation"]})

    for col in LOOP_COLUMNS:
        if col not in table:
            continue
        info = METRIC[col]
        if info.interval:
            out[f"{info.header} (95% CI)"] = table.apply(
                lambda r: _value(r[col], col, (r[col + "_ci_low"], r[col + "_ci_high"])) if pd.notna(r.get(col)) else "", axis=1)
        else:
            out[info.header] = table[col].map(lambda v: "" if pd.isna(v) else _value(v, col))
    return out


def summary_table(table: pd.DataFrame, points: int = 5) -> str:
    """`loop_summary` as text, with a note on what its cells are."""
    return loop_summary(table, points).to_string(index=False) + "\n(mean ± sd over seeds; every generation and arm is in results.csv)"


def loop_summary(table: pd.DataFrame, points: int = 5) -> pd.DataFrame:
    """One row per line of the study (loop type + swept values) at a few generations: mean ± sd over seeds."""
    last = int(table["generation"].max())
    shown = sorted({0, 1, *(round(last * i / (points - 1)) for i in range(1, points))})
    metrics = [c for c in LOOP_COLUMNS if c in table and c != "time_fit_s"]
    rows = table[table["generation"].isin(shown)].dropna(how="all", subset=metrics)
    grouped = rows.groupby(["group", "generation"])
    out = grouped.size().rename("seeds").reset_index()
    for col in metrics:
        fmt = METRIC[col].fmt
        mean, sd = grouped[col].mean().values, grouped[col].std().fillna(0).values
        out[METRIC[col].header] = [("" if pd.isna(m) else f"{m:{fmt}} ± {d:{fmt}}") for m, d in zip(mean, sd)]
    return out.rename(columns={"generation": "gen"})


MIX_METRIC = "downstream_accuracy"  # what a mix arm reports every epoch, on the real test set


def mix_table(rows: list[dict]) -> pd.DataFrame:
    """One row per arm of a mix study (`synthdata.runs.mix_rows`), sorted by mode, ratio and seed."""
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["mode", "ratio", "seed"]).reset_index(drop=True)


def format_mix_table(table: pd.DataFrame) -> str:
    """`mix_summary` as text, with a note on what its cells are."""
    return mix_summary(table).to_string(index=False) + "\n(mean ± sd over seeds; each arm's own interval averaged in 'mean 95% CI')"


def mix_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per mode and ratio: mean ± sd over seeds, and the arms' own 95% intervals averaged."""
    done = table[table[MIX_METRIC].notna()]
    grouped = done.groupby(["mode", "ratio"])
    out = grouped.agg(seeds=("seed", "nunique"), n_real=("n_real", "first"), n_synthetic=("n_synthetic", "first")).reset_index()
    mean, sd = grouped[MIX_METRIC].mean().values, grouped[MIX_METRIC].std().fillna(0).values
    lo, hi = grouped[f"{MIX_METRIC}_ci_low"].mean().values, grouped[f"{MIX_METRIC}_ci_high"].mean().values
    out[METRIC[MIX_METRIC].header] = [f"{m:.3f} ± {d:.3f}" for m, d in zip(mean, sd)]
    out["mean 95% CI"] = [f"[{a:.3f}, {b:.3f}]" for a, b in zip(lo, hi)]
    return out.astype({"n_real": int, "n_synthetic": int})


ANALYSES = ("real_vs_real", "pair", "multiway", "size", "band", "crop")  # reading order of a detect table


def detect_table(arms: Arms) -> pd.DataFrame:
    """One row per detector (arm) of a detect study, from (run name, params, metrics) triples."""
    rows = []
    for name, p, metrics in arms:
        rows.append({"arm": name, "analysis": p.get("analysis", ""), "source": p.get("source", "-"),
                     "setting": p.get("setting", "-"), "seed": int(p.get("seed", 0)), **metrics})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["_order"] = table["analysis"].map({a: i for i, a in enumerate(ANALYSES)})
    # Settings sort by their number where they have one (n=50 before n=400, size=4 before size=8).
    table["_num"] = pd.to_numeric(table["setting"].str.extract(r"([\d.]+)$")[0], errors="coerce")
    table.loc[table["setting"] == "low", "_num"] = -1.0  # bands: low, then a-b by a, then high
    table.loc[table["setting"] == "high", "_num"] = float("inf")
    mid = (table["analysis"] == "band") & ~table["setting"].isin(["low", "high"])
    table.loc[mid, "_num"] = pd.to_numeric(table.loc[mid, "setting"].str.split("-").str[0], errors="coerce")
    table = table.sort_values(["_order", "source", "_num", "setting", "seed"]).drop(columns=["_order", "_num"])
    return table.reset_index(drop=True)


def real_vs_real_warning(table: pd.DataFrame) -> str | None:
    """A warning when a real-vs-real detector is not at chance: its 95% interval excludes 0.5."""
    rows = table[table["analysis"] == "real_vs_real"]
    for _, r in rows.iterrows():
        if r["detectability_ci_low"] > 0.5 or r["detectability_ci_high"] < 0.5:
            return (f"real-vs-real detectability {r['detectability']:.3f} [{r['detectability_ci_low']:.3f}, "
                    f"{r['detectability_ci_high']:.3f}] (seed {r['seed']}) excludes 0.5: the detector tells two halves of "
                    "the real data apart. Look for leakage, a biased split or a format difference before trusting any "
                    "other figure of this study.")
    return None


def detect_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per analysis, source and setting: accuracy (with its 95% interval for one seed, else mean ± sd), p, AUC, JSD bound."""
    out = []
    for (analysis, source, setting), g in table.groupby(["analysis", "source", "setting"], sort=False):
        multi = analysis == "multiway"
        col = "multiway_accuracy" if multi else "detectability"
        acc = g[col]
        if len(g) == 1:
            text = f"{acc.iloc[0]:.3f} [{g[col + '_ci_low'].iloc[0]:.3f}, {g[col + '_ci_high'].iloc[0]:.3f}]"
        else:
            text = f"{acc.mean():.3f} ± {acc.std():.3f}"
        out.append({
            "analysis": analysis, "source": source, "setting": setting, "seeds": len(g), "accuracy": text,
            "chance": f"{g['chance'].iloc[0]:.3f}" if multi else "0.5",
            "p (vs chance)": "" if multi else f"{g['detectability_p_value'].median():.2g}",
            "AUC": "" if multi else f"{g['detectability_auc'].mean():.3f}",
            "JSD bound": "" if multi else f"{g['detectability_jsd_lower_bound'].mean():.3f}",
            "n/class": int(g["n_train_per_class"].iloc[0]),
        })
    return pd.DataFrame(out)


def format_detect_table(table: pd.DataFrame, warning: str | None = None) -> str:
    """`detect_summary` as text; the real-vs-real warning, if any, above it."""
    text = detect_summary(table).to_string(index=False)
    text += "\n(accuracy: held-out, 95% Clopper-Pearson interval for one seed, mean ± sd over seeds otherwise)"
    return f"WARNING: {warning}\n\n{text}" if warning else text


def guide_table(arms: Arms) -> pd.DataFrame:
    """One row per measured set (arm) of a guide study (the real reference, then each scale; by seed)."""
    if not arms:
        return pd.DataFrame()
    table = pd.DataFrame([{"arm": name, "scale": p.get("scale", ""), "seed": int(p.get("seed", 0)), "group": p.get("group", ""),
                           **metrics} for name, p, metrics in arms])
    table["_order"] = pd.to_numeric(table["scale"], errors="coerce").fillna(-1.0)  # real data first
    return table.sort_values(["_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def guide_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per scale (and the real reference): each metric as mean ± sd over seeds, or with its 95% interval for one seed.

    `Δ detectability` is the paired change against the unguided samples of the same seed
    (same generator, same noise): mean ± sd of the per-seed differences.
    """
    out = []
    unguided = table[table["scale"] == "0"].set_index("seed")
    for scale, g in table.groupby("scale", sort=False):
        row: dict[str, Any] = {"sampling": "real data" if scale == "real" else ("unguided" if float(scale) == 0 else f"w = {scale}"),
                               "seeds": len(g)}
        for col in GUIDE_COLUMNS:
            name, fmt = METRIC[col].header, METRIC[col].fmt
            if col not in g or g[col].isna().all():
                row[name] = ""
                continue
            v = g[col].dropna()
            if len(v) == 1 and f"{col}_ci_low" in g:
                row[name] = f"{v.iloc[0]:{fmt}} [{g[col + '_ci_low'].iloc[0]:{fmt}}, {g[col + '_ci_high'].iloc[0]:{fmt}}]"
            elif len(v) == 1:
                row[name] = f"{v.iloc[0]:{fmt}}"
            else:
                row[name] = f"{v.mean():{fmt}} ± {v.std():{fmt}}"
            if col == "detectability":
                paired = (g.set_index("seed")[col] - unguided[col]).dropna() if scale not in ("real", "0") else pd.Series(dtype=float)
                row["Δ detectability"] = "" if paired.empty else (
                    f"{paired.mean():+.3f}" + (f" ± {paired.std():.3f}" if len(paired) > 1 else ""))
        out.append(row)
    frame = pd.DataFrame(out)
    return frame.loc[:, [c for c in frame.columns if (frame[c] != "").any() or c in ("sampling", "seeds")]]


def format_guide_table(table: pd.DataFrame) -> str:
    """`guide_summary` as text, with a note on what its columns are."""
    return guide_summary(table).to_string(index=False) + (
        "\n(detectability: a fresh detector trained after sampling on real vs these samples, held-out accuracy; "
        "guiding clf's verdict: the classifier that steered sampling, on the same held-out images. "
        "Δ detectability: paired with the unguided samples of the same seed. One seed: 95% interval; several: mean ± sd)")
