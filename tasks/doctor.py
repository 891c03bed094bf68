"""`unlearn doctor`: does every claim the project makes agree with what is on disk?

The pipeline's evidence lives in four places that are written in separate steps: the deletion
ledger, the hash-chained audit log, the certificates, and the MLflow registry's tags. A crash, an
operator's hand or an attacker can make them disagree. This module re-derives each claim from the
disk and names every disagreement; it changes nothing.

Checks:

* ``audit``: the chain verifies (with the HMAC key in keyed mode); the log is not missing or
  empty while the ledger holds batches; every certificate's quoted anchor is in the chain; every
  accepted request has its ``request.accepted`` record; the champion alias's promotion or consolidation,
  and every data-only or withdrawn batch, has its record (a crash between a change and its record).
* ``references``: every reference model a batch's deletion retired is counted in its ledger entry.
* ``certificates``: each certificate's digest matches its content; each request of a certified
  batch has one; each file is the document whose digest the audit log's ``certificate.issued``
  record names (a certificate the pipeline never issued, or a swapped one, is a finding).
* ``registry``: the champion exists, is not retired and still has its weights; every version tagged
  ``artifacts_deleted=true`` has no artifact file left; no version is a tombstone without that tag;
  every certificate that says a version's artifacts were deleted is backed by the registry.
* ``weights``: no retired version's weight fingerprints occur anywhere under the project.
* ``samples`` (``deep=True`` only, it reads the upstream source): no purged sample's bytes occur
  anywhere under the project.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import model_files, tracking
from tasks.audit import audit_key
from tasks.project import PipelineError, Project, open_quarantines

log = logging.getLogger("unlearn.pipeline")


@dataclass(frozen=True)
class Finding:
    """One disagreement between a claim and the disk.

    Attributes:
        check: The check that found it (audit, certificates, registry, lineage, weights, samples).
        subject: What it is about (a version, a certificate file, a batch id; never a sample id).
        problem: What disagrees, in words.
    """

    check: str
    subject: str
    problem: str


def certificate_anchors(project: Project) -> tuple[list[Any], list[Finding]]:
    """The ``(seq, hash)`` anchors quoted by every certificate, and findings for unreadable ones."""
    from tasks.certificate import html_matches, verify_certificate_digest
    from unlearn.audit import Anchor

    anchors, findings = [], []
    for path in sorted(project.certificates_dir.glob("*.json")) if project.certificates_dir.exists() else []:
        if not verify_certificate_digest(path):
            findings.append(Finding("certificates", path.name, "digest does not match the content (edited?)"))
            continue
        if not html_matches(path):
            findings.append(Finding("certificates", path.with_suffix(".html").name,
                                    f"missing, or not the page of {path.name} (its digest is not in it: a write cut "
                                    "off or an edit; `unlearn request certificate` renders it again from the JSON)"))
        audit = json.loads(path.read_text()).get("audit") or {}
        if isinstance(audit.get("head_seq"), int) and isinstance(audit.get("head_hash"), str):
            anchors.append(Anchor(path.name, audit["head_seq"], audit["head_hash"]))
        else:
            findings.append(Finding("certificates", path.name, "quotes no audit anchor"))
    return anchors, findings


def verify_audit(project: Project) -> tuple[Any, list[Finding]]:
    """The audit log checked against the ledger and the certificates (what ``unlearn audit verify`` runs).

    Returns:
        The :class:`unlearn.audit.AuditReport` and the certificate findings met on the way.
    """
    from unlearn.audit import AuditLog
    from unlearn.requests import Ledger

    ledger = Ledger(project.ledger_path)
    anchors, findings = certificate_anchors(project)
    log = AuditLog(project.audit_path, key=audit_key(project))
    # Work exists (the ledger holds batches), so a missing or empty log is not an intact one; the doctor
    # checks, request by request, that each accepted request was recorded.
    return log.verify(min_records=1 if ledger.oldest_first() else 0, anchors=anchors), findings


def _audit_findings(project: Project) -> list[Finding]:
    from unlearn.audit import AuditLog
    from unlearn.requests import Ledger

    report, findings = verify_audit(project)
    findings += [Finding("audit", project.audit_path.name, problem) for problem in report.problems]
    if report.ok:
        findings += _unrecorded_certificates(project, AuditLog(project.audit_path).records("certificate.issued"))
        recorded = {(r.get("request_id"), r.get("batch_id"))
                    for r in AuditLog(project.audit_path).records("request.accepted")}
        ledger = Ledger(project.ledger_path)
        for batch_id in ledger.oldest_first():
            missing = [r for r in ledger.batch(batch_id)["request_ids"] if (r, batch_id) not in recorded]
            if missing:
                findings.append(Finding("audit", batch_id, f"{len(missing)} accepted request(s) have no "
                                                           "request.accepted record"))
    return findings


def _unrecorded_certificates(project: Project, issued: list[dict[str, Any]]) -> list[Finding]:
    """Certificate files the audit log does not vouch for.

    Each ``certificate.issued`` record names the certificate's digest; the newest record of a request
    must name the digest of the file on disk. A certificate for a request the log never certified, or
    one swapped for another document with a valid digest of its own, is a finding. (Records written
    before digests were recorded vouch only for the request having been certified.)
    """
    newest: dict[str, dict[str, Any]] = {}
    for record in issued:
        newest[str(record.get("request_id"))] = record
    findings = []
    for path in sorted(project.certificates_dir.glob("*.json")) if project.certificates_dir.exists() else []:
        try:
            document = json.loads(path.read_text())
            request_id, digest = str(document["request_id"]), document["digest"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable or digest-less: reported by the certificate check
        record = newest.get(request_id)
        if record is None:
            findings.append(Finding("certificates", path.name, "the audit log records no certificate.issued for "
                                                               "this request: not issued by this pipeline"))
        elif "certificate_digest" in record and record["certificate_digest"] != digest:
            findings.append(Finding("certificates", path.name, "not the document the audit log recorded when it was "
                                                               "issued (its digest differs)"))
    return findings


def _files_left(project: Project, client: Any, mv: Any) -> tuple[int | None, str | None]:
    """(files listed at the version's artifact locations, or None) and why it could not be counted."""
    locations = model_files.model_artifact_locations(client, mv)
    if not locations:
        return None, "its artifact location cannot be determined"
    # a version registered by hand from a path is loaded from that path wherever it is (retirement checks it so)
    root = project.artifact_root if tracking.version_model_id(mv) else None
    try:
        return sum(model_files.artifacts_remaining(loc, root) for loc in locations), None
    except PipelineError as exc:
        return None, str(exc)


_OTHER = "another model"  # a scheduled entry written before entries named their model, not this version's


def _scheduled_model(entry: dict[str, Any], mv: Any | None) -> str:
    """The logged model a ledger entry scheduled for retirement: the one it names, else (an entry written before
    entries named it) this registry's version's when the entry's due time is the one tagged on the version (set once,
    when it was scheduled), else :data:`_OTHER`; "" when the registry holds no such number."""
    if tracking.entry_model_id(entry) or mv is None:
        return tracking.entry_model_id(entry)
    if entry.get("due_at") and mv.tags.get("retire_due_at") not in (None, entry["due_at"]):
        return _OTHER
    return tracking.version_model_id(mv) or ""


def _registry_findings(project: Project, client: Any, searched: set[str]) -> list[Finding]:
    from tasks.deregistered import DEREGISTERED, entry_is_version, recorded_files, registry_identity
    from tasks.lifecycle import uncovered_deletions
    from unlearn.requests import Ledger

    findings = []
    ledger = Ledger(project.ledger_path)
    versions = {str(mv.version): mv for mv in tracking.all_versions(project, client)}
    champion = tracking.champion_version(project, client)
    if champion is not None:
        name = f"version {champion.version}"
        uncovered = uncovered_deletions(ledger, champion)
        if uncovered:
            findings.append(Finding("lineage", name, f"the champion was trained on samples that {len(uncovered)} "
                                    "completed deletion batch(es) removed and does not cover them (the alias was "
                                    "moved back?); it serves them until the next request's exact retrain, or "
                                    "until the alias moves to a version that covers them"))
        left, why = _files_left(project, client, champion)
        if champion.tags.get("retired") == "true":
            findings.append(Finding("registry", name, "the champion alias points at a retired version"))
        elif not left:
            detail = f" ({why})" if why else ""
            findings.append(Finding("registry", name, f"the champion has no model artifacts on disk{detail}"))
    for version, mv in sorted(versions.items(), key=lambda kv: int(kv[0])):
        tags, name = mv.tags, f"version {version}"
        if tags.get("retired") == "true" and tags.get("artifacts_deleted") != "true":
            findings.append(Finding("registry", name, "retired tombstone without verified artifact deletion"))
        if tags.get("retired") != "true":
            _, why = _files_left(project, client, mv)
            if why:  # its weights could never be shown deleted (a moved project, an unreachable store)
                findings.append(Finding("registry", name, f"artifacts cannot be checked: {why}"))
        if tags.get("artifacts_deleted") == "true":
            left, why = _files_left(project, client, mv)
            if why:
                findings.append(Finding("registry", name, f"tagged artifacts_deleted but unverifiable: {why}"))
            elif left:
                findings.append(Finding("registry", name, f"tagged artifacts_deleted but {left} artifact "
                                                          "file(s) remain"))
            if version not in searched:
                findings.append(Finding("weights", name, "no fingerprint of its weights can be searched for (none was "
                                                         "taken before deletion, its weights being unreadable or "
                                                         "without a run of bytes apart from the live versions'; or "
                                                         "each one taken is also in a live version's weights): "
                                                         "copies elsewhere on disk cannot be found"))
    # (version, model id or "") -> batches whose ledger entry still says "scheduled"
    scheduled: dict[tuple[str, str], list[str]] = {}
    gone_held: dict[tuple[str, str], str] = {}  # the same key -> why a version removed from the registry is held
    gone_closed: dict[tuple[str, str], list[str]] = {}  # the same key -> where one closed when shown gone had files
    held: dict[str, str] = {}  # version -> the reason its due retirement is held (files it may not delete)

    @functools.cache
    def identity() -> str:
        return registry_identity(client.get_registered_model(tracking.model_name(project)))

    for batch_id in ledger.oldest_first():
        for version, entry in ledger.batch(batch_id).get("retirement", {}).items():
            if entry.get("action") == "retired" and entry.get("deregistered") is True:
                # every closed entry under the number: each one's files must still be gone
                gone_closed.setdefault((version, tracking.entry_model_id(entry)), []).extend(recorded_files(entry))
            if entry.get("action") == "scheduled":
                key = (version, _scheduled_model(entry, versions.get(version)))
                scheduled.setdefault(key, []).append(batch_id)
                if str(entry.get("held", "")).startswith(DEREGISTERED):
                    gone_held[key] = str(entry["held"])
                # about this registry's version of the number, not another model's (a recreated registered model's)
                if entry.get("held") and version in versions and entry_is_version(entry, versions[version], identity):
                    held[version] = str(entry["held"])
    aliases = {str(v): a for a, v in client.get_registered_model(tracking.model_name(project)).aliases.items()} \
        if held else {}
    for version, reason in sorted(held.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1):
        mv = versions.get(version)
        if mv is None or mv.tags.get("retired") == "true":
            continue
        if version in aliases:  # an alias moved to it since (review of 2026-12-07: "remove its files" was the advice)
            findings.append(Finding("registry", f"version {version}", f"serves as {aliases[version]}, though it was "
                                    "due for retirement and held (the alias was moved to it by hand?): it trained on "
                                    "deleted samples, or has no lineage to show it did not; the certificates of the "
                                    "batches that scheduled it stay interim until the alias moves to a version that "
                                    "covers them and this one retires"))
        else:
            findings.append(Finding("registry", f"version {version}", "due for retirement, but the pipeline does not "
                                    f"delete its files ({reason}); the certificates of the batches that scheduled "
                                    "it stay interim until it is retired"))

    def order(key: tuple[str, str]) -> tuple[int, str]:
        return int(key[0]) if key[0].isdigit() else -1, key[1]

    for (version, model_id), batch_ids in sorted(scheduled.items(), key=lambda kv: order(kv[0])):
        mv = versions.get(version)
        # Entries the purge cannot close (tasks.deregistered): their certificates stay interim, said.
        if (version, model_id) in gone_held:  # said by the purge, which looked for its files
            findings.append(Finding("registry", f"version {version}", f"scheduled for retirement by "
                                    f"{', '.join(batch_ids)}, but {gone_held[version, model_id]}; those batches' "
                                    "certificates stay interim"))
        elif mv is not None and model_id and tracking.version_model_id(mv) not in (None, model_id):
            # The number is another model's now (versions start from 1 again in another registry).
            known = f" as logged model {model_id}" if model_id != _OTHER else ""
            findings.append(Finding("registry", f"version {version}", "scheduled for retirement by "
                                    f"{', '.join(batch_ids)}{known}, but this registry's version "
                                    f"{version} is another model (the project moved to another registry?): the "
                                    "scheduled one's artifacts cannot be shown deleted, and those batches' "
                                    "certificates stay interim"))
        elif mv is None:
            findings.append(Finding("registry", f"version {version}", "scheduled for retirement by "
                                    f"{', '.join(batch_ids)} but not in the registry (deleted outside the pipeline, "
                                    "or the project moved to another registry): its artifacts cannot be shown "
                                    "deleted, and those batches' certificates stay interim"))
        elif mv.tags.get("retired") == "true":
            findings.append(Finding("registry", f"version {version}", "retired, but the ledger entry of "
                                    f"{', '.join(batch_ids)} still says scheduled (its retired_batches tag does not "
                                    "name them): those batches' certificates stay interim"))
    if project.certificates_dir.exists():
        for path in sorted(project.certificates_dir.glob("*.json")):
            try:
                retired = json.loads(path.read_text()).get("retirement", {}).get("versions", [])
            except (ValueError, AttributeError):
                continue  # reported by the certificate check
            for entry in retired if isinstance(retired, list) else []:
                if not isinstance(entry, dict) or entry.get("artifacts_deleted") is not True:
                    continue
                mv = versions.get(str(entry.get("version")))
                model_id = tracking.entry_model_id(entry)
                if entry.get("deregistered") is True and (str(entry.get("version")), model_id) in gone_closed:
                    # removed from the registry by hand, closed when the purge showed its files gone: checked again,
                    # whatever version has the number now (a recreated registered model's: seventh review)
                    files = gone_closed[str(entry.get("version")), model_id]
                    if not files or not model_files.files_gone(files):
                        findings.append(Finding("registry", path.name, f"says version {entry.get('version')}'s "
                                                "artifacts are gone (removed from the registry by hand); files are "
                                                f"there again, or their places were not recorded: {', '.join(files)}"))
                elif mv is not None and model_id and tracking.version_model_id(mv) not in (None, model_id):
                    findings.append(Finding("registry", path.name, f"says version {entry.get('version')}'s artifacts "
                                            f"(logged model {model_id}) were deleted; this registry's version "
                                            f"{entry.get('version')} is another model (the project moved to another "
                                            "registry?), so the claim cannot be checked here"))
                elif mv is None or mv.tags.get("artifacts_deleted") != "true":
                    findings.append(Finding("registry", path.name, f"says version {entry.get('version')}'s "
                                                                   "artifacts were deleted; the registry does not"))
    return findings


def _scan_findings(project: Project, check: str, patterns: dict[str, bytes], what: str,
                   exclude: list[Path] | None = None) -> list[Finding]:
    from tasks.purge import scan_project_for_samples

    if not patterns:
        return []
    scan = scan_project_for_samples(project, patterns, exclude=exclude or [])
    places = sorted({path for path, _ in scan.matches})
    findings = [Finding(check, place, f"{what} found in this file") for place in places]
    findings += [Finding(check, place, "could not be read: the scan proves nothing about it") for place in scan.errors]
    findings += [Finding(check, place, "a symbolic link to a folder, not followed: the scan proves nothing about what "
                                       "it points to (scan that folder, or replace the link by the folder)")
                 for place in scan.unfollowed]
    return findings


def diagnose(project: Project, *, deep: bool = False, not_scanned: dict[str, int] | None = None) -> list[Finding]:
    """Run every check on a live project (read-only) and return each disagreement found.

    Args:
        project: The project.
        deep: Also scan the project for the bytes of every purged sample (reads the upstream source).
        not_scanned: Filled, when given, with what the deep scan left out by design (not disagreements, but
            limits of what a clean result claims): ``open_quarantines`` (files of batches not yet purged) and
            ``purged_samples_without_bytes`` (purged samples the upstream source no longer has).

    Returns:
        The findings; empty when every claim agrees with the disk.
    """
    from tasks.certificate import certificate_stem
    from tasks.project import check_registry
    from unlearn.requests import Ledger

    try:
        check_registry(project)
    except PipelineError as exc:  # the other store's claims would be checked against this project's disk
        return [Finding("registry", project.registry_identity, str(exc))]
    findings = _audit_findings(project)
    ledger = Ledger(project.ledger_path)
    for batch_id in ledger.oldest_first():
        if "certified" in ledger.steps(batch_id):
            for request_id in ledger.batch(batch_id)["request_ids"]:
                if not (project.certificates_dir / f"{certificate_stem(request_id)}.json").exists():
                    findings.append(Finding("certificates", batch_id, "a request of this certified batch has no "
                                                                      "certificate file"))
    client = tracking.reader(project) if tracking.has_registry(project) else None  # never create one to look
    findings += _unrecorded_changes(project, ledger, client)
    from tasks.retired_weights import retired_weight_patterns

    weights = retired_weight_patterns(project, client)  # loads the live versions once, for both checks
    if client is not None:
        findings += _registry_findings(project, client, weights.searched)
    elif any(note.get("outcome") not in (None, "data_only") for b in ledger.oldest_first()
             for note in ledger.batch(b)["history"]):
        findings.append(Finding("registry", str(project.tracking_uri).split("?")[0][-60:],
                                "the ledger records model outcomes but there is no registry to check them against"))
    findings += _scan_findings(project, "weights", weights.patterns, "retired model weights")
    if deep:
        # Unpurged batches' quarantines hold samples awaiting their own deletion, by design: left out, as purge
        # leaves them out, and said (the doctor claims nothing about them).
        exclude = open_quarantines(project, ledger)
        limits = not_scanned if not_scanned is not None else {}
        limits["open_quarantines"] = len(exclude)
        findings += _scan_findings(project, "samples", purged_sample_patterns(project, limits),
                                   "a purged sample's bytes", exclude)
        if not_scanned is None:  # a caller that takes the counts says them itself (`unlearn doctor`: once, not twice)
            if exclude:
                log.warning("doctor --deep: %d quarantine file(s) of batches not yet purged were not scanned (they "
                            "hold their own forget samples until their purge)", len(exclude))
            if limits.get("purged_samples_without_bytes"):
                log.warning("doctor --deep: %d purged sample(s) could not be searched for (the upstream source no "
                            "longer has them)", limits["purged_samples_without_bytes"])
    return findings


def _unrecorded_changes(project: Project, ledger: Any, client: Any) -> list[Finding]:
    """Changes the ledger, the registry or the reference bank show that their records never caught up with.

    Each change is made first and recorded next: a crash in between left the champion moved with no
    ``model.promoted``/``model.consolidated`` record, a batch completed (data-only, withdrawn) with no record
    naming it, or references retired that the batch's ledger entry (and so its certificate) does not count.
    The next pipeline run writes the missing records; until then each is a finding.
    """
    from tasks import audit
    from tasks.stage.escalation import lost_completions, lost_verdicts
    from tasks.stage.state import attempt_report, read_escalation
    from unlearn.references import ReferenceBank

    findings = [Finding("audit", batch_id, f"completed as {ledger.last_note(batch_id).get('outcome')}, but the audit "
                                           f"log has no {event} record naming it")
                for batch_id, event in lost_completions(project, ledger).items()]
    if client is not None:  # every version that held the champion alias, not only the current one
        from tasks.consolidate import served_versions

        versions = tracking.all_versions(project, client)
        served = served_versions(versions, tracking.champion_version(project, client))
        events = {"unlearned": "model.promoted", "consolidated": "model.consolidated"}
        recorded = {event: audit.records(project, event) for event in events.values()}  # read once per event
        for mv in versions:
            event = events.get(mv.tags.get("role", ""))
            # matched on the model or run a record names, not the number alone (another registry's version N)
            if event and str(mv.version) in served and not any(tracking.record_names_version(r, mv)
                                                               for r in recorded[event]):
                findings.append(Finding("audit", f"version {mv.version}", f"it held the champion alias, but the audit "
                                                                          f"log has no {event} record for it"))

    try:
        escalation = read_escalation(project)
    except (PipelineError, ValueError, TypeError):  # no escalation yet (an unreadable one is the next run's error)
        escalation = None
    for number, attempt in lost_verdicts(project, escalation) if escalation is not None else []:
        findings.append(Finding("audit", f"attempt {number} ({attempt.method})", "verified, but the audit log has no "
                                                                                 "attempt.verified record for it"))
    # Who reads an attempt's report: while its batches are pending, promotion and the unlearn stage's resume (every
    # rung); afterwards, every (re-)issue of a certificate, from the promoted attempt's report only.
    live = escalation is not None and bool(set(escalation.batches) & set(ledger.pending()))
    promoted = escalation.promoted_attempt() if escalation is not None and escalation.attempts else None
    for number, attempt in enumerate(escalation.attempts if escalation is not None else [], start=1):
        if not attempt.verified() or not (live or attempt is promoted):
            continue
        report, problem = attempt_report(project, attempt)
        if report is not None:
            continue
        then = ("the unlearn stage drops it (and the rungs after it) and redoes it at its next run (`unlearn run`; "
                "under DVC only when forced: `dvc repro --force --single-item unlearn`), and promotion refuses it "
                "if it is the chosen attempt" if live else
                "a certificate issued or re-issued from it says its evidence is unavailable")
        findings.append(Finding("reports", f"attempt {number} ({attempt.method})",
                                f"its verdict ({attempt.verdict}) has a report that is {problem} "
                                f"(data/reports/attempts/{attempt.report}): {then}"))
    try:
        bank = ReferenceBank(project.references_dir)
    except ValueError as exc:
        return [*findings, Finding("references", "index.json", str(exc))]
    for batch_id in ledger.oldest_first():
        counted = set(ledger.batch(batch_id).get("references_retired", []))
        missing = [r for r in bank.retired_by([batch_id]) if r not in counted]
        if missing:
            findings.append(Finding("references", batch_id, f"{len(missing)} reference model(s) this batch's deletion "
                                                            "retired are missing from its ledger entry (its "
                                                            "certificates undercount them)"))
    return findings


def purged_sample_patterns(project: Project, limits: dict[str, int] | None = None) -> dict[str, bytes]:
    """Byte patterns of every sample deleted by a purged batch (the deep check's search); ``limits`` gets
    ``purged_samples_without_bytes``."""
    from tasks.lifecycle import deleted_arrays
    from unlearn.data import SampleStore
    from unlearn.forensics import sample_patterns
    from unlearn.requests import Ledger

    ledger = Ledger(project.ledger_path)
    purged = [b for b in ledger.oldest_first() if "purged" in ledger.steps(b)]
    ids = sorted({s for b in purged for s in ledger.batch(b)["sample_ids"]})
    if not ids:
        if limits is not None:
            limits["purged_samples_without_bytes"] = 0
        return {}
    deleted = deleted_arrays(project, ids)  # the quarantines are gone after a purge: the upstream source's bytes
    missing = len(ids) - len(set(deleted.ids.tolist()))
    if limits is not None:
        limits["purged_samples_without_bytes"] = missing
    if missing and limits is None:  # said, not silently dropped: a clean deep check claims nothing about these
        log.warning("doctor --deep: %d of %d purged sample(s) could not be searched for (the upstream source no longer "
                    "has them)", missing, len(ids))
    patterns, _ = sample_patterns(deleted, SampleStore(project.store_dir).load().images)
    return patterns
