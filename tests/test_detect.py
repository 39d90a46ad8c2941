"""The detectability instrument against cases whose answer is known.

Real digits against the same digits made different in a known way: a checkerboard (all
of it at the highest frequency) and a brightness shift (all of it at frequency zero).
Both are detected; each is detected in the band where it lies and not in the other;
two halves of the real data are not told apart.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_png
from mlflow.tracking import MlflowClient

from synthdata.detection import band_mask, band_names, filter_band, random_crops
from synthdata.results import real_vs_real_warning

CHECKER = (np.indices((8, 8)).sum(0) % 2) * 2 - 1


def _digit_folders(root: Path) -> dict[str, Path]:
    """Real digits (one sub-folder per class) and two corrupted copies of *other* digits, as 8-bit PNGs.

    Grey levels stay inside [64, 216], so no corruption is clipped (clipping would leak
    the checkerboard into low frequencies). The halves are a random split: sklearn's
    digits are ordered by writer, and a first/second-half split would differ by writer.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = 64 + d.images * 8.0  # 17 levels -> 64..192
    order = np.random.default_rng(0).permutation(len(images))[:1200]  # 600 each: plenty for corruptions this plain
    real, other = order[:600], order[600:]
    for i in real:
        write_png(root / "real" / str(d.target[i]) / f"{i}.png", images[i])
    for i in other:
        write_png(root / "checker" / f"{i}.png", images[i] + 24 * CHECKER)
        write_png(root / "shift" / f"{i}.png", images[i] + 24)
    return {name: root / name for name in ("real", "checker", "shift")}


def test_bands_partition_the_spectrum_and_the_checkerboard_is_all_high():
    radii = (0.25, 0.5)
    masks = [band_mask((8, 8), radii, b) for b in band_names(radii)]
    assert band_names(radii) == ["low", "0.25-0.5", "high"]
    assert torch.equal(sum(masks), torch.ones(8, 8))  # every frequency in exactly one band
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(sum(filter_band(x, m) for m in masks), x, atol=1e-5)  # the bands add back up to the image
    checker = torch.tensor(CHECKER, dtype=torch.float32)[None, None]
    assert filter_band(checker, masks[0]).abs().max() < 1e-6 and torch.allclose(filter_band(checker, masks[2]), checker, atol=1e-6)
    const = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(filter_band(const, masks[0]), const, atol=1e-6)  # a brightness shift is all low
    crops = random_crops(torch.arange(64.0).reshape(1, 1, 8, 8).repeat(3, 1, 1, 1), 4, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 1, 4, 4) and (crops[:, 0, 0, 1] - crops[:, 0, 0, 0] == 1).all()


def test_real_vs_real_warning_fires_only_when_the_interval_excludes_half():
    import pandas as pd

    row = {"analysis": "real_vs_real", "seed": 0, "detectability": 0.5, "detectability_ci_low": 0.45, "detectability_ci_high": 0.55}
    assert real_vs_real_warning(pd.DataFrame([row])) is None
    leaky = {**row, "detectability": 0.62, "detectability_ci_low": 0.56, "detectability_ci_high": 0.68}
    assert "excludes 0.5" in real_vs_real_warning(pd.DataFrame([row, leaky]))


@pytest.mark.slow
def test_known_differences_are_detected_in_their_own_band(local_ray, tracking_uri, tmp_path, monkeypatch, capsys):
    from synthdata.cli import main
    from synthdata.report import build_report
    from synthdata.results import detect_table
    from synthdata.runs import finished_arms, study_run

    folders = _digit_folders(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    code = main(["detect", "--real", str(folders["real"]), "--generated", f"checker={folders['checker']}",
                 "--generated", f"shift={folders['shift']}", "--bands", "0.5", "--sizes", "20", "--epochs", "15",
                 "--name", "known", "--tracking-uri", tracking_uri, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "study 'known': 10 arms" in out and re.search(r"band\s+checker\s+high", out) and "WARNING" not in out
    parent = study_run(tracking_uri, experiment="known")
    assert parent.info.status == "FINISHED"
    t = detect_table(finished_arms(tracking_uri, parent.info.run_id)).set_index("arm")  # what MLflow holds
    acc = t["detectability"]
    assert 0.4 < acc["real_vs_real/seed0"] < 0.6
    assert acc["pair/checker/seed0"] > 0.95 and acc["pair/shift/seed0"] > 0.95
    assert t.loc["pair/checker/seed0", "detectability_p_value"] < 1e-6
    assert acc["band/checker/high/seed0"] > 0.95 and acc["band/checker/low/seed0"] < 0.62  # the checkerboard lives in high
    assert acc["band/shift/low/seed0"] > 0.75 and acc["band/shift/high/seed0"] < 0.62  # the shift lives at frequency 0
    assert t.loc["multiway/seed0", "multiway_accuracy"] > 0.9 and t.loc["multiway/seed0", "chance"] == pytest.approx(1 / 3)

    client = MlflowClient(tracking_uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert set(runs) == set(t.index) and all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["band/shift/low/seed0"].data.params["analysis"] == "band"
    multi = runs["multiway/seed0"].info.run_id
    confusion = json.loads(Path(client.download_artifacts(multi, "confusion.json", str(tmp_path))).read_text())
    assert confusion["classes"] == ["real", "checker", "shift"] and np.trace(confusion["counts"]) > 0.9 * np.sum(confusion["counts"])
    examples = {a.path for a in client.list_artifacts(runs["pair/checker/seed0"].info.run_id, "examples")}
    assert "examples/real_most_generated.png" in examples and "examples/generated_most_real.png" in examples
    figures = {p.name for p in (tmp_path / "runs" / "known" / "figures").glob("*.png")}
    assert {"detectability_by_source.png", "detectability_by_band.png", "detectability_vs_sample_size.png", "confusion.png"} <= figures

    page = build_report(tracking_uri, tmp_path / "report", run_id=parent.info.run_id)
    assert "band/checker/high/seed0" in page.read_text() and "WARNING" not in page.read_text()
    assert (tmp_path / "report" / "detectability_by_band.png").exists() and (tmp_path / "report" / "confusion.png").exists()
