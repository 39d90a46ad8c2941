"""Every statistic against a case whose answer is known: closed forms, simulated nulls, simulated coverage."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from synthdata.metrics.stats import (
    auc_with_ci,
    combine_p_values,
    mcnemar_p,
    mean_interval,
    number,
    paired_difference,
    q_values,
    rank_test_p,
    sign_flip_p,
)


def test_delong_auc_covers_the_closed_form_auc_of_two_gaussians():
    """Scores N(1, 1) vs N(0, 1): AUC = Phi(1 / sqrt 2) = 0.760; the 95% interval covers it about 95% of the time."""
    rng = np.random.default_rng(0)
    truth = stats.norm.cdf(1 / math.sqrt(2))
    hits, aucs = 0, []
    for _ in range(400):
        pos, neg = rng.normal(1, 1, 150), rng.normal(0, 1, 100)
        auc, lo, hi = auc_with_ci(pos, neg)
        aucs.append(auc)
        hits += lo <= truth <= hi
    assert abs(np.mean(aucs) - truth) < 0.005
    assert 0.92 <= hits / 400 <= 0.98


def test_auc_is_the_mann_whitney_u_over_mn_with_ties_counted_half():
    pos, neg = np.array([0.9, 0.5, 0.5, 0.2]), np.array([0.5, 0.1, 0.3])
    u = stats.mannwhitneyu(pos, neg).statistic
    assert auc_with_ci(pos, neg)[0] == pytest.approx(u / 12)
    assert auc_with_ci(np.ones(5), np.zeros(5))[:2] == (1.0, 1.0)  # perfect separation: no spread


def test_rank_test_is_uniform_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(1)
    null = np.array([rank_test_p(rng.normal(size=60), rng.normal(size=60)) for _ in range(1000)])
    assert abs((null <= 0.05).mean() - 0.05) < 0.02 and abs((null <= 0.5).mean() - 0.5) < 0.05
    assert rank_test_p(rng.normal(1, 1, 60), rng.normal(0, 1, 60)) < 1e-5


def test_combined_p_value_is_k_over_r_times_the_median_and_valid_under_dependence():
    assert combine_p_values([0.03]) == 0.03
    assert combine_p_values([0.01, 0.02, 0.9]) == pytest.approx(1.5 * 0.02)  # K = 3, r = 2
    assert combine_p_values([0.01, 0.04, 0.3, 0.9]) == pytest.approx(2 * 0.04)  # K = 4, r = 2
    assert combine_p_values([0.8, 0.9, 0.95]) == 1.0
    rng = np.random.default_rng(2)
    # Independent seeds and perfectly dependent ones (one p shared) both keep the level.
    independent = np.array([combine_p_values(rng.uniform(size=3)) for _ in range(20_000)])
    shared = np.array([combine_p_values(np.repeat(rng.uniform(), 3)) for _ in range(20_000)])
    assert (independent <= 0.05).mean() <= 0.055 and (shared <= 0.05).mean() <= 0.055


def test_benjamini_hochberg_q_values_by_hand_and_fdr_under_the_null():
    # sorted 0.01, 0.03, 0.04, 0.2 -> q = min over j >= i of p_(j) m / j = 0.04, 0.0533, 0.0533, 0.2
    q = q_values([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert np.isnan(q_values([0.1, float("nan")])[1])
    rng = np.random.default_rng(3)
    # All nulls: any rejection is a false discovery, so the FDR is P(any q <= 0.05) and BH keeps it at 0.05.
    rejected = np.array([(q_values(rng.uniform(size=20)) <= 0.05).any() for _ in range(4000)])
    assert rejected.mean() <= 0.065


def test_t_interval_for_a_mean_covers_it_about_95_percent_with_three_seeds():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(4000):
        est = mean_interval(rng.normal(0.8, 0.02, 3))
        hits += est.low <= 0.8 <= est.high
    assert 0.935 <= hits / 4000 <= 0.965
    one = mean_interval([0.7])
    assert one.value == 0.7 and math.isnan(one.low) and one.text() == "0.700"


def test_paired_difference_sees_a_shift_that_the_spread_between_seeds_hides():
    """Two arms per seed share the seed's luck (a large seed effect); their difference is small but constant-ish."""
    rng = np.random.default_rng(5)
    seed_effect = rng.normal(0, 0.05, 5)
    a = 0.80 + seed_effect + rng.normal(0, 0.002, 5)
    b = 0.79 + seed_effect + rng.normal(0, 0.002, 5)
    d = paired_difference(a, b)
    # Differences with a spread: the paired t-test's p, below the sign-flip test's floor with 5 seeds (2^-4 = 0.0625).
    assert d.low < 0.01 < d.high and d.p == pytest.approx(stats.ttest_1samp(a - b, 0.0).pvalue) and d.p < 0.001
    assert stats.ttest_ind(a, b).pvalue > 0.5  # unpaired, the same data say nothing
    # Under the null, the t-test's level with 4 seeds (the sign-flip test's p could not go below 0.125).
    nulls = np.array([paired_difference(rng.normal(size=4), rng.normal(size=4)).p for _ in range(4000)])
    assert abs((nulls <= 0.05).mean() - 0.05) < 0.015


def test_sign_flip_p_enumerates_every_pattern_and_matches_scipys_permutation_test():
    # [1, 2, 3]: only the two patterns of one sign reach |sum| = 6 of 8; zeros say nothing.
    assert sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8 and sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_p([0.1, 0.2, -0.05]) == 4 / 8  # |±0.1 ± 0.2 ± 0.05| >= 0.25 in 4 patterns of 8
    for k in (2, 5, 16):  # equal differences: the smallest p with k seeds, 2^(1-k)
        assert sign_flip_p(np.full(k, 0.022)) == 2.0 ** (1 - k)
    assert math.isnan(sign_flip_p([0.3]))
    d = np.random.default_rng(8).normal(0.3, 1, 10)
    exact = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf, vectorized=True, axis=-1)
    assert sign_flip_p(d) == pytest.approx(exact.pvalue)
    # Beyond 16 seeds, random patterns from a fixed stream: close to the exact p, and the same every time.
    many = np.random.default_rng(9).normal(0.2, 1, 24)
    assert sign_flip_p(many) == sign_flip_p(many)
    assert sign_flip_p(np.full(24, 0.5)) == pytest.approx(1 / 100_001, abs=3e-5)


def test_equal_differences_over_seeds_are_not_certainty():
    """Two seeds whose differences are equal: no zero-width interval and no t-test p of 0, the sign-flip p of 0.5."""
    d = paired_difference([0.912, 0.871], [0.890, 0.849])
    assert d.value == pytest.approx(0.022) and math.isnan(d.low) and math.isnan(d.high)
    assert d.p == 0.5 and d.text(signed=True) == "+0.022"
    for k in (3, 5):  # k equal differences: the sign-flip test's floor, 2^(1-k)
        assert paired_difference(np.full(k, 0.7), np.full(k, 0.6)).p == 2.0 ** (1 - k)
    assert paired_difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).p == 1.0  # no difference at all


def test_mcnemar_exact_closed_form_and_null():
    a = np.array([1] * 10 + [1] * 50 + [0] * 40, dtype=bool)
    b = np.array([0] * 10 + [1] * 50 + [0] * 40, dtype=bool)
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5**10)  # 10 discordant images, all for a
    assert mcnemar_p(a, a) == 1.0
    rng = np.random.default_rng(6)
    nulls = np.array([mcnemar_p(rng.uniform(size=300) < 0.8, rng.uniform(size=300) < 0.8) for _ in range(2000)])
    assert (nulls <= 0.05).mean() <= 0.06  # exact tests are at or below their level


def test_detect_summary_combines_seeds_validly_and_controls_the_fdr_across_cells():
    import pandas as pd

    from synthdata.results import detect_summary

    def row(source: str, seed: int, acc: float, p: float, auc_p: float) -> dict:
        return {"arm": f"pair/{source}/seed{seed}", "analysis": "pair", "source": source, "setting": "-", "seed": seed,
                "detectability": acc, "detectability_ci_low": acc - 0.05, "detectability_ci_high": acc + 0.05,
                "detectability_p_value": p, "detectability_auc": acc, "detectability_auc_ci_low": acc - 0.04,
                "detectability_auc_ci_high": acc + 0.04, "detectability_auc_p_value": auc_p,
                "detectability_jsd_lower_bound": 0.1, "n_train_per_class": 100.0}

    table = pd.DataFrame([row("a", s, 0.9, p, p / 10) for s, p in enumerate([1e-6, 2e-6, 0.3])]
                         + [row("b", s, 0.52, p, p) for s, p in enumerate([0.02, 0.4, 0.6])])
    summary = detect_summary(table).set_index("source")
    assert summary.loc["a", "p"] == f"{1.5 * 2e-6:.2g}" and summary.loc["b", "p"] == f"{1.5 * 0.4:.2g}"
    assert summary.loc["a", "p (AUC)"] == f"{1.5 * 2e-7:.2g}"
    # BH over the two cells: the smaller p times 2, the larger as it is.
    assert summary.loc["a", "q"] == f"{2 * 1.5 * 2e-6:.2g}" and summary.loc["b", "q"] == f"{1.5 * 0.4:.2g}"
    # Three seeds: the mean with a t interval (0.9 exactly, so a zero-width one); one seed: its own interval.
    assert summary.loc["a", "accuracy"] == "0.900 [0.900, 0.900]"
    one = detect_summary(table[table["seed"] == 0]).set_index("source")
    assert one.loc["a", "accuracy"] == "0.900 [0.850, 0.950]" and one.loc["a", "AUC"] == "0.900 [0.860, 0.940]"


def test_mix_summary_pairs_arms_by_seed_against_real_only_and_between_modes():
    import pandas as pd

    from synthdata.metrics.stats import pack_decisions
    from synthdata.results import mix_summary, mix_table, mode_differences

    rng = np.random.default_rng(7)
    n, rows, decisions = 400, [], {}
    for seed, luck in enumerate([-0.05, 0.0, 0.05]):  # a large seed effect that every arm of the seed shares
        base = rng.uniform(size=n) < 0.8 + luck
        for mode, ratio, extra in [("augment", 0.0, 0), ("augment", 1.0, 8), ("replace", 1.0, -12)]:
            correct = base.copy()
            flip = np.flatnonzero(~base if extra > 0 else base)[: abs(extra)]
            correct[flip] = extra > 0  # exactly `extra` test images more (or fewer) right than real-only
            arm = f"{mode}/r={ratio:g}/seed{seed}"
            decisions[arm] = pack_decisions(correct)
            rows.append({"arm": arm, "mode": mode, "ratio": ratio, "seed": seed, "downstream_accuracy": correct.mean(),
                         "n_real": 100, "n_synthetic": int(100 * ratio), "n_test": n})
    table = mix_table(rows, decisions)
    summary = mix_summary(table).set_index(["mode", "ratio"])
    # 8 / 400 more right in every seed: no spread, so no t interval, and the sign-flip p of 3 seeds at its floor.
    assert summary.loc[("augment", 1.0), "Δ vs real-only"] == "+0.020"
    assert summary.loc[("augment", 1.0), "p (t) vs real-only"] == "0.25"
    assert summary.loc[("replace", 1.0), "Δ vs real-only"] == "-0.030"
    # McNemar per seed: 8 discordant images all one way, p = 2 / 2^8; combined over three equal seeds: 1.5 x that.
    assert summary.loc[("augment", 1.0), "p (McNemar) vs real-only"] == f"{1.5 * 2 / 2**8:.2g}"
    between = mode_differences(table).set_index("ratio")
    assert between.loc[1.0, "Δ augment - replace"] == "+0.050" and between.loc[1.0, "p (t) augment - replace"] == "0.25"
    from synthdata.results import format_mix_table

    # The note names the test, and the one used where the seeds' differences are all equal.
    assert "p (t): paired t-test over seeds (where every seed's difference is the same: no interval, and the exact sign-flip test" \
        in format_mix_table(table)
    assert pd.isna(pd.to_numeric(summary.loc[("augment", 0.0), "Δ vs real-only"], errors="coerce"))  # no difference to itself


def test_mover_interval_of_a_difference_and_loop_types_compared_by_seed():
    import pandas as pd

    from synthdata.metrics.stats import mover_difference
    from synthdata.results import loop_differences

    # MOVER from two symmetric intervals of half-widths 0.03 and 0.04: the difference's half-width is 0.05.
    d = mover_difference(0.9, 0.87, 0.93, 0.6, 0.56, 0.64)
    assert d.value == pytest.approx(0.3) and (d.low, d.high) == (pytest.approx(0.25), pytest.approx(0.35))

    def rows(seeds: list[int]) -> list[dict]:
        out = []
        for seed in seeds:
            for loop_type, acc in (("augment", 0.95 + 0.01 * seed), ("replace", 0.80 + 0.01 * seed + 0.001 * seed)):
                out.append({"arm": f"{loop_type}/seed{seed}", "group": loop_type, "loop_type": loop_type, "seed": seed,
                            "generation": 3, "downstream_accuracy": acc, "downstream_accuracy_ci_low": acc - 0.02,
                            "downstream_accuracy_ci_high": acc + 0.02})
        return out

    one = loop_differences(pd.DataFrame(rows([0]))).iloc[0]
    assert one["difference"] == "replace - augment" and one["seeds"] == 1 and one["p"] == ""
    assert one["Δ (95% CI)"] == f"{-0.15:+.3f} [{-0.15 - 0.02 * 2**0.5:+.3f}, {-0.15 + 0.02 * 2**0.5:+.3f}]"
    several = loop_differences(pd.DataFrame(rows([0, 1, 2]))).iloc[0]
    # -0.15, -0.149, -0.148: a tiny spread, a narrow t interval and a clear paired t-test (far below the sign-flip
    # test's 0.25 with 3 seeds).
    t = stats.ttest_1samp([-0.15, -0.149, -0.148], 0.0).pvalue
    assert several["seeds"] == 3 and several["p"] == f"{t:.2g}" and float(several["p"]) < 0.001
    from synthdata.results import LOOP_DIFFERENCE_NOTE

    assert "p: paired t-test over seeds (where every seed's difference is the same" in LOOP_DIFFERENCE_NOTE


def test_every_metric_has_a_range_and_intervals_and_figure_bands_keep_to_it(tmp_path, monkeypatch):
    """A toy loop's W2 over two seeds (0.1, 3.3): its t interval [-18.7, 22.1] is cut at 0; negative zeros print as 0."""
    import pandas as pd

    from synthdata import figures
    from synthdata.metrics.registry import METRICS
    from synthdata.results import loop_differences, loop_summary

    for info in METRICS:
        low, high = info.bounds
        assert low < high, info.name
    assert number(-1e-6, ".4f") == "0.0000" and number(-0.0, ".3f", signed=True) == "+0.000" and number(-0.02, ".1f") == "0.0"
    assert number(-0.06, ".1f") == "-0.1"

    rows = []
    for seed, (w2, var, det) in enumerate([(0.1, 0.0, 0.95), (3.3, 2e-7, 0.05)]):
        for loop_type, shift in (("replace", 0.0), ("augment", 1.0)):
            rows += [{"arm": f"{loop_type}/seed{seed}", "group": loop_type, "loop_type": loop_type, "seed": seed, "generation": g,
                      "w2_to_truth": w2 + shift * (g == 1), "fitted_variance": var, "detectability": det if loop_type == "replace" else 0.5,
                      "detectability_ci_low": 0.0, "detectability_ci_high": 1.0} for g in (0, 1)]
    table = pd.DataFrame(rows)
    summary = loop_summary(table).set_index(["group", "gen"])
    w2 = summary.loc[("replace", 1), "W2 to truth"]
    assert w2.startswith("1.700 [0.000, ") and "-" not in w2, w2
    assert summary.loc[("replace", 1), "fitted var"] == "0.0000 [0.0000, 0.0000]"  # not [-0.0000, 0.0000]
    assert summary.loc[("replace", 1), "detectability"] == "0.500 [0.000, 1.000]"  # an accuracy stays in [0, 1]
    diff = loop_differences(table).set_index("metric")
    assert diff.loc["detectability", "Δ (95% CI)"] == "+0.000 [-1.000, +1.000]"  # an accuracy's difference: in [-1, 1]

    bands = {}
    save = figures._save

    def keep_band(fig, path):  # what the figure draws, read before it is written
        bands[path.stem] = [c.get_paths()[0].vertices[:, 1] for c in fig.axes[0].collections if c.get_paths()]
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_band)
    figures.metric_figures(table, tmp_path)
    assert bands["w2_to_truth"] and min(v.min() for v in bands["w2_to_truth"]) >= 0.0
    assert max(v.max() for v in bands["detectability"]) <= 1.0
