"""The ``certify`` stage: one deletion certificate per request (JSON + HTML); a request's status is told by
:mod:`tasks.request_status`.

It runs after ``purge`` (:mod:`tasks.lifecycle`), in the Prefect flow and in ``dvc repro`` alike, and is
idempotent: a certificate is issued once its batch is purged, and again when its retirement evidence changes
(interim while a version that trained on the samples is still loadable or not yet searched for).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from tasks import audit, tracking
from tasks.evidence import evidence_summary
from tasks.project import PipelineError, Project
from tasks.retired_weights import (
    entry_key,
    fingerprint_keys,
    unscanned_retirements,
)
from tasks.stage.state import write_state
from unlearn.data import load_source
from unlearn.data.store import split_labels
from unlearn.files import utc_now, write_bytes_atomic
from unlearn.requests import Ledger, hash_ids, load_or_create_salt

log = logging.getLogger("unlearn.pipeline")

AWAITING_RETIREMENT = "awaiting_retirement"  # a certificate issued while trained-on versions live
NOT_APPLICABLE = "not_applicable"  # a data-only request's evidence strength: no model trained on its samples
STEPS = ("received", "validated", "data_version", "unlearned", "verified", "promoted", "retired", "purged",
         "certified")


def batch_file(project: Project, batch_id: str) -> dict[str, Any]:
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


def redacted_versions_of(purge: dict[str, Any]) -> dict[str, Any]:
    """The data versions a batch's certificate names, from its purge record.

    ``redacted_versions``: redacted by the purge that closed the batch, their index listing one of its samples;
    ``redacted_earlier_versions``: found redacted, an earlier purge having recorded them as holding its samples;
    ``found_redacted_versions``: found redacted with no record of the samples they held (not claimed). A record
    from before versions were attributed to batches is passed on as ``redacted_or_found_redacted_versions``, a name
    that says what it may hold.
    """
    if "versions_redacted_earlier" in purge:
        return {"redacted_versions": purge["versions_redacted"],
                "redacted_earlier_versions": purge["versions_redacted_earlier"],
                "found_redacted_versions": purge.get("versions_found_redacted", [])}
    if "versions_redacted" in purge:
        return {"redacted_or_found_redacted_versions": purge["versions_redacted"]
                + purge.get("versions_found_redacted", [])}
    return {"redacted_versions": [], "redacted_earlier_versions": [], "found_redacted_versions": []}


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
        "data": {"version_after": None, **redacted_versions_of(batch.get("purge", {}))},
        "purge": batch.get("purge", {}),
        "retirement": {"versions": [{"version": v, **{k: e.get(k) for k in ("reason", "retired_at", "due_at")},
                                     **{k: e[k] for k in ("model_id", "held", "deregistered") if e.get(k)},
                                     "artifacts_deleted": e.get("action") == "retired",
                                     "weights_searched": e.get("weights_searched"),
                                     **{k: e[k] for k in ("weights_paths_not_scanned",) if e.get(k)}}
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
        report, problem = attempt_report(project, run_id)
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
        report, problem = attempt_report(project, tags.get("run_id"))
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
    kept = [str(v["version"]) for v in versions if not v["artifacts_deleted"] and not v.get("held")]
    held = [str(v["version"]) for v in versions if not v["artifacts_deleted"] and v.get("held")]
    unsearched = [str(v["version"]) for v in versions if v["artifacts_deleted"] and str(v["version"]) in unscanned]
    # Purged but not marked retired, with nothing recorded: the purge could not tell which versions trained on the
    # samples (no champion, no withdrawal), so "no versions retired" would be a guess (review of 2026-12-07).
    undetermined = (not versions and "retired" not in steps and ledger.removed_training_samples(batch_id))
    if certificate["status"] == "complete" and (kept or held or unsearched or undetermined):
        # the timeline's "retired" time is not the batch's retirement while a version it needs is still kept
        for entry in certificate["timeline"]:
            if entry["step"] == "retired" and (kept or held):
                entry["at"] = None
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
                         "retirement, kept for rollback until it is due (see 'Due at'), or while a version with "
                         "the same files is kept (see its reason)")
        if held:  # not "kept for rollback": the pipeline cannot delete these files (review of 2026-12-07)
            parts.append(f"model version(s) {', '.join(held)} are due for retirement (they trained on these "
                         "samples, or have no lineage to show they did not), but the pipeline does not delete their "
                         "files (registered by hand from a path, located nowhere, outside the project's artifact "
                         "store, served by an alias, or removed from the registry by hand with their files left; "
                         "each one's reason says which): `unlearn doctor` names them")
        if unsearched:
            parts.append(f"model version(s) {', '.join(unsearched)} trained on these samples and were retired, but "
                         "the project has not yet been searched for copies of their weights")
        if undetermined:
            parts.append("which model versions trained on these samples has not been determined yet (the registry "
                         "had no champion when the data was purged)")
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


def attempt_report(project: Project, run_id: str | None) -> tuple[dict[str, Any] | None, str]:
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
        # The retirement entries themselves, not only the step: a version scheduled after the step was marked (an
        # earlier release marked it when a registry error read as "no champion") makes the batch interim again.
        return ("retired" in ledger.steps(batch_id) and ledger.retirements_done(batch_id)
                and not unscanned_of(batch_id))

    def due(batch_id: str) -> bool:
        # Issued once the batch is purged; issued again when a retirement that was waiting for its grace period has
        # happened (and been searched for), so the final certificate carries the retirement evidence; and issued
        # again, interim, when one marked final no longer is (a release before the search was required issued it
        # "complete" with a retired version's weights unsearched).
        steps = ledger.steps(batch_id)
        if "purged" not in steps:
            return False
        batch = ledger.batch(batch_id)
        if "certified" not in steps or bool(batch.get("certificate_final")) != final(batch_id):
            return True
        # and again when what it says of the retirement changed while it stays interim (a version scheduled after
        # the champion was missing, one retired, one searched); batches certified before this was recorded: no
        if batch.get("certificate_final"):  # a final certificate is issued again only when it no longer is
            return False
        basis = batch.get("certificate_retirement")
        if basis is None:  # an interim one certified before the basis was recorded: issued again, once
            return True
        return basis != retirement_basis(batch_id)

    def retirement_basis(batch_id: str) -> list[Any]:
        entries = ledger.batch(batch_id).get("retirement", {})
        # every field of a version the certificate shows (the reason and the retirement time were left out, so a
        # certificate kept saying what the ledger no longer did)
        shown = [[v, *(e.get(k) for k in ("action", "weights_searched", "model_id", "due_at", "reason", "retired_at",
                                          "weights_paths_not_scanned", "held"))]
                 for v, e in sorted(entries.items())]
        return [*shown, sorted(unscanned_of(batch_id)), "retired" in ledger.steps(batch_id)]

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
        for request in batch_file(project, batch_id)["requests"]:
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
        ledger.batch(batch_id)["certificate_retirement"] = retirement_basis(batch_id)
        ledger.save()
    log.info("certify: %d certificate(s) written", len(written))
    return write_state(project, "certify", {"certificates": len(written), "dir": str(project.certificates_dir)})


def render_page_again(project: Project, json_path: Path) -> bool:
    """Write a certificate's HTML page again from its JSON, when the page is not that document's.

    The page and the JSON are replaced one after the other; a page edited, damaged or restored from another day is
    never issued again by ``certify`` (the batch is not due), so ``request certificate`` renders it here, from the
    JSON whose digest checks, with the plots of the run it names. Returns False (nothing written) when the JSON's
    own digest does not check: then there is no recorded document to render.
    """
    from tasks.certificate import html_matches, verify_certificate_digest
    from tasks.certificate_html import render_html
    from tasks.locking import pipeline_lock

    # Under the pipeline's lock: a certify writing the page, then the JSON, must not be overtaken between the two.
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(pipeline_lock(project, timeout=60))
        except OSError as exc:  # a read-only copy: the lock file cannot be opened for writing
            raise PipelineError(f"the certificate's page must be rendered again, which needs the project's "
                                f"pipeline lock ({project.lock_path}): {exc.strerror or exc}; run this where the "
                                "project is writable") from None
        if html_matches(json_path):
            return True
        if not verify_certificate_digest(json_path) or not is_recorded(project, json_path):  # None: cannot tell
            return False
        document = json.loads(json_path.read_text())
        plots = _evidence_plots(project, document, (document.get("model") or {}).get("run_id"))
        try:
            write_bytes_atomic(json_path.with_suffix(".html"),
                               render_html(document, plots, json_path.name).encode("utf-8"))
        except OSError as exc:
            raise PipelineError(f"cannot write {json_path.with_suffix('.html')}: {exc.strerror or exc}") from None
        return html_matches(json_path)


def checked_for_handout(project: Project, request_id: str, paths: tuple[Path, Path]) -> list[str]:
    """Check a request's certificate before ``request certificate`` hands it out; its page rendered again if needed.

    Never a document that is not the one issued: its own digest must check and the audit log must have recorded
    issuing it (an edited JSON whose page still matched, or a planted pair, was handed out; review of 2026-12-07).

    Returns:
        Notes for the user (what could not be checked here, what was rendered again).

    Raises:
        PipelineError: The certificate is not the issued document, or its page cannot be rendered again here.
    """
    from tasks.certificate import html_matches, verify_certificate_digest

    json_path, html_path = paths
    notes = []
    recorded = is_recorded(project, json_path)
    if recorded is None:
        raise PipelineError(f"the audit log of {project.root} cannot be read here, so the certificate of request "
                            f"{request_id} cannot be checked to be the one issued: run this where the log is readable")
    if not verify_certificate_digest(json_path) or not recorded:
        raise PipelineError(f"the certificate of request {request_id} ({json_path.name}) does not match its own "
                            "digest or is not the document the audit log recorded issuing (edited, damaged, planted, "
                            "or written by a run cut off before its record, which the next run issues again): "
                            "`unlearn doctor` names what differs")
    if not html_matches(json_path):  # never hand out a page that states what the recorded document does not
        if not render_page_again(project, json_path):
            raise PipelineError(f"the HTML page of request {request_id}'s certificate ({html_path.name}) does not "
                                f"show {json_path.name}'s digest, and it is rendered again only from a certificate "
                                "the audit log recorded issuing, which could not be confirmed here")
        notes.append(f"{html_path.name} did not show {json_path.name}'s digest (a write cut off, or an edit): "
                     "rendered again from the JSON")
    return notes


def copies_match(project: Project, json_copy: Path) -> bool:
    """Whether a copied certificate (JSON and the page beside it) is the issued document: the same three checks
    ``checked_for_handout`` made on the originals, made again on the copies (a run may have replaced the originals
    between the check and the copy)."""
    from tasks.certificate import html_matches, verify_certificate_digest

    return verify_certificate_digest(json_copy) and html_matches(json_copy) and bool(is_recorded(project, json_copy))


def is_recorded(project: Project, json_path: Path) -> bool | None:
    """Whether the audit log's newest ``certificate.issued`` record of the request names this document's digest
    (a record from before digests were recorded counts): a planted or superseded JSON is not the certificate.
    None when the audit log cannot be read here (a read-only copy of the project: its reader takes a lock file)."""
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(document, dict):
        return False
    try:
        issued = audit.records(project, "certificate.issued", request_id=document.get("request_id"))
    except OSError:
        return None
    return bool(issued) and issued[-1].get("certificate_digest", document.get("digest")) == document.get("digest")


def certificate_paths(project: Project, request_id: str) -> tuple[Path, Path] | None:
    """The JSON and HTML certificate of a request, if issued: the one the audit log recorded issuing when several
    files name the request (a planted or restored copy sorts first as easily), else the first."""
    found = []
    for path in sorted(project.certificates_dir.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(document, dict) and document.get("request_id") == request_id:
            found.append(path)
    if not found:
        return None
    path = found[0] if len(found) == 1 else next((p for p in found if is_recorded(project, p)), found[0])
    return path, path.with_suffix(".html")
