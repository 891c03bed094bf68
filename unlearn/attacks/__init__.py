"""Membership-inference attacks: arrays in, scores out (higher score = more likely member)."""

from unlearn.attacks.base import ATTACKS, AttackInput, AttackResult, register_attack, run_attack
from unlearn.attacks.signals import Signals, compute_signals

__all__ = [
    "ATTACKS",
    "AttackInput",
    "AttackResult",
    "Signals",
    "compute_signals",
    "register_attack",
    "run_attack",
]
