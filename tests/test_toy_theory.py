"""The toy loops against theory (Shumailov et al.; Alemohammad et al.; Bertrand et al.).

With an ML Gaussian refit on n samples per generation, E[fitted variance at generation t]
= sigma^2 ((n-1)/n)^t in a `replace` loop, and sampling with temperature lambda adds a
factor lambda per generation after the first. Mixing in real data keeps it bounded.
"""
import numpy as np
import pytest
import torch

from loops.autophagy import Arm, GenerationResult, run_arm
from synthdata.data import study_splits
from synthdata.spec import parse_spec

N, T, SEEDS = 20, 30, 160


def toy_study(**generator) -> dict:
    return {
        "name": "toy",
        "data": {"source": "gaussian", "toy": {"dim": 1, "classes": 1, "std": 1.0, "train": N, "heldout": 2, "test": 2}},
        "generator": {"name": "gaussian", "ridge": 0.0, **generator},
        "metrics": ["toy"],
        "loop": {"types": ["replace"], "generations": T, "samples_per_generation": N},
        "tracking": {"checkpoints": False},
    }


def fitted_variances(study: dict, loop_type: str, seeds: int = SEEDS) -> np.ndarray:
    """(seeds, T) fitted variances; each seed draws its own real training set, as a study's seeds do."""
    out = np.zeros((seeds, T))
    spec = parse_spec(study)
    splits = study_splits(spec.data, range(seeds))
    for seed in range(seeds):
        results = [e for e in run_arm(spec, splits[seed], Arm(loop_type, seed)) if isinstance(e, GenerationResult)]
        out[seed] = [r.metrics["fitted_variance"] for r in results[1:]]
    return out


@pytest.fixture(scope="module")
def replace_runs() -> np.ndarray:
    torch.set_num_threads(1)
    return fitted_variances(toy_study(), "replace")


def test_replace_mean_variance_follows_the_closed_form(replace_runs):
    t = np.arange(1, T + 1)
    theory = ((N - 1) / N) ** t
    mean = replace_runs.mean(0)
    se = replace_runs.std(0, ddof=1) / np.sqrt(SEEDS)
    z = (mean - theory) / se
    assert np.all(np.abs(z) < 4), np.round(z, 2)
    # The mean of a product of T chi-square factors is heavy-tailed (at T = 30 its standard error over 160 seeds
    # is a third of the mean), so the sharp check is on the log: a sum of T i.i.d. terms, E log(chi2_{n-1} / n)
    # = digamma((n-1)/2) + log 2 - log n each.
    from scipy.special import digamma

    logs = np.log(replace_runs)
    log_theory = t * (digamma((N - 1) / 2) + np.log(2) - np.log(N))
    z_log = (logs.mean(0) - log_theory) / (logs.std(0, ddof=1) / np.sqrt(SEEDS))
    assert np.all(np.abs(z_log) < 4), np.round(z_log, 2)
    assert logs.mean(0)[-1] == pytest.approx(log_theory[-1], abs=4 * logs.std(0, ddof=1)[-1] / np.sqrt(SEEDS))


def test_seeds_replicate_the_real_draw_so_generation_one_matches_theory(replace_runs):
    """Generation 1 fits the real sample: over seeds its variance has the ML estimator's spread and mean (n-1)/n.

    With one real draw for every seed (`data.split_seed: 0`) the same number would come back in every seed."""
    first = replace_runs[:, 0]
    theory_sd = np.sqrt(2 * (N - 1)) / N  # sd of the ML variance of n normal samples (sigma = 1)
    assert abs(first.mean() - (N - 1) / N) < 4 * theory_sd / np.sqrt(SEEDS)
    assert 0.7 * theory_sd < first.std(ddof=1) < 1.3 * theory_sd
    fixed = fitted_variances({**toy_study(), "data": {**toy_study()["data"], "split_seed": 0}}, "replace", seeds=5)
    assert np.ptp(fixed[:, 0]) == 0


def test_replace_median_collapses_faster_than_the_mean(replace_runs):
    # The variance's distribution grows a heavy tail: its median falls well below its mean.
    assert np.median(replace_runs[:, -1]) < 0.6 * replace_runs[:, -1].mean()


def test_temperature_multiplies_the_variance_by_lambda_per_generation():
    lam, seeds = 0.9, 120
    runs = fitted_variances(toy_study(temperature=lam), "replace", seeds)
    t = np.arange(1, T + 1)
    theory = ((N - 1) / N) ** t * lam ** (t - 1)
    se = runs.std(0, ddof=1) / np.sqrt(seeds)
    assert np.all(np.abs(runs.mean(0) - theory) < 4 * se)


@pytest.mark.parametrize("loop_type", ["augment", "accumulate", "fresh"])
def test_real_data_keeps_the_variance_bounded(replace_runs, loop_type):
    runs = fitted_variances(toy_study(), loop_type, seeds=40)
    final = runs[:, -1]
    assert np.median(final) > 0.6  # bounded away from collapse...
    assert np.median(final) > 3 * np.median(replace_runs[:, -1])  # ...unlike replace
