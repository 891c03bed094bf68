"""The ``utility`` check's allowed loss: how much accuracy a candidate may lose, given the deletion's size.

Apart from :mod:`unlearn.gate` so the gate's decision code stays one readable file; the gate imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def utility_allowance(fraction: float, floor: float | None = None, deleted_share: float | None = None,
                      expected_loss: tuple[float, str] | None = None) -> tuple[float, str]:
    """The share of the parent's skill ``utility`` lets a candidate lose, and the words that say why.

    A flat ``fraction`` sized for an exact retrain after the largest deletions (benchmarks/utility_margin.py)
    let a candidate lose as much after deleting twenty samples, where a retrain loses nothing measurable
    (8.6 points on digits). Scaled: ``floor`` plus the share of training data deleted (losing a share s of
    the data cost each retrain measured there less than a share s of its skill), at most ``fraction``.

    Args:
        fraction: The most that may be lost, in (0, 1).
        floor: The allowance of the smallest deletion, in (0, ``fraction``]; None = flat ``fraction``.
        deleted_share: The share of the parent's training samples removed, in [0, 1]; None = flat.
        expected_loss: With ``floor`` and ``deleted_share``: the share of the parent's skill an exact retrain is
            expected to lose (:func:`expected_retrain_loss`) and the words that say how it was measured. The
            cap ``fraction`` then rises to ``floor`` + that loss where the loss is larger (never above
            ``floor`` + the deleted share): a fixed cap sized on digits failed exact retrains on Fashion-MNIST
            after most of the data was deleted (they lost 16-21% of the skill against a cap of 10%).

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
    cap, raised = fraction, ""
    if expected_loss is not None:
        loss, measured = expected_loss
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"expected_loss must be in [0, 1), got {loss}")
        if floor + loss > fraction:
            cap, raised = floor + loss, f"{floor:g} + {loss:.3g} an exact retrain is expected to lose ({measured})"
    allowed = min(cap, floor + deleted_share)
    percent = 100 * deleted_share
    share = ("under 0.01%" if 0 < percent < 0.01 else f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%")
    how = f"{floor:g} + {share} of the training data deleted"
    if allowed == cap < floor + deleted_share:
        how = (f"the cap raised by the references' learning curve: {raised}; {how} is more" if raised
               else f"the cap, utility_loss_fraction; {how} is more")
    return allowed, f" ({allowed:.3g} of the parent's skill: {how})"


@dataclass(frozen=True)
class LearningCurve:
    """What the reference models show about accuracy against training-set size, for ``utility``'s allowance.

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
    samples are, the chord lies below it, so the loss it gives is at least the true one: it errs towards
    allowing an exact retrain, not towards passing a damaged model (the cap it raises is still bounded by
    ``floor`` + the deleted share). A retrain smaller than the references is not extrapolated: it is given
    the references' own loss, which is less than it will lose (the gate may then fail it, never pass more).

    Returns:
        (loss, words for the check's reason), or None where the curve says nothing: references no smaller
        than the parent, or a parent without skill, or references with less than a tenth of the parent's
        skill (too little to measure a slope from; the fixed cap then stays).
    """
    if not (parent_skill > 0.0 and 0 < reference_size < parent_size and 0.0 <= deleted_share <= 1.0):
        return None
    kept = reference_skill / parent_skill
    if not kept >= 0.1:
        return None
    drop = min(1.0, max(0.0, 1.0 - kept))
    retrain_size = (1.0 - deleted_share) * parent_size
    reach = math.log(parent_size / max(retrain_size, reference_size)) / math.log(parent_size / reference_size)
    loss = drop * min(1.0, reach)
    beyond = " (the retrain is smaller than the references: their loss, no extrapolation)" \
        if retrain_size < reference_size else ""
    return loss, (f"references on {reference_size:,.0f} samples keep {kept:.2f} of the skill of the parent's "
                  f"{parent_size:,}; chord in log size{beyond}")

