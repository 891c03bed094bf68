"""Checks of ``params.yaml`` against the registries, run before any work starts."""

from __future__ import annotations

from unlearn.attacks import ATTACKS
from unlearn.config import ConfigError, Params
from unlearn.methods import METHODS
from unlearn.models import MODELS
from unlearn.verification import is_gate_metric


def check_params(params: Params) -> None:
    """Check every name in params.yaml against the registries, before any work starts.

    Raises:
        ConfigError: On an unknown method, attack, model or source name, a bad method
            keyword argument, or a gate tolerance for a metric that is not computed.
    """
    from unlearn.data import SOURCES
    from unlearn.registry import UnknownNameError

    try:
        SOURCES.get(params.data.source)
        MODELS.get(params.model.name)
        for name in params.unlearn.methods:
            METHODS.get(name).bind(params.method_kwargs(name))
        for name in params.unlearn.ladder:
            METHODS.get(name).bind(params.method_kwargs(name))
        for attack in params.verify.attacks:
            ATTACKS.get(attack)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    except TypeError as exc:  # MethodArgumentError
        raise ConfigError(f"unlearn.methods: {exc}") from None
    for attack in params.verify.attacks:
        requires = ATTACKS.get(attack).requires
        if requires & {"in_references", "shadows"}:
            needs = ("shadow unlearning pipelines" if "shadows" in requires
                     else "reference models trained on the forget samples, which deletion forbids")
            raise ConfigError(
                f"verify.attacks: {attack!r} cannot run at promotion time: it needs {needs}; "
                "run it in an audit (benchmarks/verification.py). "
                f"Promotion-time attacks: {', '.join(promotion_attacks())}")
        if "references" in requires and params.verify.references.count < 2:
            raise ConfigError(f"verify.attacks: {attack!r} needs reference models; set verify.references.count >= 2")
    for name in params.verify.attack_options:
        if name not in params.verify.attacks:
            raise ConfigError(f"verify.attack_options.{name}: not in verify.attacks")
    unknown = sorted(name for name in params.gate.tolerances if not is_gate_metric(name, params.verify.attacks))
    if unknown:
        raise ConfigError(
            f"gate.tolerances: unknown metric(s) {', '.join(unknown)}; valid: forget_acc, retain_acc, test_acc "
            f"and mia.<attack>.<metric> for an attack in verify.attacks ({', '.join(params.verify.attacks)}), "
            "metric one of auc, balanced_accuracy, tpr_at_fpr_<f>, tpr_at_lowest_fpr or an attack's extra number"
        )


def promotion_attacks() -> list[str]:
    """Attacks the verify stage can run: population attacks and offline reference attacks."""
    return [name for name in ATTACKS.names() if not ATTACKS.get(name).requires & {"in_references", "shadows"}]


def needs_references(params: Params) -> bool:
    """True when a configured attack needs reference models."""
    return any(ATTACKS.get(a).requires & {"references"} for a in params.verify.attacks)
