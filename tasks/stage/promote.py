"""The promote stage: register the escalation's model with its lineage; move ``champion`` if it passed."""

from __future__ import annotations

import logging
from typing import Any

from tasks import audit, dvc_ops, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    input_example,
    load_candidate_state,
    model_architecture,
    tag_list,
)
from tasks.stage.state import DONE, Attempt, Escalation, attempt_report, read_escalation, write_state
from unlearn.data import SampleStore
from unlearn.files import utc_now
from unlearn.gate import PASS
from unlearn.models import build_model
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")


def run_promote(project: Project) -> dict[str, Any]:
    """Register the escalation's model with its lineage; move ``champion`` only if it passed.

    Crash-safe and idempotent: the version is found again by its run id instead of being
    registered twice; the batches are marked ``promoting`` (with the version) before the alias
    moves and ``completed`` after, so a re-run finishes an interrupted promotion. When every
    rung failed, the last attempt is registered with its verdict and no alias; the champion
    does not move and the batches stay pending. When the evidence was inconclusive and
    ``gate.on_inconclusive`` is ``hold``, nothing is registered: the batches stay pending with
    outcome ``held`` (and the latest time they may stay so), the champion is unchanged, and the
    next run unlearns and verifies them together with newer batches. An inconclusive attempt
    promoted under ``promote_low_power`` is tagged ``evidence=low_power``; the exact retrain
    ``evidence=exact``.

    Returns:
        Version, verdict, aliases (status ``held`` with ``hold_until`` for a hold).
    """
    ledger = Ledger(project.ledger_path)
    state = read_escalation(project)
    escalation_done = state.status == DONE and bool(state.run_id)
    if not escalation_done and not ledger.batches_with_status(Ledger.PROMOTING):
        # The common case of a `dvc repro` with no request: decided from the ledger and the escalation
        # state alone, without opening the registry (MLflow's import and store: about 3 s a process).
        return write_state(project, "promote", {"status": "nothing_to_promote"})
    client = tracking.setup(project)
    finished = finish_promotions(project, client, ledger)
    if not escalation_done:
        if finished:
            return write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return write_state(project, "promote", {"status": "nothing_to_promote"})
    if any(b not in ledger.batches or ledger.batch(b)["status"] != Ledger.PENDING for b in state.batches):
        # Already promoted (this run's batches are completed) or superseded: nothing to do.
        if finished:
            return write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return write_state(project, "promote", {"status": "nothing_to_promote", "reason": "batches not pending"})
    champion = tracking.champion_version(project, client)
    moved = champion is not None and bool(state.parent_model_id) and tracking.version_model_id(champion) not in (
        None, state.parent_model_id)  # the same number, another model: a project moved to another registry
    if champion is None or str(champion.version) != state.parent_version or moved:
        # The escalation started from another champion: its model never forgot what the current
        # champion forgot. Never promote it; the next run starts a fresh escalation.
        raise PipelineError(f"the escalation started from version {state.parent_version}"
                            f"{f' (logged model {state.parent_model_id})' if moved else ''} but the champion is "
                            f"{None if champion is None else champion.version}"
                            f"{' (another model: the project moved to another registry?)' if moved else ''}; "
                            "re-run the pipeline")
    if state.held:
        return _hold(project, client, ledger, state)
    chosen = state.promoted_attempt()
    report = chosen_report(project, chosen)  # this attempt's run's, or an error
    passed = report["verdict"] == "pass" or state.low_power
    existing = tracking.find_version_by_run(project, client, chosen.run_id)
    if existing is not None:
        version = str(existing.version)
    else:
        version = _register_candidate(project, state, chosen, report, passed)
    previous = None
    last_notes = [ledger.last_note(b) for b in state.batches]
    if not passed and all(n.get("outcome") == "verification_failed" and str(n.get("model_version")) == version
                          for n in last_notes):
        # Rejected by an earlier run: its record is written here if that run stopped between saving the ledger and
        # the record (review of 2026-12-07: the rejection was then never in the audit log).
        _record_rejection(project, existing, version, state, chosen.run_id, report)
        return write_state(project, "promote", {"status": "rejected", "version": version, "verdict": "fail",
                                                 "method": chosen.method, "unchanged": True,
                                                 **_aliases(project, client)})
    if passed:
        for batch_id in state.batches:
            # The verification's record goes into the note too: finish_promotions writes it from there when a
            # crash came between this save and the record (review of 2026-12-07: the promotion then completed
            # with no verification in the audit log).
            ledger.set_status(batch_id, Ledger.PROMOTING, {"at": utc_now(), "outcome": "promoting",
                                                           "model_version": version, "run_id": chosen.run_id,
                                                           "evidence": report.get("evidence"),
                                                           "verdict": report["verdict"], "method": chosen.method,
                                                           "attempts": len(state.attempts),
                                                           "batch_ids": list(state.batches)})
        ledger.save()
        finished = finish_promotions(project, client, ledger, recovering=False)
        previous = state.parent_version
    else:
        # The record first (it is true once the attempt failed: the version is never promoted), then the ledger: a
        # crash between the two repeats this branch, and the record is not written twice. The other order lost it
        # when a new batch arrived before the next run (a fresh escalation never came back here; fourth review).
        mv = existing or tracking.find_version_by_run(project, client, chosen.run_id)
        _record_rejection(project, mv, version, state, chosen.run_id, report)
        for batch_id in state.batches:
            ledger.set_status(batch_id, Ledger.PENDING, {"at": utc_now(), "outcome": "verification_failed",
                                                         "model_version": version, "run_id": chosen.run_id})
        ledger.save()
    result = {"status": "promoted" if passed else "rejected", "version": version, "verdict": report["verdict"],
              "evidence": report.get("evidence"), "reason": report.get("reason"), "method": chosen.method,
              "attempts": [[a.method, a.verdict] for a in state.attempts],
              "previous_champion": previous, **_aliases(project, client)}
    log.info("promote: version %s %s", version, result["status"])
    return write_state(project, "promote", result)


def _record_rejection(project: Project, mv: Any, version: str, state: Escalation, run_id: str,
                      report: dict[str, Any]) -> None:
    """The ``model.rejected`` record, naming the run and the logged model (version numbers restart in another
    registry), unless the audit log already holds it (:func:`_rejection_recorded`)."""
    if _rejection_recorded(project, version, run_id, mv, state.batches):
        return
    audit.record(project, "model.rejected", model_version=version, batch_ids=state.batches,
                 attempts=len(state.attempts), failures=len(report["failures"]), run_id=run_id,
                 **(tracking.model_id_field(mv) if mv is not None else {}))


def _rejection_recorded(project: Project, version: str, run_id: str, mv: Any, batches: list[str]) -> bool:
    """Whether the audit log holds this rejection: a record naming this run, or one from before records named the
    run that names no other logged model and the same batches (version numbers restart in another registry, and a
    record naming neither run nor model was taken for any later version with its number; review of 2026-12-07)."""
    model = tracking.model_id_field(mv).get("model_id") if mv is not None else None
    return any(r.get("run_id") == run_id or (r.get("run_id") is None and r.get("model_id") in (None, model)
                                             and sorted(r.get("batch_ids") or []) == sorted(batches))
               for r in audit.records(project, "model.rejected", model_version=version))


def chosen_report(project: Project, attempt: Any) -> dict[str, Any]:
    """The chosen attempt's verification report: its verdict's evidence, which promotion and holding act on.

    Raises:
        PipelineError: If it is missing, unreadable or another run's: the verdict is not acted on without it. The
            unlearn stage redoes such an attempt (:func:`tasks.stage.escalation.kept_attempts`); the Prefect flow
            runs that stage every time, ``dvc repro`` only when forced.
    """
    report, problem = attempt_report(project, attempt)
    if report is None:
        raise PipelineError(f"the verification report of the chosen attempt ({attempt.method}, "
                            f"{project.reports_dir / 'attempts' / str(attempt.report)}) is {problem}: its verdict is "
                            "not acted on without its evidence. Re-run the unlearn stage, which redoes that attempt "
                            "(`unlearn run`, or `dvc repro --force --single-item unlearn` then `dvc repro`). "
                            "Nothing was changed.")
    return report


def _hold(project: Project, client: Any, ledger: Ledger, state: Escalation) -> dict[str, Any]:
    """Keep inconclusive batches pending (``held``): nothing registered, champion unchanged."""
    chosen = state.promoted_attempt()
    report = chosen_report(project, chosen)
    fresh = [b for b in state.batches
             if ledger.last_note(b).get("outcome") != "held" or ledger.last_note(b).get("run_id") != chosen.run_id]
    for batch_id in fresh:
        ledger.set_status(batch_id, Ledger.PENDING, {"at": utc_now(), "outcome": "held", "run_id": chosen.run_id,
                                                     "hold_until": state.hold_until,
                                                     "held_with": len(state.batches)})
    if fresh:
        ledger.save()
    # Recorded once per held run (run_id): a crash between the ledger save and this record left the notes
    # already "held" on the re-run (nothing fresh), and the event was never recorded (review of 2026-12-05).
    if fresh or not audit.has_record(project, "batch.held", run_id=chosen.run_id):
        audit.record(project, "batch.held", batch_ids=state.batches, hold_until=state.hold_until,
                     method=chosen.method, parent_detected=report.get("parent_detected"), run_id=chosen.run_id)
    log.info("promote: %d batch(es) held until %s at most (%s)", len(state.batches), state.hold_until,
             report.get("reason"))
    return write_state(project, "promote", {
        "status": "held", "verdict": report["verdict"], "evidence": report.get("evidence"),
        "reason": report.get("reason"), "hold_until": state.hold_until, "batches": list(state.batches),
        "method": chosen.method, "attempts": [[a.method, a.verdict] for a in state.attempts],
        **_aliases(project, client)})


def _aliases(project: Project, client: Any) -> dict[str, Any]:
    aliases = client.get_registered_model(tracking.model_name(project)).aliases
    return {"aliases": {k: str(v) for k, v in aliases.items()}}


def _register_candidate(project: Project, state: Escalation, chosen: Attempt,
                        report: dict[str, Any], passed: bool) -> str:
    """Log the chosen attempt's model in its run and register it, with lineage tags."""
    import mlflow

    store = SampleStore(project.store_dir)
    architecture = model_architecture(project, store)
    model = build_model(architecture["model"], architecture["in_channels"], architecture["num_classes"])
    model.load_state_dict(load_candidate_state(project, chosen.candidate))
    ledger = Ledger(project.ledger_path)
    covers = ledger.newest(state.batches + [state.parent_covers_through]) if passed else state.parent_covers_through
    metrics = {k: v for k, v in report["models"]["unlearned"].items() if v is not None}
    with mlflow.start_run(run_id=chosen.run_id):
        version, _ = tracking.log_model(
            project, model, input_example(store), architecture=architecture, classes=store.classes, tags={
            "role": "unlearned", "method": chosen.method, "verdict": report["verdict"],
            "evidence": str(report.get("evidence")), "gate_mode": str(report.get("mode")),
            "parent_detected": str(report.get("parent_detected")).lower(),
            "gate_reason": str(report.get("reason"))[:5000], "escalation_reason": state.reason[:5000],
            "gate_failures": "; ".join(report["failures"])[:5000], "parent_version": state.parent_version,
            "data_version": state.data_version_after, "data_version_before": state.data_version_before,
            "data_version_after": state.data_version_after, "request_batches": tag_list(state.batches),
            "covers_through": covers, "ladder": ",".join(f"{a.method}:{a.verdict}" for a in state.attempts),
            "run_id": chosen.run_id, "git_commit": dvc_ops.git_commit(project),
            **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()},
        })
    return version


def record_verification(project: Project, note: dict[str, Any], *, recovered: bool = False) -> None:
    """The audit record of the verification a promotion acts on, from its ``promoting`` note; once per version.

    Verdict and evidence say what was checked: an inconclusive attempt promoted under ``promote_low_power`` must
    not read as a pass, neither in its fields nor in the event's name. A note written before notes carried the
    verdict says nothing to record from.
    """
    verdict = note.get("verdict")
    if verdict is None:
        return
    version = str(note["model_version"])
    event = "model.verified" if verdict == PASS else "model.accepted_low_power"
    # Matched on the attempt's run id, not the version number alone: version numbers restart in another registry
    # (a project moved to a new one keeps its audit log), run ids do not.
    if audit.has_record(project, event, model_version=version, run_id=note.get("run_id")):
        return
    extra = {"recovered": True} if recovered else {}
    audit.record(project, event, model_version=version, run_id=note.get("run_id"), method=note.get("method"),
                 batch_ids=note.get("batch_ids"), attempts=note.get("attempts"), verdict=verdict,
                 evidence=note.get("evidence"), **extra)


def finish_promotions(project: Project, client: Any, ledger: Ledger, *, recovering: bool = True) -> list[str]:
    """Complete batches left ``promoting``: write their verification's record (once per version; ``recovered``
    unless ``recovering`` is False, the promotion that has just marked them), move the alias (if not yet) and mark
    them completed.

    A batch whose version the current registry does not hold (left promoting by a crash, then the project moved to
    another registry, or the version deleted outside the pipeline) is put back to pending instead: the number may be
    another model's here, so no alias moves and nothing is recorded as promoted; the next run unlearns it again from
    the current champion (the escalation names the model it started from), so it blocks no request after it.
    """
    done = []
    moved_here: dict[str, str | None] = {}  # version -> the champion version this call moved the alias from
    for batch_id in ledger.batches_with_status(Ledger.PROMOTING):
        note = ledger.last_note(batch_id)
        version = str(note["model_version"])
        if note.get("run_id") and tracking.registered_promotion(project, client, version, note["run_id"],
                                                                batch_id) is None:
            log.warning("promote: batch %s was being promoted to version %s, which the current registry does not "
                        "hold (moved to another registry?): back to pending, unlearned again next run", batch_id,
                        version)
            ledger.set_status(batch_id, Ledger.PENDING, {"at": utc_now(), "outcome": "promotion_abandoned",
                                                         "model_version": version, "run_id": note["run_id"]})
            ledger.save()
            # After the save: a crash in between leaves the batch pending with no record, never a record of a
            # change the ledger does not hold.
            audit.record(project, "batch.promotion_abandoned", batch_id=batch_id, model_version=version,
                         run_id=note["run_id"], reason="the current registry does not hold the version")
            continue
        record_verification(project, note, recovered=recovering)
        if version in moved_here:  # batches promoted together: the alias this call moved for an earlier one
            previous, recovered = moved_here[version], False
        else:
            champion = tracking.champion_version(project, client)
            moved = champion is None or str(champion.version) != version
            if moved:
                tracking.move_champion(project, client, version)
                moved_here[version] = None if champion is None else str(champion.version)
            previous, recovered = moved_here.get(version), not moved
        # Recorded per batch, also when a re-run finds the alias already moved (crash in between). Batches promoted
        # together share the move: the second one's record said "recovered" with no previous version, a crash
        # recovery that never happened (review of 2026-12-07).
        audit.record(project, "model.promoted", model_version=version, batch_id=batch_id, run_id=note.get("run_id"),
                     previous_version=previous, recovered=recovered)
        ledger.set_status(batch_id, Ledger.COMPLETED,
                          {"at": utc_now(), "outcome": "promoted", "model_version": version})
        ledger.mark_step([batch_id], "promoted")
        ledger.save()
        done.append(version)
    return done

