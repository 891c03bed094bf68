"""What follows a gate verdict: hold, retrain or promote; when audits and consolidation are due; demotion.

Pure policy over :class:`unlearn.gate.GateDecision` (split from :mod:`unlearn.gate`, which decides).
"""

from __future__ import annotations

from unlearn.gate import FAIL, INCONCLUSIVE, PASS, UTILITY_CHECKS, GateDecision

HOLD, RETRAIN, PROMOTE, PROMOTE_LOW_POWER = "hold", "retrain", "promote", "promote_low_power"


def next_action(decision: GateDecision | str, *, on_inconclusive: str, held_batches: int = 0,
                held_hours: float = 0.0, max_hold_batches: int = 5, max_hold_hours: float = 72.0) -> str:
    """What the pipeline does with a verified batch (pure policy; the stage carries it out).

    Args:
        decision: The gate decision (or its verdict string).
        on_inconclusive: ``hold`` (keep the batch and verify it again together with later
            batches, which buys power; the held re-verification scores the union of the held
            forget sets, with the champion from BEFORE the first held batch as the parent and the
            latest unlearned model as the candidate; exact retrain once a bound is reached),
            ``retrain`` (exact retrain at once) or ``promote_low_power`` (promote, marked as
            low-power evidence: never certified as proven).
        held_batches: How many batches the held evidence already spans (including this one).
        held_hours: Hours since the oldest held request arrived.
        max_hold_batches / max_hold_hours: Bounds of ``hold``; at either one the request is not
            parked any longer and the exact retrain runs.

    Returns:
        ``promote`` (pass), ``retrain`` (fail: next rung of the ladder, or exact retrain at a
        bound), ``hold`` or ``promote_low_power``.
    """
    verdict = decision if isinstance(decision, str) else decision.verdict
    if verdict == PASS:
        return PROMOTE
    if verdict == FAIL:
        return RETRAIN
    if verdict != INCONCLUSIVE:
        raise ValueError(f"unknown verdict {verdict!r}")
    if on_inconclusive == "retrain":
        return RETRAIN
    if on_inconclusive == "promote_low_power":
        return PROMOTE_LOW_POWER
    if on_inconclusive != "hold":
        raise ValueError(f"on_inconclusive: expected hold, retrain or promote_low_power, got {on_inconclusive!r}")
    if held_batches >= max_hold_batches or held_hours >= max_hold_hours:
        return RETRAIN
    return HOLD


def audit_due(batches_since_audit: int, every_batches: int) -> bool:
    """True when a scheduled exact-retrain audit of the method is due (0 disables the count rule)."""
    return every_batches > 0 and batches_since_audit >= every_batches


def consolidate_due(deleted_since_exact: int, train_size_at_exact: int, batches_since_exact: int, *,
                    deleted_fraction: float, every_batches: int) -> bool:
    """True when the champion should be retrained exactly (consolidation).

    Approximate unlearning compounds: each batch leaves a residual within the margin, and many
    batches add up. Consolidation bounds the drift: retrain exactly once the share of the
    training set deleted since the last exact model reaches ``deleted_fraction``, or every
    ``every_batches`` batches (0 disables that rule).
    """
    if train_size_at_exact <= 0:
        raise ValueError("train_size_at_exact must be > 0")
    by_fraction = deleted_since_exact / train_size_at_exact >= deleted_fraction
    return by_fraction or (every_batches > 0 and batches_since_exact >= every_batches)


def audit_demotes(audit: GateDecision) -> list[str]:
    """Metrics on which a strict-mode audit shows the method's gap beyond the margin.

    An audit scores the method's model against exact retrains (``targets``); a method whose
    audited gap (point estimate) exceeds the margin on any metric leaves the escalation ladder.

    Returns:
        The offending metrics (empty: the method stays).

    Raises:
        ValueError: If the decision is not a strict-mode one.
    """
    if audit.mode != "strict":
        raise ValueError("audit_demotes needs a strict-mode decision (scored against exact retrains)")
    # utility checks are one-sided: a method more accurate than the retrains is not demoted for it
    return [c.metric for c in audit.checks if c.margin == c.margin
            and (-c.estimate if c.metric in UTILITY_CHECKS else abs(c.estimate)) > c.margin]
