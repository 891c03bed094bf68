"""The promotion gate: a positive control, calibrated margins and equivalence tests (issue #12).

Why this design (shared/research/gate-design.md): a fixed absolute tolerance passed the untouched
original model on every demo metric, because the whole original-to-retrain gap was smaller than
the tolerance. The question a certificate answers is "is the candidate *equivalent* to a model
that never trained on D_F?", so the burden of proof is on the candidate:

1. **Target.** The never-trained baseline. In ``equivalence`` mode (default, retrain-free) it is
   known without training anything: for forget and negative samples drawn from the same
   distribution, a never-trained model's forget-vs-negative AUC is 0.5 in expectation and its
   forget accuracy equals its accuracy on the negatives. For non-iid forget sets (one class, one
   person's cluster) the caller must pass *matched* negatives (same classes / strata), or use
   attacks calibrated per example against OUT references (``lira_offline``, ``rmia_offline``):
   under "never trained", the target's signal on x is a draw from x's own OUT distribution, so
   those scores are exchangeable between forget and negative samples whatever their difficulty.
   In ``strict`` mode the target is one or more exact retrains scored on the same samples.
2. **Positive control.** The parent (the model the batch is unlearned from) is scored the same
   way. Its excess over the target, with a (1 - 2 alpha) paired-bootstrap interval, shows whether
   the evidence can see membership at all. Not detected -> ``inconclusive``, never ``pass``.
3. **Margin.** delta = ``margin_fraction`` x the parent's measured excess (point estimate), so the
   margin scales with what the attack can see on this data, and the parent itself can never
   pass (its own point estimate lies outside +-delta whenever margin_fraction < 1).
4. **Decision per metric**, on the (1 - 2 alpha) interval of (candidate - target):
   * ``pass``: the interval lies strictly inside (-delta, +delta) -- two one-sided tests
     (Schuirmann 1987) at level alpha each. Two-sided: over-forgetting fails too.
   * ``fail``: the interval lies entirely beyond +delta or below -delta -- conclusive evidence
     that the candidate still remembers (or looks *less* like a member than never-trained,
     the Streisand effect).
   * ``inconclusive``: anything else (the interval straddles a margin boundary: too few samples
     to decide either way), or no positive control. Calling that ``fail`` would fail exact
     retrains at a rate near 50 % whenever the interval is about as wide as the margin.
5. **Intersection-union** over metrics: ``pass`` only if every gated metric passes (no
   multiplicity correction needed); any conclusive ``fail`` fails the candidate; otherwise
   ``inconclusive``.

Accuracy checks get the same treatment: ``forget_acc`` is the forget-minus-negative accuracy gap
(target 0, or the retrain's gap in strict mode) with its own control and margin, the negatives weighed
to the forget set's label mix when the labels are given (a never-trained model is as accurate on D_F
as on negatives of the same classes, not on any negatives); ``test_acc`` is
a non-inferiority check of the candidate's accuracy on the negatives against the target (the
parent in equivalence mode), with the ``forget_acc`` margin: utility may not drop by more than
the fraction of the memorisation effect the gate tolerates.

Whole classes forgotten (``class_negatives``: the negatives that are unseen samples of the forgotten
classes): every check above is relative, forget against negatives of the same classes, so a model that
lost its per-sample memory but still classifies the class scores like never-trained on all of them.
``class_acc`` is the absolute accuracy on those negatives, target 0 (a model never trained on a class
does not predict it) or the retrains' in strict mode, decided like ``forget_acc``; it is added
automatically. ``test_acc`` and ``utility`` are then measured on the other negatives only (on the
forgotten classes a correct unlearner loses all accuracy by design), and recorded inconclusive
("utility not measurable") when there are fewer than ``min_samples`` of them.

Utility (``utility``, on by default in ``params.yaml``): every check above asks whether the candidate
*forgot*; a model that lost everything (one class for every input) forgets perfectly and would pass
them all, then replace the champion. ``utility`` is a non-inferiority check of the accuracy on the
negatives against the parent (the retrains in strict mode) with its own positive control and a
measured margin: the parent's *skill*, its accuracy minus that of the best constant prediction (the
most frequent class among the negatives), must be detected (interval above zero; otherwise the
negatives cannot show a loss and the check is inconclusive), and the candidate may lose at most
``utility_loss_fraction`` of that skill (less after a small deletion: ``utility_loss_floor`` plus the share
deleted). After a large deletion an exact retrain itself may lose more than that: where the reference models,
trained on fewer samples with the same recipe, estimate it (``learning_curve``), a fail not shown beyond that
cost says the loss may be the deletion's own (the verdict stands). ``test_acc`` is the stricter form whose
allowed loss is the ``forget_acc`` margin.

Bootstrap: every resample draws forget and negative sample indices (multinomial weights) once
and applies them to every model, so the interval reflects the pairing; when scores come with
leave-one-out replicates (shape (1 + K, N): reference attacks scored without each of K reference models,
``gate_scores``) a resample also draws K normal multipliers for all models and adds the jackknife deviations
they weigh, so the interval covers which reference models happened to be trained (``auc_draws``); with
several strict-mode retrains it draws retrains with replacement and averages them, so retrain-seed noise
enters the interval.

How a verify stage calls it (everything here is pure: arrays and models in, a record out)::

    refs = [model_evidence(r, sets, device=d, with_retain=False) for r in pool_reference_models]
    #   pool references only: unlearn.references.out_references(bank, ids, forget_ids + test_ids)
    kw = dict(attacks=cfg.gate.attacks, attack_options=cfg.verify.attack_options, seed=cfg.seed)
    parent = gate_scores(model_evidence(champion, sets, device=d), refs, **kw)      # positive control
    cand = gate_scores(model_evidence(unlearned, sets, device=d), refs, **kw)
    targets = [gate_scores(model_evidence(r, sets, device=d), refs, **kw) for r in retrains]  # strict only
    decision = gate_decision(cand, parent, attacks=cfg.gate.attacks, accuracy_checks=cfg.gate.accuracy_checks,
                             targets=targets, alpha=cfg.gate.alpha, margin_fraction=cfg.gate.margin_fraction,
                             resamples=cfg.gate.resamples, seed=cfg.gate.seed, min_samples=cfg.gate.min_samples,
                             class_negatives=sets.class_negatives(), utility_labels=sets.test.labels.numpy(),
                             labels=(sets.forget.labels.numpy(), sets.test.labels.numpy()),
                             utility_loss_fraction=cfg.gate.utility_loss_fraction,
                             utility_loss_floor=cfg.gate.utility_loss_floor, deleted_share=sets.deleted_share())
    #   (whole classes: utility_labels are sets.others' labels; tasks.stage.evaluation.gate_decision_for)
    action = next_action(decision, on_inconclusive=cfg.gate.on_inconclusive, held_batches=..., held_hours=...,
                         max_hold_batches=cfg.gate.max_hold_batches, max_hold_hours=cfg.gate.max_hold_hours)
    decision.to_dict()   # certificate / MLflow / request status: verdict, reason, every number

(``gate_scores`` and ``model_evidence`` live in :mod:`unlearn.verification`; ``next_action`` and the audit and
consolidation rules in :mod:`unlearn.gate_policy`; the bootstrap machinery in :mod:`unlearn.gate_bootstrap`; the
verdict words and the decision's records in :mod:`unlearn.gate_record`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unlearn.gate_bootstrap import (
    ScoredModel,
    accuracy_draws,
    auc_draws,
    bootstrap_weights,
    gap_draws,
    interval,
    label_match,
    stable_seed,
    target_draws,
)
from unlearn.gate_record import (
    ACCURACY_CHECKS,
    DELETION_COST,
    FAIL,
    INCONCLUSIVE,
    PASS,
    UTILITY_CHECKS,
    GateDecision,
    MetricCheck,
)
from unlearn.gate_utility import LearningCurve, deletion_cost, expected_retrain_loss, utility_allowance

# ---------------------------------------------------------------------------- decision


def _unmeasured(metric: str, reason: str, *, n_forget: int, n_negative: int, parent_detected: bool = False
                ) -> MetricCheck:
    """An inconclusive check with nothing computed (too few samples to measure it on): every number NaN."""
    nan = float("nan")
    return MetricCheck(metric=metric, verdict=INCONCLUSIVE, reason=reason, candidate=nan, target=nan, estimate=nan,
                       ci_low=nan, ci_high=nan, parent_excess=nan, parent_ci_low=nan, parent_ci_high=nan,
                       parent_detected=parent_detected, margin=nan, n_forget=n_forget, n_negative=n_negative)


def _decide_equivalence(metric: str, cand: tuple[float, np.ndarray], parent: tuple[float, np.ndarray],
                        target: tuple[float, np.ndarray], *, alpha: float, margin_fraction: float,
                        n_forget: int, n_negative: int) -> MetricCheck:
    estimate = cand[0] - target[0]
    low, high = interval(cand[1] - target[1], alpha)
    excess = parent[0] - target[0]
    p_low, p_high = interval(parent[1] - target[1], alpha)
    detected = bool(p_low > 0.0 and excess > 0.0)
    common = dict(metric=metric, candidate=cand[0], target=target[0], estimate=estimate, ci_low=low, ci_high=high,
                  parent_excess=excess, parent_ci_low=p_low, parent_ci_high=p_high, parent_detected=detected,
                  n_forget=n_forget, n_negative=n_negative)
    level = f"{100 * (1 - 2 * alpha):g}%"
    if not detected:
        return MetricCheck(verdict=INCONCLUSIVE, margin=float("nan"), **common, reason=(
            f"no positive control: the parent's excess {excess:+.4f} ({level} CI [{p_low:+.4f}, {p_high:+.4f}]) "
            "is not above the never-trained baseline, so this evidence cannot see membership"))
    delta = margin_fraction * excess
    where = f"candidate - target {estimate:+.4f}, {level} CI [{low:+.4f}, {high:+.4f}], margin +-{delta:.4f}"
    if -delta < low and high < delta and abs(estimate) < delta:
        return MetricCheck(verdict=PASS, margin=delta, **common,
                           reason=f"equivalent to never trained: {where} (interval inside the margin)")
    if low >= delta:
        return MetricCheck(verdict=FAIL, margin=delta, **common,
                           reason=f"still remembers: {where} (interval above the margin)")
    if high <= -delta:
        return MetricCheck(verdict=FAIL, margin=delta, **common,
                           reason=f"over-forgets (looks less like a member than never trained): {where}")
    return MetricCheck(verdict=INCONCLUSIVE, margin=delta, **common,
                       reason=f"too few samples to decide: {where} (interval crosses the margin)")


def _decide_non_inferiority(metric: str, cand: tuple[float, np.ndarray], target: tuple[float, np.ndarray],
                            delta: float, *, alpha: float, n_negative: int, detected: bool,
                            control: tuple[float, float, float] | None = None, no_control: str,
                            allowance: str = "", cost: tuple[float, str] | None = None) -> MetricCheck:
    """Utility kept? ``control``: the parent's skill (point, interval) when the check has one of its own.

    ``cost`` (utility only): (loss, words) that an exact retrain is estimated to suffer from the deletion alone; a
    fail whose interval does not also lie beyond it says so (:data:`DELETION_COST`). It changes no verdict.
    """
    estimate = cand[0] - target[0]
    low, high = interval(cand[1] - target[1], alpha)
    level = f"{100 * (1 - 2 * alpha):g}%"
    excess, p_low, p_high = control if control is not None else (float("nan"),) * 3
    common = dict(metric=metric, candidate=cand[0], target=target[0], estimate=estimate, ci_low=low,
                  ci_high=high, parent_excess=excess, parent_ci_low=p_low, parent_ci_high=p_high,
                  parent_detected=detected, n_forget=0, n_negative=n_negative)
    if not detected or not delta > 0:
        return MetricCheck(verdict=INCONCLUSIVE, margin=float("nan"), **common, reason=no_control)
    where = (f"accuracy change {estimate:+.4f}, {level} CI [{low:+.4f}, {high:+.4f}], "
             f"allowed loss {delta:.4f}{allowance}")
    if low > -delta:
        return MetricCheck(verdict=PASS, margin=delta, **common, reason=f"utility kept: {where}")
    if high <= -delta:
        why = f"utility lost: {where}"
        if cost is not None and cost[0] > delta and high > -cost[0]:
            why += (f"; {DELETION_COST}: an exact retrain is estimated to lose up to {cost[0]:.4f} ({cost[1]}), so "
                    "the loss may be what deleting this much costs any model rather than damage")
        return MetricCheck(verdict=FAIL, margin=delta, **common, reason=why)
    return MetricCheck(verdict=INCONCLUSIVE, margin=delta, **common, reason=f"too few samples to decide: {where}")


def _utility_check(candidate: ScoredModel, parent: ScoredModel, targets: Sequence[ScoredModel], labels: np.ndarray,
                   keep: np.ndarray | None, wn: np.ndarray, rng: np.random.Generator, *, alpha: float,
                   allowance_args: tuple[float, float | None, float | None], n_negative: int, utility_set: bool,
                   curve: LearningCurve | None = None) -> MetricCheck:
    """``utility``: non-inferiority of the accuracy on the utility samples, margin = a fraction of the parent's skill.

    The utility samples are the (kept) negatives, or the separate utility set (``utility_set``). The skill's
    baseline is the best constant prediction (the most frequent label among them), scored with the same bootstrap
    weights and pseudo-samples as the models: what a model that lost everything and answers one class scores at
    best. The label is chosen once on the whole sample (re-choosing it per resample matters only near zero skill,
    where the control fails anyway).

    ``curve`` (equivalence mode, utility on the negatives): the references' skill on the same samples against the
    parent's is a measured point of the learning curve; a fail whose loss is not also shown beyond what the curve
    estimates this deletion costs an exact retrain says so (:func:`unlearn.gate_utility.deletion_cost`). It
    changes no verdict.
    """
    kept = labels if keep is None else labels[keep]
    values, counts = np.unique(kept, return_counts=True)
    majority = values[counts.argmax()]
    zeros = np.zeros(0)
    constant = ScoredModel({}, {}, zeros, (labels == majority).astype(np.float64), (labels == majority).astype(
        np.float64))

    def draws(model: ScoredModel) -> tuple[float, np.ndarray]:
        return accuracy_draws(model, wn, keep, utility_set=utility_set)

    par, base = draws(parent), draws(constant)
    skill = par[0] - base[0]
    loss_fraction, allowance = utility_allowance(*allowance_args)
    _, floor, share = allowance_args
    cost = None
    if curve is not None and not targets and not utility_set and floor is not None and share is not None:
        ref_skill = float(np.mean([accuracy_draws(ScoredModel({}, {}, zeros, np.asarray(c, np.float64)), wn[:1],
                                                  keep)[0] for c in curve.reference_correct])) - base[0]
        expected = expected_retrain_loss(skill, ref_skill, parent_size=curve.parent_size,
                                         reference_size=curve.reference_size, deleted_share=share)
        if expected is not None:
            cost_fraction, words = deletion_cost(floor, share, expected)
            cost = (cost_fraction * skill, words)
    s_low, s_high = interval(par[1] - base[1], alpha)
    detected = bool(s_low > 0.0 and skill > 0.0)
    target = target_draws([draws(t) for t in (targets or [parent])], rng)
    level = f"{100 * (1 - 2 * alpha):g}%"
    return _decide_non_inferiority(
        "utility", draws(candidate), target, loss_fraction * skill, alpha=alpha,
        n_negative=n_negative, detected=detected, control=(skill, s_low, s_high), allowance=allowance, cost=cost,
        no_control=(f"utility not measurable: the parent's accuracy on unseen samples is not above the best constant "
                    f"prediction's (skill {skill:+.4f}, {level} CI [{s_low:+.4f}, {s_high:+.4f}]), so no loss "
                    "could be seen"))


def gate_decision(
    candidate: ScoredModel,
    parent: ScoredModel,
    *,
    attacks: Sequence[str],
    accuracy_checks: Sequence[str] = ("forget_acc",),
    targets: Sequence[ScoredModel] = (),
    alpha: float = 0.05,
    margin_fraction: float = 0.5,
    resamples: int = 1000,
    seed: int = 0,
    min_samples: int = 20,
    class_negatives: np.ndarray | None = None,
    utility_labels: np.ndarray | None = None,
    utility_loss_fraction: float = 0.1,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
    utility_loss_floor: float | None = None,
    deleted_share: float | None = None,
    learning_curve: LearningCurve | None = None,
) -> GateDecision:
    """Decide whether ``candidate`` is equivalent to never having trained on D_F.

    Every model must be scored on the same D_F and the same negatives (index i = same sample).

    Args:
        candidate: The unlearned model's evidence.
        parent: The model the batch was unlearned from (positive control), same samples.
        attacks: Attacks whose AUC is gated, fixed in advance (choosing after the fact inflates).
        accuracy_checks: Any of ``forget_acc`` (forget - negative accuracy gap, equivalence),
            ``utility`` (non-inferiority of the accuracy on the negatives, margin a fraction of the
            parent's skill) and ``test_acc`` (the same with the ``forget_acc`` margin).
        targets: Exact retrains without D_F (strict mode); empty = equivalence mode, where the
            target is the never-trained expectation (AUC 0.5, accuracy gap 0, parent's accuracy).
        alpha: Level of each one-sided test, in (0, 0.5); intervals are (1 - 2 alpha).
        margin_fraction: delta = this x the parent's excess, in (0, 1) so the parent never passes.
        resamples: Bootstrap resamples (>= 100).
        seed: Seed of the resampling (stable per metric).
        min_samples: Fewer forget or negative samples than this -> ``inconclusive`` up front
            (percentile intervals of so few samples under-cover).
        class_negatives: For whole classes forgotten: a mask over the negatives marking the unseen samples
            of those classes. Adds the ``class_acc`` check and measures ``test_acc``/``utility`` on the others.
        utility_labels: Labels of the samples the utility checks measure: the models' separate utility set
            (``ScoredModel.utility_correct``) when they carry one, else the negatives; needed by ``utility``
            (its baseline is the most frequent label).
        utility_loss_fraction: ``utility`` allows the candidate to lose this fraction of the parent's skill
            (its accuracy above the best constant prediction's), in (0, 1): at 1 a model answering the most
            frequent class for everything could never fail it. With ``utility_loss_floor`` and
            ``deleted_share``, the most it allows (:func:`utility_allowance`).
        utility_loss_floor: With ``deleted_share``: the fraction allowed for the smallest deletion, in
            (0, ``utility_loss_fraction``]; the allowance grows with the share of training data deleted.
        deleted_share: The share of the parent's training samples the deletion removed, in [0, 1].
        learning_curve: The reference models' answers on the negatives and the training-set sizes: in
            equivalence mode with ``utility_loss_floor`` and ``deleted_share``, a ``utility`` fail not shown beyond
            what the deletion is estimated to cost an exact retrain says so
            (:class:`unlearn.gate_utility.LearningCurve`); no verdict depends on it.
        labels: (forget labels, negative labels): ``forget_acc`` then weighs the negatives to the forget set's
            label mix (:func:`label_match`); None: unweighted (the sets are assumed to share their mix).

    Returns:
        The decision with every number behind it.

    Raises:
        ValueError: On invalid arguments, mismatched sample counts, or non-finite scores.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if not 0.0 < margin_fraction < 1.0:
        raise ValueError(f"margin_fraction must be in (0, 1) (at 1 the parent could pass), got {margin_fraction}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    unknown = sorted(set(accuracy_checks) - set(ACCURACY_CHECKS))
    if unknown:
        raise ValueError(f"unknown accuracy check(s) {unknown}; valid: {list(ACCURACY_CHECKS)}")
    if not attacks and "forget_acc" not in accuracy_checks:
        # test_acc and utility are non-inferiority checks of utility: the parent passes them by construction, so
        # a gate of those alone could pass a model that forgot nothing (no positive control).
        raise ValueError("the gate needs at least one forgetting check (a gated attack or forget_acc); "
                         "test_acc and utility check utility and the parent itself would pass")
    utility_allowance(utility_loss_fraction, utility_loss_floor, deleted_share)  # bad values fail before any work
    curve_shape = None if learning_curve is None else np.shape(learning_curve.reference_correct)
    if curve_shape is not None and curve_shape[1] != len(candidate.test_correct):
        raise ValueError(f"gate: the learning curve's references must be scored on the {len(candidate.test_correct)} "
                         f"negatives, got shape {curve_shape}")
    models = [candidate, parent, *targets]
    n_forget, n_test = len(candidate.forget_correct), len(candidate.test_correct)
    for model in models:
        if len(model.forget_correct) != n_forget or len(model.test_correct) != n_test:
            raise ValueError("gate: every model must be scored on the same forget and negative samples")
        missing = [a for a in attacks if a not in model.member or a not in model.nonmember]
        if missing:
            raise ValueError(f"gate: no scores for gated attack(s) {missing} on one of the models")
    if class_negatives is not None:
        class_negatives = np.asarray(class_negatives, dtype=bool)
        if class_negatives.shape != (n_test,):
            raise ValueError(f"gate: class_negatives must mark each of the {n_test} negatives, "
                             f"got shape {class_negatives.shape}")
        accuracy_checks = (*[c for c in accuracy_checks if c != "class_acc"], "class_acc")
    elif "class_acc" in accuracy_checks:
        raise ValueError("gate: class_acc needs class_negatives (the forgotten classes' negatives)")
    match, n_gap_forget, n_gap_negative = None, n_forget, n_test
    if labels is not None:
        forget_labels, negative_labels = (np.asarray(x) for x in labels)
        if forget_labels.shape != (n_forget,) or negative_labels.shape != (n_test,):
            raise ValueError(f"gate: labels must be ({n_forget} forget, {n_test} negative) labels, got shapes "
                             f"{forget_labels.shape} and {negative_labels.shape}")
        match, n_gap_forget, n_gap_negative = label_match(forget_labels, negative_labels)
    with_utility_set = [m.utility_correct is not None for m in models]
    if any(with_utility_set) and not all(with_utility_set):
        raise ValueError("gate: either every model or none carries a utility set (utility_correct)")
    utility_set = all(with_utility_set)
    n_utility = len(candidate.utility_correct) if utility_set else n_test
    if utility_set and any(len(m.utility_correct) != n_utility for m in models):
        raise ValueError("gate: every model must be scored on the same utility samples")
    if "utility" in accuracy_checks:
        if utility_labels is None:
            raise ValueError("gate: utility needs utility_labels (its baseline is the most frequent label)")
        utility_labels = np.asarray(utility_labels)
        if utility_labels.shape != (n_utility,) or not np.issubdtype(utility_labels.dtype, np.integer):
            raise ValueError(f"gate: utility_labels must be the {n_utility} integer labels of the "
                             f"{'utility set' if utility_set else 'negatives'}, got shape {utility_labels.shape} "
                             f"dtype {utility_labels.dtype}")
    mode = "strict" if targets else "equivalence"
    base = dict(mode=mode, alpha=alpha, margin_fraction=margin_fraction, resamples=resamples, seed=seed,
                n_forget=n_forget, n_targets=len(targets))
    negatives = [len(np.atleast_2d(candidate.nonmember[a])[0]) for a in attacks] + [n_test]
    if n_forget < min_samples or min(negatives) < min_samples:
        return GateDecision(INCONCLUSIVE, (
            f"too few samples to verify: {n_forget} forget and at least {min(negatives)} negative sample(s), "
            f"the gate needs {min_samples} of each; the batch should be verified together with later ones; "
            "this is NOT a pass"),
            (), **base)
    n_class = None if class_negatives is None else int(class_negatives.sum())
    if n_class is not None and n_class < min_samples:
        return GateDecision(INCONCLUSIVE, (
            f"too few unseen samples of the forgotten classes to verify: {n_class}, the gate needs {min_samples}; "
            "the batch should be verified together with later ones; this is NOT a pass"), (), **base)
    for attack in attacks:  # one score per sample, the same samples for every model: a shorter array would
        # broadcast (one member score standing for all of D_F, and a pass recorded with n_forget samples)
        n_neg = np.atleast_2d(candidate.nonmember[attack]).shape[1]
        for model in models:
            member, nonmember = np.atleast_2d(model.member[attack]), np.atleast_2d(model.nonmember[attack])
            if member.shape[1] != n_forget or nonmember.shape[1] != n_neg:
                raise ValueError(f"gate: attack {attack!r} scored {member.shape[1]} member and {nonmember.shape[1]} "
                                 f"nonmember sample(s) on one model; every model needs one score per forget "
                                 f"sample ({n_forget}) and the same {n_neg} negatives")

    checks: list[MetricCheck] = []
    jackknife: dict[str, int] = {}
    for attack in attacks:
        rng = np.random.default_rng(stable_seed(seed, attack))
        n_neg = len(np.atleast_2d(candidate.nonmember[attack])[0])
        n_rep = len(np.atleast_2d(candidate.member[attack]))
        wf, wn = bootstrap_weights(n_forget, resamples, rng), bootstrap_weights(n_neg, resamples, rng)
        multipliers = None
        if n_rep == 2:
            raise ValueError(f"gate: {attack!r} has one leave-one-out replicate; a jackknife needs at least two "
                             "(scores of shape (N,) or (1 + K, N) with K >= 2)")
        if n_rep > 1:  # leave-one-out replicates over K references: Gaussian multipliers shared by every model
            multipliers = rng.standard_normal((resamples, n_rep - 1))
            jackknife[attack] = n_rep - 1
        cand = auc_draws(candidate, attack, wf, wn, multipliers)
        par = auc_draws(parent, attack, wf, wn, multipliers)
        if targets:
            target = target_draws([auc_draws(t, attack, wf, wn, multipliers) for t in targets], rng)
        else:
            target = (0.5, np.full(resamples, 0.5))
        checks.append(_decide_equivalence(f"mia.{attack}.auc", cand, par, target, alpha=alpha,
                                          margin_fraction=margin_fraction, n_forget=n_forget, n_negative=n_neg))
    if accuracy_checks:
        rng = np.random.default_rng(stable_seed(seed, "accuracy"))
        # + the pseudo-samples
        wf, wn = bootstrap_weights(n_forget + 2, resamples, rng), bootstrap_weights(n_test + 2, resamples, rng)
        gap_check = None

        def gap(weights: tuple[np.ndarray, np.ndarray] | None, n_f: int, n_t: int) -> MetricCheck:
            cand, par = gap_draws(candidate, wf, wn, weights), gap_draws(parent, wf, wn, weights)
            target = (target_draws([gap_draws(t, wf, wn, weights) for t in targets], rng) if targets
                      else (0.0, np.zeros(resamples)))
            return _decide_equivalence("forget_acc", cand, par, target, alpha=alpha,
                                       margin_fraction=margin_fraction, n_forget=n_f, n_negative=n_t)

        if "forget_acc" in accuracy_checks:
            if min(n_gap_forget, n_gap_negative) < min_samples:
                # the label-matched gap stands on the forget set's classes only: too few of them to decide on
                checks.append(_unmeasured(
                    "forget_acc", f"too few samples to decide: {n_gap_forget} forget sample(s) and {n_gap_negative} "
                    f"negative(s) of the forget set's classes, the gate needs {min_samples} of each",
                    n_forget=n_gap_forget, n_negative=n_gap_negative))
            else:
                checks.append(gap(match, n_gap_forget, n_gap_negative))
        if "test_acc" in accuracy_checks:
            # test_acc measures accuracy over every negative, so its margin comes from the unweighted gap (the
            # label-matched one measures memory on the forget set's classes: on a hard class, far larger)
            gap_check = gap(None, n_forget, n_test)
        if class_negatives is not None:
            # the never-trained target is an all-wrong model, scored with the same pseudo-samples and weights
            never = ScoredModel({}, {}, np.zeros(n_forget), np.zeros(n_test))
            cand, par = accuracy_draws(candidate, wn, class_negatives), accuracy_draws(parent, wn, class_negatives)
            target = (target_draws([accuracy_draws(t, wn, class_negatives) for t in targets], rng) if targets
                      else accuracy_draws(never, wn, class_negatives))
            checks.append(_decide_equivalence("class_acc", cand, par, target, alpha=alpha,
                                              margin_fraction=margin_fraction, n_forget=n_forget,
                                              n_negative=n_class))
        # where utility is measured: the separate utility set (whole classes: the other classes' unseen samples),
        # else the negatives outside the forgotten classes
        if utility_set:
            others, n_others = None, n_utility
            wu = (bootstrap_weights(n_utility + 2, resamples, rng)
                  if any(m in accuracy_checks for m in UTILITY_CHECKS) else None)
        else:
            others = None if class_negatives is None else ~class_negatives
            n_others, wu = (n_test if others is None else int(others.sum())), wn
        for metric in [m for m in UTILITY_CHECKS if m in accuracy_checks]:
            if n_others < min_samples:
                # said, not dropped: utility is asked for and there are too few samples to measure it on
                checks.append(_unmeasured(
                    metric, f"utility not measurable: {n_others} unseen sample(s) outside the forgotten classes, "
                    f"the gate needs {min_samples}", n_forget=0, n_negative=n_others,
                    parent_detected=bool(metric == "test_acc" and gap_check.parent_detected)))
            elif metric == "utility":
                checks.append(_utility_check(
                    candidate, parent, targets, utility_labels, others, wu, rng, alpha=alpha,
                    allowance_args=(utility_loss_fraction, utility_loss_floor, deleted_share), n_negative=n_others,
                    utility_set=utility_set, curve=learning_curve))
            else:
                def draws(model: ScoredModel) -> tuple[float, np.ndarray]:
                    return accuracy_draws(model, wu, others, utility_set=utility_set)

                target = target_draws([draws(t) for t in (targets or [parent])], rng)
                checks.append(_decide_non_inferiority(
                    "test_acc", draws(candidate), target, gap_check.margin, alpha=alpha,
                    n_negative=n_others, detected=gap_check.parent_detected,
                    no_control=("no margin: the forget-accuracy control did not detect the parent, so the tolerated "
                                "accuracy loss is undefined")))
    return _combine(checks, {**base, "reference_jackknife": jackknife})


def _combine(checks: list[MetricCheck], base: dict) -> GateDecision:
    """Intersection-union: all pass -> pass; any conclusive fail -> fail; else inconclusive."""
    failed = [c.metric for c in checks if c.verdict == FAIL]
    open_ = [c.metric for c in checks if c.verdict == INCONCLUSIVE]
    # why a check is open: too few samples to compute it at all; a utility check with nothing to measure on (no
    # skill: the parent is no better than a constant); a control that missed the parent (test_acc: forget_acc's);
    # or an interval that crosses the margin
    few, unmeasured, no_control, wide = [], [], [], []
    for c in checks:
        if c.verdict != INCONCLUSIVE:
            continue
        if np.isnan(c.estimate):
            few.append(c.metric)
        elif c.metric == "utility" and np.isnan(c.margin):
            unmeasured.append(c.metric)
        elif not c.parent_detected:
            no_control.append(c.metric)
        else:
            wide.append(c.metric)
    if failed:
        remembers = [m for m in failed if m not in UTILITY_CHECKS]
        lost = [m for m in failed if m in UTILITY_CHECKS]
        costly = [c.metric for c in checks if c.verdict == FAIL and DELETION_COST in c.reason]
        said = ([f"conclusively not equivalent to never trained on: {', '.join(remembers)}"] if remembers else []) + \
               ([f"conclusively lost more accuracy on unseen samples than allowed: {', '.join(lost)}"
                 + (f" (not shown beyond what deleting this much is estimated to cost an exact retrain: "
                    f"{', '.join(costly)})" if costly else "")] if lost else [])
        verdict, reason = FAIL, "; ".join(said)
    elif open_:
        why = ((["the positive control did not detect the parent on " + ", ".join(no_control)] if no_control else [])
               + (["too few samples to measure " + ", ".join(few)] if few else [])
               + (["utility could not be measured (" + ", ".join(unmeasured) + ")"] if unmeasured else [])
               + (["the intervals are too wide for the margin on " + ", ".join(wide)] if wide else []))
        verdict, reason = INCONCLUSIVE, f"not enough evidence either way: {'; '.join(why)}; this is NOT a pass"
    else:
        kept = [c.metric for c in checks if c.metric in UTILITY_CHECKS]
        forgot = len(checks) - len(kept)
        verdict, reason = PASS, (f"equivalent to never having trained on the forget set on all {forgot} gated "
                                 "forgetting metric(s), and the parent was detected on each (the evidence had power)"
                                 + (f"; utility kept ({', '.join(kept)})" if kept else ""))
    return GateDecision(verdict, reason, tuple(checks), **base)
