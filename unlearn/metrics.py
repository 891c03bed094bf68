"""Attack metrics with one convention: positives are members (D_F), higher score = member.

Every metric is read off one ROC sweep: the pooled scores are sorted once, tied scores form one threshold, and the
true/false-positive counts at each threshold are cumulative sums of per-sample weights. A bootstrap resample is
just another weight vector (how often each sample was drawn), so all resamples of a chunk are swept at once with
one cumulative sum instead of one sklearn call per resample.

Bootstrap draw order (a contract the tests check against a slow sklearn loop): ``rng = np.random.default_rng(seed)``
and, for each resample in turn, ``rng.integers(0, n_members, n_members)`` then
``rng.integers(0, n_nonmembers, n_nonmembers)`` give the drawn member and non-member indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Upper bound on the elements of one (resamples, samples) weight matrix, so memory stays ~tens of MB at any size.
_CHUNK_ELEMENTS = 1_000_000
_METRICS = ("auc", "balanced_accuracy", "tpr_at_fpr")


class MetricRefused(ValueError):
    """A metric was asked for at an operating point the sample cannot support."""


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Validates one score set and returns it as a 1-D float array."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)  # (N,)
    if arr.size == 0:
        raise ValueError(f"{name} scores are empty: the metric needs at least one {name} score")
    if np.isnan(arr).any():
        raise ValueError(f"{name} scores contain NaN")
    return arr


def _check_fpr(fpr: float) -> float:
    fpr = float(fpr)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    return fpr


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return level


def _check_resamples(resamples: int, minimum: int) -> int:
    if int(resamples) != resamples or resamples < minimum:
        raise ValueError(f"resamples must be an integer >= {minimum}, got {resamples}")
    return int(resamples)


# ---------------------------------------------------------------------------------------------------------------------
# The vectorised ROC sweep
# ---------------------------------------------------------------------------------------------------------------------


class _Sweep:
    """Sorted pooled scores of one model, ready to sweep any number of sample weightings."""

    def __init__(self, member: np.ndarray, nonmember: np.ndarray) -> None:
        self.n_pos, self.n_neg = len(member), len(nonmember)
        scores = np.concatenate([member, nonmember])  # (N,) with N = n_pos + n_neg
        order = np.argsort(scores, kind="stable")[::-1]  # (N,) descending; order inside a tie is irrelevant
        ranked = scores[order]
        # Last slot of each tie group: reading counts only there makes a tie a single threshold, like roc_curve.
        # Comparing neighbours (not np.diff) keeps equal infinities in one group.
        self.ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1)  # (G,)
        slot = np.empty(len(order), dtype=np.int64)
        slot[order] = np.arange(len(order))
        self.member_slots, self.nonmember_slots = slot[: self.n_pos], slot[self.n_pos :]

    def counts(self, member_w: np.ndarray, nonmember_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True- and false-positive counts at every threshold, highest threshold first.

        Args:
            member_w: Times each member is drawn, shape (B, n_pos), rows summing to n_pos.
            nonmember_w: Times each non-member is drawn, shape (B, n_neg), rows summing to n_neg.

        Returns:
            (tp, fp), both int64 of shape (B, G) for the G distinct scores.
        """
        out = []
        for weights, slots in ((member_w, self.member_slots), (nonmember_w, self.nonmember_slots)):
            placed = np.zeros((weights.shape[0], self.n_pos + self.n_neg), dtype=np.int64)  # (B, N)
            placed[:, slots] = weights
            out.append(np.cumsum(placed, axis=1)[:, self.ends])  # (B, G)
        return out[0], out[1]


def _auc(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """Trapezoidal ROC-AUC per row, in exact integer arithmetic (ties count half). Shapes (B, G) -> (B,)."""
    tp_prev = np.pad(tp[:, :-1], ((0, 0), (1, 0)))
    fp_prev = np.pad(fp[:, :-1], ((0, 0), (1, 0)))
    twice_area = np.sum((fp - fp_prev) * (tp + tp_prev), axis=1)  # integers up to 2 * n_pos * n_neg
    return twice_area / (2.0 * n_pos * n_neg)


def _balanced_accuracy(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """max over thresholds of (TPR + TNR) / 2 per row; the empty threshold (0, 0) keeps it >= 0.5. (B, G) -> (B,)."""
    youden = np.max(tp / n_pos - fp / n_neg, axis=1)
    return 0.5 + 0.5 * np.maximum(youden, 0.0)


def _tpr_at(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, fpr: float) -> np.ndarray:
    """Largest TPR among thresholds with FPR <= fpr, (0, 0) included. (B, G) -> (B,)."""
    # fp / n_neg in float, as roc_curve divides, so the boundary comparison agrees with sklearn's.
    return np.max(np.where(fp / n_neg <= fpr, tp, 0), axis=1) / n_pos


def _metric_fn(metric: str, fpr: float | None) -> Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]:
    if metric == "auc":
        return _auc
    if metric == "balanced_accuracy":
        return _balanced_accuracy
    if metric == "tpr_at_fpr":
        if fpr is None:
            raise ValueError("metric 'tpr_at_fpr' needs fpr")
        fpr = _check_fpr(fpr)
        return lambda tp, fp, n_pos, n_neg: _tpr_at(tp, fp, n_pos, n_neg, fpr)
    raise ValueError(f"unknown metric {metric!r}; expected one of {_METRICS}")


def _point_counts(sweep: _Sweep) -> tuple[np.ndarray, np.ndarray]:
    """Counts for the original sample (every weight 1), shapes (1, G)."""
    return sweep.counts(np.ones((1, sweep.n_pos), dtype=np.int64), np.ones((1, sweep.n_neg), dtype=np.int64))


def _resample_weights(n_pos: int, n_neg: int, resamples: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields chunks of bootstrap weights, shapes (b, n_pos) and (b, n_neg), following the module's draw order."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // (n_pos + n_neg))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        member_w = np.empty((size, n_pos), dtype=np.int64)
        nonmember_w = np.empty((size, n_neg), dtype=np.int64)
        for row in range(size):  # index draws only; the sweep itself runs on the whole chunk
            member_w[row] = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)
            nonmember_w[row] = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)
        yield member_w, nonmember_w


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


# ---------------------------------------------------------------------------------------------------------------------
# Point metrics
# ---------------------------------------------------------------------------------------------------------------------


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score(member) > score(non-member)), ties counted half.

    Equals ``sklearn.metrics.roc_auc_score`` (up to float rounding) and is NOT flipped: an attack with the wrong
    orientation scores below 0.5.

    Args:
        member_scores: Scores of positives, shape (N_pos,).
        nonmember_scores: Scores of negatives, shape (N_neg,).

    Returns:
        ROC-AUC in [0, 1]; 0.5 means the attack cannot tell the sets apart.

    Raises:
        ValueError: If either set is empty (the message names which) or contains NaN.
    """
    sweep = _Sweep(_as_scores(member_scores, "member"), _as_scores(nonmember_scores, "non-member"))
    return float(_auc(*_point_counts(sweep), sweep.n_pos, sweep.n_neg)[0])


def best_balanced_accuracy(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Best balanced accuracy over all thresholds, max_t (TPR(t) + TNR(t)) / 2 (LiRA ``plot.sweep``'s "acc").

    Args:
        member: Scores of positives, shape (N_pos,).
        nonmember: Scores of negatives, shape (N_neg,).

    Returns:
        Balanced accuracy in [0.5, 1]; a reversed attack gets 0.5, not the flipped value.

    Raises:
        ValueError: If either set is empty (the message names which) or contains NaN.
    """
    sweep = _Sweep(_as_scores(member, "member"), _as_scores(nonmember, "non-member"))
    return float(_balanced_accuracy(*_point_counts(sweep), sweep.n_pos, sweep.n_neg)[0])


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, fpr: float) -> float:
    """Largest TPR among ROC points with FPR <= ``fpr`` (ML Privacy Meter's ``tpr[where(fpr <= x)][-1]``).

    Tied scores form one threshold, so a tie straddling the FPR budget cannot be split. This function does not
    refuse small samples; see :func:`checked_tpr_at_fpr`.

    Args:
        member: Scores of positives, shape (N_pos,).
        nonmember: Scores of negatives, shape (N_neg,).
        fpr: False-positive-rate budget in [0, 1].

    Returns:
        TPR in [0, 1].

    Raises:
        ValueError: If either set is empty or contains NaN, or ``fpr`` is outside [0, 1].
    """
    fpr = _check_fpr(fpr)
    sweep = _Sweep(_as_scores(member, "member"), _as_scores(nonmember, "non-member"))
    return float(_tpr_at(*_point_counts(sweep), sweep.n_pos, sweep.n_neg, fpr)[0])


def lowest_supported_fpr(n_negatives: int, min_negatives: int = 10) -> float:
    """Smallest FPR at which at least ``min_negatives`` non-members are false positives.

    Args:
        n_negatives: Number of non-members, > 0.
        min_negatives: False positives a reported TPR@FPR must rest on, >= 0.

    Returns:
        ``min_negatives / n_negatives`` capped at 1.

    Raises:
        ValueError: If ``n_negatives`` <= 0 or ``min_negatives`` < 0.
    """
    if n_negatives <= 0:
        raise ValueError(f"n_negatives must be positive, got {n_negatives}")
    if min_negatives < 0:
        raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
    return min(1.0, min_negatives / n_negatives)


def _refusal_reason(fpr: float, n_negatives: int, min_negatives: int) -> str | None:
    """Why TPR at ``fpr`` must not be reported, or None when it may be."""
    expected = fpr * n_negatives
    # The small slack keeps 0.001 * 10000 from being refused for float rounding.
    if expected + 1e-9 >= min_negatives:
        return None
    return (
        f"TPR at FPR {fpr:g} rests on {expected:g} false positives among {n_negatives} non-members, "
        f"fewer than the required {min_negatives}; the lowest supported FPR is "
        f"{lowest_supported_fpr(n_negatives, min_negatives):g}"
    )


def checked_tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, fpr: float, *, min_negatives: int = 10) -> float:
    """:func:`tpr_at_fpr`, refused when fewer than ``min_negatives`` non-members can be false positives.

    Args:
        member: Scores of positives, shape (N_pos,).
        nonmember: Scores of negatives, shape (N_neg,).
        fpr: False-positive-rate budget in [0, 1].
        min_negatives: Refuse when ``fpr * N_neg < min_negatives``.

    Returns:
        TPR in [0, 1].

    Raises:
        MetricRefused: If ``fpr * N_neg < min_negatives`` (e.g. 0.1% FPR with 450 negatives rests on 0.45 samples).
        ValueError: As :func:`tpr_at_fpr`.
    """
    fpr = _check_fpr(fpr)
    nonmember = _as_scores(nonmember, "non-member")
    reason = _refusal_reason(fpr, len(nonmember), min_negatives)
    if reason is not None:
        raise MetricRefused(reason)
    return tpr_at_fpr(member, nonmember, fpr)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics with bootstrap intervals
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackMetrics:
    """All attack metrics of one (member, non-member) score set.

    Attributes:
        values: Metric name -> point value. Names: ``auc``, ``balanced_accuracy``, ``tpr_at_fpr_{fpr:g}`` per
            requested FPR, ``tpr_at_lowest_fpr`` and ``lowest_fpr``. Refused metrics are absent.
        intervals: Metric name -> (low, high) percentile bootstrap interval; empty without resamples, and never
            for ``lowest_fpr`` (a property of the sample size, not an estimate).
        refused: Metric name -> reason naming the numbers for every metric that was not reported.
    """

    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    refused: dict[str, str]

    def flat(self, prefix: str) -> dict[str, float]:
        """Flat mapping for a tracker: ``{prefix}.{name}`` and ``{prefix}.{name}.ci_low`` / ``.ci_high``.

        Args:
            prefix: Key prefix, e.g. ``"mia.loss"``; an empty prefix gives bare names.

        Returns:
            Name -> value, refused metrics absent.
        """
        head = f"{prefix}." if prefix else ""
        out = {f"{head}{name}": value for name, value in self.values.items()}
        for name, (low, high) in self.intervals.items():
            out[f"{head}{name}.ci_low"], out[f"{head}{name}.ci_high"] = low, high
        return out


def _bootstrap_samples(
    member: np.ndarray,
    nonmember: np.ndarray,
    fns: dict[str, Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]],
    resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-resample values of each metric in ``fns``, each of shape (resamples,)."""
    sweep = _Sweep(member, nonmember)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for member_w, nonmember_w in _resample_weights(sweep.n_pos, sweep.n_neg, resamples, seed):
        tp, fp = sweep.counts(member_w, nonmember_w)  # (b, G) each
        for name, fn in fns.items():
            parts[name].append(fn(tp, fp, sweep.n_pos, sweep.n_neg))
    return {name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in parts.items()}


def attack_metrics(
    member: np.ndarray,
    nonmember: np.ndarray,
    *,
    fprs: tuple[float, ...] = (0.01, 0.001),
    min_negatives: int = 10,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> AttackMetrics:
    """Every attack metric with a stratified percentile bootstrap interval.

    Members and non-members are resampled separately, with replacement, so each resample keeps the class sizes
    (and hence the lowest supported FPR) fixed. TPR at an FPR below ``min_negatives / N_neg`` is refused.

    Args:
        member: Scores of positives (D_F), shape (N_pos,); higher = member.
        nonmember: Scores of negatives (D_T), shape (N_neg,).
        fprs: FPR budgets for ``tpr_at_fpr_{fpr:g}``.
        min_negatives: False positives a reported TPR@FPR must rest on.
        resamples: Bootstrap resamples; 0 gives no intervals.
        seed: Seed of the bootstrap draws.
        level: Coverage of the intervals.

    Returns:
        The metrics, their intervals and the refusals.

    Raises:
        ValueError: If either set is empty (the message names which) or contains NaN, or an argument is invalid.
    """
    member, nonmember = _as_scores(member, "member"), _as_scores(nonmember, "non-member")
    resamples, level = _check_resamples(resamples, 0), _check_level(level)
    n_neg = len(nonmember)
    lowest = lowest_supported_fpr(n_neg, min_negatives)

    fns: dict[str, Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]] = {
        "auc": _auc,
        "balanced_accuracy": _balanced_accuracy,
    }
    refused: dict[str, str] = {}
    for name, fpr in [(f"tpr_at_fpr_{f:g}", _check_fpr(f)) for f in fprs] + [("tpr_at_lowest_fpr", lowest)]:
        reason = _refusal_reason(fpr, n_neg, min_negatives)
        if reason is None:
            fns[name] = _metric_fn("tpr_at_fpr", fpr)
        else:
            refused[name] = reason

    sweep = _Sweep(member, nonmember)
    tp, fp = _point_counts(sweep)
    values = {name: float(fn(tp, fp, sweep.n_pos, sweep.n_neg)[0]) for name, fn in fns.items()}
    intervals: dict[str, tuple[float, float]] = {}
    if resamples:
        samples = _bootstrap_samples(member, nonmember, fns, resamples, seed)
        intervals = {name: _percentile_interval(samples[name], level) for name in fns}
    values["lowest_fpr"] = lowest
    return AttackMetrics(values=values, intervals=intervals, refused=refused)


def bootstrap_auc_interval(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC-AUC.

    Members and non-members are resampled separately (stratified), with replacement; the same draws as
    :func:`attack_metrics` with the same seed.

    Args:
        member_scores: Scores of positives, shape (N_pos,).
        nonmember_scores: Scores of negatives, shape (N_neg,).
        resamples: Number of bootstrap resamples, >= 1.
        seed: Seed.
        level: Coverage of the interval.

    Returns:
        (low, high).

    Raises:
        ValueError: If either set is empty or contains NaN, or an argument is invalid.
    """
    member, nonmember = _as_scores(member_scores, "member"), _as_scores(nonmember_scores, "non-member")
    resamples, level = _check_resamples(resamples, 1), _check_level(level)
    samples = _bootstrap_samples(member, nonmember, {"auc": _auc}, resamples, seed)
    return _percentile_interval(samples["auc"], level)


def paired_bootstrap_difference(
    member_a: np.ndarray,
    nonmember_a: np.ndarray,
    member_b: np.ndarray,
    nonmember_b: np.ndarray,
    *,
    metric: str,
    resamples: int,
    seed: int,
    level: float = 0.95,
    fpr: float | None = None,
    min_negatives: int = 10,
) -> tuple[float, float, float]:
    """Difference of one metric between two models scored on the same samples, with a paired bootstrap interval.

    Index i of ``member_a`` and ``member_b`` (and of the non-member arrays) is the same sample. Each resample draws
    sample indices once and applies them to both models, so the interval reflects the pairing: strongly
    correlated models give a much narrower interval than independent resampling would.

    Args:
        member_a: Model a's member scores, shape (N_pos,).
        nonmember_a: Model a's non-member scores, shape (N_neg,).
        member_b: Model b's member scores on the same members, shape (N_pos,).
        nonmember_b: Model b's non-member scores on the same non-members, shape (N_neg,).
        metric: ``"auc"``, ``"balanced_accuracy"`` or ``"tpr_at_fpr"`` (then ``fpr`` is required).
        resamples: Bootstrap resamples, >= 1.
        seed: Seed of the draws (same draw order as :func:`attack_metrics`).
        level: Coverage of the interval.
        fpr: FPR budget for ``"tpr_at_fpr"``.
        min_negatives: TPR at ``fpr`` is refused when ``fpr * N_neg < min_negatives``.

    Returns:
        (metric(a) - metric(b), low, high).

    Raises:
        ValueError: If a set is empty or contains NaN, the paired arrays differ in length, or an argument is
            invalid.
        MetricRefused: If ``metric`` is ``"tpr_at_fpr"`` and too few non-members support ``fpr``.
    """
    member_a, member_b = _as_scores(member_a, "member"), _as_scores(member_b, "member")
    nonmember_a, nonmember_b = _as_scores(nonmember_a, "non-member"), _as_scores(nonmember_b, "non-member")
    if len(member_a) != len(member_b):
        raise ValueError(f"paired member scores differ in length: {len(member_a)} (a) vs {len(member_b)} (b)")
    if len(nonmember_a) != len(nonmember_b):
        raise ValueError(f"paired non-member scores differ in length: {len(nonmember_a)} (a) vs {len(nonmember_b)} (b)")
    resamples, level = _check_resamples(resamples, 1), _check_level(level)
    fn = _metric_fn(metric, fpr)
    if metric == "tpr_at_fpr":
        reason = _refusal_reason(float(fpr), len(nonmember_a), min_negatives)
        if reason is not None:
            raise MetricRefused(reason)

    sweep_a, sweep_b = _Sweep(member_a, nonmember_a), _Sweep(member_b, nonmember_b)
    n_pos, n_neg = sweep_a.n_pos, sweep_a.n_neg
    point = float(fn(*_point_counts(sweep_a), n_pos, n_neg)[0] - fn(*_point_counts(sweep_b), n_pos, n_neg)[0])
    diffs = []
    for member_w, nonmember_w in _resample_weights(n_pos, n_neg, resamples, seed):
        # The same weights for both models: that is the pairing.
        diffs.append(
            fn(*sweep_a.counts(member_w, nonmember_w), n_pos, n_neg)
            - fn(*sweep_b.counts(member_w, nonmember_w), n_pos, n_neg)
        )
    low, high = _percentile_interval(np.concatenate(diffs), level)
    return point, low, high
