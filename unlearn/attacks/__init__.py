"""Membership-inference attacks: arrays in, scores out (higher score = more likely member)."""

from unlearn.attacks.base import (
    ATTACKS,
    AttackInput,
    AttackRefused,
    AttackResult,
    AttackSpec,
    ReferenceSignals,
    ShadowSignals,
    missing_evidence,
    register_attack,
    run_attack,
)
from unlearn.attacks.signals import Signals, compute_signals

__all__ = [
    "ATTACKS",
    "AttackInput",
    "AttackRefused",
    "AttackResult",
    "AttackSpec",
    "ReferenceSignals",
    "ShadowSignals",
    "Signals",
    "compute_signals",
    "missing_evidence",
    "register_attack",
    "run_attack",
]
