"""Verification: accuracies and attack metrics of a model, and the gate's input.

The promotion decision lives in :mod:`unlearn.gate` (equivalence to never trained, the parent
as positive control, margins calibrated on the parent's measured excess); :func:`gate_scores`
turns a model's evidence into the gate's input. :func:`attack_suite` computes the descriptive
metrics (AUC, TPR at low FPR, with intervals) that reports show next to the decision. The
retired fixed-tolerance rule passed untouched models (issue #12) and is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearn.attacks import (
    ATTACKS,
    AttackInput,
    AttackRefused,
    ReferenceSignals,
    ShadowSignals,
    Signals,
    compute_signals,
    run_attack,
)
from unlearn.attacks.signals import SignalCache, logit_scaled_confidence, model_digest, view_logits
from unlearn.gate import ScoredModel
from unlearn.methods.base import TensorSet
from unlearn.metrics import attack_metrics

ACCURACY_METRICS = ("forget_acc", "retain_acc", "test_acc")
SETS = ("forget", "retain", "test")


class DivergedModelError(ValueError):
    """The model's outputs are not finite (an unlearning run diverged)."""


def attack_metric(attack: str, metric: str = "auc") -> str:
    """Name of one attack metric, e.g. ``mia.loss_threshold.auc``."""
    return f"mia.{attack}.{metric}"


@dataclass(frozen=True)
class EvalSets:
    """The three sample sets every model is evaluated on.

    Attributes:
        forget: D_F, the samples the model must forget (attack positives).
        retain: D_R, the live training samples.
        test: D_T, never trained on (attack negatives).
        ids: Sample ids per set name (keys of the signal cache); None disables caching.
        forgotten_classes: Classes forgotten as a whole (their unseen samples in ``test`` are what the gate's
            ``class_acc`` check measures); empty for sample-wise requests.
        others: Whole-class requests only: unseen samples of the classes NOT forgotten, where the gate's
            utility checks measure accuracy (``test`` then holds only the forgotten classes' samples, on which
            a correct unlearner loses everything by design). None: utility is measured on ``test``.
        unmeasured_classes: Classes forgotten as a whole with too few unseen samples to measure ``class_acc`` on
            (not in ``forgotten_classes``): no candidate can be shown to have forgotten them.
    """

    forget: TensorSet
    retain: TensorSet
    test: TensorSet
    ids: dict[str, np.ndarray] | None = None
    forgotten_classes: tuple[int, ...] = ()
    others: TensorSet | None = None
    unmeasured_classes: tuple[int, ...] = ()

    def deleted_share(self) -> float:
        """The share of the parent's training samples the deletion removed: |D_F| / (|D_F| + |D_R|).

        What the gate's ``utility`` allowance grows with. When whole classes are forgotten, utility is measured
        on the other classes only, so the share is taken over them too: a class deleted as a whole would
        otherwise make any deletion beside it look large.
        """
        forget, retain = self.forget.labels.cpu().numpy(), self.retain.labels.cpu().numpy()
        if self.forgotten_classes:
            forget = forget[~np.isin(forget, list(self.forgotten_classes))]
            retain = retain[~np.isin(retain, list(self.forgotten_classes))]
        total = len(forget) + len(retain)
        return len(forget) / total if total else 0.0

    def class_negatives(self) -> np.ndarray | None:
        """Mask over ``test`` of the forgotten classes' samples (None for sample-wise requests)."""
        if not self.forgotten_classes:
            return None
        return np.isin(self.test.labels.cpu().numpy(), list(self.forgotten_classes))


@dataclass(frozen=True)
class ModelEvidence:
    """Everything the attacks need from one model.

    Attributes:
        forget: Signals on D_F (identity view).
        retain: Signals on D_R (None for reference models, which do not need them).
        test: Signals on D_T.
        forget_phi: Logit-scaled confidence per test-time view on D_F, shape (N_F, A).
        test_phi: The same on D_T, shape (N_T, A).
        digest: Content hash of the model's weights.
        others: Signals on :attr:`EvalSets.others` (None when the sets have none, and for reference models).
    """

    forget: Signals
    retain: Signals | None
    test: Signals
    forget_phi: np.ndarray
    test_phi: np.ndarray
    digest: str
    others: Signals | None = None


def model_evidence(
    model: nn.Module, sets: EvalSets, *, device: str, augmentations: str = "none",
    cache: SignalCache | None = None, with_retain: bool = True, with_others: bool = True,
) -> ModelEvidence:
    """Compute (or read from the cache) one model's signals on the evaluation sets.

    Args:
        model: The model (queried in eval mode).
        sets: The sets; ``sets.ids`` must be given to use ``cache``.
        device: Where to compute.
        augmentations: Test-time views for the reference attacks ("none", "mirror", "mirror_shift").
        cache: Optional signal cache keyed by sample id.
        with_retain: Also compute D_R signals (population attacks fit on them).
        with_others: Also compute signals on ``sets.others`` when there is one (the gate's utility checks;
            reference models need none).

    Returns:
        The evidence.

    Raises:
        DivergedModelError: If the model's outputs are not finite.
    """
    digest = model_digest(model)
    out: dict[str, Any] = {"digest": digest, "retain": None}
    names = [*(SETS if with_retain else ("forget", "test")),
             *(["others"] if with_others and sets.others is not None else [])]
    views = {name: "none" if name == "others" else augmentations for name in names}  # utility: the plain view
    cacheable = [n for n in names if cache is not None and sets.ids is not None and n in sets.ids]
    # D_R (a candidate's: the whole training split) is not asked for with the small sets: a model that diverged
    # is refused on D_F, as before, without a pass over D_R first
    cached = _cached_logits(model, sets, [n for n in cacheable if n != "retain"], views, cache, device=device,
                            digest=digest)
    for name in names:
        subset: TensorSet = getattr(sets, name)
        if name in cached:
            logits = cached[name]
        elif name in cacheable:
            logits = cache.logits(model, sets.ids[name], subset.images, augmentations=views[name], device=device,
                                  digest=digest)
        else:
            logits = view_logits(model, subset.images, views[name], device=device)
        if not bool(torch.isfinite(logits).all()):
            if cache is not None:
                cache.drop_model(digest)
            raise DivergedModelError(f"model outputs on the {name} set are not finite")
        out[name] = compute_signals(logits[:, 0], subset.labels)
        if name in ("forget", "test"):
            out[f"{name}_phi"] = logit_scaled_confidence(logits, subset.labels)  # (N, A)
    return ModelEvidence(**out)


def _cached_logits(model: nn.Module, sets: EvalSets, names: list[str], views: dict[str, str],
                   cache: SignalCache, *, device: str, digest: str) -> dict[str, torch.Tensor]:
    """Logits (N, A, K) of the sets ``names`` through ``cache``, one cache call per view setting.

    Why one call: each call reads the model's whole cache file and indexes its ids, and a reference model's
    file holds every production and test sample (about 17 ms a call at 70,000 ids): D_F and D_T are read
    together, not one after the other.

    Raises:
        ValueError: If a set's ids and images differ in number (the rows would be cached under other ids).
    """
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if len(sets.ids[name]) != len(getattr(sets, name).images):
            raise ValueError(f"the {name} set has {len(sets.ids[name])} ids for {len(getattr(sets, name).images)} "
                             "images")
    for setting in dict.fromkeys(views[n] for n in names):
        group = [n for n in names if views[n] == setting]
        if len(group) == 1:
            (n,) = group
            out[n] = cache.logits(model, sets.ids[n], getattr(sets, n).images, augmentations=setting, device=device,
                                  digest=digest)
            continue
        ids = np.concatenate([np.asarray(sets.ids[n]).astype(str) for n in group])
        images = torch.cat([getattr(sets, n).images for n in group])
        unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        if len(unique) == len(ids):
            logits = cache.logits(model, ids, images, augmentations=setting, device=device, digest=digest)
        else:  # a sample in two sets (the utility set is drawn from the negatives) is asked for, and stored, once
            keep = np.sort(first)  # first occurrences, in the sets' order
            position = np.empty(len(unique), dtype=np.int64)
            position[np.argsort(first)] = np.arange(len(unique))  # unique[i] is row position[i] of ids[keep]
            logits = cache.logits(model, ids[keep], images[torch.from_numpy(keep)], augmentations=setting,
                                  device=device, digest=digest)
            logits = logits[torch.from_numpy(position[inverse.reshape(-1)])]
        for n, part in zip(group, torch.split(logits, [len(sets.ids[n]) for n in group]), strict=True):
            out[n] = part
    return out


@dataclass(frozen=True)
class SuiteResult:
    """Metrics of one model under the attack suite.

    Attributes:
        metrics: Flat mapping: accuracies, ``mia.<attack>.<metric>`` with ``.ci_low``/``.ci_high``,
            and each attack's extra numbers (``mia.<attack>.<name>``).
        scores: Per attack, ``{"member": (N_F,), "nonmember": (N_T,)}`` score arrays.
        refused: Metric name -> why it was not reported (too few negatives).
    """

    metrics: dict[str, float]
    scores: dict[str, dict[str, np.ndarray]]
    refused: dict[str, str]


def attack_suite(
    target: ModelEvidence, references: list[ModelEvidence], *, attacks: tuple[str, ...],
    attack_options: dict[str, dict[str, Any]] | None = None, fprs: tuple[float, ...] = (0.01, 0.001),
    min_negatives: int = 10, bootstrap: int = 0, seed: int = 0,
    reference_in: tuple[np.ndarray, np.ndarray] | None = None, shadows: ShadowSignals | None = None,
) -> SuiteResult:
    """Run every attack on one target model and compute the metrics with one convention.

    Reference models must be OUT of every forget and test sample (trained without them), as
    the reference bank guarantees: offline attacks then have K observations per sample.

    Args:
        target: The attacked model's evidence (with retain signals).
        references: Evidence of the reference models (may be empty if no attack needs them).
        attacks: Registered attack names.
        attack_options: Keyword options per attack.
        fprs: FPRs for the TPR metrics.
        min_negatives: Refusal threshold for TPR at an FPR.
        bootstrap: Bootstrap resamples for the intervals (0 = none).
        seed: Seed for the attacks and the bootstrap.
        reference_in: Audits only: (forget_in (K, N_F), test_in (K, N_T)) membership of each
            reference; default all OUT, which is what promotion-time references guarantee.
        shadows: Audits only: shadow-pipeline signals for U-LiRA and the epsilon score.

    Returns:
        Metrics, scores and refusals.
    """
    refs = None
    if references:
        refs = ReferenceSignals(
            target_forget=target.forget_phi, target_test=target.test_phi,
            forget=np.stack([r.forget_phi for r in references]),  # (K, N_F, A)
            test=np.stack([r.test_phi for r in references]),  # (K, N_T, A)
            forget_in=np.zeros((len(references), len(target.forget)), dtype=bool)
            if reference_in is None else reference_in[0],
            test_in=np.zeros((len(references), len(target.test)), dtype=bool)
            if reference_in is None else reference_in[1],
        )
    retain = target.retain
    if retain is None:
        raise ValueError("attack_suite: the target's evidence needs retain signals")
    inputs = AttackInput(target.forget, retain, target.test, seed=seed, references=refs, shadows=shadows)
    metrics = {f"{name}_acc": float(np.mean(getattr(target, name).correct)) if len(getattr(target, name))
               else float("nan") for name in SETS}
    scores, refused = {}, {}
    for attack in attacks:
        try:
            result = run_attack(attack, inputs, **(attack_options or {}).get(attack, {}))
        except AttackRefused as exc:
            # Too little data for this attack: every metric of it is refused, with the reason.
            names = ["auc", "balanced_accuracy", "tpr_at_lowest_fpr", *(f"tpr_at_fpr_{f:g}" for f in fprs), "*"]
            refused.update({attack_metric(attack, name): str(exc) for name in names})
            continue
        scores[attack] = {"member": result.member_scores, "nonmember": result.nonmember_scores}
        if len(result.nonmember_scores):
            report = attack_metrics(result.member_scores, result.nonmember_scores, fprs=fprs,
                                    min_negatives=min_negatives, resamples=bootstrap, seed=seed)
            metrics.update(report.flat(f"mia.{attack}"))
            refused.update({attack_metric(attack, k): v for k, v in report.refused.items()})
        metrics.update({attack_metric(attack, k): float(v) for k, v in result.extra.items()})
    return SuiteResult(metrics, scores, refused)


MIN_JACKKNIFE_REFERENCES = 3  # leaving one of two out leaves LiRA one observation: no spread to fit


def gate_scores(
    target: ModelEvidence, references: list[ModelEvidence], *, attacks: tuple[str, ...] | list[str],
    attack_options: dict[str, dict[str, Any]] | None = None, seed: int = 0, jackknife: bool = True,
) -> ScoredModel:
    """One model's attack scores and correctness on the gate's sets (input of :func:`unlearn.gate.gate_decision`).

    Call it with the SAME ``references``, ``seed`` and ``jackknife`` for the candidate, the
    parent and any retrain, so every model is scored on the same samples against the same
    references: the gate's bootstrap is paired.

    Args:
        target: The model's evidence. Retain signals are needed only by attacks that fit on
            D_R (``svc_confidence``, ``loss_lr``); without them those attacks refuse to run.
        references: Evidence of reference models OUT of every forget and test sample (pool
            references: :func:`unlearn.references.out_references` selects them).
        attacks: The gated attacks.
        attack_options: Keyword options per attack (``verify.attack_options``).
        seed: The attacks' seed (fixes e.g. RMIA's population split and SVC's fitting half).
        jackknife: With at least :data:`MIN_JACKKNIFE_REFERENCES` references, also score each
            reference attack once without each reference (rows 1..K of shape (1 + K, N); row 0
            uses all of them), so the gate's interval covers which reference models happened to
            be trained (:func:`unlearn.gate_bootstrap.auc_draws`). Costs K more attack scorings
            on signals already computed (no forward pass).

    Returns:
        The gate's input for this model.

    Raises:
        ValueError: If a reference attack gets no references, or an attack needs missing retain signals.
    """
    empty = np.zeros(0)
    retain = target.retain if target.retain is not None else Signals(empty, empty, empty, empty, empty, empty)
    options = attack_options or {}
    member, nonmember = {}, {}
    everyone = np.arange(len(references))
    subsets = [everyone]
    if jackknife and len(references) >= MIN_JACKKNIFE_REFERENCES:
        subsets += [np.delete(everyone, k) for k in everyone]
    for attack in attacks:
        picks = subsets if ATTACKS.get(attack).uses_references else [everyone]
        results = []
        for pick in picks:
            chosen = [references[i] for i in pick]
            refs = None
            if chosen:
                refs = ReferenceSignals(
                    target_forget=target.forget_phi, target_test=target.test_phi,
                    forget=np.stack([r.forget_phi for r in chosen]), test=np.stack([r.test_phi for r in chosen]),
                    forget_in=np.zeros((len(chosen), len(target.forget)), dtype=bool),
                    test_in=np.zeros((len(chosen), len(target.test)), dtype=bool))
            inputs = AttackInput(target.forget, retain, target.test, seed=seed, references=refs)
            result = run_attack(attack, inputs, **options.get(attack, {}))
            if len(result.member_scores) != len(target.forget.correct):
                # the gate needs one score per forget sample (loss_lr scores a balanced subsample when D_F
                # outnumbers D_T): a refusal, so the verdict is inconclusive rather than a crash
                raise AttackRefused(f"{attack} scored {len(result.member_scores)} of the {len(target.forget.correct)} "
                                    "forget samples; a gated attack must score every one")
            results.append(result)
        member[attack] = np.stack([r.member_scores for r in results]).squeeze(0) if len(results) == 1 \
            else np.stack([r.member_scores for r in results])
        nonmember[attack] = np.stack([r.nonmember_scores for r in results]).squeeze(0) if len(results) == 1 \
            else np.stack([r.nonmember_scores for r in results])
    return ScoredModel(member, nonmember, target.forget.correct, target.test.correct,
                       None if target.others is None else target.others.correct)


def evaluate_model(
    model: nn.Module,
    sets: EvalSets,
    *,
    attacks: tuple[str, ...],
    device: str,
    seed: int,
    bootstrap: int = 0,
) -> dict[str, float]:
    """Accuracy on each set and each population attack's forget-vs-test metrics (no references).

    Args:
        model: The model to evaluate (eval mode is used).
        sets: Forget, retain and test sets.
        attacks: Registered attack names that need no reference models.
        device: Where to compute.
        seed: Seed for attacks and bootstrap.
        bootstrap: Resamples for the confidence intervals (0 = none).

    Raises:
        DivergedModelError: If the model's outputs are not finite.

    Returns:
        The flat metrics of :class:`SuiteResult`.
    """
    evidence = model_evidence(model, sets, device=device)
    return attack_suite(evidence, [], attacks=attacks, bootstrap=bootstrap, seed=seed).metrics
