"""Attack contract and registry.

Convention (project-wide): an attack returns scores where HIGHER means "more likely a member".
The verification task is forget (positives, were trained on) versus test (negatives, never
seen). The metric target is always the retrained reference's value, so gates are two-sided.

Attacks are pure functions of signal arrays. Three kinds of evidence exist, and each attack
declares which it needs (``requires``):

* the target model's own signals on D_F, D_R and D_T (every attack gets these);
* ``"references"``: logit-scaled confidence of K reference models trained on random halves of
  the non-deleted population (:class:`ReferenceSignals`); offline attacks only need the
  models that did NOT train on a sample (OUT), online ones also need IN models;
* ``"shadows"``: observations from repeated unlearning pipelines (:class:`ShadowSignals`), for
  the per-example unlearning tests (U-LiRA, the NeurIPS 2023 epsilon score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from unlearn.attacks.signals import Signals
from unlearn.registry import Registry

REQUIREMENTS = frozenset({"references", "in_references", "shadows"})


class AttackRefused(ValueError):
    """The data is too small for the attack to say anything (e.g. 3 forget samples for a 5-fold CV).

    The attack suite records the reason instead of a number; a gate check on a refused metric fails.
    """


@dataclass(frozen=True)
class ReferenceSignals:
    """Logit-scaled confidence phi = log(p_y / (1 - p_y)) of the target and K reference models.

    Every array has a trailing augmentation axis A (A = 1 without test-time augmentation).
    RMIA's probability p_y is recovered as sigmoid(phi). The test samples double as RMIA's
    population z: they are non-members of the target and of every reference model.

    Attributes:
        target_forget: Target model on D_F, shape (N_F, A).
        target_test: Target model on D_T, shape (N_T, A).
        forget: Reference models on D_F, shape (K, N_F, A).
        test: Reference models on D_T, shape (K, N_T, A).
        forget_in: True where reference k trained on forget sample i, shape (K, N_F).
        test_in: True where reference k trained on test sample i, shape (K, N_T).
    """

    target_forget: np.ndarray
    target_test: np.ndarray
    forget: np.ndarray
    test: np.ndarray
    forget_in: np.ndarray
    test_in: np.ndarray

    def __post_init__(self) -> None:
        k = self.forget.shape[0]
        expected = {
            "target_forget": (self.target_forget.ndim, 2),
            "target_test": (self.target_test.ndim, 2),
            "forget": (self.forget.ndim, 3),
            "test": (self.test.ndim, 3),
        }
        for name, (got, want) in expected.items():
            if got != want:
                raise ValueError(f"ReferenceSignals.{name}: expected {want} dimensions, got {got}")
        if self.test.shape[0] != k or self.forget_in.shape != self.forget.shape[:2] \
                or self.test_in.shape != self.test.shape[:2]:
            raise ValueError("ReferenceSignals: reference count or membership-mask shapes disagree")

    @property
    def count(self) -> int:
        """Number of reference models K."""
        return int(self.forget.shape[0])


@dataclass(frozen=True)
class ShadowSignals:
    """phi of models from repeated pipelines, for per-example unlearning tests.

    Rows are models, columns the audited forget samples; ``*_mask`` says which entries are
    observations of that hypothesis (a shadow pipeline only unlearns some samples).

    Attributes:
        unlearned: phi of models in which the sample was trained on and then unlearned by the
            method under test (hypothesis H_u), shape (M_u, N_F).
        unlearned_mask: Valid entries of ``unlearned``, bool (M_u, N_F).
        retrained: phi of models that never trained on the sample (hypothesis H_r), shape
            (M_r, N_F).
        retrained_mask: Valid entries of ``retrained``, bool (M_r, N_F).
        target_unlearned: phi of the audited unlearned model on D_F, shape (N_F,).
        target_retrained: phi of the audited retrained model on D_F, shape (N_F,).
    """

    unlearned: np.ndarray
    unlearned_mask: np.ndarray
    retrained: np.ndarray
    retrained_mask: np.ndarray
    target_unlearned: np.ndarray
    target_retrained: np.ndarray


@dataclass(frozen=True)
class AttackInput:
    """Everything an attack may use.

    Attributes:
        forget: Target model's signals on D_F (the positives being tested).
        retain: Target model's signals on D_R (known members, for attacks that fit on shadow data).
        test: Target model's signals on D_T (never trained on).
        seed: Seed for any random choice the attack makes.
        references: Reference-model signals, or None when none were trained.
        shadows: Shadow-pipeline signals, or None.
    """

    forget: Signals
    retain: Signals
    test: Signals
    seed: int = 0
    references: ReferenceSignals | None = None
    shadows: ShadowSignals | None = None


@dataclass(frozen=True)
class AttackResult:
    """Scores of an attack (higher = member).

    Attributes:
        member_scores: Scores of the positives (D_F), shape (N_F,).
        nonmember_scores: Scores of the negatives (D_T or part of it), shape (N_T,). Empty for
            a distributional score that has no negatives (the epsilon score); ROC metrics are
            then not computed.
        extra: Additional named numbers the attack reports (e.g. MIA efficacy).
    """

    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)


AttackFn = Callable[..., AttackResult]  # fn(inputs: AttackInput, **options) -> AttackResult


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack and the evidence it needs.

    Attributes:
        name: Registry name.
        fn: The attack.
        requires: Subset of {"references", "in_references", "shadows"}.
    """

    name: str
    fn: AttackFn
    requires: frozenset[str]

    @property
    def uses_references(self) -> bool:
        """Scores depend on reference models (OUT, or IN and OUT)."""
        return bool(self.requires & {"references", "in_references"})

    def __call__(self, inputs: AttackInput, **options: float) -> AttackResult:
        return self.fn(inputs, **options)


ATTACKS: Registry[AttackSpec] = Registry("membership-inference attack", package="unlearn.attacks")


def register_attack(name: str, requires: tuple[str, ...] = ()) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (used in ``verify.attacks``).

    Args:
        name: The name users write in ``params.yaml``.
        requires: Evidence beyond the target's own signals: "references" (reference models OUT
            of the audited samples), "in_references" (also models IN), "shadows".

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    unknown = set(requires) - REQUIREMENTS
    if unknown:
        raise ValueError(f"unknown attack requirement(s) {sorted(unknown)}; valid: {sorted(REQUIREMENTS)}")

    def decorate(fn: AttackFn) -> AttackFn:
        ATTACKS.register(name)(AttackSpec(name, fn, frozenset(requires)))
        return fn

    return decorate


def missing_evidence(spec: AttackSpec, inputs: AttackInput) -> str | None:
    """Why ``inputs`` cannot feed attack ``spec``, or None when they can."""
    if spec.uses_references and inputs.references is None:
        return "it needs reference-model signals (verify.references.count > 0)"
    if "in_references" in spec.requires:
        refs = inputs.references
        if not (refs.forget_in.any(axis=0).all() and refs.test_in.any(axis=0).all()):
            return ("it needs, for every audited sample, reference models that trained on it; deleted "
                    "samples have none, so use it in audits, not at promotion time")
    if "shadows" in spec.requires and inputs.shadows is None:
        return "it needs shadow-pipeline signals (repeated unlearning runs), which only audits produce"
    return None


def run_attack(name: str, inputs: AttackInput, **options: float) -> AttackResult:
    """Run the attack registered as ``name`` and check its output.

    Args:
        name: Registered attack name.
        inputs: The evidence.
        **options: The attack's keyword options (``verify.attack_options.<name>``).

    Returns:
        The attack's scores.

    Raises:
        UnknownNameError: If no attack has this name.
        ValueError: If the inputs lack the evidence the attack needs, or the attack returns
            non-finite scores.
    """
    spec = ATTACKS.get(name)
    problem = missing_evidence(spec, inputs)
    if problem is not None:
        raise ValueError(f"attack {name!r} cannot run: {problem}")
    try:
        result = spec(inputs, **options)
    except TypeError as exc:
        if options and "unexpected keyword" in str(exc):
            raise ValueError(f"attack {name!r}: {exc}") from None
        raise
    for scores in (result.member_scores, result.nonmember_scores):
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"attack {name!r} returned non-finite scores")
    return result
