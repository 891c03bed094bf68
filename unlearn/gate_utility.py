"""The ``utility`` check's allowed loss: how much accuracy a candidate may lose, given the deletion's size.

Apart from :mod:`unlearn.gate` so the gate's decision code stays one readable file; the gate imports it.
"""

from __future__ import annotations


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
    percent = 100 * deleted_share
    share = ("under 0.01%" if 0 < percent < 0.01 else f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%")
    how = f"{floor:g} + {share} of the training data deleted"
    how = f"the cap, utility_loss_fraction; {how} is more" if allowed == fraction else how
    return allowed, f" ({allowed:.3g} of the parent's skill: {how})"
