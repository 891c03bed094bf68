"""The ``utility`` check's allowed loss: how much accuracy a candidate may lose, given the deletion's size.

Apart from :mod:`unlearn.gate` so the gate's decision code stays one readable file; the gate imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def utility_allowance(fraction: float, floor: float | None = None, deleted_share: float | None = None
                      ) -> tuple[float, str]:
    """The share of the parent's skill ``utility`` lets a candidate lose, and the words that say why.

    A flat ``fraction`` sized for an exact retrain after the largest deletions (benchmarks/utility_margin.py)
    let a candidate lose as much after deleting twenty samples, where a retrain loses nothing measurable
    (8.6 points on digits). Scaled: ``floor`` plus the share of training data deleted (losing a share s of
    the data cost each retrain measured there less than a share s of its skill), at most ``fraction``.

    Args:
        fraction: The most that may be lost, in (0, 1).
        floor: The allowance of the smallest deletion, in (0, ``fraction``]; None = flat ``fraction``.
        deleted_share: The share of the parent's training samples removed, in [0, 1]; None = flat.

    Returns:
        (fraction of the skill, a note for the check's reason).

    Raises:
        ValueError: On values out of range.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"utility_loss_fraction must be in (0, 1) (at 1 a constant prediction could not fail), "
                         f"got {fraction}")
    if floor is None or deleted_share is None:
        return fraction, f" ({fraction:g} of the parent's skill)"
    if not 0.0 < floor <= fraction:
        raise ValueError(f"utility_loss_floor must be in (0, utility_loss_fraction={fraction:g}], got {floor}")
    if not 0.0 <= deleted_share <= 1.0:
        raise ValueError(f"deleted_share must be in [0, 1], got {deleted_share}")
    allowed = min(fraction, floor + deleted_share)
    how = f"{floor:g} + {_share_words(deleted_share)} of the training data deleted"
    how = f"the cap, utility_loss_fraction; {how} is more" if allowed == fraction else how
    return allowed, f" ({allowed:.3g} of the parent's skill: {how})"


def _share_words(deleted_share: float) -> str:
    percent = 100 * deleted_share
    return "under 0.01%" if 0 < percent < 0.01 else f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%"


def deletion_cost(floor: float, deleted_share: float, expected: tuple[float, str]) -> tuple[float, str]:
    """The share of the parent's skill deleting this much is estimated to cost an exact retrain, noise included.

    After a large deletion an exact retrain itself loses more than ``utility_loss_fraction`` allows (on a
    Fashion-MNIST subset, 16-21% of the skill after deleting 62.5% of the data, against a cap of 10%). The
    ``utility`` fail stands there (a first version made it inconclusive; a review showed that
    ``gate.on_inconclusive: promote_low_power`` then promoted models whose loss had been measured, and that
    ``hold`` waited for evidence a larger forget set cannot bring), but a fail whose loss is not shown beyond
    this cost says the loss may be the deletion's own rather than damage: the exact retrain, which the ladder
    ends with, is what such a deletion calls for.

    Args:
        floor: ``utility_loss_floor`` (the noise a retrain's accuracy shows at the smallest deletion).
        deleted_share: The share of the parent's training samples removed.
        expected: :func:`expected_retrain_loss`'s (loss, words).

    Returns:
        (``floor`` + the estimated loss, at most ``floor`` + the deleted share; words for the check's reason).
    """
    loss, measured = expected
    cost = floor + min(loss, deleted_share)
    return cost, (f"{cost:.3g} of the parent's skill: the floor {floor:g} plus {min(loss, deleted_share):.3g} "
                  f"estimated for {_share_words(deleted_share)} of the training data deleted, a generous estimate: "
                  f"{measured}")


@dataclass(frozen=True)
class LearningCurve:
    """What the reference models show about accuracy against training-set size (:func:`deletion_cost`'s input).

    The references train with the parent's recipe on fewer samples (halves of the reference pool), and they
    are scored on the same negatives as every model of the decision anyway: their skill against the parent's
    is a measured point of the learning curve, which is what an exact retrain on fewer samples slides down.

    Attributes:
        reference_correct: Each reference's answers on the gate's negatives (1 = right), shape (K, N).
        reference_sizes: Training samples of each reference, K positive ints.
        parent_size: Training samples of the parent (|D_F| + |D_R|).
    """

    reference_correct: np.ndarray
    reference_sizes: tuple[int, ...]
    parent_size: int

    def __post_init__(self) -> None:
        correct = np.asarray(self.reference_correct)
        if correct.ndim != 2 or len(correct) == 0 or len(correct) != len(self.reference_sizes):
            raise ValueError(f"learning curve: reference_correct must be (K, N) for the K={len(self.reference_sizes)} "
                             f"reference sizes, got shape {correct.shape}")
        if min(self.reference_sizes, default=0) < 1 or self.parent_size < 1:
            raise ValueError("learning curve: training-set sizes must be positive")

    @property
    def reference_size(self) -> float:
        """The references' size (geometric mean: the chord is taken in log size)."""
        return float(np.exp(np.mean(np.log(np.asarray(self.reference_sizes, dtype=np.float64)))))


def expected_retrain_loss(parent_skill: float, reference_skill: float, *, parent_size: int,
                          reference_size: float, deleted_share: float) -> tuple[float, str] | None:
    """The share of the parent's skill an exact retrain on what is left is expected to lose.

    Skill is taken as linear in log(training-set size) between the references' size and the parent's (the
    chord of the learning curve). Where the curve is concave there, as learning curves past their first
    samples are, the chord lies below it, so the loss it gives is at least the true one (1-1.5 times it on
    power-law curves with the default 1:8 sizes, more over longer spans, as a review measured): a generous
    estimate. That is why it only ever explains a fail (:func:`deletion_cost`) and decides nothing. A retrain
    smaller than the references is not extrapolated: it is given the references' own loss, less than it will
    lose.

    Returns:
        (loss, words for the check's reason), or None where the curve says nothing: references no smaller
        than the parent, or a parent without skill, or references with less than a tenth of the parent's
        skill (too little to measure a slope from).
    """
    if not (parent_skill > 0.0 and 0 < reference_size < parent_size and 0.0 <= deleted_share <= 1.0):
        return None
    kept = reference_skill / parent_skill
    if not kept >= 0.1:
        return None
    drop = max(0.0, 1.0 - kept)
    retrain_size = (1.0 - deleted_share) * parent_size
    reach = math.log(parent_size / max(retrain_size, reference_size)) / math.log(parent_size / reference_size)
    loss = drop * min(1.0, reach)
    beyond = " (the retrain is smaller than the references: their loss, no extrapolation)" \
        if retrain_size < reference_size else ""
    return loss, (f"references on {reference_size:,.0f} samples keep {kept:.2f} of the skill of the parent's "
                  f"{parent_size:,}; chord in log size{beyond}")

