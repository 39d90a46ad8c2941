"""`synthdata report`: a study's tables and figures rebuilt from MLflow, as one HTML page plus PNGs.

Everything comes from what the tracking store holds (params, metrics by step, tags,
sample grids), so a report can be made for any study run, on any machine that reaches
the store, long after the study's own output folder is gone. The page is
self-contained: figures and sample grids are embedded as data URIs.
"""
from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from synthdata.errors import UserError
from synthdata.figures import confusion_figure, detect_figures, guide_figures, metric_figures, mix_difference_figure, mix_figure
from synthdata.results import (
    DETECT_NOTE,
    DONE_METRIC,
    LOOP_DIFFERENCE_NOTE,
    MIX_METRIC,
    MIX_NOTE,
    collapse_lines,
    detect_summary,
    detect_table,
    differences_to_real_only,
    guide_summary,
    guide_table,
    loop_differences,
    loop_display,
    loop_summary,
    mix_summary,
    mix_table,
    mode_differences,
    results_table,
)
from synthdata.runs import child_runs, finished_arms, loop_rows, mix_decisions, mix_rows, study_run
from synthdata.tracking import mlflow_client


@dataclass
class Report:
    """What a report page shows: tables (title -> frame), figures and sample grids (caption -> PNG)."""

    title: str
    meta: dict[str, str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    samples: list[tuple[str, Path]] = field(default_factory=list)
    details: dict[str, pd.DataFrame] = field(default_factory=dict)  # long tables, folded on the page
    notes: list[str] = field(default_factory=list)


def build_report(uri: str, out_dir: str | Path, *, experiment: str | None = None, run_id: str | None = None) -> Path:
    """Write `index.html` and the figures' PNGs for a study run (or an experiment's latest); return the page's path."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"{uri.removeprefix('sqlite:///')}: no MLflow store there (run a study first, or pass --tracking-uri)")
    parent = study_run(uri, experiment=experiment, run_id=run_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = parent.data.tags.get("synthdata.kind", "loop")
    report = Report(title=parent.info.run_name, meta=_meta(uri, parent, kind))
    children = sorted(child_runs(uri, parent.info.run_id), key=lambda r: _natural(r.info.run_name or ""))
    report.tables["Runs"] = _runs_table(children, kind)
    if kind in PARTS:
        PARTS[kind](report, uri, parent, children, out_dir)
    else:  # a kind this page has no special layout for: each run's final metrics
        report.tables["Final metrics"] = _final_metrics(children)
    report.details["Study parameters"] = pd.DataFrame(sorted(parent.data.params.items()), columns=["parameter", "value"])
    page = out_dir / "index.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page


def _natural(name: str) -> list:
    """Sort key that puts `r=0.5` before `r=2` before `r=10`."""
    return [float(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", name))]


def _meta(uri: str, parent: Any, kind: str) -> dict[str, str]:
    info = parent.info
    started = datetime.fromtimestamp(info.start_time / 1000, timezone.utc)
    took = f"{(info.end_time - info.start_time) / 1000:.0f} s" if info.end_time else "still running"
    exp = mlflow_client(uri).get_experiment(info.experiment_id).name
    return {"kind": kind, "status": info.status, "started": started.strftime("%Y-%m-%d %H:%M UTC"), "took": took,
            "experiment": exp, "study run": info.run_id, "tracking": uri}


def _runs_table(children: list[Any], kind: str) -> pd.DataFrame:
    """One row per arm: status, how far it got, retries, why it failed."""
    rows = []
    for run in children:
        tags, m = run.data.tags, run.data.metrics
        row = {"run": run.info.run_name, "status": run.info.status}
        if kind == "loop":
            row["generations"] = int(m[DONE_METRIC]) if DONE_METRIC in m else 0
            row["retries"] = int(tags.get("synthdata.retries", 0))
        elif kind == "mix":
            row["epochs"] = int(m.get("epoch", 0))
        row["failure"] = tags.get("synthdata.failure", "")
        rows.append(row)
    return pd.DataFrame(rows)


def _add_figures(report: Report, paths: list[Path]) -> None:
    """Figures captioned by their file names (`fid_vs_scale.png` -> 'fid vs scale')."""
    report.figures += [(path.stem.replace("_", " "), path) for path in paths]


def _summary(report: Report, table: pd.DataFrame, out_dir: Path, *, summary: pd.DataFrame | None = None,
             title: str = "Summary", details: pd.DataFrame | None = None, details_title: str = "Every arm") -> None:
    """What every kind's page shows of its table: the summary, every row folded, and results.csv beside the page."""
    report.tables[title] = summary
    report.details[details_title] = table if details is None else details
    table.to_csv(out_dir / "results.csv", index=False)


def _loop_part(report: Report, uri: str, parent: Any, children: list[Any], out_dir: Path) -> None:
    table = results_table(loop_rows(uri, parent.info.run_id))
    if table.empty:
        report.notes.append("No generation finished: nothing to plot.")
        return
    _summary(report, table, out_dir, summary=loop_summary(table), title="Summary (mean over seeds [95% t interval])",
             details=loop_display(table), details_title="Every arm and generation")
    if table["loop_type"].nunique() > 1:
        report.tables["Loop types compared at the last generation"] = loop_differences(table)
        report.notes.append(LOOP_DIFFERENCE_NOTE)
    report.notes += collapse_lines(table)  # arms whose generator collapsed: a finding, where it happened
    _add_figures(report, metric_figures(table, out_dir, title=report.title))
    report.samples = _last_grids(uri, children, out_dir)


def _mix_part(report: Report, uri: str, parent: Any, children: list[Any], out_dir: Path) -> None:
    table = mix_table(mix_rows(uri, parent.info.run_id), mix_decisions(uri, parent.info.run_id))
    if table.empty or table[MIX_METRIC].isna().all():
        report.notes.append("No arm reported an accuracy: nothing to plot.")
        return
    _summary(report, table, out_dir, summary=mix_summary(table))
    between = mode_differences(table)
    if not between.empty:
        report.tables["augment - replace (paired by seed)"] = between
    report.notes.append(MIX_NOTE)
    path = mix_figure(table, out_dir / f"{MIX_METRIC}_vs_ratio.png", f"{report.title}: augment vs replace")
    report.figures.append(("downstream accuracy against the synthetic ratio", path))
    differences = differences_to_real_only(table)
    if not differences.empty:
        path = mix_difference_figure(differences, out_dir / f"{MIX_METRIC}_vs_real_only.png", f"{report.title}: against real-only")
        report.figures.append(("accuracy minus real-only, paired by seed", path))
    report.samples = _artifact_images(uri, parent.info.run_id, "pools", out_dir, "synthetic pool")


def _confusion(report: Report, uri: str, children: list[Any], out_dir: Path) -> None:
    """The first finished multi-way detector's confusion matrix, redrawn from its confusion.json."""
    for run in children:
        if run.data.params.get("analysis") == "multiway" and run.info.status == "FINISHED":
            with tempfile.TemporaryDirectory() as tmp:
                data = json.loads(Path(mlflow_client(uri).download_artifacts(run.info.run_id, "confusion.json", tmp)).read_text())
            path = confusion_figure(data["counts"], data["classes"], out_dir / "confusion.png", title=f"{run.info.run_name}: which source is it?")
            report.figures.append(("confusion matrix (rows: true source)", path))
            return


def _detect_part(report: Report, uri: str, parent: Any, children: list[Any], out_dir: Path) -> None:
    table = detect_table(finished_arms(uri, parent.info.run_id))
    if table.empty:
        report.notes.append("No detector finished: nothing to plot.")
        return
    warning = parent.data.tags.get("synthdata.warning")
    if warning:
        report.notes.append(f"WARNING: {warning}")
    _summary(report, table, out_dir, summary=detect_summary(table))
    report.notes.append(DETECT_NOTE)
    _add_figures(report, detect_figures(table, out_dir, title=report.title))
    _confusion(report, uri, children, out_dir)
    report.samples = _artifact_images(uri, parent.info.run_id, "sources", out_dir, "source")
    for run in children:
        if run.data.params.get("analysis") == "pair" and run.data.params.get("seed") == str(table["seed"].min()):
            report.samples += _artifact_images(uri, run.info.run_id, "examples", out_dir, run.info.run_name)


def _guide_part(report: Report, uri: str, parent: Any, children: list[Any], out_dir: Path) -> None:
    table = guide_table(finished_arms(uri, parent.info.run_id))
    if table.empty:
        report.notes.append("No sample set was measured: nothing to plot.")
        return
    _summary(report, table, out_dir, summary=guide_summary(table))
    _add_figures(report, guide_figures(table, out_dir, title=report.title))
    lowest = str(table["seed"].min())
    for run in children:  # one grid per scale, of the lowest seed
        if run.data.params.get("seed") == lowest:
            report.samples += _artifact_images(uri, run.info.run_id, "samples", out_dir, run.info.run_name)


# Each kind's part of the page; a kind without one (a new kind) gets each arm's final metrics.
PARTS = {"loop": _loop_part, "mix": _mix_part, "detect": _detect_part, "guide": _guide_part}


def _final_metrics(children: list[Any]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r.info.run_name, **r.data.metrics} for r in children])


def _last_grids(uri: str, children: list[Any], out_dir: Path) -> list[tuple[str, Path]]:
    """The last generation's sample grid of one arm per line of the study (its lowest seed)."""
    picked: dict[str, Any] = {}
    for run in sorted(children, key=lambda r: int(r.data.params.get("seed", 0))):
        picked.setdefault(run.data.params.get("group", run.info.run_name), run)
    return [grid for run in picked.values()
            for grid in _artifact_images(uri, run.info.run_id, "samples", out_dir, run.info.run_name, last_only=True)]


def _artifact_images(uri: str, run_id: str, folder: str, out_dir: Path, label: str, last_only: bool = False) -> list[tuple[str, Path]]:
    client = mlflow_client(uri)
    try:
        pngs = sorted(a.path for a in client.list_artifacts(run_id, folder) if a.path.endswith(".png"))
    except Exception:  # artifacts unreachable (store moved, server without artifact proxy): the page goes without
        return []
    if last_only:
        pngs = pngs[-1:]
    found = []
    grids_dir = out_dir / "samples"
    grids_dir.mkdir(exist_ok=True)
    for art in pngs:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(run_id, art, tmp))
            dest = grids_dir / f"{label.replace('/', '_')}_{local.name}"
            dest.write_bytes(local.read_bytes())
        found.append((f"{label}: {Path(art).stem.replace('_', ' ')}", dest))
    return found


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: .9rem; } .meta span { margin-right: 1rem; display: inline-block; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: .5rem; vertical-align: top; } figure img { max-width: 100%; }
figcaption { font-size: .85rem; color: #555; text-align: center; }
.samples figure img { image-rendering: pixelated; width: 260px; }
.FAILED { color: #b00; font-weight: bold; } .note { color: #a60; }
"""

# Marks the page once every figure has decoded, so a headless browser can check it rendered.
_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = imgs.length; document.body.dataset.rendered = ok;
});
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")


def render_html(report: Report) -> str:
    """The page: header, tables, figures and sample grids embedded, long tables folded."""
    esc = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(report.title)} · synthdata report</title>",
             f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>{esc(report.title)}</h1><p class='meta'>"
             + " ".join(f"<span><b>{esc(k)}</b> {esc(v)}</span>" for k, v in report.meta.items()) + "</p>"]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in report.notes]
    for title, frame in report.tables.items():
        parts.append(f"<h2>{esc(title)}</h2>{_table_html(frame)}")
    if report.figures:
        parts.append("<h2>Figures</h2>")
        parts += [f"<figure><img alt='{esc(c)}' src='{_data_uri(p)}'><figcaption>{esc(c)}</figcaption></figure>"
                  for c, p in report.figures]
    if report.samples:
        parts.append("<h2>Samples</h2><div class='samples'>")
        parts += [f"<figure><img alt='{esc(c)}' src='{_data_uri(p)}'><figcaption>{esc(c)}</figcaption></figure>"
                  for c, p in report.samples]
        parts.append("</div>")
    for title, frame in report.details.items():
        parts.append(f"<details><summary><b>{esc(title)}</b> ({len(frame)} rows)</summary>{_table_html(frame)}</details>")
    parts.append("</body></html>")
    return "\n".join(parts).replace("<td>FAILED</td>", "<td class='FAILED'>FAILED</td>")
