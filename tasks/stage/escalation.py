"""The escalation's state: start or resume it for the pending batches, and pick the next rung.

The state lives in ``data/state/unlearn.json``; :mod:`tasks.stage.unlearn` runs the rungs and
:mod:`tasks.stage.verify` records each verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks import audit, dvc_ops, tracking
from tasks.consolidate import record_lost_consolidations
from tasks.ladder import EXACT, active_ladder, recover_demotions
from tasks.lifecycle import uncovered_deletions
from tasks.project import PipelineError, Project
from tasks.stage.context import check_architecture, load_forget
from tasks.stage.promote import finish_promotions
from tasks.stage.state import (
    DATA_ONLY,
    MODEL_WITHDRAWN,
    NOTHING_PENDING,
    UNLEARNING,
    Attempt,
    Escalation,
    attempt_report,
    read_escalation,
    write_escalation,
)
from unlearn.data import SampleStore
from unlearn.files import utc_now, utc_timestamp, write_json_atomic
from unlearn.gate import INCONCLUSIVE, PASS
from unlearn.gate_policy import PROMOTE, PROMOTE_LOW_POWER, RETRAIN, next_action
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")


def ladder_key(project: Project, parent_version: str, batches: list[str]) -> str:
    """Identity of one escalation: the champion it starts from, the batches, and the policy.

    ``unlearn.recalibrate_bn`` changes every candidate's weights-and-buffers, so it is part of the policy; it
    is added only when on, so an escalation recorded before the setting existed keeps its key when it is off;
    ``gate.utility_loss_fraction`` and ``gate.utility_loss_floor`` likewise count only when ``utility`` is gated.
    The intervals' reference-set jackknife (2026-12) widened the interval of every gated reference attack scored
    against 3 or more references: for such a project it is part of the key, so an escalation still in progress
    whose verdicts were reached without it starts again (one already done keeps its verdict: promote reads it).
    The references' learning curve (2026-12) is not: it adds words to some ``utility`` fails and changes no verdict.
    """
    from unlearn.attacks import ATTACKS
    from unlearn.verification import MIN_JACKKNIFE_REFERENCES

    params = project.params
    ladder = params.unlearn.ladder
    jackknifed = (params.verify.references.count >= MIN_JACKKNIFE_REFERENCES
                  and any(ATTACKS.get(a).uses_references for a in params.gate.attacks))
    gate = repr(params.gate)
    if "utility" not in params.gate.accuracy_checks:  # unused: an escalation recorded before it existed keeps its key
        gate = gate.replace(f", utility_loss_fraction={params.gate.utility_loss_fraction!r}", "")
        gate = gate.replace(f", utility_loss_floor={params.gate.utility_loss_floor!r}", "")
    return hashlib.sha256(json.dumps(
        [parent_version, sorted(batches), list(ladder), {m: params.method_kwargs(m) for m in ladder},
         params.seed, repr(params.verify), gate,
         *([{"intervals": "reference-jackknife"}] if jackknifed else []),
         *([{"recalibrate_bn": True}] if params.unlearn.recalibrate_bn else [])],
        sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def begin_unlearning(project: Project) -> dict[str, Any]:
    """Start, or resume, the escalation for every pending batch.

    The state (``data/state/unlearn.json``) is keyed by the champion, the pending batches and
    the policy: a re-run after a crash keeps every attempt that already has a verdict, so no
    batch is unlearned twice and no duplicate model version is registered. Batches that name
    only test-split samples need no unlearning (no model saw them) and are completed here.

    Returns:
        The state: ``status`` (nothing_pending, data_only, model_withdrawn, unlearning or done), the attempts so
        far and ``next_method`` (None when the ladder is finished).
    """
    ledger = Ledger(project.ledger_path)
    client = tracking.setup(project)
    # A promotion interrupted by a crash is finished first: new batches must be unlearned from
    # the model that already forgot the earlier ones, never from its predecessor.
    finish_promotions(project, client, ledger)
    record_lost_consolidations(project, client)  # before a promotion from it could hide that it served
    record_lost_completions(project, ledger)
    pending = ledger.pending()
    if not pending:
        return write_escalation(project, Escalation(NOTHING_PENDING))
    champion = tracking.champion_version(project, client)
    check_architecture(project, champion)
    forget = load_forget(project, pending)
    train_left = len(SampleStore(project.store_dir).split_ids("train"))
    if len(forget) and train_left < project.params.train.min_samples:
        return _withdraw(project, client, ledger, pending, train_left)
    if len(forget) and champion is None:  # before the data version: the clearer of the two errors
        raise PipelineError("no champion model in the registry; run the train stage first")
    data_version = dvc_ops.data_version(project)
    if len(forget) == 0:
        for batch_id in pending:
            ledger.set_status(batch_id, Ledger.COMPLETED, {"at": utc_now(), "outcome": "data_only",
                                                           "data_version": data_version})
        ledger.mark_step(pending, "completed")
        ledger.save()
        audit.record(project, "batch.completed", batch_ids=pending, outcome="data_only",
                     data_version=data_version)
        return write_escalation(project, Escalation(DATA_ONLY, batches=pending))
    if champion is None:
        raise PipelineError("no champion model in the registry; run the train stage first")
    key = ladder_key(project, str(champion.version), pending)
    try:
        previous = read_escalation(project)
    except PipelineError:
        previous = None
    if previous is not None:  # its verdicts' records, whether it resumes or a new batch starts another escalation
        record_lost_verdicts(project, previous)
    # Resume: keep attempts with a verdict; an attempt cut off before its verdict is redone, and so is one whose
    # report (its evidence) is gone, with every rung after it.
    parent_model = tracking.version_model_id(champion) or ""
    # "" on either side: recorded before states named the model, or a version that names none (promote agrees)
    same_parent = previous is not None and (not parent_model or previous.parent_model_id in ("", parent_model))
    attempts = kept_attempts(project, previous) if previous and previous.key == key and same_parent else []
    if not attempts:
        # A fresh escalation times its own unlearning and verification: mark_step keeps a step's first time, so
        # a pass that was never promoted (a crash, then a new batch started this escalation) stayed the batch's
        # "verified" time, shown beside another model's verdict on its certificate (review of 2026-12-06).
        timeline = Ledger(project.ledger_path)  # record_lost_verdicts above saved its own copy
        if timeline.clear_steps(pending, ("unlearned", "verified")):
            timeline.save()
    # A resumed escalation keeps why it escalated: the reason was reset here, so a crash between an inconclusive
    # verdict and the exact retrain left the retrained version's `escalation_reason` tag (and its certificate's
    # "Escalation" row) empty (review of 2026-12-07).
    reason, hold_until = kept_reason(project, attempts), ""
    if attempts and attempts[-1].verdict == INCONCLUSIVE and attempts[-1].action == "hold":
        # A held escalation resumed by a later run (no new batch since): the hold may have run out.
        attempts[-1].action, hold_until, reason = verdict_action(project, INCONCLUSIVE, pending)
    # Methods an exact-retrain audit demoted are skipped (tasks/ladder.py logs each one), also one whose recorded
    # demotion a crash cut off.
    recover_demotions(project)
    active = active_ladder(project, project.params.unlearn.ladder)
    uncovered = uncovered_deletions(ledger, champion)
    if uncovered:
        # A champion moved back past completed deletions (a rollback in the grace window) still holds their
        # samples. Unlearning only the pending batches from it, the promotion would have claimed to cover the
        # earlier ones too, and purge then retired the one model that had forgotten them (review of 2026-12-06).
        # The exact retrain on the current data never saw any deleted sample: it is the only rung.
        active = [EXACT]
        why = (f"the champion (version {champion.version}) was trained on samples that {len(uncovered)} completed "
               "deletion batch(es) removed, which it does not cover (was the champion alias moved back?): only an "
               "exact retrain on the current data forgets them")
        log.warning("escalation: %s", why)
        reason = f"{reason}; {why}" if reason else why
    ladder = resumed_ladder(attempts, active)
    state = Escalation(
        UNLEARNING, key=key, parent_version=str(champion.version), parent_model_id=parent_model, batches=pending,
        data_version_before=champion.tags.get("data_version", ""), data_version_after=data_version,
        parent_covers_through=champion.tags.get("covers_through", ""),
        n_forget=len(forget), forget_classes=ledger.forget_classes(pending),
        ladder=ladder, attempts=attempts, reason=reason,
        hold_until=hold_until,
    )
    return write_escalation(project, state.next_rung())


def kept_reason(project: Project, attempts: list[Attempt]) -> str:
    """The escalation's reason as verify left it after the last kept attempt: the policy reason of the latest
    attempt that was inconclusive or escalated to the exact retrain (verify's rule), read from its report, so a
    dropped later rung's reason is not kept."""
    reason = ""
    for attempt in attempts:
        if attempt.verdict == INCONCLUSIVE or attempt.action == RETRAIN:
            report, _ = attempt_report(project, attempt)
            if report is not None and isinstance(report.get("policy_reason"), str):
                reason = report["policy_reason"]
    return reason


def kept_attempts(project: Project, state: Escalation) -> list[Attempt]:
    """The attempts a resumed escalation keeps: the verified ones, up to the first whose report cannot be used.

    Why: a verdict is only as good as its evidence. The promote stage acts on the chosen attempt's report, and a
    state naming a report that is gone (deleted, a partial restore), unreadable (an empty or truncated file) or
    another run's failed every later run there, which held up every request after it. Such an attempt is
    dropped from the escalation, so the ladder redoes it like one cut off before its verdict; the rungs after it
    are dropped too, since the ladder went on from that verdict. An ``attempt.report_lost`` record says what was
    found and that the attempt was dropped (no sample, no subject).
    """
    kept: list[Attempt] = []
    for number, attempt in enumerate(state.attempts, start=1):
        if not attempt.verified():
            continue
        report, problem = attempt_report(project, attempt)
        if report is None:
            log.warning("unlearn: the report of attempt %d (%s, %s) is %s; dropping it from the escalation",
                        number, attempt.method, attempt.verdict, problem)
            if not audit.has_record(project, "attempt.report_lost", run_id=attempt.run_id):
                audit.record(project, "attempt.report_lost", method=attempt.method, attempt=number,
                             run_id=attempt.run_id, state_verdict=attempt.verdict, problem=problem,
                             batch_ids=state.batches, dropped_from_escalation=True)
            break
        kept.append(attempt)
    return kept


def record_verdict(project: Project, batches: list[str], number: int, report: dict[str, Any], *,
                   recovered: bool = False, unlearned_at: str | None = None) -> None:
    """The verdict's records, after the escalation state holds it: the ledger's ``verified`` step (a pass, or
    an inconclusive attempt promoted as low-power) and the ``attempt.verified`` audit record.

    A crash after the state was written skipped them for good (a resumed escalation keeps a verified attempt
    and never verifies it again): :func:`begin_unlearning` calls this again, with
    ``recovered``, for every kept attempt the audit log does not name (:func:`record_lost_verdicts`).

    ``unlearned_at`` (the attempt's model's time) becomes the batches' ``unlearned`` step with it: that step is
    first marked when the first rung's model is saved, and a later rung's pass would otherwise stand beside the
    time of a model that failed (review of 2026-12-07).
    """
    if report["verdict"] == PASS or report["action"] == PROMOTE_LOW_POWER:
        ledger = Ledger(project.ledger_path)
        # only batches still pending: a recovered verdict of a batch finished since must not rewrite its timeline
        restamp = [b for b in batches if b in ledger.batches and ledger.batch(b)["status"] == Ledger.PENDING]
        if unlearned_at and restamp:
            ledger.clear_steps(restamp, ("unlearned",))
            ledger.mark_step(restamp, "unlearned", unlearned_at)
        ledger.mark_step(batches, "verified")
        ledger.save()
    audit.record(project, "attempt.verified", method=report["method"], attempt=number, verdict=report["verdict"],
                 action=report["action"], evidence=report["evidence"], parent_detected=report["parent_detected"],
                 run_id=report["run_id"], batch_ids=batches, failures=len(report["failures"]),
                 **({"recovered": True} if recovered else {}))


def lost_verdicts(project: Project, state: Escalation) -> list[tuple[int, Attempt]]:
    """The verified attempts of an escalation whose ``attempt.verified`` record is missing (numbered from 1)."""
    verified = [(n, a) for n, a in enumerate(state.attempts, start=1) if a.verified() and a.report]
    if not verified:
        return []
    named = {r.get("run_id") for r in audit.records(project, "attempt.verified")}
    return [(n, a) for n, a in verified if a.run_id not in named]


def record_lost_verdicts(project: Project, state: Escalation) -> None:
    """Write the verdict records of attempts that a crash cut off (see :func:`record_verdict`)."""
    for number, attempt in lost_verdicts(project, state):
        report, _ = attempt_report(project, attempt)
        if report is None:  # no evidence to record from: kept_attempts drops and redoes the attempt
            break
        record_verdict(project, state.batches, number, report, recovered=True, unlearned_at=attempt.started_at)


COMPLETION_EVENTS = {"data_only": "batch.completed", "model_withdrawn": "model.withdrawn"}


def lost_completions(project: Project, ledger: Ledger) -> dict[str, str]:
    """Batches completed here (data-only, withdrawn) whose audit record names no batch: batch -> missing event.

    The ledger is saved first and the record appended next: a crash in between left them so. The log is read
    once per event, only when such batches exist.
    """
    lost: dict[str, str] = {}
    recorded: dict[str, set[str]] = {}  # event -> the batches its records name
    for batch_id in ledger.batches_with_status(Ledger.COMPLETED):
        event = COMPLETION_EVENTS.get(str(ledger.last_note(batch_id).get("outcome")))
        if event is None:
            continue
        if event not in recorded:
            recorded[event] = {b for r in audit.records(project, event) for b in (r.get("batch_ids") or [])}
        if batch_id not in recorded[event]:
            lost[batch_id] = event
    return lost


def record_lost_completions(project: Project, ledger: Ledger) -> list[str]:
    """Write the records :func:`lost_completions` finds missing (nothing else would ever write them), one per
    completion (the batches completed together share their note's time). Returns the batches recorded."""
    groups: dict[tuple[str, str], list[str]] = {}
    for batch_id, event in lost_completions(project, ledger).items():
        groups.setdefault((event, str(ledger.last_note(batch_id).get("at", ""))), []).append(batch_id)
    for (event, _), batch_ids in groups.items():
        note = ledger.last_note(batch_ids[0])
        if event == "model.withdrawn":
            audit.record(project, event, model_version=note.get("model_version"), batch_ids=batch_ids,
                         reason=note.get("reason"), data_version=note.get("data_version"), recovered=True)
        else:
            audit.record(project, event, batch_ids=batch_ids, outcome="data_only",
                         data_version=note.get("data_version"), recovered=True)
    return [b for batch_ids in groups.values() for b in batch_ids]


def resumed_ladder(attempts: list[Attempt], active: list[str]) -> list[str]:
    """The ladder of a resumed escalation: the rungs already tried, in their places, then the active rest.

    Rungs are read by position (:meth:`Escalation.next_rung`): a method demoted between two runs of one
    escalation would otherwise shift the ladder under its attempts, and the next rung would be skipped. Nothing
    comes after the exact retrain.
    """
    tried = [a.method for a in attempts]
    return tried + ([] if EXACT in tried else [m for m in active if m not in tried])


def _parse_utc(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def verdict_action(project: Project, verdict: str, batches: list[str], *,
                   now: datetime | None = None) -> tuple[str, str, str]:
    """What follows a verdict for these batches: ``gate.on_inconclusive`` bounded by the hold limits.

    The hold clock starts when the oldest of the batches was ingested; the held evidence spans
    ``len(batches)`` batches (a held batch is unlearned and verified again together with every
    later one, from the same champion). A request is never parked forever: at either bound the
    action is the exact retrain.

    Args:
        project: The project.
        verdict: pass, fail or inconclusive.
        batches: The batches the verdict covers.
        now: The clock (tests).

    Returns:
        ``(action, hold_until, reason)``: the action (:func:`unlearn.gate_policy.next_action`), the
        latest time the batches may stay held (UTC; empty unless the policy is ``hold``), and,
        when a bound turned a hold into an exact retrain, why.
    """
    gate = project.params.gate
    if verdict == PASS:
        return PROMOTE, "", ""
    if verdict != INCONCLUSIVE:
        return RETRAIN, "", ""
    ledger = Ledger(project.ledger_path)
    oldest = min(_parse_utc(ledger.batch(b)["created_at"]) for b in batches)
    hours = ((now or datetime.now(UTC)) - oldest).total_seconds() / 3600
    action = next_action(verdict, on_inconclusive=gate.on_inconclusive, held_batches=len(batches),
                         held_hours=hours, max_hold_batches=gate.max_hold_batches,
                         max_hold_hours=gate.max_hold_hours)
    hold_until = utc_timestamp(oldest + timedelta(hours=gate.max_hold_hours)) if gate.on_inconclusive == "hold" \
        else ""
    reason = ""
    if gate.on_inconclusive == "hold" and action == RETRAIN:
        reason = (f"inconclusive evidence held to its bound ({len(batches)} batch(es), max_hold_batches "
                  f"{gate.max_hold_batches}; {hours:.1f} h since the oldest was ingested, max_hold_hours "
                  f"{gate.max_hold_hours:g}): escalated to the exact retrain")
    elif gate.on_inconclusive == "retrain":
        reason = "inconclusive evidence (gate.on_inconclusive: retrain): escalated to the exact retrain"
    return action, hold_until, reason


def _withdraw(project: Project, client: Any, ledger: Ledger, pending: list[str], train_left: int) -> dict[str, Any]:
    """Too few training samples remain for any successor: honour the deletion by serving no model.

    The data deletion stands (prepare committed it); the champion, which holds the deleted samples,
    loses its alias and is retired by purge like any model that saw them; the batches complete with
    outcome ``model_withdrawn`` so their certificates say so; later batches are not blocked.
    """
    data_version = dvc_ops.data_version(project)
    reason = (f"{train_left} training sample(s) remain, fewer than train.min_samples "
              f"({project.params.train.min_samples}): no successor can be trained")
    at = utc_now()
    champion = tracking.champion_version(project, client)
    if champion is not None and ledger.withdrawing(pending) != str(champion.version):
        ledger.set_withdrawing(pending, str(champion.version))  # saved before the alias goes
        ledger.save()
    withdrawn = tracking.withdraw_champion(project, client, reason=reason, at=at) or ledger.withdrawing(pending)
    for batch_id in pending:
        ledger.set_status(batch_id, Ledger.COMPLETED, {"at": at, "outcome": "model_withdrawn",
                                                       "model_version": withdrawn, "reason": reason,
                                                       "data_version": data_version})
    ledger.mark_step(pending, "completed")
    ledger.save()
    audit.record(project, "model.withdrawn", model_version=withdrawn, batch_ids=pending, reason=reason,
                 data_version=data_version)
    return write_escalation(project, Escalation(MODEL_WITHDRAWN, batches=pending, withdrawn_version=withdrawn,
                                                reason=reason))


def skipped_report(project: Project, reason: str | None) -> dict[str, Any]:
    """Write the verification report and metrics of a run that verified nothing (``dvc.yaml`` declares them)."""
    report = {"status": "skipped", "reason": reason}
    write_json_atomic(project.reports_dir / "verification.json", report)
    write_json_atomic(project.reports_dir / "metrics.json", {"verified": 0})
    return report

