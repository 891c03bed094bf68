"""Per-example attacks built for unlearning, on repeated-pipeline (shadow) observations.

* U-LiRA -- Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More
  Careful Evaluations to Avoid a False Sense of Privacy" (arXiv 2403.01218, SaTML 2025): LiRA
  with the hypotheses "trained on, then unlearned" (H_u) and "never trained on" (H_r).
* The NeurIPS 2023 machine-unlearning competition's forgetting-quality score F
  (Triantafillou et al., arXiv 2406.09073; google-deepmind/unlearning_evaluation ``metric.py``):
  a per-example (epsilon, delta) estimate from decision rules that tell N unlearned models
  from N retrained ones, bucketed into F.

Both read :class:`~unlearn.attacks.base.ShadowSignals` (phi = logit-scaled confidence). See
shared/research/mia-and-peers.md sections 5.1 and 5.2.
"""

from __future__ import annotations

import math

import numpy as np

from unlearn.attacks.base import AttackInput, AttackResult, ShadowSignals, register_attack
from unlearn.attacks.reference import fit_gaussians, log_normal_density

EPSILON_CAP = 50.0  # metric.py EPSILON_CAP: epsilons are clipped to [0, 50]
THRESHOLDS_PER_UNIT = 100  # metric.py NUM_THRESHOLDS_PER_UNIT: grid density per unit of phi
PEAKY_RATIO = 0.01  # range(smaller) / range(larger) below this -> epsilon = cap
BUCKET_WIDTH = 0.5  # F gives 2^-k to epsilon in [k/2, (k+1)/2)
_BUFFER = 2.0  # metric.py's double-threshold margin, in phi units
_DOUBLE_GRID = math.ceil(2 * _BUFFER * THRESHOLDS_PER_UNIT)  # 400 right and 400 left thresholds per right one
_CHUNK = 16  # examples per vectorised double-threshold block: 16 x 400 x 400 rules


def _check_shadows(shadows: ShadowSignals | None) -> ShadowSignals:
    if shadows is None:
        raise ValueError("this attack needs shadow-pipeline signals")
    n_forget = len(shadows.target_unlearned)
    for name, values, mask in (("unlearned", shadows.unlearned, shadows.unlearned_mask),
                               ("retrained", shadows.retrained, shadows.retrained_mask)):
        if values.ndim != 2 or mask.shape != values.shape or values.shape[1] != n_forget:
            raise ValueError(f"ShadowSignals.{name}: expected (models, {n_forget}) with a mask of the same shape, "
                             f"got {values.shape} and mask {mask.shape}")
    if shadows.target_retrained.shape != (n_forget,):
        raise ValueError("ShadowSignals: target_unlearned and target_retrained must both have shape (N_F,)")
    return shadows


@register_attack("ulira", requires=("shadows",))
def ulira(inputs: AttackInput, *, min_observations: int = 2) -> AttackResult:
    """U-LiRA (Hayes et al. 2024): a per-example likelihood-ratio test for unlearning.

    For each forget example, Gaussians are fitted to phi under H_u (``unlearned`` where
    ``unlearned_mask``: models that trained on it and then unlearned it with the method under
    test) and H_r (``retrained`` where ``retrained_mask``: models that never trained on it):
    centre = median, spread = std (ddof 0), as in LiRA; examples with fewer than
    ``min_observations`` of a hypothesis use that hypothesis' pooled within-example std, and
    spreads are floored at :data:`unlearn.attacks.reference.STD_FLOOR`. The statistic is

        LR(phi) = log N(phi; mu_u, s_u^2) - log N(phi; mu_r, s_r^2).

    It runs on phi, not on 0/1 correctness as Deep Unlearn's ``consolidate_predictions.py``
    does (a 0/1 signal makes the std 0 and the test degenerate).

    Args:
        inputs: Attack inputs with ``shadows``.
        min_observations: Observations needed for an example's own std.

    Returns:
        Matched pairs: member_scores = LR(target_unlearned), nonmember_scores =
        LR(target_retrained), both (N_F,). 0.5 AUC is ideal (the unlearned model looks retrained).
        ``extra["pair_accuracy"]`` is the balanced accuracy of the rule LR > 0 on the pairs.

    Raises:
        ValueError: If an example has no observation of a hypothesis (the message names it).
    """
    shadows = _check_shadows(inputs.shadows)
    unlearned = fit_gaussians(shadows.unlearned[..., None].astype(np.float64), shadows.unlearned_mask.astype(bool),
                              hypothesis="H_u (unlearned)", per_example=True, min_observations=min_observations)
    retrained = fit_gaussians(shadows.retrained[..., None].astype(np.float64), shadows.retrained_mask.astype(bool),
                              hypothesis="H_r (retrained)", per_example=True, min_observations=min_observations)

    def ratio(phi: np.ndarray) -> np.ndarray:  # (N_F,) -> (N_F,)
        phi = phi.astype(np.float64)[:, None]
        return (log_normal_density(phi, unlearned.centre, unlearned.scale)
                - log_normal_density(phi, retrained.centre, retrained.scale))[:, 0]

    member, nonmember = ratio(shadows.target_unlearned), ratio(shadows.target_retrained)
    accuracy = 0.5 * (float(np.mean(member > 0.0)) + float(np.mean(nonmember <= 0.0)))
    return AttackResult(member, nonmember, {"pair_accuracy": accuracy})


def _epsilon_table(n_models: int, delta: float) -> np.ndarray:
    """Epsilon of a rule by its (false-positive, false-negative) counts, shape (N + 1, N + 1).

    metric.py ``_get_epsilons``: eps = max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR)
    - log FPR), clipped below at 0; FPR = FNR = 0 (perfect separation) is +inf; a rule with
    exactly one of them 0 is discarded ("insufficient samples"), here -inf, as is a rule whose
    two terms are both undefined (FPR = FNR = 1).
    """
    rate = np.arange(n_models + 1) / n_models
    fpr, fnr = rate[:, None], rate[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.where(1.0 - delta - fpr > 0, 1.0 - delta - fpr, np.nan)) - np.log(fnr)
        second = np.log(np.where(1.0 - delta - fnr > 0, 1.0 - delta - fnr, np.nan)) - np.log(fpr)
        table = np.fmax(first, second)  # NaN only where both are undefined
    table = np.where(np.isnan(table), -np.inf, np.maximum(table, 0.0))
    fp_zero, fn_zero = np.broadcast_to(fpr == 0, table.shape), np.broadcast_to(fnr == 0, table.shape)
    table = np.where(fp_zero ^ fn_zero, -np.inf, table)
    table[0, 0] = np.inf
    return table


def _single_threshold_best(positive: np.ndarray, negative: np.ndarray, table: np.ndarray) -> float:
    """Best epsilon of the rules "phi >= t means positive" for one example (metric.py single threshold).

    t runs over ``linspace(min, max, ceil((max - min) * 100))`` of the pooled values.

    Args:
        positive: phi of the side with the larger median, sorted, shape (N,).
        negative: phi of the other side, sorted, shape (N,).
        table: :func:`_epsilon_table`.

    Returns:
        The largest epsilon of a surviving rule, or -inf if none survives.
    """
    low, high = min(positive[0], negative[0]), max(positive[-1], negative[-1])
    count = math.ceil((high - low) * THRESHOLDS_PER_UNIT)
    if count == 0:
        return -math.inf
    thresholds = np.linspace(low, high, count)
    n = len(positive)
    false_neg = np.searchsorted(positive, thresholds, side="left")  # positives below t
    false_pos = n - np.searchsorted(negative, thresholds, side="left")  # negatives at or above t
    return float(table[false_pos, false_neg].max())


def _double_threshold_best(peaky: np.ndarray, other: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Best epsilon of the rules "l <= phi <= r means the peakier side", for a block of examples.

    metric.py: r runs over ``linspace(max(P) - 2, max(P) + 2, 400)`` and, for each r, l over
    ``linspace(r - w - 2, r - w + 2, 400)``, with P the side of smaller range w. Both grids
    have the same step s = 4 / 399, so l = min(P) - 4 + (i + j) s takes only 799 values; the
    in-interval count of a side is #{phi <= r_i} - #{phi < l_(i+j)} (0 when l > r). This is
    the reference grid in exact arithmetic (there, a rounding of (max - min) * 100 can add a
    401st right threshold).

    Args:
        peaky: phi of the side with the smaller range, shape (E, N).
        other: phi of the other side, shape (E, N).
        table: :func:`_epsilon_table`.

    Returns:
        Per example, the largest epsilon of a surviving rule or -inf, shape (E,).
    """
    n = peaky.shape[1]
    step = 2 * _BUFFER / (_DOUBLE_GRID - 1)
    offsets = np.arange(2 * _DOUBLE_GRID - 1) * step  # (799,)
    right = peaky.max(axis=1, keepdims=True) - _BUFFER + offsets[:_DOUBLE_GRID]  # (E, 400)
    left = peaky.min(axis=1, keepdims=True) - 2 * _BUFFER + offsets  # (E, 799)
    pair = np.add.outer(np.arange(_DOUBLE_GRID), np.arange(_DOUBLE_GRID))  # (400, 400): index of l_(i+j)

    def inside(values: np.ndarray) -> np.ndarray:  # (E, N) -> (E, 400, 400) counts in [l, r]
        upto_right = (values[:, :, None] <= right[:, None, :]).sum(axis=1, dtype=np.int32)  # (E, 400)
        below_left = (values[:, :, None] < left[:, None, :]).sum(axis=1, dtype=np.int32)  # (E, 799)
        return np.maximum(upto_right[:, :, None] - below_left[:, pair], 0)

    false_neg = n - inside(peaky)  # peaky models outside the interval
    false_pos = inside(other)  # other models inside it
    return table[false_pos, false_neg].reshape(len(peaky), -1).max(axis=1)


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = 1e-5) -> np.ndarray:
    """Per-example epsilon of the NeurIPS 2023 competition metric (metric.py ``_get_epsilons``), in numpy.

    Per example, the "positive" side is the one with the larger median (unlearned on a tie).
    Two rule families are swept: a single threshold (phi >= t means positive) and a double
    threshold (l <= phi <= r means the side with the smaller range); epsilon is the largest
    over surviving rules (see :func:`_epsilon_table`), clipped to [0, 50].

    Degenerate spreads, each handled before any sweep (metric.py divides 0 by 0 or sweeps an
    empty grid here):

    * both sides constant and equal: epsilon = 0 (no rule can tell them apart; metric.py's
      every rule is discarded and its assertion fails);
    * both sides constant and different: epsilon = cap (perfectly separable);
    * one side constant, the other not, or range ratio < 0.01: epsilon = cap (the peakiness
      guard, as in metric.py: a deterministic method is maximally distinguishable);
    * no rule survives (possible only when the grid cannot resolve the samples): epsilon = 0.

    Args:
        unlearned: phi of N unlearned models on each example, shape (N, N_F).
        retrained: phi of N retrained models, shape (N, N_F).
        delta: The delta of (epsilon, delta)-unlearning.

    Returns:
        Epsilons in [0, 50], shape (N_F,).
    """
    unlearned, retrained = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    if unlearned.ndim != 2 or unlearned.shape != retrained.shape:
        raise ValueError(f"unlearned and retrained must both be (N, N_F), got {unlearned.shape} and {retrained.shape}")
    if not (np.isfinite(unlearned).all() and np.isfinite(retrained).all()):
        raise ValueError("epsilon_score: phi must be finite")
    n_models, n_examples = unlearned.shape
    if n_models < 2:
        raise ValueError(f"epsilon_score needs at least 2 models per side, got {n_models}")
    table = _epsilon_table(n_models, delta)
    spread_u, spread_r = np.ptp(unlearned, axis=0), np.ptp(retrained, axis=0)  # (N_F,)
    largest, smallest = np.maximum(spread_u, spread_r), np.minimum(spread_u, spread_r)
    epsilons = np.zeros(n_examples)
    constant = largest == 0
    epsilons[constant] = np.where(unlearned[0, constant] == retrained[0, constant], 0.0, EPSILON_CAP)
    peaky = ~constant & (smallest < PEAKY_RATIO * largest)
    epsilons[peaky] = EPSILON_CAP
    swept = np.flatnonzero(~(constant | peaky))
    if len(swept):
        retrained_positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)  # metric.py's tie rule
        positive = np.where(retrained_positive, retrained, unlearned)[:, swept].T  # (S, N)
        negative = np.where(retrained_positive, unlearned, retrained)[:, swept].T  # (S, N)
        best = np.empty(len(swept))
        for row in range(len(swept)):  # each example has its own single-threshold grid size
            best[row] = _single_threshold_best(np.sort(positive[row]), np.sort(negative[row]), table)
        # metric.py: the peakier side is the positive one only if its range is strictly smaller.
        positive_peaky = (np.ptp(positive, axis=1) < np.ptp(negative, axis=1))[:, None]
        peak_side = np.where(positive_peaky, positive, negative)
        other_side = np.where(positive_peaky, negative, positive)
        for start in range(0, len(swept), _CHUNK):
            block = slice(start, start + _CHUNK)
            best[block] = np.maximum(best[block], _double_threshold_best(peak_side[block], other_side[block], table))
        epsilons[swept] = np.where(np.isneginf(best), 0.0, best)
    return np.clip(epsilons, 0.0, EPSILON_CAP)


def forgetting_quality(epsilons: np.ndarray, n_models: int) -> float:
    """The competition's F from per-example epsilons (metric.py ``compute_forget_score_from_confs``).

    An epsilon in [k/2, (k+1)/2) scores 2^-k; epsilons at or above ceil(ln(N - 1)), the
    resolution N models per side can support, score 0 (so N = 64 keeps 10 buckets, N = 512
    keeps 14). F is the mean over examples: 1 = indistinguishable from retraining.

    Args:
        epsilons: Per-example epsilons, shape (N_F,).
        n_models: Models per side N (>= 2).

    Returns:
        F in [0, 1].
    """
    if n_models < 2:
        raise ValueError(f"forgetting_quality needs at least 2 models per side, got {n_models}")
    epsilons = np.asarray(epsilons, np.float64)
    if epsilons.size == 0:
        raise ValueError("forgetting_quality needs at least one example")
    cut = math.ceil(math.log(n_models - 1))
    bucket = np.floor(epsilons / BUCKET_WIDTH)
    points = np.where(epsilons < cut, 0.5 ** np.minimum(bucket, 1000), 0.0)
    return float(points.mean())


@register_attack("epsilon_score", requires=("shadows",))
def epsilon_score(inputs: AttackInput, *, delta: float = 1e-5) -> AttackResult:
    """The NeurIPS 2023 unlearning competition's forgetting quality (mia-and-peers.md section 5.2).

    ``shadows.unlearned`` holds phi of N models unlearned from one original model (the spread
    comes from the unlearning algorithm's randomness) and ``shadows.retrained`` phi of N models
    retrained from scratch on D_R; every mask entry must be True. Per-example epsilons come
    from :func:`example_epsilons` and are bucketed into F by :func:`forgetting_quality`.

    Args:
        inputs: Attack inputs with ``shadows``.
        delta: The delta of (epsilon, delta)-unlearning (metric.py: 1e-5).

    Returns:
        member_scores = per-example epsilon (N_F,), higher = more distinguishable;
        nonmember_scores is empty (no ROC); ``extra``: ``forgetting_quality`` (F),
        ``epsilon_mean``, ``epsilon_max``, ``n_models``.

    Raises:
        ValueError: If the two sides have different model counts, masks are partial, or N < 2.
    """
    shadows = _check_shadows(inputs.shadows)
    if not (shadows.unlearned_mask.all() and shadows.retrained_mask.all()):
        raise ValueError("epsilon_score needs every unlearned and retrained model observed on every example")
    if shadows.unlearned.shape[0] != shadows.retrained.shape[0]:
        raise ValueError(f"epsilon_score needs as many unlearned as retrained models, got "
                         f"{shadows.unlearned.shape[0]} and {shadows.retrained.shape[0]}")
    n_models = shadows.unlearned.shape[0]
    epsilons = example_epsilons(shadows.unlearned, shadows.retrained, delta=delta)
    extra = {
        "forgetting_quality": forgetting_quality(epsilons, n_models),
        "epsilon_mean": float(epsilons.mean()),
        "epsilon_max": float(epsilons.max()),
        "n_models": float(n_models),
    }
    return AttackResult(epsilons, np.empty(0), extra)
