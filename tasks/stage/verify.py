"""The verify stage: decide on the latest escalation attempt with the equivalence gate; report and plots."""

from __future__ import annotations

import logging
import math
import shutil
from typing import Any

from tasks import reporting, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    finite_metrics,
    load_candidate_state,
    load_forget,
    resolve_device,
    unlearning_data,
)
from tasks.stage.escalation import record_verdict, skipped_report, verdict_action
from tasks.stage.evaluation import Evaluation, evaluate_candidate, evaluation_sets
from tasks.stage.retrain import retrained_model
from tasks.stage.state import DONE, UNLEARNING, attempt_report, read_escalation, write_escalation
from unlearn.data import SampleStore
from unlearn.files import utc_now, write_json_atomic
from unlearn.gate import FAIL, INCONCLUSIVE, PASS
from unlearn.gate_policy import PROMOTE_LOW_POWER, RETRAIN
from unlearn.verification import MIN_JACKKNIFE_REFERENCES

log = logging.getLogger("unlearn.pipeline")

CHECK_FIELDS = ("verdict", "reason", "candidate", "target", "estimate", "ci_low", "ci_high", "parent_excess",
                "parent_ci_low", "parent_ci_high", "parent_detected", "margin", "n_forget", "n_negative")


def interval_scope(attacks: tuple[str, ...] | list[str], jackknife: dict[str, int] | None = None,
                   scored: set[str] | None = None) -> str:
    """What the gate's intervals account for, in words a certificate can carry.

    They resample the forget and test samples (paired across models) for fixed models. Reference attacks also
    depend on which reference models happened to be trained: with :data:`unlearn.verification.MIN_JACKKNIFE_REFERENCES`
    or more the intervals add a leave-one-out jackknife over them (``jackknife``: attack -> references, from the
    decision; measured coverage in benchmarks/results/reference_variance*.md); with fewer nothing covers it and the
    stated level is optimistic. ``scored``: the attacks that got an interval at all (None: every one); an attack
    the gate never scored (too few samples, a refusal, a diverged model) is said to have none, not blamed on the
    reference count. Said from what the decision did, never left out.
    """
    from unlearn.attacks import ATTACKS

    jackknife = jackknife or {}
    by_references = [a for a in attacks if ATTACKS.get(a).uses_references]
    unscored = [a for a in by_references if scored is not None and a not in scored]
    covered = [a for a in by_references if a not in unscored and jackknife.get(a)]
    uncovered = [a for a in by_references if a not in unscored and not jackknife.get(a)]
    scope = "the forget and test samples, resampled together for every model (paired bootstrap)"
    if covered:
        counts = sorted({jackknife[a] for a in covered})
        scope += (f"; and which reference models were trained, on which {', '.join(covered)} also depend: a "
                  f"leave-one-out jackknife over the {'/'.join(map(str, counts))} reference models, itself "
                  "estimated from few models (complementary pairs, not independent draws; measured coverage in "
                  "benchmarks/results/reference_variance*.md)")
    if uncovered:
        scope += (f"; not which reference models were trained, on which {', '.join(uncovered)} also depend "
                  f"(fewer than {MIN_JACKKNIFE_REFERENCES} reference models to leave one out; measured in "
                  "benchmarks/results/reference_variance*.md): their stated level is optimistic")
    if unscored:
        scope += f"; no interval was computed for {', '.join(unscored)} (not scored: see the checks)"
    return scope


def _json_number(value: Any) -> Any:
    """NaN and infinities as None: the report is strict JSON (other tools read it)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def evidence_strength(verdict: str, action: str, exact: bool, tested: bool = True) -> str:
    """How strong the evidence behind an attempt is, in one word (certificates, status, tags).

    ``exact``: the model is the exact retrain (it never saw the forget samples); ``conclusive``:
    the gate passed (every forgetting check with the parent detected) or failed (a forgetting check with
    its parent detected, or a utility check beyond its margin: the report's ``parent_detected`` and
    statement say which); ``diverged``: failed without a test (``tested``
    False: the model's outputs were not finite, no metric was scored, so no control was either);
    ``low_power``: inconclusive, promoted under ``promote_low_power``; ``inconclusive``: not enough
    evidence either way.
    """
    if exact:
        return "exact"
    if verdict == FAIL and not tested:
        return "diverged"
    if verdict in (PASS, FAIL):
        return "conclusive"
    return "low_power" if action == PROMOTE_LOW_POWER else INCONCLUSIVE


def gate_report(evaluation: Evaluation) -> dict[str, Any]:
    """The gate's part of a verification report: verdict, reason, mode and one row per gated metric."""
    decision = evaluation.decision
    reason = decision.reason
    if evaluation.exact:
        reason = (f"exact retrain: the model never trained on the forget samples (statistical evidence: "
                  f"{decision.verdict}, {decision.reason})")
    return {
        "verdict": evaluation.verdict, "reason": reason, "mode": decision.mode,
        "parent_detected": decision.parent_detected, "alpha": decision.alpha,
        "interval_level": 1 - 2 * decision.alpha, "margin_fraction": decision.margin_fraction,
        "resamples": decision.resamples, "n_targets": decision.n_targets, "gate_verdict": decision.verdict,
        "reference_jackknife": dict(decision.reference_jackknife),
        "checks": [{"metric": c.metric, **{f: _json_number(getattr(c, f)) for f in CHECK_FIELDS}}
                   for c in decision.checks],
    }


def run_verify(project: Project) -> dict[str, Any]:
    """Decide whether the latest attempt's model is equivalent to never having trained on the forget set.

    The candidate and the parent (the champion the batch is unlearned from: the positive
    control) are scored by the gated attacks (``gate.attacks``) against the same pool
    references, on the same forget and negative samples; :func:`unlearn.gate.gate_decision`
    decides pass, fail or inconclusive. ``gate.mode: equivalence`` (default) needs no exact
    retrain: forward passes and attack arithmetic only. ``strict`` also scores the exact retrain
    and uses it as the target. What follows the verdict (``action``: promote, next rung, hold,
    exact retrain, promote_low_power) comes from ``gate.on_inconclusive`` and its bounds
    (:func:`tasks.stage.escalation.verdict_action`). An exact ``retrain`` attempt is exact by
    construction: it passes, with the evidence still computed and reported.

    The verdict, its reason and every number (per metric: candidate, target, interval, parent
    excess and its interval, margin) are written to ``data/reports/attempts/<run>.json`` and
    ``verification.json``, logged on the attempt's MLflow run (metrics ``gate.<metric>.*``, tags
    ``verdict``, ``gate_reason``, ``evidence``, ``parent_detected``), with the descriptive attack
    suite (``verify.attacks``) and its plots.

    Returns:
        The report.
    """
    import mlflow

    params = project.params
    escalation = read_escalation(project)
    report_path = project.reports_dir / "verification.json"
    attempts = escalation.attempts
    if escalation.status not in (UNLEARNING, DONE) or not attempts:
        return skipped_report(project, escalation.status)
    attempt = attempts[-1]
    if attempt.verdict is not None:  # verified already (a re-run after a crash)
        report, problem = attempt_report(project, attempt)
        if report is None:
            raise PipelineError(f"attempt {len(attempts)} ({attempt.method}) is verified, but its report is {problem}: "
                                "re-run the unlearn stage, which redoes it. Nothing was changed.")
        return report
    client = tracking.setup(project)
    resolve_device(project)  # an unavailable device fails before any work
    store = SampleStore(project.store_dir)
    forget = load_forget(project, escalation.batches)
    data = unlearning_data(project, store, forget)
    forget_classes = escalation.forget_classes
    sets = evaluation_sets(project, store, forget, forget_classes)
    original = tracking.load_model(project, client, escalation.parent_version)
    candidate = data.model_factory()
    candidate.load_state_dict(load_candidate_state(project, attempt.candidate))
    mode = params.gate.mode
    retrained, retrain_seconds, cached = None, 0.0, None
    if mode == "strict" or attempt.method == "retrain":  # equivalence mode never retrains to verify
        retrained, retrain_seconds, cached = retrained_model(project, store, data)
    evaluation = evaluate_candidate(project, store, sets, candidate, method=attempt.method, original=original,
                                    retrained=retrained, mode=mode)
    verdict, failures, exact = evaluation.verdict, evaluation.failures, evaluation.exact
    action, hold_until, policy_reason = verdict_action(project, verdict, escalation.batches)
    if verdict == FAIL:  # up the ladder; after the last rung to the exact retrain; rejected (exit 3) after that
        action = escalation.after_fail()
        if action == RETRAIN:
            policy_reason = (f"every rung of the ladder ({', '.join(a.method for a in attempts)}) failed the gate "
                             "conclusively: escalated to the exact retrain")
    strength = evidence_strength(verdict, action, exact, tested=bool(evaluation.decision.checks))
    outcome, results = evaluation.outcome, evaluation.results
    plots = reporting.verification_plots(project.plots_dir, {r: o.scores for r, o in outcome.items()},
                                         evaluation.proofs)
    # Each attempt keeps its own plots: certificates embed the evidence of the model they certify.
    attempt_plots = project.reports_dir / "attempts" / f"{attempt.run_id}-plots"
    attempt_plots.mkdir(parents=True, exist_ok=True)
    for path in plots:
        shutil.copy2(path, attempt_plots / path.name)
    number = len(attempts)
    gate = gate_report(evaluation)
    report = {
        "status": "verified", **gate, "failures": failures, "exact_retrain": exact, "evidence": strength,
        "action": action, "hold_until": hold_until if verdict == INCONCLUSIVE else "", "policy_reason": policy_reason,
        "method": attempt.method, "attempt": number,
        "models": results, "refused": evaluation.refused, "reference_cached": cached,
        "retrain_seconds": retrain_seconds, "attack_seconds": evaluation.attack_seconds, "run_id": attempt.run_id,
        "forget_classes": list(sets.forgotten_classes), "unmeasured_classes": list(sets.unmeasured_classes),
        "reference_models": evaluation.reference_ids,
        "augmentations": params.verify.augmentations,
        "n_forget": len(sets.forget), "n_retain": len(sets.retain), "n_test": len(sets.test),
        "interval_scope": interval_scope(params.gate.attacks, evaluation.decision.reference_jackknife, {
            c.metric.split(".")[1] for c in evaluation.decision.checks
            if c.metric.startswith("mia.") and math.isfinite(c.estimate)}),
    }
    report["models"] = {role: {k: _json_number(v) for k, v in m.items()} for role, m in results.items()}
    attempt_path = project.reports_dir / "attempts" / f"{attempt.run_id}.json"  # unique across escalations
    write_json_atomic(attempt_path, report)
    write_json_atomic(report_path, report)
    # The compact numbers `dvc metrics show/diff` compare across runs: the gate's numbers and attack AUCs.
    write_json_atomic(project.reports_dir / "metrics.json", {
        "verified": 1, "verdict_pass": int(verdict == PASS), "verdict_inconclusive": int(verdict == INCONCLUSIVE),
        "parent_detected": int(gate["parent_detected"]), "attempts": number,
        "gate": {c["metric"]: {k: c[k] for k in ("estimate", "ci_low", "ci_high", "parent_excess", "margin")}
                 for c in gate["checks"]},
        **{role: {m: report["models"][role].get(m) for m in report["models"][role] if m.endswith(".auc")}
           for role in report["models"]}})
    with mlflow.start_run(run_id=attempt.run_id):
        mlflow.log_metrics(finite_metrics(results["unlearned"]))
        for role in results:
            if role != "unlearned":
                mlflow.log_metrics({f"{role}.{k}": v for k, v in finite_metrics(results[role]).items()})
        mlflow.log_metrics(finite_metrics({f"gate.{c['metric']}.{k}": c[k] for c in gate["checks"]
                                           for k in ("estimate", "ci_low", "ci_high", "parent_excess",
                                                     "parent_ci_low", "parent_ci_high", "margin")
                                           if c[k] is not None}))
        mlflow.log_metrics({"retrain_seconds": retrain_seconds, "attack_seconds": evaluation.attack_seconds})
        mlflow.set_tags({"verdict": verdict, "gate_reason": gate["reason"][:5000], "gate_mode": mode,
                         "gate_failures": "; ".join(failures)[:5000], "evidence": strength, "action": action,
                         "parent_detected": str(gate["parent_detected"]).lower(),
                         "exact_retrain": str(exact).lower(), "reference_models": ",".join(evaluation.reference_ids)})
        mlflow.log_artifact(str(attempt_path), artifact_path="verification")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="verification/plots")
    attempt.verdict, attempt.action, attempt.failures, attempt.report = verdict, action, failures, attempt_path.name
    attempt.verified_at, attempt.attack_seconds = utc_now(), evaluation.attack_seconds
    escalation.hold_until = hold_until if verdict == INCONCLUSIVE else ""
    escalation.reason = policy_reason if verdict == INCONCLUSIVE or action == RETRAIN else escalation.reason
    write_escalation(project, escalation.next_rung())
    record_verdict(project, escalation.batches, number, report, unlearned_at=attempt.started_at)
    log.info("verify: attempt %d (%s) verdict %s -> %s (%s)", number, attempt.method, verdict, action, gate["reason"])
    return report
