"""Reading a study back from MLflow (synthdata.runs) against a real SQLite store."""
from __future__ import annotations

from synthdata.results import mix_table
from synthdata.runs import child_runs, find_resumable, mix_rows
from synthdata.tracking import StudyTracker


def test_a_study_with_more_than_1000_arms_is_read_back_whole(tracking_uri):
    """MLflow returns at most 1,000 runs a search: the table, the report and --resume must page past that."""
    n = 1003
    tracker = StudyTracker(tracking_uri, "big", "big", {}, tags={"synthdata.spec_hash": "h"})
    for i in range(n):
        name = f"augment/r={i}/seed0"
        tracker.start_arm(name, {"mode": "augment", "ratio": str(i), "seed": "0"})
        if i % 100 == 0:  # a few with metrics: the rest stand for arms that had not reported yet
            tracker.log_metrics(name, {"downstream_accuracy": 0.5, "epoch": 1})
    assert len(child_runs(tracking_uri, tracker.parent_id)) == n
    table = mix_table(mix_rows(tracking_uri, tracker.parent_id))
    assert len(table) == n and table["ratio"].max() == n - 1 and table["downstream_accuracy"].notna().sum() == 11
    found, fingerprint = find_resumable(tracking_uri, "big", "big")
    assert fingerprint == "h" and len(found.arm_runs) == n
