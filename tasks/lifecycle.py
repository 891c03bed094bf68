"""Closing a deletion: retire the models that saw the samples, purge every copy, certify.

Two stages run after ``promote`` (in the Prefect flow and in ``dvc repro`` alike):

* ``purge``: model versions trained on deleted samples are retired once a successor that
  forgot them is champion (artifacts deleted after ``lifecycle.retirement_grace_hours``, the
  registry entry kept as a tombstone); data versions that held the samples are redacted in the
  DVC cache and remote; cached signals and candidate models are dropped; then the whole project
  is scanned for the deleted samples' bytes and the evidence is recorded per batch.
* ``certify``: one deletion certificate per request (JSON + HTML).

Both are idempotent: a re-run after a crash finishes what is left and repeats nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tasks import audit, tracking
from tasks.evidence import evidence_summary
from tasks.project import PipelineError, Project, open_quarantines, quarantine_path, read_quarantine
from tasks.retired_weights import (
    entry_key,
    fingerprint_keys,
    mark_weights_scanned,
    readable_key,
    record_weight_search,
    remember_weight_fingerprints,
    retired_weight_fingerprints,
    retired_weight_patterns,
    unscanned_retirements,
)
from tasks.stage.state import write_state
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays, split_labels
from unlearn.files import utc_now, utc_timestamp
from unlearn.requests import Ledger, hash_ids, load_or_create_salt

log = logging.getLogger("unlearn.pipeline")

AWAITING_RETIREMENT = "awaiting_retirement"  # a certificate issued while trained-on versions live
NOT_APPLICABLE = "not_applicable"  # a data-only request's evidence strength: no model trained on its samples
STEPS = ("received", "validated", "data_version", "unlearned", "verified", "promoted", "retired", "purged",
         "certified")


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def uncovered_deletions(ledger: Ledger, version: Any) -> list[str]:
    """Completed batches that removed training samples and that ``version`` does not cover: it trained on them.

    Empty for every champion the pipeline promotes (a promotion covers its parent's batches and its own, a
    baseline or a consolidation every batch before it). Not empty after the ``champion`` alias was moved back to
    an older version inside the retirement grace window (the README's rollback): that model still holds the
    samples those batches deleted.
    """
    rank = ledger.rank()
    covers = rank.get(version.tags.get("covers_through", ""), -1)
    return [b for b in ledger.batches_with_status(Ledger.COMPLETED)
            if ledger.removed_training_samples(b) and rank[b] > covers]


def retire_models(project: Project, client: Any, ledger: Ledger, *,
                  loaded: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Retire every model version that trained on samples the champion has forgotten.

    A version "covers" the batches up to its ``covers_through`` tag (the baseline: every batch
    before it was trained; an unlearned model that passed: its parent's plus its own). It is
    contaminated by a completed batch that removed training samples and that it does not cover.
    Contaminated versions other than the champion (the previous champion, failed challengers)
    are scheduled at once and retired when ``lifecycle.retirement_grace_hours`` has passed.

    ``loaded``: the live versions' weights already read this run (``tasks.retired_weights.live_weights``' memo).

    Returns:
        One entry per version acted on: version, action (retired | scheduled), reason, batches, due_at.
    """
    champion = tracking.champion_version(project, client)
    rank = ledger.rank()
    completed = ledger.batches_with_status(Ledger.COMPLETED)
    withdrawn = [b for b in completed if ledger.last_note(b).get("outcome") == "model_withdrawn"]
    if champion is not None:
        covered_by_champion = rank.get(champion.tags.get("covers_through", ""), -1)
        successor = f"superseded by version {champion.version}"
    elif withdrawn:
        # No model is served any more: every version that saw a deleted sample goes, none is kept.
        covered_by_champion = max(rank[b] for b in withdrawn)
        successor = "withdrawn: too few training samples remain for a successor"
    else:
        return []
    contaminating = [b for b in completed if ledger.removed_training_samples(b) and rank[b] <= covered_by_champion]
    grace = timedelta(hours=project.params.lifecycle.retirement_grace_hours)
    now = datetime.now(UTC)
    actions = []
    for mv in tracking.all_versions(project, client):
        if mv.tags.get("retired") == "true":
            # Retired by an earlier run that may have stopped before saving the ledger or appending to
            # the audit log: the registry tombstone is the record, so the evidence is rebuilt from it.
            if not _retirement_recorded(project, mv):
                audit.record(project, "model.retired", model_version=str(mv.version),
                             reason=mv.tags.get("retired_reason", ""),
                             batch_ids=[b for b in mv.tags.get("retired_batches", "").split(",") if b],
                             artifacts_deleted=mv.tags.get("artifacts_deleted") == "true", recovered=True,
                             **_model_of(mv))
            for batch_id in mv.tags.get("retired_batches", "").split(","):
                if batch_id in ledger.batches:
                    known = ledger.batch(batch_id).get("retirement", {}).get(str(mv.version), {})
                    ledger.record_retirement(batch_id, str(mv.version), {  # what a scan recorded is kept
                        **known, "version": str(mv.version), "action": "retired",
                        "reason": mv.tags.get("retired_reason"), "due_at": mv.tags.get("retire_due_at"),
                        "retired_at": mv.tags.get("retired_at"), **_model_of(mv)})
            continue
        if champion is not None and str(mv.version) == str(champion.version):
            continue
        covers = rank.get(mv.tags.get("covers_through", ""), -1)
        offending = sorted((b for b in contaminating if rank[b] > covers), key=rank.get)
        if not offending:
            continue
        reason = f"trained on samples deleted by {len(offending)} batch(es); {successor}"
        due_at = mv.tags.get("retire_due_at")
        if due_at is None:
            due_at = utc_timestamp(now + grace)
            client.set_model_version_tag(tracking.model_name(project), str(mv.version), "retire_due_at", due_at)
        if _parse(due_at) > now:
            actions.append({"version": str(mv.version), "action": "scheduled", "reason": reason,
                            "batches": offending, "due_at": due_at, **_model_of(mv)})
            continue
        at = utc_now()
        remember_weight_fingerprints(project, client, mv, loaded=loaded)
        deleted = tracking.retire_version(project, client, mv, reason=reason, batches=offending, at=at)
        audit.record(project, "model.retired", model_version=str(mv.version), reason=reason,
                     batch_ids=offending, artifacts_deleted=deleted, **_model_of(mv))
        actions.append({"version": str(mv.version), "action": "retired", "reason": reason,
                        "batches": offending, "retired_at": at, "due_at": due_at, **_model_of(mv)})
    for action in actions:
        for batch_id in action["batches"]:
            entry = {k: action[k] for k in ("version", "action", "reason", "due_at")}
            entry["retired_at"] = action.get("retired_at")
            entry.update({k: action[k] for k in ("model_id",) if k in action})
            ledger.record_retirement(batch_id, action["version"], entry)
    return actions


def _retirement_recorded(project: Project, mv: Any) -> bool:
    """Whether the audit log already holds this retired version's ``model.retired`` record.

    Matched on the logged model, not the version number alone: a project moved to another registry keeps its audit
    log while its versions are numbered from 1 again, so the old registry's record of "version 1 retired" is not the
    new version 1's (its retirement would otherwise go unrecorded after a crash). A record written before records
    named the model counts when it names the first batch of the version's tombstone (batch ids are unique; the tag
    may be cut short, never at its start).
    """
    version, model = str(mv.version), _model_of(mv)
    if model and audit.has_record(project, "model.retired", model_version=version, **model):
        return True
    first = mv.tags.get("retired_batches", "").split(",")[0]
    return any("model_id" not in r and (not model or first in (r.get("batch_ids") or []))
               for r in audit.records(project, "model.retired", model_version=version))


def _model_of(mv: Any) -> dict[str, str]:
    """``{"model_id": ...}`` for a batch's retirement entry (empty when the version names none): which model it
    retired, since version numbers start again in another registry."""
    model_id = tracking.version_model_id(mv)
    return {"model_id": model_id} if model_id else {}


def _refuse_matches(project: Project, scan: Any, weights: dict[str, bytes], **record: Any) -> None:
    """A scan that found deleted bytes: a ``purge.incomplete`` record, then the error naming the files."""
    if not scan.matches:
        return
    places = sorted({str(path) for path, _ in scan.matches})
    what = "retired model weights" if all(key in weights for _, key in scan.matches) else "deleted samples' bytes"
    audit.record(project, "purge.incomplete", **record, matches=len(scan.matches))
    raise PipelineError(f"purge incomplete: {what} still found in {len(places)} file(s): {', '.join(places[:10])}")


def deleted_arrays(project: Project, sample_ids: list[str], known: Arrays | None = None) -> Arrays:
    """The deleted samples' pixels: ``known`` ones first (the quarantine: the bytes the models trained on), the rest
    from the upstream source (the store no longer has them). A sample in neither is absent from the result: callers
    that make claims from it count what is missing (:func:`run_purge`)."""
    wanted = np.asarray(sample_ids, dtype=str)
    first = None
    if known is not None and len(known.ids):
        keep = np.isin(known.ids, wanted)
        first = Arrays(known.ids[keep], known.images[keep], known.labels[keep])
        wanted = wanted[~np.isin(wanted, known.ids)]
    source = load_source(project.params.data)
    mask = np.isin(source.ids, wanted)
    rest = Arrays(source.ids[mask], source.images[mask], source.labels[mask])
    if first is None or not len(first.ids):
        return rest
    if not len(rest.ids):
        return first
    if first.images.shape[1:] != rest.images.shape[1:]:
        return max(first, rest, key=lambda a: len(a.ids))  # the source changed shape since: the larger part only
    return Arrays(np.concatenate([first.ids, rest.ids]), np.concatenate([first.images, rest.images]),
                  np.concatenate([first.labels, rest.labels]))


def _quarantined(project: Project, batch_ids: list[str]) -> Arrays | None:
    """The closing batches' quarantined training samples, read before purge removes the files (None if none)."""
    parts = []
    for batch_id in batch_ids:
        try:
            parts.append(read_quarantine(project, batch_id))
        except FileNotFoundError:  # a crash after the unlink: the source stands in
            continue
        except Exception as exc:  # noqa: BLE001 - damaged (truncated, not a zip): the source stands in, and it is said
            log.warning("purge: the quarantine of %s could not be read (%s): its samples are searched for in the "
                        "upstream source", batch_id, type(exc).__name__)
            continue
    parts = [a for a in parts if len(a.ids) and a.images.shape[1:] == parts[0].images.shape[1:]]
    if not parts:
        return None
    return Arrays(np.concatenate([a.ids for a in parts]), np.concatenate([a.images for a in parts]),
                  np.concatenate([a.labels for a in parts]))


def run_purge(project: Project) -> dict[str, Any]:
    """Retire contaminated models, redact data versions, drop derived copies, scan for the bytes.

    Runs every pipeline run: it closes completed batches not yet purged, and carries out
    retirements whose grace period has ended.

    Returns:
        Counts and evidence (never sample ids).
    """
    from tasks.purge import purge_deleted_data, scan_project_for_samples
    from unlearn.forensics import sample_patterns

    ledger = Ledger(project.ledger_path)
    if not ledger.batches_with_status(Ledger.COMPLETED):
        # No batch ever completed: no version can be contaminated, scheduled or retired, and nothing is
        # closed. Decided without opening the registry (MLflow's import and store: about 3 s a process).
        return write_state(project, "purge", {"retired": [], "scheduled": [], "batches_closed": [],
                                              "status": "nothing_to_purge"})
    client = tracking.setup(project)
    loaded: dict[str, Any] = {}  # each live version's weights, read once for the retirements and the scan below
    actions = retire_models(project, client, ledger, loaded=loaded)
    for batch_id in ledger.batches_with_status(Ledger.COMPLETED):
        if ledger.retirements_done(batch_id):
            ledger.mark_step([batch_id], "retired")
    ledger.save()
    to_close = [b for b in ledger.batches_with_status(Ledger.COMPLETED)
                if "purged" not in ledger.steps(b)]
    summary: dict[str, Any] = {"retired": [a["version"] for a in actions if a["action"] == "retired"],
                               "scheduled": [a["version"] for a in actions if a["action"] == "scheduled"],
                               "batches_closed": to_close}
    if not to_close:
        unscanned = unscanned_retirements(project)
        if unscanned:
            # A retirement that fell due after the grace period, once its batches were purged: its weights are
            # searched for across the project as a purge's are (review of 2026-12-06: only the artifact store's
            # own listing was checked, though certificates then said the artifacts were deleted). A crash before
            # the record leaves the version unscanned, and the next run scans it.
            weights = retired_weight_patterns(project, client, loaded=loaded)
            loaded.clear()  # the weights are not needed while the project's files are read
            scan = scan_project_for_samples(project, weights.patterns)
            named = [readable_key(key) for key in unscanned]  # as evidence names them
            _refuse_matches(project, scan, weights.patterns, model_versions=named)
            audit.record(project, "retirement.scanned", model_versions=named, files_scanned=scan.files,
                         **weights.evidence(), matches=0)
            # the final certificates say what was searched
            record_weight_search(ledger, weights, set(unscanned), fingerprint_keys(project))
            ledger.save()
            mark_weights_scanned(project, unscanned)
            summary["weight_scan"] = {"versions": named, "files": scan.files, "matches": 0, **weights.evidence(),
                                      "not_scanned": len(scan.errors) + len(scan.unfollowed)}
        return write_state(project, "purge", {**summary, "status": "nothing_to_purge"})
    closing_ids = sorted({s for b in to_close for s in ledger.batch(b)["sample_ids"]})
    dvc_evidence = purge_deleted_data(project, ledger.deleted_ids(), to_close)
    # Derived copies: cached logits of the samples, and candidate models of finished escalations.
    from unlearn.attacks.signals import SignalCache  # here: the module imports torch, which purge needs nowhere else

    SignalCache(project.signals_dir).drop_ids(set(closing_ids))
    if not ledger.pending():
        for path in list(project.models_dir.glob("candidate-*.pt")) + [project.models_dir / "candidate.pt"]:
            path.unlink(missing_ok=True)
    # The search patterns: the quarantined bytes the models trained on (read before the files go, or the scan would
    # find them there), the rest from the upstream source. A deleted sample in neither (the source no longer has it)
    # cannot be searched for: counted, and the certificate says so (review of 2026-12-07: "no copy found" was
    # stated when nothing had been searched for).
    # The quarantine files are left out of the scan and removed after it: a purge refused for a copy found, or
    # stopped during the scan, still has them to search with when it runs again (review of 2026-12-07).
    quarantined = _quarantined(project, to_close)
    quarantine_files = [quarantine_path(project, batch_id) for batch_id in to_close]
    live = SampleStore(project.store_dir).load().images
    deleted = deleted_arrays(project, closing_ids, known=quarantined)
    unsearched = len(set(closing_ids) - set(deleted.ids.tolist()))
    patterns, shared = sample_patterns(deleted, live)
    weights = retired_weight_patterns(project, client, loaded=loaded)
    loaded.clear()  # the weights are not needed while the project's files are read
    # Open batches' quarantines hold samples whose own deletion is not finished (a deleted sample identical to one of
    # theirs would be "found" there, refusing this purge until that batch closes): not scanned, and counted.
    others = open_quarantines(project, ledger, to_close)
    scan = scan_project_for_samples(project, {**patterns, **weights.patterns}, exclude=quarantine_files + others)
    _refuse_matches(project, scan, weights.patterns, batch_ids=to_close)
    for path in quarantine_files:  # before anything records the purge: a crash here repeats it, from the source
        path.unlink(missing_ok=True)
    evidence = {
        "objects_removed": dvc_evidence["objects_removed"],
        "versions_redacted": dvc_evidence["versions_redacted"] + dvc_evidence.get("versions_already_redacted", []),
        "scan": {"files": scan.files, "bytes": scan.bytes, "patterns": scan.patterns, "shared_with_live": shared,
                 "samples": len(closing_ids), "sample_patterns": len(patterns), "samples_not_searched": unsearched,
                 **weights.evidence(), "matches": len(scan.matches), "open_quarantines_not_scanned": len(others),
                 # unreadable files and links to folders: the certificate says nothing is claimed about them
                 "not_scanned": len(scan.errors) + len(scan.unfollowed)},
    }
    at = utc_now(precise=True)
    fingerprinted = list(retired_weight_fingerprints(project))  # every one of them was in this scan
    record_weight_search(ledger, weights, set(fingerprinted) | set(weights.unsearchable), fingerprint_keys(project))
    for batch_id in to_close:
        ledger.record_purge(batch_id, evidence)
        ledger.mark_step([batch_id], "purged", at)
        if ledger.retirements_done(batch_id):
            ledger.mark_step([batch_id], "retired", at)
    # Recorded before the ledger marks the batches purged: a crash in between repeats the purge (and this
    # true record) on the next run, where the other order would leave a purge the log never mentions.
    audit.record(project, "purge.completed", batch_ids=to_close, samples=len(closing_ids),
                 objects_removed=evidence["objects_removed"], files_scanned=scan.files,
                 open_quarantines_not_scanned=len(others),
                 weight_versions_unsearchable=weights.evidence()["weight_versions_unsearchable"], matches=0)
    ledger.save()
    mark_weights_scanned(project, fingerprinted)
    log.info("purge: %d batch(es) closed, %d files scanned, no deleted bytes found", len(to_close), scan.files)
    if scan.errors or scan.unfollowed:
        log.warning("purge: %d path(s) could not be scanned (unreadable, or links to folders): `unlearn doctor "
                    "--deep` names them", len(scan.errors) + len(scan.unfollowed))
    return write_state(project, "purge", {**summary, "status": "purged", **evidence})


# --------------------------------------------------------------------------- certificates


def _batch_file(project: Project, batch_id: str) -> dict[str, Any]:
    try:
        return json.loads((project.batches_dir / f"{batch_id}.json").read_text())
    except FileNotFoundError:
        raise PipelineError(f"batch file of {batch_id} is missing") from None


def _promoted_version(batch: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The version the batch was promoted to and the ``promoting`` note before it (run, verdict, evidence, method;
    empty for a batch written before notes carried them), or None when it was not promoted."""
    promoting: dict[str, Any] = {}
    promoted = None
    for note in batch.get("history", []):
        if note.get("outcome") == "promoting":
            promoting = note
        elif note.get("outcome") == "promoted":
            promoted = str(note["model_version"]), promoting
    return promoted


def build_certificate(project: Project, client: Any, ledger: Ledger, request: dict[str, Any],
                      batch_id: str, train_ids: set[str], unscanned: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Assemble one request's certificate from the ledger, the registry and the reports.

    Args:
        project: The project.
        client: An MLflow client.
        ledger: The deletion ledger.
        request: The request as stored in its batch file.
        batch_id: Its batch.
        train_ids: The training samples the batch removed, as prepare recorded them in the ledger
            (:func:`trained_ids`): a request naming none of them only needed its data deleted (no
            production model ever saw those samples).
        unscanned: The batch's retired version numbers whose model's weights no scan has searched for yet
            (:func:`run_certify` maps :func:`tasks.retired_weights.unscanned_retirements` through each retirement's
            model id): the certificate stays interim while there is one.

    Returns:
        The certificate document (see :mod:`tasks.certificate`).
    """
    batch = ledger.batch(batch_id)
    steps = ledger.steps(batch_id)
    salt = load_or_create_salt(project.salt_path)
    outcome = "complete" if set(request["sample_ids"]) & train_ids else "data_only"
    certificate: dict[str, Any] = {
        "certificate_version": 1, "request_id": request["request_id"], "subject_hash": request["subject_hash"],
        "batch_id": batch_id, "status": outcome if batch["status"] == Ledger.COMPLETED else batch["status"],
        "issued_at": utc_now(),
        "request": {"reason": request["reason"], "n_samples": len(request["sample_ids"]),
                    "forget_class": request.get("forget_class"),
                    "sample_ids_digest": hash_ids(request["sample_ids"], salt)},
        "timeline": [{"step": "received", "at": request["received_at"]}]
        + [{"step": s, "at": steps.get(s)} for s in STEPS[1:-1]],
        "data": {"version_after": None, "redacted_versions": batch.get("purge", {}).get("versions_redacted", [])},
        "purge": batch.get("purge", {}),
        "retirement": {"versions": [{"version": v, **{k: e.get(k) for k in ("reason", "retired_at", "due_at")},
                                     **{k: e[k] for k in ("model_id",) if e.get(k)},
                                     "artifacts_deleted": e.get("action") == "retired",
                                     "weights_searched": e.get("weights_searched")}
                                    for v, e in sorted(batch.get("retirement", {}).items())],
                       "references_retired": len(batch.get("references_retired", []))},
    }
    certificate["timeline"][1]["at"] = steps.get("validated") or batch["created_at"]
    # The data versions every batch has, promoted or not: the store it was removed from, and the store after.
    closing = next((note for note in reversed(batch.get("history", [])) if note.get("data_version")), {})
    certificate["data"].update({"version_before": batch.get("data_version_before"),
                                "version_after": closing.get("data_version")})
    if closing.get("outcome") == "model_withdrawn":
        certificate["model"] = {"withdrawn": True, "version": None, "withdrawn_version": closing.get("model_version"),
                                "reason": closing.get("reason"), "attempts": []}
    promoted = _promoted_version(batch)
    mv = None
    if promoted is not None:
        version, note = promoted
        mv = tracking.registered_promotion(project, client, version, note.get("run_id"), batch_id)
    if promoted is not None and mv is None:
        run_id = note.get("run_id")
        # Said, not taken from whatever version now has the number: the project moved to another registry (or the
        # version was deleted outside the pipeline). The verification report is local and keyed by the run.
        certificate["model"] = {"version": version, "run_id": run_id, "parent_version": None,
                                "method": note.get("method"), "attempts": [], "registry_record": "missing",
                                "statement": (
                                    f"the batch was promoted to version {version} (attempt run "
                                    f"{run_id or 'not recorded'}), which the current registry does not hold as "
                                    f"version {version} (the project moved to another registry, or the version was "
                                    "deleted outside the pipeline): its lineage and escalation ladder are not shown")}
        report, problem = _attempt_report(project, run_id)
        if report:
            certificate["model"]["method"] = report.get("method")
            certificate["verification"] = {**evidence_summary(report), "exact_retrain": report.get("exact_retrain"),
                                           "escalation_reason": ""}
        elif note.get("verdict"):  # the ledger's note keeps the verdict; its evidence is gone
            certificate["verification"] = {
                "verdict": note["verdict"], "evidence": note.get("evidence"), "evidence_unavailable": problem,
                "statement": f"the ledger records the verdict {note['verdict']!r} (evidence "
                             f"{note.get('evidence')!r}); the verification report behind it is {problem} "
                             f"({f'data/reports/attempts/{run_id}.json' if run_id else 'its run is not recorded'}), "
                             "so its details are not shown",
                "escalation_reason": ""}
    elif mv is not None:
        version = str(mv.version)
        tags = mv.tags
        # The store the batch was removed from (recorded by prepare) beats the champion's training data version:
        # the two differ after a data-only batch.
        certificate["data"].update({"version_before": ledger.data_version_before(batch_id)
                                    or tags.get("data_version_before"),
                                    "version_after": tags.get("data_version_after")})
        attempts = []
        for item in tags.get("ladder", "").split(","):
            if ":" in item:
                method, verdict = item.split(":", 1)
                attempts.append({"method": method, "verdict": verdict})
        certificate["model"] = {"version": version, "parent_version": tags.get("parent_version"),
                                "method": tags.get("method"), "attempts": attempts, "run_id": tags.get("run_id")}
        report, problem = _attempt_report(project, tags.get("run_id"))
        if report:
            certificate["verification"] = {**evidence_summary(report), "exact_retrain": report.get("exact_retrain"),
                                           "escalation_reason": tags.get("escalation_reason", "")}
        elif tags.get("run_id"):  # said, not left out: the verdict is in the version's tags, its evidence is gone
            certificate["verification"] = {
                "verdict": tags.get("verdict"), "evidence": tags.get("evidence"), "evidence_unavailable": problem,
                "statement": f"the registered version's tags record the verdict {tags.get('verdict')!r} (evidence "
                             f"{tags.get('evidence')!r}); the verification report behind it is {problem} "
                             f"(data/reports/attempts/{tags.get('run_id')}.json), so its details are not shown",
                "escalation_reason": tags.get("escalation_reason", "")}
    if outcome == "data_only" and certificate.get("verification"):
        certificate["verification"] = not_applicable(certificate["verification"].get("verdict"))
    verification = certificate.get("verification") or {}
    for entry in certificate["timeline"]:  # "verified" is the step, not the verdict: say which it was
        if entry["step"] == "verified" and entry["at"] and verification.get("verdict"):
            entry.update(verdict=verification["verdict"], evidence=verification.get("evidence"))
    versions = certificate["retirement"]["versions"]
    kept = [str(v["version"]) for v in versions if not v["artifacts_deleted"]]
    unsearched = [str(v["version"]) for v in versions if v["artifacts_deleted"] and str(v["version"]) in unscanned]
    if certificate["status"] == "complete" and (kept or unsearched):
        # Interim, not complete: a model version that trained on these samples is kept loadable (rollback) until its
        # retirement falls due (lifecycle.retirement_grace_hours), or was retired but the project not yet searched
        # for its weights. The final certificate, issued once both are done, says complete (review of 2026-12-07:
        # the first certificate read "complete" while those weights were live).
        certificate["status"] = AWAITING_RETIREMENT
        after = ("no model replaced them (the model was withdrawn)" if certificate.get("model", {}).get("withdrawn")
                 else "the promoted model is the one described here")
        parts = []
        if kept:
            parts.append(f"model version(s) {', '.join(kept)} trained on these samples and are scheduled for "
                         "retirement, kept for rollback until it is due (see 'Due at')")
        if unsearched:
            parts.append(f"model version(s) {', '.join(unsearched)} trained on these samples and were retired, but "
                         "the project has not yet been searched for copies of their weights")
        certificate["retirement"]["statement"] = (
            f"interim certificate: {'; '.join(parts)}. The data is deleted and {after}. A final certificate is "
            "issued once they are retired and the project has been searched for their weights")
    return certificate


def not_applicable(batch_verdict: str | None) -> dict[str, Any]:
    """A data-only request's verification (certificate and status): none of its samples was in the forget set its
    batch's verification scored (training samples of other requests), so quoting that evidence would claim a test it
    never had; the batch's verdict is kept apart."""
    return {"verdict": None, "evidence": NOT_APPLICABLE, "batch_verdict": batch_verdict,
            "statement": ("not applicable: no production model trained on this request's samples (they are test or "
                          "reference-pool samples), so removing them from the data is the whole deletion and no model "
                          "test concerns them; the batch's model was verified on the training samples of the other "
                          "requests in its batch")}


def _attempt_report(project: Project, run_id: str | None) -> tuple[dict[str, Any] | None, str]:
    """The verification report of unlearning run ``run_id`` and, when it cannot be used, why (missing,
    unreadable, another run's): a certificate or a status never quotes another run's evidence, and a damaged file
    holds up no one."""
    from tasks.stage.state import run_report

    return run_report(project, f"{run_id}.json" if run_id else None, run_id)


def _evidence_plots(project: Project, certificate: dict[str, Any], run_id: str | None) -> dict[str, Path]:
    """The plots of the attempt that produced the certified model (none for a data-only request)."""
    if certificate.get("status") == "data_only" or not run_id:
        return {}
    folder = project.reports_dir / "attempts" / f"{run_id}-plots"
    return {"ROC of the membership-inference attacks (log-log)": folder / "roc.png",
            "Loss histograms: forget, retain, test": folder / "loss_histograms.png"}


def trained_ids(project: Project, ledger: Ledger, batch_id: str) -> set[str]:
    """The samples of a batch that production models trained on: what decides "complete" vs "data_only".

    Prepare records them when it removes the batch from the store, under the split guard that keeps the
    store's splits the ones the registered models saw. Ledgers written before that record existed fall back
    to the split today's settings give, reference pool excluded (pool samples never reach a production model).
    """
    recorded = ledger.train_sample_ids(batch_id)
    if recorded is not None:
        return recorded
    params = project.params
    source = load_source(params.data)
    splits = split_labels(source, params.verify.references.pool_fraction, params.seed)
    return set(source.ids[splits == "train"].tolist()) & set(ledger.batch(batch_id)["sample_ids"])


def run_certify(project: Project) -> dict[str, Any]:
    """Write a certificate for every request of every closed batch that has none yet.

    Returns:
        The certificates written (request count) and where.
    """
    from tasks.certificate import write_certificate

    ledger = Ledger(project.ledger_path)
    written = []
    # Retired versions whose weights the project was not yet searched for (a retirement that fell due after the
    # purge, its scan refused for a stray copy or cut off): their batches' certificates are not final yet (review
    # of 2026-12-07: a final "complete" certificate could be issued while a copy was known to exist).
    unscanned_keys = frozenset(unscanned_retirements(project))
    keys = fingerprint_keys(project)

    def unscanned_of(batch_id: str) -> frozenset[str]:
        """The batch's retired version numbers whose model's weights no scan has searched for yet."""
        retirement = ledger.batch(batch_id).get("retirement", {})
        return frozenset(v for v, e in retirement.items() if entry_key(v, e, keys) in unscanned_keys)

    def final(batch_id: str) -> bool:
        return "retired" in ledger.steps(batch_id) and not unscanned_of(batch_id)

    def due(batch_id: str) -> bool:
        # Issued once the batch is purged; issued again when a retirement that was waiting for its grace period has
        # happened (and been searched for), so the final certificate carries the retirement evidence; and issued
        # again, interim, when one marked final no longer is (a release before the search was required issued it
        # "complete" with a retired version's weights unsearched).
        steps = ledger.steps(batch_id)
        if "purged" not in steps:
            return False
        return "certified" not in steps or bool(ledger.batch(batch_id).get("certificate_final")) != final(batch_id)

    batches = [b for b in ledger.batches_with_status(Ledger.COMPLETED) if due(b)]
    if batches:  # the registry and the data source are opened only when there is something to certify
        client = tracking.setup(project)
    for batch_id in batches:
        # The anchor: the audit log's head when the certificate is issued (verified once, then followed).
        head = audit.head(project)
        if not head.pop("chain_ok"):
            raise PipelineError("the audit log is broken (`unlearn audit verify` names the line); "
                                "no certificate is anchored to it until it is repaired")
        anchor = head
        trained = trained_ids(project, ledger, batch_id)
        for request in _batch_file(project, batch_id)["requests"]:
            certificate = build_certificate(project, client, ledger, request, batch_id, trained, unscanned_of(batch_id))
            certificate["timeline"].append({"step": "certified", "at": utc_now(precise=True)})
            certificate["audit"] = anchor
            plots = _evidence_plots(project, certificate, certificate.get("model", {}).get("run_id"))
            json_path, _ = write_certificate(certificate, plots, project.certificates_dir)
            written.append(json_path.name)
            # The digest goes into the chained log: the doctor accepts a certificate file only if the log
            # recorded issuing exactly that document (a planted or swapped certificate has no such record).
            issued = audit.record(project, "certificate.issued", request_id=request["request_id"],
                                  batch_id=batch_id, subject_hash=request["subject_hash"],
                                  status=certificate["status"],
                                  certificate_digest=json.loads(json_path.read_text())["digest"])
            anchor = {"head_seq": issued["seq"], "head_hash": issued["hash"]}
        ledger.mark_step([batch_id], "certified")
        ledger.set_certificate_final(batch_id, final(batch_id))
        ledger.save()
    log.info("certify: %d certificate(s) written", len(written))
    return write_state(project, "certify", {"certificates": len(written), "dir": str(project.certificates_dir)})


def certificate_paths(project: Project, request_id: str) -> tuple[Path, Path] | None:
    """The JSON and HTML certificate of a request, if issued."""
    for path in sorted(project.certificates_dir.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("request_id") == request_id:
                return path, path.with_suffix(".html")
        except json.JSONDecodeError:
            continue
    return None


def _verification_status(project: Project, ledger: Ledger, batch_id: str) -> dict[str, Any]:
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
    run_id = next((n.get("run_id") for n in reversed(history) if n.get("run_id")), None)
    report, problem = _attempt_report(project, run_id)
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
    rejections = []
    for path in sorted(project.rejected_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("request_id") == request_id:
                rejections.append({"ingest": path.stem, "reasons": row.get("reasons")})
    if found is not None:
        # The content digest is the ledger's key for spotting a resent request, not status: an unsalted hash of
        # the sample ids, which anyone can reverse for a small request by hashing candidate ids (review of
        # 2026-12-06), so it is never printed.
        out = {k: v for k, v in found.items() if k != "content_digest"}
        if isinstance(out.get("acknowledged"), dict):
            out["acknowledged"] = {k: v for k, v in out["acknowledged"].items() if k != "content_digest"}
        batch_id = found.get("batch_id")
        if found.get("kind") == "accepted" and batch_id in ledger.batches:
            out["status"] = ledger.batch(batch_id)["status"]
            out["steps"] = ledger.steps(batch_id)
            out.update(_verification_status(project, ledger, batch_id))
            if out.get("verification") and ledger.train_sample_ids(batch_id) is not None:
                try:
                    mine = next(r["sample_ids"] for r in _batch_file(project, batch_id)["requests"]
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
        if rejections:  # e.g. the same id sent again with other content (request_id_conflict)
            out["later_rejections"] = rejections
        return out
    if rejections:
        return {"kind": "rejected", "request_id": request_id, **rejections[-1], "rejections": rejections}
    raise PipelineError(f"unknown request id {request_id!r}: not in the ledger, the acknowledgements or the "
                        "rejection log (requests still in data/requests/incoming are not ingested yet)")
