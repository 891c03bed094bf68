"""Evaluating candidate models: the one evaluation behind the verify stage and method sweeps.

Every model is scored on the same forget and negative samples against the same reference
models, which are OUT for every scored sample (pool references, :func:`scoring_references`),
and the decision is :func:`unlearn.gate.gate_decision`: the candidate must be equivalent to a
never-trained model, the parent (the champion the batch is unlearned from) is the positive
control, and the margin is a fraction of the parent's measured excess. ``equivalence`` mode
(default) needs no exact retrain; ``strict`` mode scores one and uses it as the target.

Public pieces for other flows (audits, consolidation): :func:`evaluation_sets`,
:func:`scoring_references`, :func:`score_model`, :func:`decide` and :func:`evaluate_candidate`
(``mode="strict"`` with an exact retrain scores a model against it).
"""

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
from tasks.stage.context import resolve_device, tensors
from tasks.stage.references import recipe_key, reference_model, reference_pool_ids
from unlearn.attacks.base import AttackRefused
from unlearn.attacks.signals import SignalCache
from unlearn.config import GateConfig, Params
from unlearn.data import SampleStore
from unlearn.data.store import Arrays
from unlearn.gate import FAIL, INCONCLUSIVE, PASS, GateDecision, ScoredModel, gate_decision
from unlearn.gate_utility import LearningCurve
from unlearn.references import ReferenceBank, out_references
from unlearn.verification import (
    DivergedModelError,
    EvalSets,
    ModelEvidence,
    SuiteResult,
    attack_suite,
    gate_scores,
    model_evidence,
)

log = logging.getLogger("unlearn.pipeline")


def evaluation_sets(project: Project, store: SampleStore, forget: Arrays, forget_classes: list[int]) -> EvalSets:
    """The forget, retain and test sets every model is evaluated on.

    Args:
        project: The project.
        store: The live sample store (its train split is the retain set).
        forget: The forget samples (from the quarantine).
        forget_classes: Classes the requests forget as a whole (``forget_class``). Every class of the forget
            set with no training sample left joins them (:func:`forgotten_classes`). The test set is then
            restricted to them, or, when other batches verified with them add samples of other classes, drawn
            with the forget set's label proportions.

    Returns:
        The sets, with their sample ids (the signal cache's keys).
    """
    retain = store.load_split("train")
    test = split = store.load_split("test")
    forget_classes, unmeasured = forgotten_classes(forget_classes, forget.labels, retain.labels, split.labels,
                                                   project.params.gate.min_samples)
    if forget_classes:
        # Class-wise forgetting: compare the forget set with unseen samples of the same classes,
        # or the attack would learn "class", not "membership" (mia-and-peers.md section 2).
        if np.isin(forget.labels, forget_classes).all():
            test = Arrays(*(a[np.isin(test.labels, forget_classes)] for a in (test.ids, test.images, test.labels)))
        else:  # a whole class verified together with other batches' samples (review of 2026-12-05)
            test = label_matched(test, forget.labels)
    ids = {"forget": forget.ids, "retain": retain.ids, "test": test.ids}
    others = None
    if forget_classes:
        # where the gate's utility checks measure: every unseen sample of the classes kept (the test set above
        # holds the forgotten classes' samples, or a few of the others', too few to measure accuracy on)
        kept = ~np.isin(split.labels, forget_classes)
        others = Arrays(split.ids[kept], split.images[kept], split.labels[kept])
        ids["others"] = others.ids
    return EvalSets(tensors(forget), tensors(retain), tensors(test), ids=ids,
                    forgotten_classes=tuple(int(c) for c in forget_classes), unmeasured_classes=tuple(unmeasured),
                    others=None if others is None else tensors(others))


def forgotten_classes(declared: list[int] | tuple[int, ...], forget_labels: np.ndarray, retain_labels: np.ndarray,
                      test_labels: np.ndarray, min_samples: int) -> tuple[list[int], list[int]]:
    """The classes a deletion forgets as a whole: the declared ones and every class of the forget set that has
    no training sample left; split into those the gate can measure and those it cannot.

    Why: a request can name every remaining sample of a class by id (one person is one class in a
    face-recognition model; or the last batch of a class deleted piece by piece). The exact retrain then
    never saw the class and scores about 0% on it. Verified sample-wise, ``forget_acc`` compares the forget
    set with unseen samples of the same class, where a model that still recognises the class scores the
    same gap as one that never saw it, and the per-sample attacks cannot tell them apart either: such a
    model passed. Only ``class_acc`` (accuracy on the class's unseen samples, target 0) separates them
    (review of 2026-12-06). It needs unseen samples of the class: a person whose request also named their
    test-split samples leaves none, and an empty test set stopped every verification of the batch, the exact
    retrain's included (second review of 2026-12-06). Such a class is "unmeasured": no candidate can pass
    (:func:`evaluate_candidate` says inconclusive), and the exact retrain, exact by construction, remains.

    Args:
        declared: Classes named by ``forget_class`` requests.
        forget_labels: Labels of the forget set.
        retain_labels: Labels of the training split that remains after the deletion.
        test_labels: Labels of the live test split (the unseen samples).
        min_samples: ``gate.min_samples``: fewer unseen samples of a class leave it unmeasured.

    Returns:
        (measured classes, unmeasured classes), each sorted.
    """
    emptied = {int(c) for c in np.unique(forget_labels)} - {int(c) for c in np.unique(retain_labels)}
    inferred = emptied - {int(c) for c in declared}
    if inferred:  # a count only: in some models a class is one person
        log.info("evaluation: %d class(es) of the forget set have no training sample left: verified as forgotten "
                 "classes (class_acc)", len(inferred))
    classes = sorted({int(c) for c in declared} | emptied)
    unmeasured = [c for c in classes if int((np.asarray(test_labels) == c).sum()) < min_samples]
    if unmeasured:
        log.warning("evaluation: %d forgotten class(es) have fewer than %d unseen samples: whether a model still "
                    "recognises them cannot be measured (no candidate passes; the exact retrain remains)",
                    len(unmeasured), min_samples)
    return [c for c in classes if c not in unmeasured], unmeasured


def label_matched(test: Arrays, forget_labels: np.ndarray) -> Arrays:
    """The largest part of ``test`` whose labels come in the forget set's proportions (first samples of each
    label, in store order).

    Why: with a whole class forgotten together with other batches' samples, restricting the test set to the
    class compared those samples with nothing like them, and the full test set compares a forget set that is
    mostly one class with a balanced one: either way an attack scores "class", not "membership" (it even
    "detected" the exact retrain). Matching the proportions keeps the comparison about membership; the smaller
    set widens the intervals, and the gate says so (``gate.min_samples``) rather than deciding on less.
    """
    labels, counts = np.unique(forget_labels, return_counts=True)
    share = counts / counts.sum()
    available = np.array([(test.labels == label).sum() for label in labels])
    present = available > 0  # a label with no test sample cannot be matched: the others still are
    if not present.all():
        log.warning("evaluation: %d forgotten label(s) have no test sample to compare with; matched on the rest",
                    int((~present).sum()))
    if not present.any():
        return test
    share = share[present] / share[present].sum()
    labels, available = labels[present], available[present]
    size = int(np.floor(min(available / share)))
    keep = np.zeros(len(test.labels), dtype=bool)
    for label, part in zip(labels, share, strict=True):
        keep[np.flatnonzero(test.labels == label)[: int(round(size * part))]] = True
    return Arrays(test.ids[keep], test.images[keep], test.labels[keep])


@dataclass(frozen=True)
class Baselines:
    """What every candidate is compared with: the parent (positive control), the references, and in
    ``strict`` mode the exact retrain.

    Attributes:
        proofs: Evidence of the ``original`` (parent) model, and of ``retrain`` in strict mode.
        outcome: Their attack-suite results (the report's descriptive metrics).
        scored: Their gate input (:class:`unlearn.gate.ScoredModel`), same samples and references.
        references: Evidence of the reference models (empty when no attack needs them).
        reference_ids: Their ids, aligned with ``references``.
        refused: Why a gated attack refused these sets (too few samples for it), else None: the gate then
            decides nothing (``scored`` is empty) and every candidate is inconclusive.
        curve: The references' answers on the negatives with their training-set sizes and the parent's: the
            learning curve a ``utility`` fail's words read (None without references).
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    scored: dict[str, ScoredModel]
    references: list[ModelEvidence]
    reference_ids: list[str]
    refused: str | None = None
    curve: LearningCurve | None = None


@dataclass(frozen=True)
class Evaluation:
    """One candidate model's evaluation and the gate's decision.

    Attributes:
        proofs: Evidence per role (``original``, ``unlearned``, ``retrain`` when one was scored;
            no ``unlearned`` when the candidate diverged).
        outcome: Attack-suite results per role (a diverged candidate's metrics are all NaN).
        decision: The gate's decision (:class:`unlearn.gate.GateDecision`).
        exact: The candidate is the exact retrain itself: it never saw the forget samples, so it
            is promoted as exact whatever the statistics say (they are still reported).
        reference_ids: Reference models the attacks used.
        attack_seconds: Wall time of the evaluation.
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    decision: GateDecision
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
        """"pass", "fail" or "inconclusive" ("pass" for the exact retrain: it is exact by construction)."""
        return PASS if self.exact else self.decision.verdict

    @property
    def failures(self) -> list[str]:
        """Why the candidate did not pass, one line per metric that did not (empty on a pass)."""
        if self.verdict == PASS:
            return []
        open_ = [f"{c.metric}: {c.verdict}: {c.reason}" for c in self.decision.checks if c.verdict != PASS]
        return open_ or [self.decision.reason]


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


def scoring_references(project: Project, store: SampleStore, sets: EvalSets) -> tuple[list[ModelEvidence], list[str]]:
    """Evidence of the reference models that may score ``sets``: live, this recipe, OUT for every scored sample.

    With a reference pool (``verify.references.pool_fraction`` > 0) the references trained on
    pool samples only, which production training never uses, so the forget samples and the
    negatives are OUT for all of them and no deletion of a training sample retires one.

    Raises:
        PipelineError: If fewer than ``verify.references.count`` such references exist.
    """
    params = project.params
    if not needs_references(params):
        return [], []
    count = params.verify.references.count
    bank = ReferenceBank(project.references_dir)
    usable = [r.ref_id for r in bank.usable(recipe_key(project, store), reference_pool_ids(project, store))
              if r.pair < count // 2]
    scored_ids = np.concatenate([np.asarray(sets.ids["forget"]), np.asarray(sets.ids["test"])]) if sets.ids \
        else np.zeros(0)
    chosen = out_references(bank, usable, scored_ids)
    if len(chosen) < count:
        raise PipelineError(f"{len(chosen)} usable reference models (OUT for every scored sample) but "
                            f"verify.references.count is {count}; run the references stage first")
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir))
    refs = [evidence(reference_model(project, store, bank.load_state(ref_id)), with_retain=False, with_others=False)
            for ref_id in chosen]
    return refs, chosen


def learning_curve(project: Project, references: list[ModelEvidence], reference_ids: list[str],
                   sets: EvalSets) -> LearningCurve | None:
    """The references' answers on the negatives, their training-set sizes (from the bank's lineage) and the
    parent's (|D_F| + |D_R|): the learning curve a ``utility`` fail's words read. None without references."""
    if not references:
        return None
    records = ReferenceBank(project.references_dir).records
    return LearningCurve(np.stack([np.asarray(r.test.correct, dtype=np.float64) for r in references]),
                         tuple(int(records[i].n_members) for i in reference_ids), len(sets.forget) + len(sets.retain))


def score_model(project: Project, evidence: ModelEvidence, references: list[ModelEvidence]) -> ScoredModel:
    """One model's gate input: the gated attacks' scores and its correctness on the gate's sets.

    Call it with the same ``references`` for every model of one decision (paired bootstrap).
    """
    params = project.params
    return gate_scores(evidence, references, attacks=params.gate.attacks,
                       attack_options=params.verify.attack_options, seed=params.seed)


def decide(project: Project, candidate: ScoredModel, parent: ScoredModel,
           targets: list[ScoredModel] | tuple[ScoredModel, ...] = (), *, sets: EvalSets,
           curve: LearningCurve | None = None) -> GateDecision:
    """The gate's decision with the project's ``gate`` settings (strict mode when ``targets`` are given).

    Args:
        project: The project.
        candidate: The model to certify (from :func:`score_model`).
        parent: The model it was unlearned from: the positive control.
        targets: Exact retrains without the forget set (strict mode); empty = equivalence mode.
        sets: The samples every model was scored on: whole classes forgotten add ``class_acc``
            (:meth:`EvalSets.class_negatives`); the negatives' labels give ``utility`` its baseline.
        curve: The references' learning curve (:func:`learning_curve`): in equivalence mode, a ``utility`` fail
            not shown beyond what the deletion is estimated to cost an exact retrain says so (no verdict changes).
    """
    return gate_decision_for(project.params.gate, candidate, parent, targets, sets, curve=curve)


def gate_decision_for(gate: GateConfig, candidate: ScoredModel, parent: ScoredModel,
                      targets: list[ScoredModel] | tuple[ScoredModel, ...], sets: EvalSets, *,
                      curve: LearningCurve | None = None) -> GateDecision:
    """:func:`unlearn.gate.gate_decision` with ``gate``'s settings on ``sets`` (verify and method audits alike)."""
    return gate_decision(candidate, parent, attacks=gate.attacks, accuracy_checks=gate.accuracy_checks,
                         targets=list(targets), alpha=gate.alpha, margin_fraction=gate.margin_fraction,
                         resamples=gate.resamples, seed=gate.seed, min_samples=gate.min_samples,
                         class_negatives=sets.class_negatives(),
                         utility_labels=(sets.test if sets.others is None else sets.others).labels.cpu().numpy(),
                         labels=(sets.forget.labels.cpu().numpy(), sets.test.labels.cpu().numpy()),
                         utility_loss_fraction=gate.utility_loss_fraction, utility_loss_floor=gate.utility_loss_floor,
                         deleted_share=sets.deleted_share(), learning_curve=curve)


def evaluate_baselines(project: Project, store: SampleStore, sets: EvalSets, *, original: torch.nn.Module,
                       retrained: torch.nn.Module | None = None) -> Baselines:
    """Evidence, attack results and gate input of the parent (and of the exact retrain when given).

    Signals go through the project's signal cache (``data/signals/``), so a second call reads them.

    Args:
        project: The project.
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        original: The model the candidates unlearned from (the champion: the positive control).
        retrained: The exact retrain without the forget samples (strict mode's target), or None.

    Returns:
        The baselines.

    Raises:
        PipelineError: If too few reference models are OUT for the scored samples.
    """
    device = resolve_device(project)
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir))
    suite = _suite_fn(project.params)
    refs, ref_ids = scoring_references(project, store, sets)
    curve = learning_curve(project, refs, ref_ids, sets)
    proofs = {"original": evidence(original.to(device))}
    if retrained is not None:
        proofs["retrain"] = evidence(retrained.to(device))
    outcome = {role: suite(proofs[role], refs) for role in proofs}
    try:
        scored = {role: score_model(project, proofs[role], refs) for role in proofs}
    except AttackRefused as exc:  # a verdict (inconclusive), not a crash: a crash would stop every later batch
        log.warning("evaluation: a gated attack refused the sets: %s", exc)
        return Baselines(proofs, outcome, {}, refs, ref_ids, refused=str(exc), curve=curve)
    return Baselines(proofs, outcome, scored, refs, ref_ids, curve=curve)


def _unscored(project: Project, verdict: str, mode: str, n_forget: int, reason: str) -> GateDecision:
    """A decision reached without scoring any metric (a diverged candidate; a gated attack refusing the sets)."""
    gate = project.params.gate
    return GateDecision(verdict, reason, (), mode=mode, alpha=gate.alpha, margin_fraction=gate.margin_fraction,
                        resamples=gate.resamples, seed=gate.seed, n_forget=n_forget)


def evaluate_candidate(project: Project, store: SampleStore, sets: EvalSets, candidate: torch.nn.Module, *,
                       method: str, original: torch.nn.Module, retrained: torch.nn.Module | None = None,
                       mode: str | None = None, baselines: Baselines | None = None,
                       cache_candidate: bool = True) -> Evaluation:
    """Score an unlearned model and its parent on the same sets with the same references, and decide.

    The one evaluation behind the verify stage and method sweeps (:mod:`tasks.sweep`). Pure with
    respect to the pipeline: no MLflow, no state, ledger or audit writes; only the signal cache.

    Args:
        project: The project (``verify`` and ``gate`` come from its params).
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        candidate: The unlearned model.
        method: The method that produced it (``retrain`` is checked for being the exact retrain).
        original: The model it was unlearned from (the positive control).
        retrained: The exact retrain (:func:`tasks.stage.retrain.retrained_model`): the target in
            strict mode; in equivalence mode it is only used to recognise the exact retrain.
        mode: ``equivalence`` or ``strict`` (default ``gate.mode``).
        baselines: Precomputed :func:`evaluate_baselines` (computed here when None).
        cache_candidate: Cache the candidate's signals too. Sweeps do not: their candidates are
            never verified again, and their cache files would only accumulate.

    Returns:
        The evaluation: metrics per role, refusals, the gate's decision, verdict.

    Raises:
        ValueError: If strict mode is asked for without an exact retrain.
    """
    mode = mode or project.params.gate.mode
    if mode not in ("equivalence", "strict"):
        raise ValueError(f"gate mode must be equivalence or strict, got {mode!r}")
    if mode == "strict" and retrained is None:
        raise ValueError("strict mode compares with the exact retrain: pass retrained=")
    started = time.perf_counter()
    exact = method == "retrain" and retrained is not None and _same_weights(candidate, retrained)
    if baselines is None:  # computed here, so their time counts as this evaluation's
        baselines = evaluate_baselines(project, store, sets, original=original,
                                       retrained=retrained if mode == "strict" else None)
    proofs, outcome = dict(baselines.proofs), dict(baselines.outcome)
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir) if cache_candidate else None)
    targets = [baselines.scored["retrain"]] if mode == "strict" and baselines.refused is None else []
    try:
        proofs["unlearned"] = evidence(candidate.to(resolve_device(project)))
        outcome["unlearned"] = _suite_fn(project.params)(proofs["unlearned"], baselines.references)
        if baselines.refused is not None:
            decision = _unscored(project, INCONCLUSIVE, mode, len(sets.forget),
                                 f"a gated attack cannot score these samples ({baselines.refused}): not enough "
                                 "evidence either way; this is NOT a pass")
        elif sets.unmeasured_classes:
            decision = _unscored(project, INCONCLUSIVE, mode, len(sets.forget),
                                 f"{len(sets.unmeasured_classes)} class(es) this deletion leaves without training "
                                 f"samples have fewer than {project.params.gate.min_samples} unseen samples: whether "
                                 "the model still recognises them cannot be measured; this is NOT a pass")
        else:
            scored = score_model(project, proofs["unlearned"], baselines.references)
            decision = decide(project, scored, baselines.scored["original"], targets, sets=sets,
                              curve=baselines.curve)
    except DivergedModelError as exc:
        # A diverged model is a verdict, not a crash: every metric is NaN and the gate fails.
        log.warning("verify: %s", exc)
        outcome["unlearned"] = SuiteResult({k: float("nan") for k in outcome["original"].metrics}, {}, {})
        decision = _unscored(project, FAIL, mode, len(sets.forget),
                             f"the unlearned model diverged ({exc}): nothing to certify")
    return Evaluation(proofs, outcome, decision, exact, list(baselines.reference_ids), time.perf_counter() - started)
