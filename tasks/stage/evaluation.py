"""Evaluating candidate models: the one evaluation behind the verify stage and method sweeps."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks.project import PipelineError, Project
from tasks.stage.checks import needs_references
from tasks.stage.context import model_architecture, resolve_device, tensors
from tasks.stage.references import recipe_key
from unlearn.attacks.signals import SignalCache
from unlearn.config import Params
from unlearn.data import SampleStore
from unlearn.data.store import Arrays
from unlearn.models import build_model
from unlearn.references import ReferenceBank
from unlearn.verification import (
    DivergedModelError,
    EvalSets,
    GateResult,
    ModelEvidence,
    SuiteResult,
    apply_gate,
    attack_suite,
    model_evidence,
)

log = logging.getLogger("unlearn.pipeline")


def evaluation_sets(project: Project, store: SampleStore, forget: Arrays, forget_classes: list[int]) -> EvalSets:
    """The forget, retain and test sets every model is evaluated on.

    Args:
        project: The project.
        store: The live sample store (its train split is the retain set).
        forget: The forget samples (from the quarantine).
        forget_classes: Classes forgotten as a whole; the test set is then restricted to them.

    Returns:
        The sets, with their sample ids (the signal cache's keys).
    """
    test = store.load_split("test")
    if forget_classes:
        # Class-wise forgetting: compare the forget set with unseen samples of the same classes,
        # or the attack would learn "class", not "membership" (mia-and-peers.md section 2).
        test = Arrays(*(a[np.isin(test.labels, forget_classes)] for a in (test.ids, test.images, test.labels)))
    retain = store.load_split("train")
    return EvalSets(tensors(forget), tensors(retain), tensors(test),
                    ids={"forget": forget.ids, "retain": retain.ids, "test": test.ids})



@dataclass(frozen=True)
class Baselines:
    """What every candidate is compared with: the original and retrained models, and the references.

    Attributes:
        proofs: Evidence of the ``original`` and ``retrain`` models.
        outcome: Their attack-suite results.
        references: Evidence of the reference models (empty when no attack needs them).
        reference_ids: Their ids, aligned with ``references``.
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    references: list[ModelEvidence]
    reference_ids: list[str]



@dataclass(frozen=True)
class Evaluation:
    """One candidate model's evaluation against the retrained model, and the gate's verdict.

    Attributes:
        proofs: Evidence per role (``original``, ``retrain``, ``unlearned``; no ``unlearned`` when
            the candidate diverged).
        outcome: Attack-suite results per role (a diverged candidate's metrics are all NaN).
        gate: The two-sided gate's checks.
        exact: The candidate is the exact retrain itself (the gate's own target: it passes).
        reference_ids: Reference models the attacks used.
        attack_seconds: Wall time of the evaluation.
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    gate: GateResult
    exact: bool
    reference_ids: list[str]
    attack_seconds: float

    @property
    def results(self) -> dict[str, dict[str, float]]:
        """Metrics per role."""
        return {role: r.metrics for role, r in self.outcome.items()}

    @property
    def refused(self) -> dict[str, dict[str, str]]:
        """Refused metrics per role, with the reason."""
        return {role: r.refused for role, r in self.outcome.items()}

    @property
    def verdict(self) -> str:
        """"pass" or "fail"."""
        return "pass" if self.exact else self.gate.verdict

    @property
    def failures(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        return [] if self.exact else self.gate.failures()



def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when two models hold bit-identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)



def _evidence_fn(project: Project, sets: EvalSets, cache: SignalCache | None) -> Any:
    return functools.partial(model_evidence, sets=sets, device=resolve_device(project),
                             augmentations=project.params.verify.augmentations, cache=cache)



def _suite_fn(params: Params) -> Any:
    verify = params.verify
    return functools.partial(attack_suite, attacks=verify.attacks, attack_options=verify.attack_options,
                             fprs=verify.fprs, min_negatives=verify.min_negatives,
                             bootstrap=verify.bootstrap, seed=params.seed)



def evaluate_baselines(project: Project, store: SampleStore, sets: EvalSets, *, original: torch.nn.Module,
                       retrained: torch.nn.Module) -> Baselines:
    """Evidence and attack results of the original and retrained models, and the reference models' evidence.

    Signals go through the project's signal cache (``data/signals/``), so a second call reads them.

    Args:
        project: The project.
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        original: The model the candidates unlearned from (the champion).
        retrained: The exact retrain without the forget samples (the gate's target).

    Returns:
        The baselines.

    Raises:
        PipelineError: If fewer usable reference models exist than ``verify.references.count``.
    """
    params = project.params
    device = resolve_device(project)
    verify = params.verify
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir))
    suite = _suite_fn(params)
    refs, ref_ids = [], []
    if needs_references(params):
        bank = ReferenceBank(project.references_dir)
        usable = [r for r in bank.usable(recipe_key(project, store), sets.ids["retain"])
                  if r.pair < verify.references.count // 2]
        if len(usable) < verify.references.count:
            raise PipelineError(f"{len(usable)} usable reference models but verify.references.count is "
                                f"{verify.references.count}; run the references stage first")
        architecture = model_architecture(project, store)
        for record in usable:
            model = build_model(params.model.name, architecture["in_channels"], architecture["num_classes"])
            model.load_state_dict(bank.load_state(record.ref_id))
            refs.append(evidence(model.to(device), with_retain=False))
            ref_ids.append(record.ref_id)
    proofs = {"original": evidence(original.to(device)), "retrain": evidence(retrained.to(device))}
    outcome = {role: suite(proofs[role], refs) for role in proofs}
    return Baselines(proofs, outcome, refs, ref_ids)



def evaluate_candidate(project: Project, store: SampleStore, sets: EvalSets, candidate: torch.nn.Module, *,
                       method: str, original: torch.nn.Module, retrained: torch.nn.Module,
                       baselines: Baselines | None = None, cache_candidate: bool = True) -> Evaluation:
    """Attack an unlearned model, the original and the retrained one, and apply the two-sided gate.

    The one evaluation behind the verify stage and method sweeps (:mod:`tasks.sweep`). Pure with
    respect to the pipeline: no MLflow, no state, ledger or audit writes; only the signal cache.

    Args:
        project: The project (``verify`` and ``gate`` come from its params).
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        candidate: The unlearned model.
        method: The method that produced it (``retrain`` is checked for being the exact retrain).
        original: The model it was unlearned from.
        retrained: The exact retrain (from :func:`retrained_model`).
        baselines: Precomputed :func:`evaluate_baselines` (computed here when None).
        cache_candidate: Cache the candidate's signals too. Sweeps do not: their candidates are
            never verified again, and their cache files would only accumulate.

    Returns:
        The evaluation: metrics per role, refusals, gate checks, verdict.
    """
    started = time.perf_counter()
    exact = method == "retrain" and _same_weights(candidate, retrained)
    if baselines is None:  # computed here, so their time counts as this evaluation's
        baselines = evaluate_baselines(project, store, sets, original=original, retrained=retrained)
    proofs, outcome = dict(baselines.proofs), dict(baselines.outcome)
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir) if cache_candidate else None)
    try:
        proofs["unlearned"] = evidence(candidate.to(resolve_device(project)))
        outcome["unlearned"] = _suite_fn(project.params)(proofs["unlearned"], baselines.references)
    except DivergedModelError as exc:
        # A diverged model is a verdict, not a crash: every metric is NaN and the gate fails.
        log.warning("verify: %s", exc)
        outcome["unlearned"] = SuiteResult({k: float("nan") for k in outcome["retrain"].metrics}, {}, {})
    gate = apply_gate(outcome["unlearned"].metrics, outcome["retrain"].metrics, project.params.gate.tolerances,
                      refused={**outcome["retrain"].refused, **outcome["unlearned"].refused})
    return Evaluation(proofs, outcome, gate, exact, list(baselines.reference_ids), time.perf_counter() - started)

