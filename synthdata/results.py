"""A study's results as tables: rows collected while it runs, or read back from MLflow, and their text forms.

A loop study's table has one row per (arm, generation); a mix study's has one row per
trial. The runners print and save these; `synthdata report` rebuilds them from MLflow.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from synthdata.errors import UserError
from synthdata.tracking import DONE_METRIC, mlflow_client

MIX_METRIC = "test_accuracy"  # what a mix trial reports: downstream accuracy on the real test set


def study_run(uri: str, *, experiment: str | None = None, run_id: str | None = None) -> Any:
    """A study's parent run: `run_id` itself, or the latest study run in `experiment`."""
    client = mlflow_client(uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise UserError(f"run '{run_id}': not found in {uri}") from None
        if run.data.tags.get("synthdata.role") != "study":
            parent = run.data.tags.get("mlflow.parentRunId")
            hint = f" (it is a child of study run {parent})" if parent else ""
            raise UserError(f"run '{run_id}': not a synthdata study run{hint}")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"experiment '{experiment}': not found in {uri} (there: {', '.join(names) or 'none'})")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`synthdata.role` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"experiment '{experiment}': holds no synthdata study run")
    return runs[0]


def child_runs(uri: str, parent_id: str) -> list[Any]:
    """The arm (loop) or trial (mix) runs of a study run, by name."""
    client = mlflow_client(uri)
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return sorted(runs, key=lambda r: r.info.run_name or "")


def arm_row(run: Any, generation: int) -> dict:
    """The columns that say which arm a loop-table row is: arm, group (its line in a figure), loop type, seed."""
    p = run.data.params
    arm = run.data.tags.get("synthdata.arm", run.info.run_name)
    return {"arm": arm, "group": p.get("group", p.get("loop_type", arm)), "loop_type": p.get("loop_type", ""),
            "seed": int(p.get("seed", -1)), "generation": generation}


def loop_rows_from_mlflow(uri: str, parent_id: str) -> list[dict]:
    """Every arm's metrics by generation (MLflow step), as loop-table rows."""
    client = mlflow_client(uri)
    rows: dict[tuple[str, int], dict] = {}
    for run in child_runs(uri, parent_id):
        for key in run.data.metrics:
            if key == DONE_METRIC:
                continue
            for m in client.get_metric_history(run.info.run_id, key):
                row = rows.setdefault((run.info.run_id, m.step), arm_row(run, m.step))
                row[key] = m.value
    return list(rows.values())


def results_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of (arm, generation), one per generation, sorted for reading."""
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).drop(columns=["generation_done"], errors="ignore")
    return table.drop_duplicates(["arm", "generation"], keep="last").sort_values(["arm", "generation"]).reset_index(drop=True)


# (column, header, format) of the metrics a table shows, in reading order.
TABLE_METRICS = (
    ("detectability_jsd_lower_bound", "JSD bound", ".3f"),
    ("fid", "FID", ".2f"),
    ("precision", "prec", ".2f"),
    ("recall", "rec", ".2f"),
    ("coverage", "cov", ".2f"),
    ("diversity", "diversity", ".2f"),
    ("fitted_variance", "fitted var", ".4f"),
    ("w2_to_truth", "W2 to truth", ".3f"),
)


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

    def with_ci(col: str) -> pd.Series:
        return table.apply(
            lambda r: f"{r[col]:.3f} [{r[col + '_ci_low']:.3f}, {r[col + '_ci_high']:.3f}]" if pd.notna(r.get(col)) else "",
            axis=1,
        )

    def plain(col: str, fmt: str) -> pd.Series:
        return table[col].map(lambda v: "" if pd.isna(v) else format(v, fmt))

    if "detectability" in table:
        out["detectability (95% CI)"] = with_ci("detectability")
    if "downstream_accuracy" in table:
        out["downstream acc (95% CI)"] = with_ci("downstream_accuracy")
    for col, name, fmt in TABLE_METRICS:
        if col in table:
            out[name] = plain(col, fmt)
    if "time_fit_s" in table:
        out["fit s"] = plain("time_fit_s", ".0f")
    return out


def summary_table(table: pd.DataFrame, points: int = 5) -> str:
    """`loop_summary` as text, with a note on what its cells are."""
    return loop_summary(table, points).to_string(index=False) + "\n(mean ± sd over seeds; every generation and arm is in results.csv)"


def loop_summary(table: pd.DataFrame, points: int = 5) -> pd.DataFrame:
    """One row per line of the study (loop type + swept values) at a few generations: mean ± sd over seeds."""
    last = int(table["generation"].max())
    shown = sorted({0, 1, *(round(last * i / (points - 1)) for i in range(1, points))})
    metrics = [(c, n, f) for c, n, f in (("detectability", "detectability", ".3f"), ("downstream_accuracy", "downstream acc", ".3f"),
                                          *TABLE_METRICS) if c in table]
    rows = table[table["generation"].isin(shown)].dropna(how="all", subset=[c for c, _, _ in metrics])
    grouped = rows.groupby(["group", "generation"])
    out = grouped.size().rename("seeds").reset_index()
    for col, name, fmt in metrics:
        mean, sd = grouped[col].mean().values, grouped[col].std().fillna(0).values
        out[name] = [("" if pd.isna(m) else f"{m:{fmt}} ± {d:{fmt}}") for m, d in zip(mean, sd)]
    return out.rename(columns={"generation": "gen"})


def mix_table_from_mlflow(uri: str, parent_id: str) -> pd.DataFrame:
    """One row per trial run of a mix study: mode, ratio, seed and the final-epoch metrics, read back from MLflow."""
    rows = []
    for run in child_runs(uri, parent_id):
        p, m = run.data.params, run.data.metrics
        rows.append({
            "trial": run.info.run_name, "mode": p.get("mode"), "ratio": float(p.get("ratio", "nan")), "seed": int(p.get("seed", -1)),
            "status": run.info.status, "epochs": int(m.get("epoch", 0)),
            **{k: m.get(k) for k in (MIX_METRIC, f"{MIX_METRIC}_ci_low", f"{MIX_METRIC}_ci_high", "n_real", "n_synthetic")},
        })
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["mode", "ratio", "seed"]).reset_index(drop=True)


def format_mix_table(table: pd.DataFrame) -> str:
    """`mix_summary` as text, with a note on what its cells are."""
    return mix_summary(table).to_string(index=False) + "\n(mean ± sd over seeds; each trial's own interval averaged in 'mean 95% CI')"


def mix_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per mode and ratio: mean ± sd over seeds, and the trials' own 95% intervals averaged."""
    done = table[table[MIX_METRIC].notna()]
    grouped = done.groupby(["mode", "ratio"])
    out = grouped.agg(seeds=("seed", "nunique"), n_real=("n_real", "first"), n_synthetic=("n_synthetic", "first")).reset_index()
    mean, sd = grouped[MIX_METRIC].mean().values, grouped[MIX_METRIC].std().fillna(0).values
    lo, hi = grouped[f"{MIX_METRIC}_ci_low"].mean().values, grouped[f"{MIX_METRIC}_ci_high"].mean().values
    out["test accuracy"] = [f"{m:.3f} ± {d:.3f}" for m, d in zip(mean, sd)]
    out["mean 95% CI"] = [f"[{a:.3f}, {b:.3f}]" for a, b in zip(lo, hi)]
    return out.astype({"n_real": int, "n_synthetic": int})


ANALYSES = ("real_vs_real", "pair", "multiway", "size", "band", "crop")  # reading order of a detect table


def detect_table(cells: list[tuple[str, dict[str, str], dict[str, float]]]) -> pd.DataFrame:
    """One row per detector (cell) of a detect study, from (run name, params, metrics) triples."""
    rows = []
    for name, p, metrics in cells:
        rows.append({"cell": name, "analysis": p.get("analysis", ""), "source": p.get("source", "-"),
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


def detect_table_from_mlflow(uri: str, parent_id: str) -> pd.DataFrame:
    """The detect table, read back from a study run's cell runs."""
    return detect_table([(r.info.run_name, r.data.params, dict(r.data.metrics))
                         for r in child_runs(uri, parent_id) if r.info.status == "FINISHED"])


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


# (column, header, format) of a guide study's summary, in reading order.
GUIDE_METRICS = (
    ("detectability", "detectability (fresh)", ".3f"),
    ("guide_detectability", "guiding clf's verdict", ".3f"),
    ("downstream_accuracy", "downstream acc", ".3f"),
    *(m for m in TABLE_METRICS if m[0] in ("fid", "precision", "recall", "diversity")),
    ("time_sample_s", "sample s", ".0f"),
)


def guide_table(rows: list[dict]) -> pd.DataFrame:
    """One row per measured set of a guide study (the real reference, then each scale; by seed)."""
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["_order"] = pd.to_numeric(table["scale"], errors="coerce").fillna(-1.0)  # real data first
    return table.sort_values(["_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def guide_table_from_mlflow(uri: str, parent_id: str) -> pd.DataFrame:
    """The guide table, read back from a study run's finished child runs."""
    return guide_table([{"run": r.info.run_name, "scale": r.data.params.get("scale", ""), "seed": int(r.data.params.get("seed", 0)),
                         "group": r.data.params.get("group", ""), **r.data.metrics}
                        for r in child_runs(uri, parent_id) if r.info.status == "FINISHED"])


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
        for col, name, fmt in GUIDE_METRICS:
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
        "\n(detectability (fresh): a detector trained after sampling on real vs these samples, held-out accuracy; "
        "guiding clf's verdict: the classifier that steered sampling, on the same held-out images. "
        "Δ detectability: paired with the unguided samples of the same seed. One seed: 95% interval; several: mean ± sd)")
