"""Attack contract and registry.

Convention (project-wide): an attack returns scores where HIGHER means "more likely a member".
The verification task is forget (positives, were trained on) versus test (negatives, never
seen). The metric target is always the retrained reference's value, so gates are two-sided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from unlearn.attacks.signals import Signals
from unlearn.registry import Registry


@dataclass(frozen=True)
class AttackInput:
    """Signals of one model on the three sample sets.

    Attributes:
        forget: Signals on D_F (the positives being tested).
        retain: Signals on D_R (known members, for attacks that fit on shadow data).
        test: Signals on D_T (never trained on).
        seed: Seed for any random choice the attack makes.
    """

    forget: Signals
    retain: Signals
    test: Signals
    seed: int = 0


@dataclass(frozen=True)
class AttackResult:
    """Scores of an attack (higher = member).

    Attributes:
        member_scores: Scores of the positives (D_F), shape (N_F,).
        nonmember_scores: Scores of held-out negatives (D_T or part of it), shape (N_T,).
        extra: Additional named numbers the attack reports (e.g. MIA efficacy).
    """

    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)


AttackFn = Callable[[AttackInput], AttackResult]

ATTACKS: Registry[AttackFn] = Registry("membership-inference attack", package="unlearn.attacks")


def register_attack(name: str) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (used in ``verify.attacks``)."""
    return ATTACKS.register(name)


def run_attack(name: str, inputs: AttackInput) -> AttackResult:
    """Run the attack registered as ``name`` and check its output.

    Raises:
        UnknownNameError: If no attack has this name.
        ValueError: If the attack returns non-finite scores.
    """
    result = ATTACKS.get(name)(inputs)
    for scores in (result.member_scores, result.nonmember_scores):
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"attack {name!r} returned non-finite scores")
    return result
