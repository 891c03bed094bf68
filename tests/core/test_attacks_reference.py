"""Known-answer tests of the reference-model, loss-LR and unlearning attacks on synthetic phi."""

import functools
import math
import time

import numpy as np
import pytest
import sklearn.linear_model
from scipy.special import log_ndtr
from sklearn.linear_model import LogisticRegression

from unlearn.attacks import AttackInput, Signals, run_attack
from unlearn.attacks.base import AttackRefused, ReferenceSignals, ShadowSignals
from unlearn.attacks.reference import STD_FLOOR, lira_online, rmia_population_split
from unlearn.attacks.unlearning import EPSILON_CAP, example_epsilons, forgetting_quality
from unlearn.metrics import roc_auc

LIRA = ("lira_offline", "lira_offline_global", "lira_online", "lira_online_global")
REFERENCE_ATTACKS = (*LIRA, "rmia_offline")


def _normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _signals(loss):
    loss = np.asarray(loss, dtype=np.float64)
    p = np.exp(-loss)
    return Signals(loss=loss, confidence=p, logit_confidence=np.log(p / (1 - p + 1e-300)),
                   entropy=np.zeros_like(loss), modified_entropy=np.zeros_like(loss), correct=np.ones_like(loss))


def _inputs(references=None, shadows=None, forget_loss=None, test_loss=None, seed=0):
    forget_loss = np.full(8, 0.5) if forget_loss is None else forget_loss
    test_loss = np.full(8, 0.5) if test_loss is None else test_loss
    return AttackInput(_signals(forget_loss), _signals(np.full(8, 0.1)), _signals(test_loss), seed=seed,
                       references=references, shadows=shadows)


def _references(rng, *, n_forget=1500, n_test=1500, k=128, delta=1.0, target_delta=None, spread=3.0, sigma=1.0,
                views=1):
    """Planted LiRA world: OUT phi ~ N(mu_i, sigma_i^2), IN phi ~ N(mu_i + delta, sigma_i^2), mu_i ~ N(0, spread^2).

    The target trained on the forget samples (shifted by ``target_delta``, default ``delta``) and not on the test ones.
    """
    target_delta = delta if target_delta is None else target_delta
    n = n_forget + n_test
    centre = rng.normal(0.0, spread, n)  # (N,)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,))
    is_in = rng.random((k, n)) < 0.5  # (K, N)
    is_in[0], is_in[1] = True, False  # every sample has at least one IN and one OUT reference
    values = centre[None, :, None] + delta * is_in[..., None] + sigma[None, :, None] * rng.normal(size=(k, n, views))
    target = centre[:, None] + sigma[:, None] * rng.normal(size=(n, views))  # (N, A)
    target[:n_forget] += target_delta
    return ReferenceSignals(target[:n_forget], target[n_forget:], values[:, :n_forget], values[:, n_forget:],
                            is_in[:, :n_forget], is_in[:, n_forget:])


def _auc(name, inputs, **options):
    result = run_attack(name, inputs, **options)
    return roc_auc(result.member_scores, result.nonmember_scores)


def _small_references(out_forget, out_test, target_forget, target_test):
    """All-OUT references from lists of per-sample observations (ragged lists padded with IN entries)."""
    samples = [*out_forget, *out_test]
    k = max(len(s) for s in samples)
    values = np.zeros((k, len(samples), 1))
    is_in = np.ones((k, len(samples)), dtype=bool)
    for i, obs in enumerate(samples):
        values[: len(obs), i, 0] = obs
        is_in[: len(obs), i] = False
        values[len(obs):, i, 0] = 1e3  # IN observations: must not affect offline scores
    n_f = len(out_forget)
    return ReferenceSignals(np.array(target_forget, float)[:, None], np.array(target_test, float)[:, None],
                            values[:, :n_f], values[:, n_f:], is_in[:, :n_f], is_in[:, n_f:])


# ---------------------------------------------------------------- LiRA: known AUCs


@pytest.mark.parametrize("attack", ["lira_online_global", "lira_offline_global"])
def test_lira_recovers_the_closed_form_auc_of_a_planted_shift(attack):
    # Equal unit variances and a shift of 1: the statistic is monotone in phi - mu_i, so the AUC is
    # Phi(delta / sqrt(2)) even though per-sample centres vary with std 3 (raw phi is near chance).
    refs = _references(np.random.default_rng(0), delta=1.0)
    expected = _normal_cdf(1.0 / math.sqrt(2))  # 0.760
    assert _auc(attack, _inputs(refs)) == pytest.approx(expected, abs=0.025)
    raw = roc_auc(refs.target_forget[:, 0], refs.target_test[:, 0])
    assert raw < 0.62  # the per-sample calibration is what recovers the signal


@pytest.mark.parametrize("attack", LIRA)
def test_lira_per_example_variants_are_close_to_the_closed_form_with_many_references(attack):
    refs = _references(np.random.default_rng(1), delta=1.0)
    assert _auc(attack, _inputs(refs)) == pytest.approx(_normal_cdf(1.0 / math.sqrt(2)), abs=0.04)


@pytest.mark.parametrize("attack", REFERENCE_ATTACKS)
def test_identical_in_and_out_distributions_give_chance(attack):
    refs = _references(np.random.default_rng(2), delta=0.0)
    assert _auc(attack, _inputs(refs)) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("attack", REFERENCE_ATTACKS)
def test_sign_convention_members_score_higher(attack):
    # centres spread 1 in phi: with wider spreads p_y saturates and RMIA (which works on p_y) loses power
    refs = _references(np.random.default_rng(3), n_forget=300, n_test=300, k=32, delta=4.0, spread=1.0)
    assert _auc(attack, _inputs(refs)) > 0.95


def test_per_example_variance_wins_when_sample_spreads_differ():
    # Half the samples have sigma 0.2, half sigma 5, all shifted by 1. Per-example Gaussians separate the
    # low-noise half almost perfectly: AUC ~ (1 + 1 + 1 + Phi(0.2/sqrt 2)) / 4 = 0.89. One shared sigma ranks
    # by phi - mu alone: ~ (1 + 2 Phi(0.2) + Phi(0.2/sqrt 2)) / 4 = 0.68.
    rng = np.random.default_rng(4)
    sigma = np.where(rng.random(3000) < 0.5, 0.2, 5.0)
    refs = _references(rng, delta=1.0, sigma=sigma)
    per_example, shared = _auc("lira_online", _inputs(refs)), _auc("lira_online_global", _inputs(refs))
    assert per_example == pytest.approx(0.889, abs=0.03)
    assert shared == pytest.approx(0.679, abs=0.03)


def test_global_variance_wins_with_few_references():
    # Three or so observations per hypothesis make each per-example std noisy (the LiRA README's advice).
    rng = np.random.default_rng(5)
    refs = _references(rng, k=6, delta=1.0)
    assert _auc("lira_online_global", _inputs(refs)) > _auc("lira_online", _inputs(refs)) + 0.03


# ---------------------------------------------------------------- LiRA: hand-computed values


def test_offline_scores_match_the_one_sided_formula_by_hand():
    # Sample 0: OUT obs (-1, 0, 1): median 0, std (ddof 0) sqrt(2/3). Sample 1: (-3, 0, 3): median 0, std sqrt(6).
    # Pooled within-sample std: sqrt((2 + 18) / (2 + 2)) = sqrt(5).
    refs = _small_references([[-1, 0, 1]], [[-3, 0, 3]], target_forget=[1.0], target_test=[1.0])
    per = run_attack("lira_offline", _inputs(refs))
    assert per.member_scores[0] == pytest.approx(log_ndtr(1.0 / math.sqrt(2 / 3)))
    assert per.nonmember_scores[0] == pytest.approx(log_ndtr(1.0 / math.sqrt(6)))
    assert per.extra["global_std_out"] == pytest.approx(math.sqrt(5))
    shared = run_attack("lira_offline_global", _inputs(refs))
    assert shared.member_scores[0] == pytest.approx(log_ndtr(1.0 / math.sqrt(5)))
    assert shared.nonmember_scores[0] == pytest.approx(log_ndtr(1.0 / math.sqrt(5)))


def test_centre_is_the_median_and_spread_the_ddof0_std():
    # OUT obs (0, 0, 3): median 0 (the mean would be 1), std around the mean sqrt((1 + 1 + 4) / 3) = sqrt(2).
    refs = _small_references([[0.0, 0.0, 3.0]], [[0.0, 0.0, 3.0]], target_forget=[1.0], target_test=[0.0])
    result = run_attack("lira_offline", _inputs(refs))
    assert result.member_scores[0] == pytest.approx(log_ndtr(1.0 / math.sqrt(2)))
    assert result.nonmember_scores[0] == pytest.approx(math.log(0.5))


def test_offline_is_one_sided_a_sample_far_below_the_out_models_is_not_a_member():
    obs = [-1.0, 0.0, 1.0]
    refs = _small_references([obs, obs, obs], [obs], target_forget=[-10.0, 0.0, 3.0], target_test=[0.5])
    scores = run_attack("lira_offline", _inputs(refs)).member_scores
    assert scores[0] < scores[1] < scores[2]  # a two-sided density test would rank -10 as most member-like
    assert scores[1] == pytest.approx(math.log(0.5))


def test_online_scores_match_the_log_likelihood_ratio_by_hand():
    # One sample with IN obs (2, 3, 4) and OUT obs (-1, 0, 1), seen twice (forget and test).
    values = np.array([2.0, 3.0, 4.0, -1.0, 0.0, 1.0])[:, None, None].repeat(2, axis=1)  # (6, 2, 1)
    is_in = np.array([True, True, True, False, False, False])[:, None].repeat(2, axis=1)
    refs = ReferenceSignals(np.array([[2.5]]), np.array([[0.2]]), values[:, :1], values[:, 1:], is_in[:, :1],
                            is_in[:, 1:])
    s = math.sqrt(2 / 3)

    def llr(phi):
        return (-0.5 * ((phi - 3) / s) ** 2) - (-0.5 * (phi / s) ** 2)  # equal stds: the log(s) terms cancel

    result = run_attack("lira_online", _inputs(refs))
    assert result.member_scores[0] == pytest.approx(llr(2.5))
    assert result.nonmember_scores[0] == pytest.approx(llr(0.2))
    shared = run_attack("lira_online_global", _inputs(refs))
    # pooled IN and OUT stds both sqrt(4 / 4) = 1
    assert shared.extra["global_std_in"] == pytest.approx(1.0)
    assert shared.member_scores[0] == pytest.approx(-0.5 * 0.5**2 + 0.5 * 2.5**2)


def test_global_std_is_centred_on_each_sample_not_the_uncentred_std():
    rng = np.random.default_rng(6)
    refs = _references(rng, n_forget=200, n_test=200, k=16, delta=0.0, spread=50.0, sigma=1.0)
    result = run_attack("lira_offline_global", _inputs(refs))
    assert result.extra["global_std_out"] == pytest.approx(1.0, abs=0.05)
    uncentred = np.concatenate([refs.forget, refs.test], axis=1).std()
    assert uncentred > 20  # what mi_lira_2021's fixed variance would use


def test_samples_with_too_few_observations_fall_back_to_the_global_std():
    # Forget sample 0 has one OUT observation (0.0); sample 1 has (-1, 0, 1) and the test sample (-3, 0, 3).
    refs = _small_references([[0.0], [-1, 0, 1]], [[-3, 0, 3]], target_forget=[1.0, 1.0], target_test=[1.0])
    pooled = math.sqrt(20 / 4)  # sample 0 contributes no degrees of freedom
    scores = run_attack("lira_offline", _inputs(refs)).member_scores
    assert scores[0] == pytest.approx(log_ndtr(1.0 / pooled))
    assert scores[1] == pytest.approx(log_ndtr(1.0 / math.sqrt(2 / 3)))
    # min_observations=4 sends every sample to the pooled std
    scores = run_attack("lira_offline", _inputs(refs), min_observations=4).member_scores
    assert scores[1] == pytest.approx(log_ndtr(1.0 / pooled))


def test_missing_hypotheses_raise_and_name_it():
    refs = _small_references([[0.0, 1.0], []], [[0.0, 1.0]], target_forget=[0.0, 0.0], target_test=[0.0])
    with pytest.raises(ValueError, match="no OUT observations for 1 forget"):
        run_attack("lira_offline", _inputs(refs))
    with pytest.raises(ValueError, match="no OUT observations"):
        run_attack("rmia_offline", _inputs(refs))
    all_out = _small_references([[0.0, 1.0]], [[0.0, 1.0]], target_forget=[0.0], target_test=[0.0])
    with pytest.raises(ValueError, match="no IN observations for 1 forget"):
        lira_online(_inputs(all_out))
    with pytest.raises(ValueError, match="min_observations"):
        run_attack("lira_offline", _inputs(all_out), min_observations=1)
    with pytest.raises(ValueError, match="unexpected keyword"):
        run_attack("lira_offline_global", _inputs(all_out), min_observations=3)


def test_std_floor_keeps_scores_finite_and_ordered():
    constant = [2.0, 2.0, 2.0]
    refs = _small_references([constant, constant], [constant], target_forget=[2.0 + 1e-2, 50.0], target_test=[2.0])
    result = run_attack("lira_offline", _inputs(refs))  # run_attack rejects non-finite scores
    assert result.member_scores[0] == pytest.approx(log_ndtr(1e-2 / STD_FLOOR))
    assert result.nonmember_scores[0] == pytest.approx(math.log(0.5))
    assert result.member_scores[1] >= result.member_scores[0] > result.nonmember_scores[0]


def test_per_augmentation_statistics_are_averaged():
    values = np.array([[-1.0, 10.0], [0.0, 12.0], [1.0, 14.0]])[:, None, :]  # (K=3, N=1, A=2)
    out = np.zeros((3, 1), dtype=bool)
    refs = ReferenceSignals(np.array([[1.0, 11.0]]), np.array([[0.0, 12.0]]), values, values, out, out)
    s0, s1 = math.sqrt(2 / 3), math.sqrt(8 / 3)
    result = run_attack("lira_offline", _inputs(refs))
    assert result.member_scores[0] == pytest.approx(0.5 * (log_ndtr(1 / s0) + log_ndtr(-1 / s1)))
    assert result.nonmember_scores[0] == pytest.approx(math.log(0.5))


# ---------------------------------------------------------------- RMIA


def _logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


def _rmia_references(target_forget_p, target_test_p, ref_p_forget=None, ref_p_test=None):
    """One OUT reference; p arrays are (N, A). Reference p defaults to 0.5 everywhere (Pr(x) constant)."""
    tf, tt = np.atleast_2d(target_forget_p), np.atleast_2d(target_test_p)
    rf = np.full_like(tf, 0.5) if ref_p_forget is None else np.atleast_2d(ref_p_forget)
    rt = np.full_like(tt, 0.5) if ref_p_test is None else np.atleast_2d(ref_p_test)
    return ReferenceSignals(_logit(tf), _logit(tt), _logit(rf)[None], _logit(rt)[None],
                            np.zeros((1, len(tf)), bool), np.zeros((1, len(tt)), bool))


def _split(n_test, seed=0, fraction=0.5):
    return rmia_population_split(n_test, fraction, seed)


def test_rmia_known_answer_one_population_one_denominator():
    # Pr(x) is the same for all samples, so ratio(x) ~ p_target(x). Test p: 0.2, 0.5, 0.8, 0.3.
    test_p = np.array([0.2, 0.5, 0.8, 0.3])
    refs = _rmia_references([[0.9], [0.4]], test_p[:, None])
    population, negatives = _split(4)
    assert len(population) == 2 and not set(population) & set(negatives)
    result = run_attack("rmia_offline", _inputs(refs))
    z = test_p[population]
    np.testing.assert_allclose(result.member_scores, [np.mean(0.9 >= z), np.mean(0.4 >= z)])
    np.testing.assert_allclose(result.nonmember_scores, [np.mean(p >= z) for p in test_p[negatives]])
    assert result.extra["population_size"] == 2
    strict = run_attack("rmia_offline", _inputs(refs), gamma=2.0)
    np.testing.assert_allclose(strict.member_scores, [np.mean(0.9 / z >= 2), np.mean(0.4 / z >= 2)])


def test_rmia_never_trained_target_has_chance_auc_despite_ties():
    # Issue #12's known answer: a target that never saw the forget set must score AUC 0.5 in
    # expectation. With gamma 2 almost every count ties at 0; the old per-set denominators
    # (N_T for forget, N_T - 1 for test) ranked every tied test sample above every tied forget
    # sample (AUC 0.375 here). One population and one denominator give chance.
    rng = np.random.default_rng(3)
    tf, tt = rng.choice([0.3, 0.7], (400, 1)), rng.choice([0.3, 0.7], (800, 1))  # counts tie in two values
    refs = _rmia_references(tf, tt, np.full_like(tf, 0.6), np.full_like(tt, 0.6))
    result = run_attack("rmia_offline", _inputs(refs), gamma=2.0)
    assert len(np.unique(result.member_scores)) == 2  # the regime of the bug: every count tied
    assert roc_auc(result.member_scores, result.nonmember_scores) == pytest.approx(0.5, abs=0.02)
    # and a member-shifted target is still detected
    shifted = _rmia_references(np.full_like(tf, 0.95), tt, np.full_like(tf, 0.6), np.full_like(tt, 0.6))
    detected = run_attack("rmia_offline", _inputs(shifted), gamma=1.0)
    assert roc_auc(detected.member_scores, detected.nonmember_scores) > 0.7  # 0.76: test p 0.7 ties at 1 too


def test_rmia_normalises_each_sample_by_its_out_references():
    # a = 1: Pr(x) = mean OUT p. Same target p 0.6, but one sample is "easy" (references also give 0.6).
    refs = _rmia_references([[0.6], [0.6]], [[0.3], [0.45]], ref_p_forget=[[0.6], [0.2]], ref_p_test=[[0.5], [0.5]])
    population, negatives = _split(2)
    ratios_z = np.array([0.6, 0.9])[population]  # test ratios 0.3/0.5 and 0.45/0.5
    result = run_attack("rmia_offline", _inputs(refs), a=1.0)
    # ratios: forget 1.0 and 3.0, both beat every population point at gamma 1
    np.testing.assert_allclose(result.member_scores, [1.0, 1.0])
    result = run_attack("rmia_offline", _inputs(refs), a=1.0, gamma=1.5)
    np.testing.assert_allclose(result.member_scores, [np.mean(1.0 / ratios_z >= 1.5), 1.0])


def test_rmia_offline_prior_uses_a():
    # Pr(x) = ((1 + a) mean_OUT + 1 - a) / 2. With a = 0.3, ref p 0.9 -> Pr 0.935, ref p 0.1 -> Pr 0.415.
    # Two identical test samples: whichever is the population, ratio(z) is the same.
    refs = _rmia_references([[0.5]], [[0.8], [0.8]], ref_p_forget=[[0.1]], ref_p_test=[[0.9], [0.9]])
    # a = 0.3: ratio(x) = 0.5 / 0.415 = 1.205; ratio(z) = 0.8 / 0.935 = 0.856: 1.41
    assert run_attack("rmia_offline", _inputs(refs), a=0.3, gamma=1.1).member_scores[0] == 1.0
    assert run_attack("rmia_offline", _inputs(refs), a=0.3, gamma=1.5).member_scores[0] == 0.0
    # a = 0: Pr(x) = 0.55 and 0.95: ratio(x) = 0.909, ratio(z) = 0.842: 1.08
    assert run_attack("rmia_offline", _inputs(refs), a=0.0, gamma=1.1).member_scores[0] == 0.0
    assert run_attack("rmia_offline", _inputs(refs), a=0.0, gamma=1.05).member_scores[0] == 1.0


def test_rmia_majority_vote_over_augmentations():
    # Per-view p of x: (0.6, 0.6, 0.1) against z (0.5, 0.5, 0.5): decisions (yes, yes, no) -> counts;
    # against z (0.7, 0.5, 0.5): (no, yes, no) -> does not. Averaging log p over views would beat neither.
    same = [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    assert run_attack("rmia_offline", _inputs(_rmia_references([[0.6, 0.6, 0.1]], same))).member_scores[0] == 1.0
    other = [[0.7, 0.5, 0.5], [0.7, 0.5, 0.5]]
    assert run_attack("rmia_offline", _inputs(_rmia_references([[0.6, 0.6, 0.1]], other))).member_scores[0] == 0.0
    # With two views, one yes and one no is a tie, which is a no.
    refs = _rmia_references([[0.6, 0.1], [0.6, 0.6]], [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(run_attack("rmia_offline", _inputs(refs)).member_scores, [0.0, 1.0])


def test_rmia_is_invariant_to_a_common_scaling_of_probabilities():
    rng = np.random.default_rng(7)
    tf, tt = rng.uniform(0.05, 0.9, (40, 2)), rng.uniform(0.05, 0.9, (60, 2))
    rf, rt = rng.uniform(0.05, 0.9, (40, 2)), rng.uniform(0.05, 0.9, (60, 2))
    base = run_attack("rmia_offline", _inputs(_rmia_references(tf, tt, rf, rt)), a=1.0)
    scaled_target = run_attack("rmia_offline", _inputs(_rmia_references(0.5 * tf, 0.5 * tt, rf, rt)), a=1.0)
    scaled_refs = run_attack("rmia_offline", _inputs(_rmia_references(tf, tt, 0.5 * rf, 0.5 * rt)), a=1.0)
    for other in (scaled_target, scaled_refs):
        np.testing.assert_array_equal(other.member_scores, base.member_scores)
        np.testing.assert_array_equal(other.nonmember_scores, base.nonmember_scores)
    # any a: scaling the target's probabilities cancels in ratio(x) / ratio(z)
    base = run_attack("rmia_offline", _inputs(_rmia_references(tf, tt, rf, rt)), a=0.3)
    scaled = run_attack("rmia_offline", _inputs(_rmia_references(0.5 * tf, 0.5 * tt, rf, rt)), a=0.3)
    np.testing.assert_array_equal(scaled.member_scores, base.member_scores)
    shifted = run_attack("rmia_offline", _inputs(_rmia_references(tf, tt, 0.5 * rf, 0.5 * rt)), a=0.3)
    assert not np.array_equal(shifted.member_scores, base.member_scores)  # the (1 - a) term breaks it


def test_rmia_uses_only_out_references():
    refs = _references(np.random.default_rng(8), n_forget=50, n_test=80, k=8, delta=1.0)
    base = run_attack("rmia_offline", _inputs(refs))
    values = refs.forget.copy()
    values[refs.forget_in] += 7.0
    changed_in = ReferenceSignals(refs.target_forget, refs.target_test, values, refs.test, refs.forget_in, refs.test_in)
    np.testing.assert_array_equal(run_attack("rmia_offline", _inputs(changed_in)).member_scores, base.member_scores)
    values = refs.forget.copy()
    values[~refs.forget_in] += 7.0
    changed_out = ReferenceSignals(refs.target_forget, refs.target_test, values, refs.test, refs.forget_in,
                                   refs.test_in)
    assert not np.array_equal(run_attack("rmia_offline", _inputs(changed_out)).member_scores, base.member_scores)


@pytest.mark.parametrize("views", [1, 3])
def test_rmia_chunked_equals_unchunked(views):
    refs = _references(np.random.default_rng(9), n_forget=37, n_test=53, k=4, delta=1.0, views=views)
    whole = run_attack("rmia_offline", _inputs(refs), chunk_size=10_000)
    for chunk in (1, 7, None):
        part = run_attack("rmia_offline", _inputs(refs), chunk_size=chunk)
        np.testing.assert_array_equal(part.member_scores, whole.member_scores)
        np.testing.assert_array_equal(part.nonmember_scores, whole.nonmember_scores)


def test_rmia_rejects_bad_options():
    refs = _rmia_references([[0.6]], [[0.5], [0.4]])
    for options in ({"a": 1.5}, {"gamma": 0.0}, {"chunk_size": 0}):
        with pytest.raises(ValueError):
            run_attack("rmia_offline", _inputs(refs), **options)
    with pytest.raises(ValueError, match="population_fraction"):
        run_attack("rmia_offline", _inputs(refs), population_fraction=1.0)
    with pytest.raises(AttackRefused, match="one population and one negative"):
        run_attack("rmia_offline", _inputs(_rmia_references([[0.6]], [[0.5]])))


@pytest.mark.slow
def test_rmia_handles_ten_thousand_by_ten_thousand():
    refs = _references(np.random.default_rng(10), n_forget=10_000, n_test=10_000, k=2, delta=1.0)
    start = time.perf_counter()
    result = run_attack("rmia_offline", _inputs(refs))
    assert time.perf_counter() - start < 60
    assert roc_auc(result.member_scores, result.nonmember_scores) > 0.6


# ---------------------------------------------------------------- loss LR


def test_loss_lr_scores_are_out_of_fold(monkeypatch):
    models = []  # keeps every fitted instance alive, in fitting order

    class SpyRegression(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            models.append(self)
            self.fit_values, self.scored_values = set(X[:, 0].tolist()), []
            return super().fit(X, y, sample_weight)

        def decision_function(self, X):
            self.scored_values.extend(X[:, 0].tolist())
            return super().decision_function(X)

    # loss_lr imports scikit-learn when it runs (not at import time), so the spy goes where it imports from.
    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", SpyRegression)
    rng = np.random.default_rng(11)
    member, other = rng.uniform(0.0, 1.0, 60), rng.uniform(0.5, 2.0, 60)  # distinct values identify samples
    result = run_attack("loss_lr", _inputs(forget_loss=member, test_loss=other))
    assert len(models) == 5 + 10  # five fold models and ten shuffle-split models
    for model in models:
        assert model.scored_values and not model.fit_values & set(model.scored_values)  # never scores its own fit
    out_of_fold = [v for model in models[:5] for v in model.scored_values]
    assert sorted(out_of_fold) == sorted([*member, *other])  # every sample scored exactly once
    assert roc_auc(result.member_scores, result.nonmember_scores) > 0.8


def test_loss_lr_known_answers_and_balancing():
    rng = np.random.default_rng(12)
    separated = run_attack("loss_lr", _inputs(forget_loss=rng.uniform(0, 0.1, 50), test_loss=rng.uniform(1, 2, 200)))
    assert len(separated.member_scores) == len(separated.nonmember_scores) == 50
    assert separated.extra["cv_accuracy"] == 1.0
    assert roc_auc(separated.member_scores, separated.nonmember_scores) == 1.0
    same = run_attack("loss_lr", _inputs(forget_loss=rng.exponential(1, 2000), test_loss=rng.exponential(1, 2000)))
    assert same.extra["cv_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert roc_auc(same.member_scores, same.nonmember_scores) == pytest.approx(0.5, abs=0.05)


def test_loss_lr_subsample_is_seeded():
    rng = np.random.default_rng(13)
    member, other = rng.uniform(0, 1, 30), rng.uniform(0, 1, 300)
    first = run_attack("loss_lr", _inputs(forget_loss=member, test_loss=other, seed=1))
    again = run_attack("loss_lr", _inputs(forget_loss=member, test_loss=other, seed=1))
    other_seed = run_attack("loss_lr", _inputs(forget_loss=member, test_loss=other, seed=2))
    np.testing.assert_array_equal(first.nonmember_scores, again.nonmember_scores)
    assert first.extra == again.extra
    assert not np.array_equal(first.nonmember_scores, other_seed.nonmember_scores)


def test_loss_lr_rejects_tiny_sets():
    with pytest.raises(ValueError, match="at least 6 forget and 6 test"):
        run_attack("loss_lr", _inputs(forget_loss=np.linspace(0, 1, 5), test_loss=np.linspace(0, 1, 100)))
    run_attack("loss_lr", _inputs(forget_loss=np.linspace(0, 1, 6), test_loss=np.linspace(1, 2, 6)))


# ---------------------------------------------------------------- U-LiRA


def _shadows(rng, *, n_forget=1500, models=32, shift=0.0, spread=3.0):
    centre = rng.normal(0.0, spread, n_forget)
    unlearned = centre + shift + rng.normal(size=(models, n_forget))
    retrained = centre + rng.normal(size=(models, n_forget))
    ones = np.ones((models, n_forget), dtype=bool)
    return ShadowSignals(unlearned, ones, retrained, ones.copy(), centre + shift + rng.normal(size=n_forget),
                         centre + rng.normal(size=n_forget))


def test_ulira_is_at_chance_when_unlearning_matches_retraining():
    result = run_attack("ulira", _inputs(shadows=_shadows(np.random.default_rng(14), shift=0.0)))
    assert roc_auc(result.member_scores, result.nonmember_scores) == pytest.approx(0.5, abs=0.05)
    assert result.extra["pair_accuracy"] == pytest.approx(0.5, abs=0.05)


def test_ulira_detects_well_separated_unlearning():
    result = run_attack("ulira", _inputs(shadows=_shadows(np.random.default_rng(15), shift=5.0)))
    assert roc_auc(result.member_scores, result.nonmember_scores) > 0.99
    assert result.extra["pair_accuracy"] > 0.97


def test_ulira_recovers_the_closed_form_auc():
    # shift 1, unit variances: the LR is monotone in phi - centre, so AUC ~ Phi(1 / sqrt 2)
    result = run_attack("ulira", _inputs(shadows=_shadows(np.random.default_rng(16), models=64, shift=1.0)))
    assert roc_auc(result.member_scores, result.nonmember_scores) == pytest.approx(0.760, abs=0.04)


def test_ulira_hand_computed_with_fallback_and_masks():
    # Example 0: H_u obs (1, 2, 3) -> median 2, std sqrt(2/3); H_r obs (-1, 0, 1) -> 0, sqrt(2/3).
    # Example 1: a single H_u observation (5.0, masked others) -> global H_u std; H_r obs (4, 5, 6).
    unlearned = np.array([[1.0, 5.0], [2.0, 99.0], [3.0, 99.0]])
    u_mask = np.array([[True, True], [True, False], [True, False]])
    retrained = np.array([[-1.0, 4.0], [0.0, 5.0], [1.0, 6.0]])
    r_mask = np.ones((3, 2), dtype=bool)
    shadows = ShadowSignals(unlearned, u_mask, retrained, r_mask, np.array([1.5, 5.0]), np.array([0.5, 5.5]))
    result = run_attack("ulira", _inputs(shadows=shadows))
    s = math.sqrt(2 / 3)
    assert result.member_scores[0] == pytest.approx(-0.5 * ((1.5 - 2) / s) ** 2 + 0.5 * (1.5 / s) ** 2)
    assert result.nonmember_scores[0] == pytest.approx(-0.5 * ((0.5 - 2) / s) ** 2 + 0.5 * (0.5 / s) ** 2)
    g = 1.0  # pooled H_u std: sum of squares 2 over 2 degrees of freedom
    s1 = math.sqrt(2 / 3)
    expected = (-0.5 * (0.5 / g) ** 2 - math.log(g)) - (-0.5 * (0.5 / s1) ** 2 - math.log(s1))
    assert result.nonmember_scores[1] == pytest.approx(expected)
    assert result.extra["pair_accuracy"] == pytest.approx(0.5 * (0.5 + 1.0))  # member 1 scores log(s1/g) < 0
    no_obs = ShadowSignals(unlearned, np.zeros_like(u_mask), retrained, r_mask, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"no H_u \(unlearned\) observations"):
        run_attack("ulira", _inputs(shadows=no_obs))


# ---------------------------------------------------------------- competition epsilon


def _epsilon_inputs(unlearned, retrained):
    unlearned, retrained = np.asarray(unlearned, float), np.asarray(retrained, float)
    return _inputs(shadows=ShadowSignals(unlearned, np.ones(unlearned.shape, bool), retrained,
                                         np.ones(retrained.shape, bool), np.zeros(unlearned.shape[1]),
                                         np.zeros(unlearned.shape[1])))


def test_epsilon_identical_samples_give_zero_and_full_quality():
    phi = np.random.default_rng(17).normal(0, 1, (64, 40))
    result = run_attack("epsilon_score", _epsilon_inputs(phi, phi.copy()))
    np.testing.assert_array_equal(result.member_scores, np.zeros(40))
    assert result.nonmember_scores.shape == (0,)
    assert result.extra == {"forgetting_quality": 1.0, "epsilon_mean": 0.0, "epsilon_max": 0.0, "n_models": 64.0}


def test_epsilon_grows_and_quality_falls_with_the_shift():
    # With 64 models per side the max over ~160k rules is biased upward even for one distribution (about 1.6
    # here); the competition used 512. The ordering is what must hold.
    rng = np.random.default_rng(18)
    results = [run_attack("epsilon_score", _epsilon_inputs(rng.normal(0, 1, (64, 40)), rng.normal(shift, 1, (64, 40))))
               for shift in (0.0, 1.0, 2.0)]
    means = [r.extra["epsilon_mean"] for r in results]
    quality = [r.extra["forgetting_quality"] for r in results]
    assert means[0] < means[1] < means[2] and means[0] < 2.0
    assert quality[0] > quality[1] > quality[2] and quality[0] > 0.1


def test_epsilon_disjoint_samples_hit_the_cap():
    rng = np.random.default_rng(19)
    result = run_attack("epsilon_score", _epsilon_inputs(rng.normal(0, 1, (16, 10)), rng.normal(20, 1, (16, 10))))
    np.testing.assert_array_equal(result.member_scores, np.full(10, EPSILON_CAP))
    assert result.extra["forgetting_quality"] == 0.0


def test_epsilon_degenerate_spreads():
    rng = np.random.default_rng(20)
    spread = rng.normal(0, 1, (16, 1))
    # zero-variance unlearned vs spread retrained: the peakiness guard
    assert example_epsilons(np.zeros((16, 1)), spread)[0] == EPSILON_CAP
    assert example_epsilons(spread, np.zeros((16, 1)))[0] == EPSILON_CAP
    # nearly constant (range ratio 0.005 < 0.01) is guarded too; a ratio of 0.5 is swept normally
    narrow = np.linspace(0, 1, 16)[:, None]
    assert example_epsilons(0.005 * narrow, narrow)[0] == EPSILON_CAP
    assert example_epsilons(0.5 + 0.5 * narrow, narrow)[0] < EPSILON_CAP
    # both constant: equal -> indistinguishable, different -> perfectly separable
    assert example_epsilons(np.full((16, 1), 3.0), np.full((16, 1), 3.0))[0] == 0.0
    assert example_epsilons(np.full((16, 1), 3.0), np.full((16, 1), 3.5))[0] == EPSILON_CAP
    result = run_attack("epsilon_score", _epsilon_inputs(np.full((16, 2), 3.0), np.full((16, 2), 3.0)))
    assert result.extra["forgetting_quality"] == 1.0


def test_epsilon_hand_computed_overlap():
    # Unlearned (10, 11, 12, 13) vs retrained (12.5, 13.5, 14.5, 15.5); retrained has the larger median.
    # No rule separates them; the best has FPR = FNR = 1/4 (e.g. t in (12.5, 13]): eps = ln((3/4 - d) / (1/4)).
    unlearned = np.array([[10.0], [11.0], [12.0], [13.0]])
    retrained = np.array([[12.5], [13.5], [14.5], [15.5]])
    result = run_attack("epsilon_score", _epsilon_inputs(unlearned, retrained))
    assert result.member_scores[0] == pytest.approx(math.log(3 - 4e-5), abs=1e-12)
    # N = 4: cut ceil(ln 3) = 2; eps 1.0986 lies in [1.0, 1.5) -> 2^-2
    assert result.extra["forgetting_quality"] == 0.25
    loose = run_attack("epsilon_score", _epsilon_inputs(unlearned, retrained), delta=0.1)
    assert loose.member_scores[0] == pytest.approx(math.log(0.65 / 0.25))


def test_forgetting_quality_bucket_arithmetic():
    # N = 64: cut = ceil(ln 63) = 5, ten buckets of width 0.5
    eps = np.array([0.0, 0.49, 0.5, 1.2, 4.9, 5.0, 50.0])
    expected = np.array([1, 1, 0.5, 0.25, 2.0**-9, 0, 0])
    assert forgetting_quality(eps, 64) == pytest.approx(expected.mean())
    assert forgetting_quality(np.array([6.9]), 512) == pytest.approx(2.0**-13)  # cut 7: 14 buckets
    assert forgetting_quality(np.array([7.0]), 512) == 0.0
    assert forgetting_quality(np.array([0.0]), 2) == 0.0  # ceil(ln 1) = 0: two models resolve nothing
    with pytest.raises(ValueError):
        forgetting_quality(np.array([0.0]), 1)


def _brute_force_epsilon(unlearned, retrained, delta=1e-5):
    """metric.py's sweep written out rule by rule, for one example (no degenerate spreads)."""
    pos, neg = (retrained, unlearned) if np.median(retrained) > np.median(unlearned) else (unlearned, retrained)
    n = len(pos)

    @functools.cache
    def eps(fp, fn):
        if fp == 0 and fn == 0:
            return math.inf
        if fp == 0 or fn == 0:
            return None
        fpr, fnr = fp / n, fn / n
        terms = [math.log(1 - delta - a) - math.log(b) for a, b in ((fpr, fnr), (fnr, fpr)) if 1 - delta - a > 0]
        return max(0.0, *terms) if terms else None

    found = []
    low, high = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    for t in np.linspace(low, high, math.ceil((high - low) * 100)):
        found.append(eps(int((neg >= t).sum()), int((pos < t).sum())))
    peak, other = (pos, neg) if np.ptp(pos) < np.ptp(neg) else (neg, pos)
    width = np.ptp(peak)
    for right in np.linspace(peak.max() - 2, peak.max() + 2, 400):
        left = np.linspace(right - width - 2, right - width + 2, 400)[:, None]  # every l for this r
        inside_peak = ((peak >= left) & (peak <= right)).sum(axis=1)
        inside_other = ((other >= left) & (other <= right)).sum(axis=1)
        found.extend(eps(int(o), n - int(p)) for o, p in zip(inside_other, inside_peak, strict=True))
    kept = [e for e in found if e is not None]
    return min(EPSILON_CAP, max(kept)) if kept else 0.0


def test_vectorised_epsilon_matches_a_rule_by_rule_sweep():
    rng = np.random.default_rng(21)
    n_models = 6
    unlearned = rng.normal(0, 1, (n_models, 4)) + np.array([0.0, 0.5, 1.5, 3.0])
    retrained = rng.normal(0, 1, (n_models, 4)) * np.array([1.0, 2.0, 0.5, 1.0])
    fast = example_epsilons(unlearned, retrained)
    slow = [_brute_force_epsilon(unlearned[:, i], retrained[:, i]) for i in range(4)]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    assert len(set(np.round(fast, 6))) > 1  # the examples really differ


def test_epsilon_score_rejects_partial_or_unequal_shadows():
    phi = np.zeros((4, 3))
    partial = ShadowSignals(phi, np.eye(4, 3, dtype=bool), phi, np.ones((4, 3), bool), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="every unlearned and retrained model"):
        run_attack("epsilon_score", _inputs(shadows=partial))
    with pytest.raises(ValueError, match="as many unlearned as retrained"):
        run_attack("epsilon_score", _epsilon_inputs(np.zeros((4, 3)), np.zeros((5, 3))))


@pytest.mark.slow
def test_epsilon_score_is_fast_enough_for_a_real_audit():
    rng = np.random.default_rng(22)
    start = time.perf_counter()
    result = run_attack("epsilon_score", _epsilon_inputs(rng.normal(0, 1, (64, 500)), rng.normal(0.2, 1, (64, 500))))
    assert time.perf_counter() - start < 20
    assert 0.0 < result.extra["forgetting_quality"] < 1.0
