"""Known-answer tests of the attack metrics (members positive, higher score = member)."""

import math
import time
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from unlearn.metrics import (
    AttackMetrics,
    MetricRefused,
    _bootstrap_samples,
    _metric_fn,
    attack_metrics,
    best_balanced_accuracy,
    bootstrap_auc_interval,
    checked_tpr_at_fpr,
    lowest_supported_fpr,
    paired_bootstrap_difference,
    roc_auc,
    tpr_at_fpr,
)

PHI = NormalDist().cdf
Z = NormalDist().inv_cdf


def _gaussian(delta, n_pos, n_neg, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(delta, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)


def _sk_reference(member, nonmember, fpr):
    """sklearn/LiRA/Privacy Meter formulas: (auc, balanced accuracy, TPR at fpr)."""
    y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    s = np.r_[member, nonmember]
    f, t, _ = roc_curve(y, s)
    return roc_auc_score(y, s), np.max(1 - (f + (1 - t)) / 2), t[np.where(f <= fpr)[0][-1]]


# --- point metrics ---------------------------------------------------------------------------------------------------


def test_gaussian_scores_match_the_closed_forms():
    delta = 1.0
    member, nonmember = _gaussian(delta, 20000, 20000, seed=0)
    assert roc_auc(member, nonmember) == pytest.approx(PHI(delta / math.sqrt(2)), abs=0.01)
    assert best_balanced_accuracy(member, nonmember) == pytest.approx(PHI(delta / 2), abs=0.01)
    for fpr in (0.1, 0.01):
        assert tpr_at_fpr(member, nonmember, fpr) == pytest.approx(1 - PHI(Z(1 - fpr) - delta), abs=0.02)


def test_perfect_separation():
    member, nonmember = np.array([5.0, 6.0, 7.0]), np.array([0.0, 1.0, 2.0, 3.0])
    assert roc_auc(member, nonmember) == 1.0
    assert best_balanced_accuracy(member, nonmember) == 1.0
    for fpr in (0.0, 0.001, 0.5, 1.0):
        assert tpr_at_fpr(member, nonmember, fpr) == 1.0


def test_reversed_orientation_is_not_flipped():
    member, nonmember = np.array([0.0, 1.0]), np.array([2.0, 3.0])
    assert roc_auc(member, nonmember) == 0.0
    assert best_balanced_accuracy(member, nonmember) == 0.5
    assert tpr_at_fpr(member, nonmember, 0.5) == 0.0
    member, nonmember = _gaussian(-2.0, 2000, 2000, seed=1)
    assert roc_auc(member, nonmember) == pytest.approx(PHI(-2 / math.sqrt(2)), abs=0.02)
    assert roc_auc(member, nonmember) < 0.15


def test_identical_distributions_give_half_with_an_interval_covering_it():
    member, nonmember = _gaussian(0.0, 1000, 1000, seed=2)
    result = attack_metrics(member, nonmember, resamples=200, seed=0)
    assert result.values["auc"] == pytest.approx(0.5, abs=0.04)
    low, high = result.intervals["auc"]
    assert low < 0.5 < high


def test_hand_computed_example_with_a_tie():
    # thresholds 3, 2, 1, 0 -> (tp, fp) = (1, 0), (3, 1), (3, 2), (3, 3); the 2-vs-2 pair counts half
    member, nonmember = np.array([3.0, 2.0, 2.0]), np.array([2.0, 1.0, 0.0])
    assert roc_auc(member, nonmember) == pytest.approx(8 / 9, abs=1e-15)
    assert best_balanced_accuracy(member, nonmember) == pytest.approx(5 / 6, abs=1e-15)
    assert tpr_at_fpr(member, nonmember, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(member, nonmember, 0.3) == pytest.approx(1 / 3)
    assert tpr_at_fpr(member, nonmember, 1 / 3) == 1.0


def test_a_tie_is_one_threshold():
    # All scores tied: the only thresholds are "nothing" (0, 0) and "everything" (1, 1).
    member, nonmember = np.ones(4), np.ones(4)
    assert roc_auc(member, nonmember) == 0.5
    assert best_balanced_accuracy(member, nonmember) == 0.5
    assert tpr_at_fpr(member, nonmember, 0.75) == 0.0
    assert tpr_at_fpr(member, nonmember, 1.0) == 1.0


def test_heavily_tied_scores_match_sklearn():
    rng = np.random.default_rng(3)
    for n_pos, n_neg in ((50, 70), (400, 300)):
        member, nonmember = rng.integers(0, 6, n_pos) + 1.0, rng.integers(0, 5, n_neg).astype(float)
        for fpr in (0.0, 0.05, 0.2, 0.5):
            auc, bacc, tpr = _sk_reference(member, nonmember, fpr)
            assert roc_auc(member, nonmember) == pytest.approx(auc, abs=1e-12)
            assert best_balanced_accuracy(member, nonmember) == pytest.approx(bacc, abs=1e-12)
            assert tpr_at_fpr(member, nonmember, fpr) == pytest.approx(tpr, abs=1e-12)


def test_empty_sets_are_named():
    with pytest.raises(ValueError, match="^member scores are empty"):
        roc_auc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="^non-member scores are empty"):
        attack_metrics(np.array([1.0]), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        best_balanced_accuracy(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(np.array([1.0]), np.array([0.0]), 1.5)


# --- refusal ---------------------------------------------------------------------------------------------------------


def test_lowest_supported_fpr_arithmetic():
    assert lowest_supported_fpr(450) == pytest.approx(10 / 450)
    assert lowest_supported_fpr(10000) == pytest.approx(0.001)
    assert lowest_supported_fpr(2000, min_negatives=20) == pytest.approx(0.01)
    assert lowest_supported_fpr(5) == 1.0
    with pytest.raises(ValueError):
        lowest_supported_fpr(0)


def test_too_few_negatives_are_refused():
    member, nonmember = _gaussian(1.0, 450, 450, seed=4)
    result = attack_metrics(member, nonmember, resamples=20)
    assert set(result.refused) == {"tpr_at_fpr_0.01", "tpr_at_fpr_0.001"}  # 4.5 and 0.45 false positives < 10
    assert "4.5" in result.refused["tpr_at_fpr_0.01"] and "450" in result.refused["tpr_at_fpr_0.01"]
    assert "0.45" in result.refused["tpr_at_fpr_0.001"]
    assert "tpr_at_fpr_0.01" not in result.values and "tpr_at_fpr_0.01" not in result.intervals
    assert result.values["lowest_fpr"] == pytest.approx(10 / 450)
    assert result.values["tpr_at_lowest_fpr"] == tpr_at_fpr(member, nonmember, 10 / 450)
    with pytest.raises(MetricRefused, match="0.45"):
        checked_tpr_at_fpr(member, nonmember, 0.001)
    with pytest.raises(ValueError):  # MetricRefused is a ValueError
        checked_tpr_at_fpr(member, nonmember, 0.01)
    assert checked_tpr_at_fpr(member, nonmember, 10 / 450) == result.values["tpr_at_lowest_fpr"]


def test_enough_negatives_are_accepted():
    member, nonmember = _gaussian(1.0, 500, 2000, seed=5)
    result = attack_metrics(member, nonmember, resamples=20)
    assert "tpr_at_fpr_0.01" in result.values and "tpr_at_fpr_0.01" in result.intervals  # 20 false positives
    assert set(result.refused) == {"tpr_at_fpr_0.001"}  # 2 false positives
    assert checked_tpr_at_fpr(member, nonmember, 0.01) == result.values["tpr_at_fpr_0.01"]
    assert checked_tpr_at_fpr(member + 10, np.zeros(10000), 0.001) == 1.0  # exactly 10, despite float rounding


def test_fewer_negatives_than_required_refuses_the_lowest_fpr_too():
    result = attack_metrics(np.array([1.0, 2.0]), np.array([0.0, 0.5, 0.7]), resamples=0)
    assert result.values["lowest_fpr"] == 1.0
    assert "tpr_at_lowest_fpr" in result.refused
    assert result.values["auc"] == 1.0


# --- AttackMetrics -----------------------------------------------------------------------------------------------


def test_names_and_flat_keys():
    member, nonmember = _gaussian(1.0, 300, 3000, seed=6)
    result = attack_metrics(member, nonmember, fprs=(0.05, 0.01, 0.001), resamples=10)
    assert isinstance(result, AttackMetrics)
    assert set(result.values) == {
        "auc",
        "balanced_accuracy",
        "tpr_at_fpr_0.05",
        "tpr_at_fpr_0.01",
        "tpr_at_lowest_fpr",
        "lowest_fpr",
    }
    assert set(result.intervals) == set(result.values) - {"lowest_fpr"}
    flat = result.flat("mia.loss")
    assert flat["mia.loss.auc"] == result.values["auc"]
    assert (flat["mia.loss.auc.ci_low"], flat["mia.loss.auc.ci_high"]) == result.intervals["auc"]
    assert "mia.loss.lowest_fpr.ci_low" not in flat
    assert not any("0.001" in key for key in flat)
    assert len(flat) == 6 + 2 * 5
    assert all(low <= high for low, high in result.intervals.values())
    assert attack_metrics(member, nonmember, resamples=0).intervals == {}


# --- bootstrap -------------------------------------------------------------------------------------------------------


def _slow_reference(member, nonmember, resamples, seed, fpr):
    """One sklearn call per resample, with the draw order the module documents."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(resamples):
        pos = member[rng.integers(0, len(member), len(member))]
        neg = nonmember[rng.integers(0, len(nonmember), len(nonmember))]
        rows.append(_sk_reference(pos, neg, fpr))
    return np.array(rows).T  # (3, resamples)


def test_vectorised_bootstrap_equals_a_slow_sklearn_loop():
    rng = np.random.default_rng(7)
    # rounded scores so that resamples are full of ties
    member, nonmember = np.round(rng.normal(0.8, 1, 120), 1), np.round(rng.normal(0, 1, 150), 1)
    fpr, resamples, seed = 0.1, 6, 11
    fns = {"auc": _metric_fn("auc", None), "bacc": _metric_fn("balanced_accuracy", None)}
    fns["tpr"] = _metric_fn("tpr_at_fpr", fpr)
    fast = _bootstrap_samples(member, nonmember, fns, resamples, seed)
    slow = _slow_reference(member, nonmember, resamples, seed, fpr)
    np.testing.assert_allclose(fast["auc"], slow[0], atol=1e-12)
    np.testing.assert_allclose(fast["bacc"], slow[1], atol=1e-12)
    np.testing.assert_allclose(fast["tpr"], slow[2], atol=1e-12)
    # and through the public interval, with quantiles taken as the old loop did
    result = attack_metrics(member, nonmember, fprs=(fpr,), min_negatives=1, resamples=resamples, seed=seed)
    for name, row in (("auc", 0), ("balanced_accuracy", 1), ("tpr_at_fpr_0.1", 2)):
        expected = np.quantile(slow[row], 0.025), np.quantile(slow[row], 0.975)
        np.testing.assert_allclose(result.intervals[name], expected, atol=1e-12)
    np.testing.assert_allclose(
        bootstrap_auc_interval(member, nonmember, resamples=resamples, seed=seed), result.intervals["auc"]
    )


def test_bootstrap_is_chunked_without_changing_the_draws(monkeypatch):
    import unlearn.metrics as metrics

    member, nonmember = _gaussian(0.5, 60, 40, seed=8)
    whole = attack_metrics(member, nonmember, fprs=(0.25,), resamples=30, seed=3)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 250)  # 2 resamples per chunk
    assert attack_metrics(member, nonmember, fprs=(0.25,), resamples=30, seed=3) == whole


def test_bootstrap_is_fast():
    member, nonmember = _gaussian(1.0, 1000, 1000, seed=9)
    start = time.perf_counter()
    attack_metrics(member, nonmember, resamples=200, seed=0)
    assert time.perf_counter() - start < 1.0


def test_auc_interval_covers_the_true_auc_in_most_repetitions():
    delta, reps = 1.0, 50
    truth = PHI(delta / math.sqrt(2))
    hits = 0
    for rep in range(reps):
        member, nonmember = _gaussian(delta, 200, 200, seed=100 + rep)
        low, high = bootstrap_auc_interval(member, nonmember, resamples=200, seed=rep)
        hits += low <= truth <= high
    assert hits >= 0.85 * reps


# --- paired difference -----------------------------------------------------------------------------------------------


def test_identical_models_differ_by_exactly_zero():
    member, nonmember = _gaussian(1.0, 300, 2000, seed=10)
    for metric, fpr in (("auc", None), ("balanced_accuracy", None), ("tpr_at_fpr", 0.01)):
        out = paired_bootstrap_difference(
            member, nonmember, member.copy(), nonmember.copy(), metric=metric, resamples=50, seed=0, fpr=fpr
        )
        assert out == (0.0, 0.0, 0.0)


def test_a_clearly_stronger_model_has_an_interval_excluding_zero():
    rng = np.random.default_rng(11)
    base_m, base_n = rng.normal(0, 1, 500), rng.normal(0, 1, 2000)
    strong_m, weak_m = base_m + 1.5, base_m + 0.5  # same samples, different separation
    for metric, fpr in (("auc", None), ("balanced_accuracy", None), ("tpr_at_fpr", 0.01)):
        diff, low, high = paired_bootstrap_difference(
            strong_m, base_n, weak_m, base_n, metric=metric, resamples=100, seed=0, fpr=fpr
        )
        assert 0 < low <= diff <= high
    diff, low, high = paired_bootstrap_difference(weak_m, base_n, strong_m, base_n, metric="auc", resamples=100, seed=0)
    assert low <= diff <= high < 0
    assert diff == pytest.approx(roc_auc(weak_m, base_n) - roc_auc(strong_m, base_n), abs=1e-15)


def test_pairing_narrows_the_interval_of_correlated_models():
    rng = np.random.default_rng(12)
    member_a, nonmember_a = rng.normal(1.0, 1, 400), rng.normal(0, 1, 400)
    member_b = member_a + rng.normal(0, 0.1, 400) - 0.05  # model b is a slightly noisier, weaker copy of a
    nonmember_b = nonmember_a + rng.normal(0, 0.1, 400)
    _, p_low, p_high = paired_bootstrap_difference(
        member_a, nonmember_a, member_b, nonmember_b, metric="auc", resamples=200, seed=0
    )
    # Shuffling b's order keeps b's metric but breaks the pairing: the same call becomes an unpaired bootstrap.
    _, u_low, u_high = paired_bootstrap_difference(
        member_a,
        nonmember_a,
        rng.permutation(member_b),
        rng.permutation(nonmember_b),
        metric="auc",
        resamples=200,
        seed=0,
    )
    assert (p_high - p_low) < 0.25 * (u_high - u_low)


def test_paired_arguments_are_checked():
    a, b = np.zeros(5), np.ones(4)
    with pytest.raises(ValueError, match="member scores differ in length"):
        paired_bootstrap_difference(a, a, b, a, metric="auc", resamples=5, seed=0)
    with pytest.raises(ValueError, match="non-member scores differ in length"):
        paired_bootstrap_difference(a, a, a, b, metric="auc", resamples=5, seed=0)
    with pytest.raises(ValueError, match="needs fpr"):
        paired_bootstrap_difference(a, a, a, a, metric="tpr_at_fpr", resamples=5, seed=0)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_difference(a, a, a, a, metric="accuracy", resamples=5, seed=0)
    with pytest.raises(MetricRefused):
        paired_bootstrap_difference(a, a, a, a, metric="tpr_at_fpr", fpr=0.01, resamples=5, seed=0)
