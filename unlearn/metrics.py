"""Attack metrics with one convention: positives are members (D_F), higher score = member."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score(member) > score(non-member)), ties counted half.

    Args:
        member_scores: Scores of positives, shape (N_pos,).
        nonmember_scores: Scores of negatives, shape (N_neg,).

    Returns:
        ROC-AUC in [0, 1]; 0.5 means the attack cannot tell the sets apart.

    Raises:
        ValueError: If either set is empty.
    """
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        raise ValueError("ROC-AUC needs at least one member and one non-member score")
    y = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    s = np.concatenate([member_scores, nonmember_scores])
    return float(roc_auc_score(y, s))


def bootstrap_auc_interval(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC-AUC.

    Members and non-members are resampled separately (stratified), with replacement.

    Args:
        member_scores: Scores of positives.
        nonmember_scores: Scores of negatives.
        resamples: Number of bootstrap resamples.
        seed: Seed.
        level: Coverage of the interval.

    Returns:
        (low, high).
    """
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        pos = rng.choice(member_scores, size=len(member_scores), replace=True)
        neg = rng.choice(nonmember_scores, size=len(nonmember_scores), replace=True)
        values[i] = roc_auc(pos, neg)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))
