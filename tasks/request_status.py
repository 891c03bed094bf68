"""What ``unlearn request status`` tells about one request: accepted (its batch's steps and evidence so far),
queued, acknowledged or rejected. Read-only: it opens the ledger, the inbox and the audit log, never the registry.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.certify import STEPS, attempt_report, batch_file, certificate_paths, not_applicable, trained_ids
from tasks.evidence import evidence_summary
from tasks.project import PipelineError, Project
from unlearn.requests import Ledger

# Ledger outcomes after which an earlier attempt's verification no longer describes the batch (request status)
VOIDING_OUTCOMES = {
    "promotion_abandoned": "its promotion was abandoned (the registry does not hold the version), so the batch is "
                           "unlearned again",
    "model_withdrawn": "the model was withdrawn (too few training samples remain): no model replaced it",
}

def verification_status(project: Project, ledger: Ledger, batch_id: str) -> dict[str, Any]:
    """What verification said about a batch so far: held (until when at most), and the evidence's strength."""
    out: dict[str, Any] = {}
    history = ledger.batch(batch_id).get("history", [])
    last = history[-1] if history else {}
    if last.get("outcome") == "held":
        out["outcome"] = "held"
        out["held_until"] = last.get("hold_until")
        out["held_note"] = (f"inconclusive evidence: held (not promoted) to be verified together with later "
                            f"batches; due for the exact retrain at {last.get('hold_until')} (the first run after "
                            f"it retrains) or after gate.max_hold_batches batches, whichever comes first")
    # The latest attempt's evidence, unless what came after it voided it: a promotion abandoned (the registry does
    # not hold the version; the batch is unlearned again) or the model withdrawn (no model was promoted). Quoting it
    # then described a model nobody serves (review of 2026-12-07).
    run_id = None
    for note in reversed(history):
        if note.get("outcome") in VOIDING_OUTCOMES:
            out["evidence"] = f"none current: {VOIDING_OUTCOMES[note['outcome']]}"
            return out
        if note.get("run_id"):
            run_id = note["run_id"]
            break
    report, problem = attempt_report(project, run_id)
    summary = evidence_summary(report)
    if summary:
        out["evidence"] = summary["statement"]
        out["verification"] = summary
    elif run_id:
        out["evidence"] = f"unavailable: the verification report of run {run_id} is {problem}"
    return out


def request_status(project: Project, request_id: str) -> dict[str, Any]:
    """Where one request is: accepted (its batch's status and steps), acknowledged or rejected.

    Raises:
        PipelineError: If no request with this id was ever seen.
    """
    from tasks.validation import loggable_request_id

    if loggable_request_id(request_id) is None:
        # Not echoed: what an operator types here may be an e-mail address or a name, and `request submit` refuses
        # such an id without repeating it for the same reason (no request can carry one).
        raise PipelineError("that request id is not well-formed (1-128 letters, digits, '.', '_', ':' or '-', "
                            "starting with a letter or digit), so no request has it; it is not repeated here")
    ledger = Ledger(project.ledger_path)
    found = ledger.find_request(request_id)
    rejections, whole_files = [], 0
    for path in sorted(project.rejected_dir.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):  # said, not skipped: the damaged line may be this request's rejection
                raise PipelineError(f"{path} line {number} is not a JSON object (damaged or edited), so whether "
                                    f"it rejected request {request_id} cannot be told")
            named = row.get("request_ids")  # a file refused for its name: the ids its content held
            if row.get("request_id") == request_id or (isinstance(named, list) and request_id in named):
                rejections.append({"ingest": path.stem, "reasons": row.get("reasons")})
            elif row.get("request_id") is None and row.get("row") is None and not named:
                whole_files += 1  # a file refused as a whole: the request ids in it were not read
    if found is not None:
        # The content digest is the ledger's key for spotting a resent request, not status: an unsalted hash of
        # the sample ids, which anyone can reverse for a small request by hashing candidate ids (review of
        # 2026-12-06), so it is never printed.
        out = {k: v for k, v in found.items() if k not in ("content_digest", "subject_hash")}
        if isinstance(out.get("acknowledged"), dict):
            out["acknowledged"] = {k: v for k, v in out["acknowledged"].items() if k != "content_digest"}
        batch_id = found.get("batch_id")
        if found.get("kind") == "accepted" and batch_id in ledger.batches:
            out["status"] = ledger.batch(batch_id)["status"]
            out["steps"] = ledger.steps(batch_id)
            out.update(verification_status(project, ledger, batch_id))
            if out.get("verification") and ledger.train_sample_ids(batch_id) is not None:
                try:
                    mine = next(r["sample_ids"] for r in batch_file(project, batch_id)["requests"]
                                if r["request_id"] == request_id)
                except (PipelineError, StopIteration, KeyError, TypeError):
                    mine = None
                if mine is not None and not set(mine) & trained_ids(project, ledger, batch_id):  # as its certificate
                    out["verification"] = not_applicable(out["verification"].get("verdict"))
                    out["evidence"] = out["verification"]["statement"]
            out["step"] = next((s for s in reversed(STEPS) if s in out["steps"]), "validated")
            paths = certificate_paths(project, request_id)
            out["certificate"] = str(paths[0]) if paths else None
            if paths:  # interim (awaiting_retirement) or final: what the certificate itself says
                try:
                    out["certificate_status"] = json.loads(paths[0].read_text()).get("status")
                except (OSError, ValueError, AttributeError):
                    out["certificate_status"] = None
        if found.get("kind") == "acknowledged" and found.get("covered_by"):
            # where the batches that delete its samples are now (an acknowledgement is written once, at ingest)
            out["covering_batches"] = {b: ledger.batch(b)["status"] for b in found["covered_by"] if b in ledger.batches}
            # "deleted" only once the copies are gone too: a batch is COMPLETED at promotion, before its purge
            # (which can still fail, finding copies); until every covering batch is purged it is "replaced".
            out["covering_purged"] = {b: "purged" in ledger.steps(b) for b in out["covering_batches"]}
            out["deleted"] = bool(out["covering_batches"]) and all(
                status == Ledger.COMPLETED and out["covering_purged"][b]
                for b, status in out["covering_batches"].items())
        # Ingest ids sort by time: a rejection from before the ingest that accepted or acknowledged the id was a
        # first try that failed (then fixed and sent again), not a later resend (review of 2026-12-07: every one
        # was printed as "later sent again and rejected").
        # The same ingest: another row with this id, before or after the one recorded (rows are not ordered across
        # files in the log). A conflict is never earlier: it needs the record it conflicts with (a clock stepped
        # back must not make it so; third review).
        recorded_by = found.get("batch_id") if found.get("kind") == "accepted" else found.get("ingest_id")
        for rejection in rejections:
            when = ("same_ingest_rejections" if rejection["ingest"] == recorded_by
                    else "earlier_rejections" if recorded_by and rejection["ingest"] < recorded_by
                    and "request_id_conflict" not in (rejection.get("reasons") or []) else "later_rejections")
            out.setdefault(when, []).append(rejection)
        return out
    waiting = _waiting_in_inbox(project, request_id)
    if waiting:  # sent (again) and not ingested yet: `request submit` said "queued"
        detail = ("waiting in data/requests/incoming; the next pipeline run ingests it" if waiting == "readable" else
                  "waiting in data/requests/incoming, in a file whose name the next run will refuse "
                  "(unsafe_file_name): rename the file, or submit the request again")
        return {"kind": "queued", "request_id": request_id, "detail": detail,
                **({"rejected_before": rejections} if rejections else {})}
    if rejections:
        return {"kind": "rejected", "request_id": request_id, **rejections[-1], "rejections": rejections}
    unread = (f"; {whole_files} file(s) were refused as a whole (the rejection log in {project.rejected_dir} says "
              "why), and the request ids in them were not read" if whole_files else "")
    raise PipelineError(f"unknown request id {request_id!r}: not in the ledger, the acknowledgements, the "
                        f"rejection log or the inbox{unread}")


def _waiting_in_inbox(project: Project, request_id: str) -> str | None:
    """Whether a file the next ingest will read holds this request id: "readable", "unsafe_name" (its file will
    be refused for its name), or None (read as ingestion reads them: :func:`tasks.stage.ingest.waiting_files`)."""
    from tasks.stage.ingest import waiting_files

    for parsed in waiting_files(project):
        if any(row.values.get("request_id") == request_id for row in parsed.requests):
            return "readable"
        if request_id in parsed.refused_request_ids:
            return "unsafe_name"
    return None
