"""The gate's bootstrap machinery: paired resampling weights, weighted AUCs and accuracies, intervals.

Pure numpy. Split from :mod:`unlearn.gate`, which decides; here is how each metric's point estimate and
per-resample draws are computed, the same way for the candidate, the parent and any retrain, so the
bootstrap stays paired. :class:`ScoredModel`, what one model brings to the gate, lives here as their input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoredModel:
    """One model's evidence on the gate's fixed sample sets (the same samples for every model).

    Attributes:
        member: Attack name -> scores on D_F (higher = member), shape (N_F,), or (1 + K, N_F) for an
            attack that depends on K >= 3 reference models: row 0 scored with all of them, row k with all but
            reference k (leave-one-out replicates, :func:`auc_draws` turns them into the reference-set
            part of the interval).
        nonmember: Attack name -> scores on that attack's negatives, shape (N_neg,) or (1 + K, N_neg).
            Index i must be the same sample for every model (attacks that split D_T must split
            it with the same seed for every model).
        forget_correct: 1.0 where the model classifies a D_F sample correctly, shape (N_F,).
        test_correct: The same on the negatives D_T, shape (N_T,).
        utility_correct: The same on a separate utility set (whole-class requests: unseen samples of the
            other classes, :attr:`unlearn.verification.EvalSets.others`), shape (N_U,); None: the utility
            checks measure the negatives.
    """

    member: Mapping[str, np.ndarray]
    nonmember: Mapping[str, np.ndarray]
    forget_correct: np.ndarray
    test_correct: np.ndarray
    utility_correct: np.ndarray | None = None


def rows_dot(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``weights @ values`` (one sum per row, or one sum for 1-D weights), summed by numpy itself, not BLAS.

    Why: the gate's products are small (1,000 resamples x the samples), and OpenBLAS splits each one over every
    core and then leaves its threads spin-waiting for the next call, CPU taken from what runs next, the following
    model's forward passes in torch's own thread pool above all. On 2 cores (benchmarks/gate_power.py, digits,
    1,000 forget samples, 2 seeds) a batch's verification took 0.45-0.49 CPU s with the products on BLAS and
    0.32-0.35 with this sum (the forward passes 99 against 59-63 ms a set); in the benchmark's full run the median
    went from 6.1% to 4.9% of a retrain. ``einsum`` without ``optimize`` sums in numpy's own loops, so the result
    also no longer depends on the BLAS library's threading or the machine's core count.
    """
    return np.einsum("...n,n->...", weights, values)


def stable_seed(*parts: object) -> int:
    """A seed derived from ``parts`` that does not change between processes (unlike ``hash``)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap counts (how often each sample is drawn), shape (B, n).

    Drawn as B x n uniform indices and counted with one ``bincount`` (the same distribution as
    a multinomial, about 10x faster than ``Generator.multinomial`` over many categories).
    """
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def score_replicates(scores: np.ndarray, name: str) -> np.ndarray:
    """Scores as (S, N) replicates, checked finite and non-empty."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected scores of shape (N,) or (S, N) with N >= 1, got {np.shape(scores)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return array


def weighted_auc(member: np.ndarray, nonmember: np.ndarray, member_w: np.ndarray, nonmember_w: np.ndarray
                 ) -> np.ndarray:
    """ROC-AUC (ties count one half) under bootstrap count weights, vectorised over resamples.

    Args:
        member: Member scores, shape (N_F,).
        nonmember: Non-member scores, shape (N_T,).
        member_w: Weights, shape (B, N_F).
        nonmember_w: Weights, shape (B, N_T).

    Returns:
        AUC per resample, shape (B,).
    """
    order = np.argsort(nonmember, kind="stable")
    sorted_neg = nonmember[order]
    left = np.searchsorted(sorted_neg, member, side="left")  # negatives strictly below
    right = np.searchsorted(sorted_neg, member, side="right")  # ... or equal
    cum = np.concatenate([np.zeros((len(nonmember_w), 1)), np.cumsum(nonmember_w[:, order], axis=1)], axis=1)
    credit = 0.5 * (cum[:, left] + cum[:, right])  # (B, N_F): weighted count below, ties half
    return (member_w * credit).sum(axis=1) / (member_w.sum(axis=1) * nonmember_w.sum(axis=1))


def interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def auc_draws(model: ScoredModel, attack: str, wf: np.ndarray, wn: np.ndarray,
              multipliers: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Point AUC (all references) and one draw per resample: samples resampled, plus the reference-set spread.

    Why: an attack scored against reference models depends on which ones happened to be trained (their seeds
    and pool halves), and a bootstrap over samples for fixed models leaves that out (measured:
    benchmarks/results/reference_variance*.md). With leave-one-out replicates (rows 1..K of the scores, each
    without one reference), resample b adds ``sqrt((K - 1) / K) * sum_k g[b, k] * d_k``, where
    ``d_k = AUC_-k - mean_j AUC_-j`` and ``g`` are standard normal multipliers. Given the scores that term is
    Gaussian with the delete-one jackknife variance ``(K - 1) / K * sum_k d_k^2``, and symmetric and continuous:
    added to a unimodal bootstrap distribution it can only move the percentile interval's ends outward. (Picking
    one left-out reference per resample has the same variance, but with K > 1 / alpha a single unusual
    reference falls outside the percentiles and the interval shifts instead: an inconclusive candidate could
    pass, an undetected parent read as detected; a review of 2026-12-06.) ``multipliers`` are shared by every
    model of a decision, so the term is linear in each model's deviations and the candidate - parent (or
    candidate - retrain) difference gets the jackknife variance of the difference: paired.

    Args:
        model: The model's scores.
        attack: Which attack's scores.
        wf / wn: Bootstrap weights of the forget samples and the negatives, shape (B, N).
        multipliers: Standard normal draws, shape (B, K), for models scored with K leave-one-out replicates;
            None when the decision's models have none.

    Raises:
        ValueError: If the scores' replicates do not match ``multipliers`` (every model of a decision must be
            scored against the same references the same way).
    """
    member = score_replicates(model.member[attack], f"{attack} member scores")
    nonmember = score_replicates(model.nonmember[attack], f"{attack} non-member scores")
    expected = 1 if multipliers is None else 1 + multipliers.shape[1]
    if len(member) != expected or len(nonmember) != len(member):
        raise ValueError(f"{attack}: models disagree on the number of score replicates (expected {expected} rows: "
                         "every model of a decision must be scored against the same references)")
    ones_f, ones_n = np.ones((1, member.shape[1])), np.ones((1, nonmember.shape[1]))
    point = float(weighted_auc(member[0], nonmember[0], ones_f, ones_n)[0])
    draws = weighted_auc(member[0], nonmember[0], wf, wn)
    if multipliers is None:
        return point, draws
    deviations = _left_out_deviations(member, nonmember)
    return point, draws + np.sqrt((len(deviations) - 1) / len(deviations)) * rows_dot(multipliers, deviations)


def _left_out_deviations(member: np.ndarray, nonmember: np.ndarray) -> np.ndarray:
    """AUC without each reference (rows 1..K) minus their mean, shape (K,)."""
    ones_f, ones_n = np.ones((1, member.shape[1])), np.ones((1, nonmember.shape[1]))
    left_out = np.array([weighted_auc(m, n, ones_f, ones_n)[0]
                         for m, n in zip(member[1:], nonmember[1:], strict=True)])
    return left_out - left_out.mean()


def gap_draws(model: ScoredModel, wf: np.ndarray, wn: np.ndarray,
               match: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, np.ndarray]:
    """forget accuracy - test accuracy: point and per resample, with pseudo-observations.

    One correct and one wrong pseudo-sample are appended to each set (Agresti-Caffo) and
    resampled with the real ones (``wf``/``wn`` have n + 2 columns). Why: a model that
    classifies all n samples correctly (common: 98 % accuracy, 100 samples) gives a plain
    percentile bootstrap an interval of width zero, which made exact retrains "conclusively"
    fail and parents "detected" on nothing. The pseudo-samples are the same for every model,
    so the pairing is kept.

    ``match``: (forget weights, negative weights), each with the two pseudo-samples, from
    :func:`label_match`: the test accuracy gets the forget set's label mix, so the never-trained
    target of 0 holds for a forget set of other classes than the test set's.
    """
    fc = np.concatenate([np.asarray(model.forget_correct, np.float64), [1.0, 0.0]])
    tc = np.concatenate([np.asarray(model.test_correct, np.float64), [1.0, 0.0]])
    if match is None:
        return float(fc.mean() - tc.mean()), rows_dot(wf, fc) / wf.sum(axis=1) - rows_dot(wn, tc) / wn.sum(axis=1)
    on_forget, on_test = match
    forget_w, test_w = wf * on_forget, wn * on_test
    return (float(rows_dot(on_forget, fc) / on_forget.sum() - rows_dot(on_test, tc) / on_test.sum()),
            rows_dot(forget_w, fc) / forget_w.sum(axis=1) - rows_dot(test_w, tc) / test_w.sum(axis=1))


def label_match(forget_labels: np.ndarray, negative_labels: np.ndarray
                 ) -> tuple[tuple[np.ndarray, np.ndarray] | None, int, int]:
    """Weights giving the negatives the forget set's label mix, for ``forget_acc``.

    Why: ``forget_acc``'s target of 0 says a never-trained model is as accurate on D_F as on the negatives,
    which holds only when both hold the classes in the same proportions. A per-sample request of one
    person's samples of one class (a face-recognition identity) compared class c with every class: a
    class harder than the average made the exact retrain "over-forget" conclusively, an easier one hid a
    model that still remembered.

    Returns:
        ``(forget weights, negative weights)``, each with the two pseudo-samples (weight 1): a negative of
        class c weighs c's share of D_F x (matched negatives / c's negatives), so the matched negatives
        weigh as many as they are and the pseudo-samples keep their share; forget samples of a class with
        no negative weigh 0 (nothing to compare them with). None when the negatives already come in the
        forget set's mix (every weight 1). Then the counts behind the check: matched forget samples and
        matched negatives.
    """
    classes, counts = np.unique(forget_labels, return_counts=True)
    present = np.isin(classes, negative_labels)
    on_test = np.isin(negative_labels, classes[present])
    n_matched = int(on_test.sum())
    n_forget = int(np.isin(forget_labels, classes[present]).sum())
    if not present.any():
        return (np.concatenate([np.zeros(len(forget_labels)), [1.0, 1.0]]),
                np.concatenate([np.zeros(len(negative_labels)), [1.0, 1.0]])), 0, 0
    share = counts[present] / counts[present].sum()
    weights = np.zeros(len(negative_labels))
    for label, part in zip(classes[present], share, strict=True):
        mask = negative_labels == label
        weights[mask] = part * n_matched / mask.sum()
    forget_w = np.isin(forget_labels, classes[present]).astype(np.float64)
    if present.all() and n_matched == len(negative_labels) and np.allclose(weights, 1.0):
        return None, n_forget, n_matched
    return (np.concatenate([forget_w, [1.0, 1.0]]), np.concatenate([weights, [1.0, 1.0]])), n_forget, n_matched


def accuracy_draws(model: ScoredModel, wn: np.ndarray, keep: np.ndarray | None = None, *,
                    utility_set: bool = False) -> tuple[float, np.ndarray]:
    """Accuracy on the negatives (``keep``: only those, a mask over them; the two pseudo-samples always count),
    or on the separate utility set (``utility_set``; ``wn`` then holds its weights)."""
    correct = model.utility_correct if utility_set else model.test_correct
    tc = np.concatenate([np.asarray(correct, np.float64), [1.0, 0.0]])
    if keep is not None:
        mask = np.concatenate([keep, [True, True]])
        tc, wn = tc[mask], wn[:, mask]
    return float(tc.mean()), rows_dot(wn, tc) / wn.sum(axis=1)


def target_draws(point_draws: list[tuple[float, np.ndarray]], rng: np.random.Generator
                  ) -> tuple[float, np.ndarray]:
    """Mean over retrains; each resample averages retrains drawn with replacement (seed noise)."""
    points = np.array([p for p, _ in point_draws])
    draws = np.stack([d for _, d in point_draws])  # (R, B)
    if len(draws) == 1:
        return float(points[0]), draws[0]
    picks = rng.integers(0, len(draws), size=(len(draws), draws.shape[1]))  # (R, B)
    return float(points.mean()), draws[picks, np.arange(draws.shape[1])].mean(axis=0)
