"""The verify stage: evaluate the latest escalation attempt, record its verdict, report and plots."""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

from tasks import audit, reporting, tracking
from tasks.project import Project
from tasks.stage.context import (
    finite_metrics,
    load_candidate_state,
    load_forget,
    mark_step,
    read_state,
    resolve_device,
    unlearning_data,
    utc_now,
    write_state,
)
from tasks.stage.escalation import next_rung, skipped_report
from tasks.stage.evaluation import evaluate_candidate, evaluation_sets
from tasks.stage.retrain import retrained_model
from unlearn.config import Params
from unlearn.data import SampleStore
from unlearn.metrics import paired_bootstrap_difference
from unlearn.requests import Ledger, write_json_atomic
from unlearn.verification import SuiteResult

log = logging.getLogger("unlearn.pipeline")


def run_verify(project: Project) -> dict[str, Any]:
    """Attack the original, the latest attempt's unlearned model and the retrained one; apply the gate.

    Metrics per model: accuracy on forget/retain/test and, for each configured attack, the
    forget-vs-test ROC-AUC, best balanced accuracy and TPR at low FPRs, each with a bootstrap
    interval (a TPR the test set is too small for is refused and listed). Reference attacks
    use the live reference models (see :mod:`unlearn.references`); signals are cached by
    sample id. The verdict, every number, the ROC and histogram plots are logged on the
    attempt's MLflow run and written under ``data/reports/`` (``attempts/<n>-<method>.json``
    per attempt, ``verification.json`` for the latest). An exact ``retrain`` attempt is the
    gate's own target: it passes by construction, with the evidence still computed.

    Returns:
        The report.
    """
    import mlflow

    params = project.params
    unlearn_state = read_state(project, "unlearn")
    report_path = project.reports_dir / "verification.json"
    attempts = unlearn_state.get("attempts") or []
    if unlearn_state.get("status") not in ("unlearning", "done") or not attempts:
        return skipped_report(project, unlearn_state.get("status"))
    attempt = attempts[-1]
    if attempt.get("verdict") is not None:  # verified already (a re-run after a crash)
        return json.loads((project.reports_dir / "attempts" / attempt["report"]).read_text())
    client = tracking.setup(project)
    resolve_device(project)  # an unavailable device fails before any work
    store = SampleStore(project.store_dir)
    forget = load_forget(project, unlearn_state["batches"])
    data = unlearning_data(project, store, forget)
    forget_classes = unlearn_state.get("forget_classes") or []
    sets = evaluation_sets(project, store, forget, forget_classes)
    original = tracking.load_model(project, client, unlearn_state["parent_version"])
    candidate = data.model_factory()
    candidate.load_state_dict(load_candidate_state(project, attempt))
    retrained, retrain_seconds, cached = retrained_model(project, store, data)
    evaluation = evaluate_candidate(project, store, sets, candidate, method=attempt["method"], original=original,
                                    retrained=retrained)
    verify = params.verify
    proofs, outcome, gate, exact = evaluation.proofs, evaluation.outcome, evaluation.gate, evaluation.exact
    results, refused, ref_ids = evaluation.results, evaluation.refused, evaluation.reference_ids
    attack_seconds, verdict, failures = evaluation.attack_seconds, evaluation.verdict, evaluation.failures
    plots = reporting.verification_plots(project.plots_dir, {r: o.scores for r, o in outcome.items()}, proofs)
    # Each attempt keeps its own plots: certificates embed the evidence of the model they certify.
    attempt_plots = project.reports_dir / "attempts" / f"{attempt['run_id']}-plots"
    attempt_plots.mkdir(parents=True, exist_ok=True)
    for path in plots:
        shutil.copy2(path, attempt_plots / path.name)
    number = len(attempts)
    report = {
        "status": "verified", "verdict": verdict, "failures": failures, "exact_retrain": exact,
        "method": attempt["method"], "attempt": number,
        "checks": [{"metric": c.metric, "unlearned": c.candidate, "retrain": c.reference,
                    "gap": c.gap, "gap_ci": _gap_interval(c.metric, outcome, params), "tolerance": c.tolerance,
                    "passed": c.passed or exact, "note": "exact retrain: the gate's own target" if exact else c.note}
                   for c in gate.checks],
        "models": results, "refused": refused, "reference_cached": cached, "retrain_seconds": retrain_seconds,
        "attack_seconds": attack_seconds, "run_id": attempt["run_id"],
        "forget_classes": forget_classes, "reference_models": ref_ids, "augmentations": verify.augmentations,
        "n_forget": len(sets.forget), "n_retain": len(sets.retain), "n_test": len(sets.test),
    }
    attempt_report = project.reports_dir / "attempts" / f"{attempt['run_id']}.json"  # unique across escalations
    write_json_atomic(attempt_report, report)
    write_json_atomic(report_path, report)
    # The compact numbers `dvc metrics show/diff` compare across runs: gate metrics and attack AUCs.
    shown = [m for m in results["retrain"] if m in params.gate.tolerances or m.endswith(".auc")]
    write_json_atomic(project.reports_dir / "metrics.json", {
        "verified": 1, "verdict_pass": int(verdict == "pass"), "attempts": number,
        **{role: {m: results[role].get(m) for m in shown} for role in ("original", "unlearned", "retrain")}})
    with mlflow.start_run(run_id=attempt["run_id"]):
        mlflow.log_metrics(finite_metrics(results["unlearned"]))
        for role in ("original", "retrain"):
            mlflow.log_metrics({f"{role}.{k}": v for k, v in finite_metrics(results[role]).items()})
        mlflow.log_metrics(finite_metrics({f"gap.{c.metric}": c.gap for c in gate.checks}))
        mlflow.log_metrics({"retrain_seconds": retrain_seconds, "attack_seconds": attack_seconds})
        mlflow.set_tags({"verdict": verdict, "gate_failures": "; ".join(failures),
                         "exact_retrain": str(exact).lower(), "reference_models": ",".join(ref_ids)})
        mlflow.log_artifact(str(attempt_report), artifact_path="verification")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="verification/plots")
    attempt.update({"verdict": verdict, "failures": failures, "report": attempt_report.name,
                    "verified_at": utc_now(), "attack_seconds": attack_seconds})
    state = write_state(project, "unlearn", next_rung(unlearn_state))
    ledger = Ledger(project.ledger_path)
    if verdict == "pass":
        mark_step(ledger, state["batches"], "verified")
        ledger.save()
    audit.record(project, "attempt.verified", method=attempt["method"], attempt=number, verdict=verdict,
                 run_id=attempt["run_id"], batch_ids=state["batches"], failures=len(failures))
    log.info("verify: attempt %d (%s) verdict %s", number, attempt["method"], verdict)
    return report



def _gap_interval(metric: str, outcome: dict[str, SuiteResult], params: Params) -> list[float] | None:
    """Paired bootstrap interval of unlearned - retrain for an attack's AUC (same samples, both models)."""
    parts = metric.split(".")
    if len(parts) != 3 or parts[2] != "auc" or parts[1] not in outcome["unlearned"].scores:
        return None
    mine, theirs = outcome["unlearned"].scores[parts[1]], outcome["retrain"].scores[parts[1]]
    if len(mine["member"]) != len(theirs["member"]) or len(mine["nonmember"]) != len(theirs["nonmember"]):
        return None  # an attack that subsamples differently per model has no sample pairing
    _, low, high = paired_bootstrap_difference(
        mine["member"], mine["nonmember"], theirs["member"], theirs["nonmember"], metric="auc",
        resamples=max(params.verify.bootstrap, 1), seed=params.seed)
    return [low, high]

