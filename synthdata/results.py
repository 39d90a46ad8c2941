"""A study's results as tables: rows collected while it runs, or read back from MLflow (`synthdata.runs`), and their text forms.

A loop study's table has one row per (arm, generation); a mix, detect or guide study's
has one row per arm. The runners print and save these; `synthdata report` rebuilds them
from MLflow. Names, headers and formats of metrics come from `synthdata.metrics.registry`.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from synthdata.metrics.registry import COLLAPSED, METRIC, UNIT
from synthdata.metrics.stats import (
    Interval,
    combine_p_values,
    difference_bounds,
    mcnemar_p,
    mean_interval,
    mover_difference,
    number,
    paired_difference,
    q_values,
    unpack_decisions,
)

DONE_METRIC = "generation_done"  # a loop arm's commit marker per generation (see synthdata.tracking), not a result
# What each table shows, in reading order (headers and formats from the registry).
LOOP_COLUMNS = ("detectability", "downstream_accuracy", "detectability_jsd_lower_bound", "fd", "fid", "precision", "recall",
                "coverage", "diversity", "fitted_variance", "w2_to_truth", "time_fit_s")
GUIDE_COLUMNS = ("detectability", "guiding_detectability", "downstream_accuracy", "fd", "fid", "precision", "recall", "diversity",
                 "time_sample_s")
Arms = list[tuple[str, dict[str, str], dict[str, float]]]  # (run name, params, metrics) of each arm


def _value(v: float, name: str, ci: tuple[float, float] | None = None) -> str:
    """A metric's value in its registry format, with its interval (within the metric's range) when given."""
    if ci is None:
        return number(v, METRIC[name].fmt)
    return Interval(v, *ci, 1).clip(METRIC[name].bounds).text(METRIC[name].fmt)


def _p(p: float) -> str:
    """A p- or q-value for a table (blank when there is none)."""
    if pd.isna(p):
        return ""
    return "<1e-300" if p == 0 else f"{p:.2g}"  # below float64's range: not zero


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
        return summary_table(table) + format_loop_differences(table) + collapse_note(table)
    return loop_display(table).to_string(index=False) + format_loop_differences(table) + collapse_note(table)


def collapsed_arms(table: pd.DataFrame) -> dict[str, int]:
    """Arm -> the generation at which its generator collapsed (its fit became singular), for arms that did."""
    if COLLAPSED not in table:
        return {}
    rows = table[table[COLLAPSED].notna()]
    return {arm: int(g) for arm, g in zip(rows["arm"], rows[COLLAPSED])}


def collapse_lines(table: pd.DataFrame) -> list[str]:
    """A line per arm whose generator collapsed: where, and that its rows end there."""
    return [f"{arm}: collapsed at generation {g} (its fit became singular: tag synthdata.collapsed says how); the arm "
            f"ended there, FINISHED; its last finite metrics are generation {g - 1}'s" for arm, g in collapsed_arms(table).items()]


def collapse_note(table: pd.DataFrame) -> str:
    """`collapse_lines` below a table ('' when no arm collapsed)."""
    return "".join("\n" + line for line in collapse_lines(table))


def loop_display(table: pd.DataFrame) -> pd.DataFrame:
    """The loop table as text columns for reading: intervals beside accuracies, a few digits per metric.

    Rows that only mark a collapse (`collapsed_at_generation`) are left to `collapse_note`."""
    if COLLAPSED in table:
        table = table[table[COLLAPSED].isna()]
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


def paired_by_seed(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Interval:
    """`metric` of the arms in `a` minus that of the arms in `b` with the same seed (the study's one pairing).

    Several seeds: the mean difference with its t interval and the paired t-test (where the
    differences are all equal: no interval, and the exact sign-flip test); one seed: a MOVER
    interval from the two arms' own 95% intervals where the metric has them, else the
    difference alone; no common seed: an empty (nan) interval. Intervals stay where a
    difference of the metric can lie ([-1, 1] for an accuracy).
    """
    ci = [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in a and c in b]
    cols = [metric, *ci]
    pairs = a.set_index("seed")[cols].join(b.set_index("seed")[cols], rsuffix="_b", how="inner").dropna()
    nan = float("nan")
    if pairs.empty:
        return Interval(nan, nan, nan, 0)
    bounds = difference_bounds(METRIC[metric].bounds if metric in METRIC else None)
    if len(pairs) > 1:
        return paired_difference(pairs[metric], pairs[f"{metric}_b"], bounds=bounds)
    r = pairs.iloc[0]
    if ci:
        return mover_difference(r[metric], r[ci[0]], r[ci[1]], r[f"{metric}_b"], r[f"{ci[0]}_b"], r[f"{ci[1]}_b"]).clip(bounds)
    return Interval(float(r[metric] - r[f"{metric}_b"]), nan, nan, 1)


def loop_differences(table: pd.DataFrame,
                     metrics: tuple[str, ...] = ("detectability", "downstream_accuracy", "fd", "fid", "w2_to_truth")) -> pd.DataFrame:
    """Each loop type against a reference (augment when the study has it) at the last generation, paired by seed.

    Arms of one seed and swept values share the real data and generations 0-1. Several
    seeds: the mean paired difference [95% t interval] and the paired t-test (where the
    differences are all equal: no interval, and the exact sign-flip test); one seed: the
    difference with a MOVER interval from the two arms' own 95% intervals where the metric
    has one (accuracies), else the difference alone (no test). An arm whose generator
    collapsed has no row at the last generation (its collapse row is not one).
    """
    measured = table[table[COLLAPSED].isna()] if COLLAPSED in table else table
    last = int(measured["generation"].max())
    at = table[table["generation"] == last].copy()
    at["swept"] = at["group"].str.partition(" ")[2]
    types = list(dict.fromkeys(at["loop_type"]))
    ref = "augment" if "augment" in types else types[0]
    rows = []
    for swept, g in at.groupby("swept", sort=False):
        base = g[g["loop_type"] == ref]
        for loop_type in (t for t in types if t != ref):
            other = g[g["loop_type"] == loop_type]
            for metric in (m for m in metrics if m in g and g[m].notna().any()):
                d = paired_by_seed(other, base, metric)
                if d.n == 0:
                    continue
                rows.append({"gen": last, "difference": f"{loop_type} - {ref}" + (f" ({swept})" if swept else ""),
                             "metric": METRIC[metric].header, "seeds": d.n,
                             "Δ (95% CI)": d.text(METRIC[metric].fmt, signed=True), "p": _p(d.p)})
    return pd.DataFrame(rows)


PAIRED_P_NOTE = ("paired t-test over seeds (where every seed's difference is the same: no interval, and the exact "
                 "sign-flip test, whose smallest p with k seeds is 2^(1-k): 0.5 with 2, 0.25 with 3)")
LOOP_DIFFERENCE_NOTE = ("(Δ: paired by seed; several seeds: mean difference [95% t interval], p: " + PAIRED_P_NOTE
                        + "; one seed: MOVER interval from the two arms' own 95% intervals, no test)")


def format_loop_differences(table: pd.DataFrame) -> str:
    """`loop_differences` as text ('' when the study has one loop type)."""
    diff = loop_differences(table) if "loop_type" in table and table["loop_type"].nunique() > 1 else pd.DataFrame()
    return "" if diff.empty else "\n\n" + diff.to_string(index=False) + "\n" + LOOP_DIFFERENCE_NOTE


def summary_table(table: pd.DataFrame, points: int = 5) -> str:
    """`loop_summary` as text, with a note on what its cells are."""
    return loop_summary(table, points).to_string(index=False) + (
        "\n(mean over seeds [95% t interval for the mean]; every generation and arm is in results.csv)")


def loop_summary(table: pd.DataFrame, points: int = 5) -> pd.DataFrame:
    """One row per line of the study (loop type + swept values) at a few generations: mean over seeds [95% t interval]."""
    last = int(table["generation"].max())
    shown = sorted({0, 1, *(round(last * i / (points - 1)) for i in range(1, points))})
    metrics = [c for c in LOOP_COLUMNS if c in table and c != "time_fit_s"]
    rows = table[table["generation"].isin(shown)].dropna(how="all", subset=metrics)
    grouped = rows.groupby(["group", "generation"])
    out = grouped.size().rename("seeds").reset_index()
    for col in metrics:
        info = METRIC[col]
        out[info.header] = grouped[col].apply(lambda v, i=info: mean_interval(v, bounds=i.bounds).text(i.fmt)).values
    return out.rename(columns={"generation": "gen"})


MIX_METRIC = "downstream_accuracy"  # what a mix arm reports every epoch, on the real test set


def mix_table(rows: list[dict], decisions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per arm of a mix study (`synthdata.runs.mix_rows`), sorted by mode, ratio and seed.

    `decisions` (`synthdata.runs.mix_decisions`: each arm's right/wrong per test image, packed)
    become the column `test_correct`, for McNemar's tests in `mix_summary`.
    """
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["mode", "ratio", "seed"]).reset_index(drop=True)
    table["test_correct"] = table["arm"].map(decisions or {})
    return table


def _paired(table: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, str]:
    """a - b paired by seed: the mean difference [t interval] and its paired t-test p over seeds (the sign-flip test's
    where the differences are all equal), and McNemar's p per seed on the shared test set, combined over seeds
    (`combine_p_values`)."""
    d = paired_by_seed(a, b, MIX_METRIC)
    if d.n == 0:
        return {"Δ": "", "p (t)": "", "p (McNemar)": ""}
    mcnemar = []
    if "test_correct" in table and "n_test" in table:
        cols = ["test_correct", "n_test"]
        pairs = a.set_index("seed")[cols].join(b.set_index("seed")[cols], rsuffix="_b", how="inner")
        for _, r in pairs.dropna(subset=["test_correct", "test_correct_b"]).iterrows():
            n = int(r["n_test"])
            mcnemar.append(mcnemar_p(unpack_decisions(r["test_correct"], n), unpack_decisions(r["test_correct_b"], n)))
    return {"Δ": d.text(".3f", signed=True), "p (t)": _p(d.p), "p (McNemar)": _p(combine_p_values(mcnemar)) if mcnemar else ""}


def mix_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per mode and ratio: mean over seeds [t interval], and the paired difference to real-only (r = 0).

    Arms of one seed share its real images, its pool and the test set, so differences are
    taken per seed: the mean difference with its t interval and paired t-test over seeds, and
    McNemar's test of the two classifiers' decisions on the shared test set per seed.
    """
    done = table[table[MIX_METRIC].notna()]
    baseline = done[done["ratio"] == 0].drop_duplicates("seed")  # r = 0 is real-only in either mode
    out = []
    for (mode, ratio), g in done.groupby(["mode", "ratio"], sort=True):
        row = {"mode": mode, "ratio": ratio, "seeds": g["seed"].nunique(), "n_real": int(g["n_real"].iloc[0]),
               "n_synthetic": int(g["n_synthetic"].iloc[0]), METRIC[MIX_METRIC].header: mean_interval(g[MIX_METRIC], bounds=METRIC[MIX_METRIC].bounds).text()}
        vs = (_paired(table, g, baseline) if ratio != 0 and not baseline.empty
              else {"Δ": "", "p (t)": "", "p (McNemar)": ""})
        row.update({f"{k} vs real-only": v for k, v in vs.items()})
        out.append(row)
    return pd.DataFrame(out)


def differences_to_real_only(table: pd.DataFrame) -> pd.DataFrame:
    """Per mode and ratio r > 0: accuracy minus real-only (r = 0) paired by seed, as numbers (for the figure)."""
    done = table[table[MIX_METRIC].notna()]
    base = done[done["ratio"] == 0].drop_duplicates("seed")
    rows = []
    for (mode, ratio), g in done[done["ratio"] > 0].groupby(["mode", "ratio"], sort=True):
        d = paired_by_seed(g, base, MIX_METRIC)
        if d.n:
            rows.append({"mode": mode, "ratio": ratio, "difference": d.value, "low": d.low, "high": d.high, "seeds": d.n})
    return pd.DataFrame(rows)


def mode_differences(table: pd.DataFrame) -> pd.DataFrame:
    """augment - replace at every ratio both modes ran (r > 0): the paired difference over seeds and McNemar's p."""
    done = table[table[MIX_METRIC].notna() & (table["ratio"] > 0)]
    out = []
    for ratio, g in done.groupby("ratio", sort=True):
        a, b = g[g["mode"] == "augment"], g[g["mode"] == "replace"]
        if a.empty or b.empty:
            continue
        out.append({"ratio": ratio, "seeds": len(set(a["seed"]) & set(b["seed"])), **{
            f"{k} augment - replace": v for k, v in _paired(table, a, b).items()}})
    return pd.DataFrame(out)


MIX_NOTE = (
    "(accuracy: mean over seeds [95% t interval for the mean]; Δ: paired by seed (same real images, pool and test set), "
    "mean difference [95% t interval], p (t): " + PAIRED_P_NOTE + ", p (McNemar): exact McNemar test of the two "
    "classifiers' decisions on the shared test set per seed, combined over seeds as K/r x the r-th smallest)"
)


def format_mix_table(table: pd.DataFrame) -> str:
    """`mix_summary` and `mode_differences` as text, with a note on what their cells are."""
    text = mix_summary(table).to_string(index=False)
    between = mode_differences(table)
    if not between.empty:
        text += "\n\n" + between.to_string(index=False)
    return text + "\n" + MIX_NOTE


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


def _cell_value(g: pd.DataFrame, col: str, low: str, high: str, fmt: str = ".3f") -> str:
    """One seed: the value with its own interval; several: the mean over seeds with a t interval for that mean."""
    if len(g) == 1:
        return Interval(g[col].iloc[0], g[low].iloc[0], g[high].iloc[0], 1).clip(UNIT).text(fmt) if low in g else number(g[col].iloc[0], fmt)
    return mean_interval(g[col], bounds=UNIT).text(fmt)  # accuracies and AUCs


def detect_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per analysis, source and setting (a cell): accuracy, its test against chance with a BH q-value across the
    study's cells, the AUC and its rank test, the JSD bound.

    One seed: each statistic of its detector (Clopper-Pearson and DeLong intervals). Several:
    means over seeds with t intervals, and one p-value per cell combined over the seeds
    (`combine_p_values`: valid though the seeds share real data).
    """
    out = []
    for (analysis, source, setting), g in table.groupby(["analysis", "source", "setting"], sort=False):
        multi = analysis == "multiway"
        col = "multiway_accuracy" if multi else "detectability"
        p_col = f"{col}_p_value"
        has_auc = not multi and "detectability_auc_ci_low" in g
        out.append({
            "analysis": analysis, "source": source, "setting": setting, "seeds": len(g),
            "accuracy": _cell_value(g, col, f"{col}_ci_low", f"{col}_ci_high"),
            "chance": f"{g['chance'].iloc[0]:.3f}" if multi else "0.5",
            "p": combine_p_values(g[p_col]) if p_col in g else float("nan"),
            "AUC": _cell_value(g, "detectability_auc", "detectability_auc_ci_low", "detectability_auc_ci_high") if has_auc else "",
            "p (AUC)": combine_p_values(g["detectability_auc_p_value"]) if has_auc else float("nan"),
            "JSD bound": "" if multi else f"{g['detectability_jsd_lower_bound'].mean():.3f}",
            "n/class": int(g["n_train_per_class"].iloc[0]),
        })
    frame = pd.DataFrame(out)
    frame.insert(frame.columns.get_loc("p") + 1, "q", q_values(frame["p"].to_numpy()))
    for col in ("p", "q", "p (AUC)"):
        frame[col] = frame[col].map(_p)
    return frame


DETECT_NOTE = (
    "(accuracy: held-out; one seed: its 95% Clopper-Pearson interval; several: mean over seeds [95% t interval]. "
    "p: one-sided exact binomial test of the decisions against chance, combined over seeds as K/r x the r-th smallest "
    "(r = K/2 rounded up; valid under any dependence); q: Benjamini-Hochberg across the table's cells. "
    "AUC: DeLong 95% interval for one seed; p (AUC): one-sided Mann-Whitney test of the scores, combined the same way)"
)


def format_detect_table(table: pd.DataFrame, warning: str | None = None) -> str:
    """`detect_summary` as text; the real-vs-real warning, if any, above it."""
    text = detect_summary(table).to_string(index=False) + "\n" + DETECT_NOTE
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
    """Per scale (and the real reference): each metric as the mean over seeds [95% t interval], or with its own 95%
    interval for one seed.

    `Δ detectability` is the paired change against the unguided samples of the same seed
    (same generator, same noise): the mean difference [95% t interval] with the paired
    t-test's p over seeds (the sign-flip test's where the differences are all equal); one
    seed: a MOVER interval from the two sets' own intervals.
    """
    out = []
    unguided = table[table["scale"] == "0"]
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
                row[name] = _value(v.iloc[0], col, (g[col + "_ci_low"].iloc[0], g[col + "_ci_high"].iloc[0]))
            elif len(v) == 1:
                row[name] = _value(v.iloc[0], col)
            else:
                row[name] = mean_interval(v, bounds=METRIC[col].bounds).text(fmt)
            if col == "detectability":
                row["Δ detectability"], row["p (Δ)"] = _guided_change(g, unguided) if scale not in ("real", "0") else ("", "")
        out.append(row)
    frame = pd.DataFrame(out)
    return frame.loc[:, [c for c in frame.columns if (frame[c] != "").any() or c in ("sampling", "seeds")]]


def _guided_change(g: pd.DataFrame, unguided: pd.DataFrame) -> tuple[str, str]:
    """Detectability at a scale minus unguided, paired by seed: the difference's text and its p-value."""
    d = paired_by_seed(g, unguided, "detectability")
    return d.text(".3f", signed=True), _p(d.p)


def format_guide_table(table: pd.DataFrame) -> str:
    """`guide_summary` as text, with a note on what its columns are."""
    return guide_summary(table).to_string(index=False) + (
        "\n(detectability: a fresh detector trained after sampling on real vs these samples, held-out accuracy; "
        "guiding clf's verdict: the classifier that steered sampling, on the same held-out images. "
        "Δ detectability: paired with the unguided samples of the same seed, p (Δ): " + PAIRED_P_NOTE + ". "
        "One seed: 95% intervals (Δ: MOVER); several: mean over seeds [95% t interval])")
