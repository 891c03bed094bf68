"""Verification: accuracies and attack metrics of a model, and the two-sided promotion gate.

The gate compares the unlearned model with a model retrained without the forget set; each
metric passes when |metric(unlearned) - metric(retrained)| <= its tolerance. A model that
looks *less* like a member than the retrained one fails too (the Streisand effect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unlearn.attacks import AttackInput, compute_signals, run_attack
from unlearn.methods.base import TensorSet
from unlearn.metrics import bootstrap_auc_interval, roc_auc
from unlearn.training import predict_logits

ACCURACY_METRICS = ("forget_acc", "retain_acc", "test_acc")


class DivergedModelError(ValueError):
    """The model's outputs are not finite (an unlearning run diverged)."""


def attack_metric(attack: str) -> str:
    """Name of the forget-vs-test AUC metric of an attack."""
    return f"mia_auc_{attack}"


@dataclass(frozen=True)
class EvalSets:
    """The three sample sets every model is evaluated on."""

    forget: TensorSet
    retain: TensorSet
    test: TensorSet


def evaluate_model(
    model: nn.Module,
    sets: EvalSets,
    *,
    attacks: tuple[str, ...],
    device: str,
    seed: int,
    bootstrap: int = 0,
) -> dict[str, float]:
    """Accuracy on each set and each attack's forget-vs-test ROC-AUC.

    Args:
        model: The model to evaluate (eval mode is used).
        sets: Forget, retain and test sets.
        attacks: Registered attack names.
        device: Where to compute.
        seed: Seed for attacks and bootstrap.
        bootstrap: Resamples for the AUC confidence interval (0 = none).

    Raises:
        DivergedModelError: If the model's outputs are not finite.

    Returns:
        A flat mapping: ``forget_acc``, ``retain_acc``, ``test_acc`` (in [0, 1]) and for each
        attack ``mia_auc_<attack>`` plus ``..._ci_low``/``..._ci_high`` and any extra numbers
        the attack reports (``<attack>_<name>``).
    """
    signals, metrics = {}, {}
    for name in ("forget", "retain", "test"):
        subset: TensorSet = getattr(sets, name)
        logits = predict_logits(model, subset.images, device=device)  # (N, K)
        if not bool(torch.isfinite(logits).all()):
            raise DivergedModelError(f"model outputs on the {name} set are not finite")
        signals[name] = compute_signals(logits, subset.labels)
        metrics[f"{name}_acc"] = float(np.mean(signals[name].correct)) if len(subset) else float("nan")
    inputs = AttackInput(signals["forget"], signals["retain"], signals["test"], seed=seed)
    for attack in attacks:
        result = run_attack(attack, inputs)
        key = attack_metric(attack)
        metrics[key] = roc_auc(result.member_scores, result.nonmember_scores)
        if bootstrap > 0:
            low, high = bootstrap_auc_interval(
                result.member_scores, result.nonmember_scores, resamples=bootstrap, seed=seed
            )
            metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
        for extra, value in result.extra.items():
            metrics[f"{attack}_{extra}"] = value
    return metrics


@dataclass(frozen=True)
class GateCheck:
    """One metric's two-sided comparison with the retrained reference."""

    metric: str
    candidate: float
    reference: float
    tolerance: float

    @property
    def gap(self) -> float:
        """Signed difference candidate - reference."""
        return self.candidate - self.reference

    @property
    def passed(self) -> bool:
        """True when |gap| <= tolerance (NaN never passes)."""
        return bool(abs(self.gap) <= self.tolerance)


@dataclass(frozen=True)
class GateResult:
    """The verdict and every comparison behind it."""

    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        """True when every check passes."""
        return all(check.passed for check in self.checks)

    @property
    def verdict(self) -> str:
        """"pass" or "fail"."""
        return "pass" if self.passed else "fail"

    def failures(self) -> list[str]:
        """Human-readable reasons for each failed check."""
        return [
            f"{c.metric}: |{c.candidate:.4f} - {c.reference:.4f}| = {abs(c.gap):.4f} > {c.tolerance}"
            for c in self.checks if not c.passed
        ]


def gate_metrics(attacks: tuple[str, ...]) -> list[str]:
    """Every metric the gate can check, given the configured attacks."""
    return [*ACCURACY_METRICS, *(attack_metric(a) for a in attacks)]


def apply_gate(
    candidate: dict[str, float], reference: dict[str, float], tolerances: dict[str, float]
) -> GateResult:
    """Two-sided gate: each toleranced metric must be within tolerance of the reference.

    Args:
        candidate: Metrics of the unlearned model.
        reference: Metrics of the retrained reference model.
        tolerances: Metric name -> largest allowed absolute gap.

    Returns:
        The gate result.

    Raises:
        KeyError: If a tolerance names a metric that was not computed.
    """
    missing = sorted(set(tolerances) - (set(candidate) & set(reference)))
    if missing:
        raise KeyError(
            f"gate tolerance(s) for unknown metric(s) {', '.join(missing)}; "
            f"computed metrics: {', '.join(sorted(candidate))}"
        )
    checks = tuple(
        GateCheck(name, float(candidate[name]), float(reference[name]), float(tol))
        for name, tol in sorted(tolerances.items())
    )
    return GateResult(checks)
