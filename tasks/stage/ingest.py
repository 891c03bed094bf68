"""The ingest stage: validate incoming request files and route every row to exactly one place."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks import audit
from tasks.project import PipelineError, Project
from tasks.stage.state import write_state
from tasks.validation import loggable_request_id, validate_requests
from unlearn.data import load_source
from unlearn.files import utc_now, write_json_atomic, write_jsonl_atomic
from unlearn.requests import (
    Ledger,
    ParsedFile,
    RequestRouter,
    file_sha256,
    hash_subject,
    load_or_create_salt,
    parse_request_file,
    request_digest,
    skipped_in_inbox,
)
from unlearn.requests.hashing import recorded_file_name

log = logging.getLogger("unlearn.pipeline")

NOTHING_INGESTED = {"batch_id": None, "files": 0, "rows": 0, "accepted": 0, "acknowledged": 0, "rejected": 0,
                    "rejected_files": 0, "samples": 0}


def run_ingest(project: Project) -> dict[str, Any]:
    """Validate incoming request files and route every row; accepted requests become one pending batch.

    Every row of every incoming file ends in exactly one place:

    * the new batch (``data/requests/batches/<batch>.json``): valid requests that delete at
      least one sample no earlier batch deleted; a request keeps only those ids, with
      ``already_deleted_count`` and ``covered_by`` for the rest;
    * the acknowledgement log (``data/requests/acknowledged/<ingest>.jsonl``, and the ledger):
      valid requests that delete nothing new, a repeat of a request id with the same content
      (``duplicate``, with the batch that holds the original) or a request whose samples are
      all deleted already (``already_deleted``, with the batches that deleted them);
    * the rejection log (``data/requests/rejected/<ingest>.jsonl``, reason codes and a
      detail): invalid rows, a request id reused for different content
      (``request_id_conflict``), and one line per file that could not be parsed at all.

    An unparseable file is recorded by its sanitised name, size and sha256 and then deleted,
    like every processed file: it may hold subject references, which are stored nowhere but
    as salted hashes. Symbolic links in the inbox are removed without being followed.

    Returns:
        Counts: files, rows, accepted, acknowledged, rejected, rejected_files, samples; and the
        batch id (or None).
    """
    params = project.params
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    with os.scandir(project.incoming_dir) as scan:  # DirEntry type checks do not follow symlinks
        entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in scan if not skipped_in_inbox(e.name))
    # A folder is a non-request like any other unreadable entry: one rejection line, then out of the inbox
    # (left there it would be warned about forever, and it may hold personal data nobody will process).
    folders = {name for name, is_dir in entries if is_dir}
    files = [project.incoming_dir / name for name, _ in entries]
    ledger = Ledger(project.ledger_path)
    if not project.ledger_path.exists():
        ledger.save()  # the ledger always exists: later stages read it
    _settle_pending(project, ledger.unrecorded_ingest)  # a crash at or just after the last ingest's commit
    _recover_audit_records(project, ledger)
    _write_deletions(project, ledger)
    # the salt only when there is an entry to key (a damaged salt must not fail an ingest with nothing to do)
    salt = load_or_create_salt(project.salt_path) if files or ledger.consumed_inbox else b""
    consumed = dict(ledger.consumed_inbox)
    files = _skip_committed(ledger, files, folders, salt)
    if ledger.consumed_inbox != consumed:  # entries removed now, or gone: their records go with them
        ledger.save()
    if not files:
        return write_state(project, "ingest", dict(NOTHING_INGESTED))
    # What each entry was when read: only that entry is removed at the end. A client that renames a new
    # request into place under the same name meanwhile (the recommended atomic drop) leaves another inode,
    # which stays in the inbox for the next run instead of being deleted unread.
    identities = {f.name: _identity(f) for f in files}
    # Each file is read once, never a link's target. Over requests.max_rows_per_file rows it is refused whole
    # (too_many_rows): every accepted or acknowledged row is a hash-chained audit record appended (and synced) under
    # the pipeline's lock; a 24 KB file of 8,000 rows held it for 43 s (review of 2026-12-07).
    parsed = [parse_request_file(f, max_rows=params.requests.max_rows_per_file) for f in files]
    # A file written while it was read (an in-place upload, an editor's save) is left out of this ingest entirely:
    # routed as read, a cut-off row lost the rest of a request or stored a cut-off subject's hash, and the complete
    # file then conflicted with it (review of 2026-12-07). The next run reads it whole.
    settled = [i for i, f in enumerate(files) if _identity(f) == identities[f.name]]
    if len(settled) < len(files):
        log.info("ingest: %d inbox entr(ies) changed while being read: left for the next run",
                 len(files) - len(settled))
        files, parsed = [files[i] for i in settled], [parsed[i] for i in settled]
        if not files:
            return write_state(project, "ingest", dict(NOTHING_INGESTED))
    digest = hashlib.sha256()
    for f, p in zip(files, parsed, strict=True):
        digest.update(os.fsencode(f.name) + b"\0" + (p.sha256 or "-").encode())
    ingest_id = f"batch-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{digest.hexdigest()[:8]}"
    requests = [r for p in parsed for r in p.requests]
    # Names as records keep them: a dropped file's name may be personal data (alice@example.com-erase-me.csv); it
    # was kept almost verbatim in the rejection and acknowledgement logs, the ledger and the batch file (review of
    # 2026-12-07). Request submit's own names are kept; any other is a salted hash (as serve's events publish it).
    recorded = {p.name: recorded_file_name(f.name, salt) for f, p in zip(files, parsed, strict=True)}
    source = load_source(params.data)
    verdicts = validate_requests(
        requests, known_ids=set(source.ids.tolist()), classes=source.classes,
        reasons=params.requests.reasons, max_ids=params.requests.max_ids_per_request,
        max_clock_skew_seconds=params.requests.max_clock_skew_seconds,
    )
    router = RequestRouter(ledger, ingest_id, subject_of=lambda request_id, batch_id: batch_subject(
        project, request_id, batch_id))
    now = utc_now()
    rejected_lines, acknowledged, accepted = [], [], []
    for verdict in verdicts:
        values = verdict.request.values
        where = {"source_file": recorded[verdict.request.source_file], "row": verdict.request.row}
        if not verdict.valid:
            rejected_lines.append({**where, "request_id": loggable_request_id(values.get("request_id")),
                                   "reasons": list(verdict.reasons), "detail": verdict.detail})
            continue
        request_id, forget_class = values["request_id"], None
        if "forget_class" in values:
            # Class-wise forgetting: every training sample of the class (the router drops deleted ones).
            class_name = str(values["forget_class"])
            forget_class = list(source.classes).index(class_name)
            wanted = source.ids[(source.labels == forget_class) & (source.splits == "train")].tolist()
        else:
            wanted = values["sample_ids"]
        content = request_digest(values)
        subject_hash = hash_subject(values["subject_ref"], salt)
        routing = router.route(request_id, content, wanted, subject_hash)
        if routing.destination == "rejected":
            rejected_lines.append({**where, "request_id": request_id, "reasons": [routing.outcome],
                                   "detail": f"{routing.outcome}: {routing.detail}"})
            continue
        if routing.destination == "acknowledged":
            record = {"outcome": routing.outcome, "at": now, "ingest_id": ingest_id, "subject_hash": subject_hash,
                      "content_digest": content, "covered_by": list(routing.covered_by), "detail": routing.detail}
            if routing.outcome == "duplicate":
                record["batch_id"] = routing.batch_id
            acknowledged.append({**where, "request_id": request_id, **record})
            continue
        accepted.append({
            "request_id": request_id, "sample_ids": list(routing.sample_ids), "forget_class": forget_class,
            "received_at": values["received_at"], "reason": values["reason"], "subject_hash": subject_hash,
            "source_file": recorded[verdict.request.source_file], "content_digest": content,
            "already_deleted_count": routing.already_deleted_count, "covered_by": list(routing.covered_by),
        })
    bad_files = [p for p in parsed if p.problem is not None]
    for p in bad_files:
        named = sorted({i for i in map(loggable_request_id, p.refused_request_ids) if i is not None})
        rejected_lines.append({"source_file": recorded[p.name], "row": None, "request_id": None,
                               "reasons": [p.problem.code],
                               "detail": f"{p.problem.code}: {p.problem.detail}"[:500],
                               "file_size": p.size, "file_sha256": p.sha256,
                               **({"request_ids": named} if named else {})})
    # Write every destination before the ledger (the commit point), under a pending name that no reader takes,
    # and give them their names after the commit: a crash before it left files of an ingest that never happened
    # (`request status` then listed one submission's rejection twice; review of 2026-12-07).
    if rejected_lines:
        write_jsonl_atomic(_pending(project.rejected_dir / f"{ingest_id}.jsonl"), rejected_lines)
    if acknowledged:
        write_jsonl_atomic(_pending(project.acknowledged_dir / f"{ingest_id}.jsonl"), acknowledged)
    batch_id = None
    if accepted:
        batch_id = ingest_id
        write_json_atomic(_pending(project.batches_dir / f"{batch_id}.json"),
                          {"batch_id": batch_id, "created_at": now, "requests": accepted})
        ledger.add_batch(batch_id, [a["request_id"] for a in accepted],
                         [s for a in accepted for s in a["sample_ids"]], now,
                         forget_classes=[a["forget_class"] for a in accepted if a["forget_class"] is not None],
                         request_digests={a["request_id"]: a["content_digest"] for a in accepted},
                         request_subjects={a["request_id"]: a["subject_hash"] for a in accepted})
    for line in acknowledged:
        ledger.acknowledge(line["request_id"], {k: v for k, v in line.items() if k not in ("request_id", "row")})
    if batch_id is not None:
        ledger.mark_step([batch_id], "validated")
    # The commit point also names every entry this ingest read (the same identities the clean-up checks).
    # Until the audit records below are written: a crash after the commit lost the rejections' record for good
    # (the next run skips the committed files; review of 2026-12-07); the next run writes what is missing.
    ledger.unrecorded_ingest = ingest_id
    stuck = ledger.consumed_inbox  # committed earlier, still in the inbox: they cannot be removed
    ledger.consumed_inbox = {**stuck, **{
        inbox_key(f.name, salt): {"identity": list(identities[f.name]), "sha256": p.sha256, "ingest_id": ingest_id}
        for f, p in zip(files, parsed, strict=True) if identities[f.name] is not None}}
    ledger.save()
    _settle_pending(project, ingest_id)
    _write_deletions(project, ledger)
    # The audit trail: request ids, salted subject hashes and counts, never sample ids.
    for a in accepted:
        audit.record(project, "request.accepted", request_id=a["request_id"], batch_id=batch_id,
                     subject_hash=a["subject_hash"], samples=len(a["sample_ids"]),
                     already_deleted=a["already_deleted_count"], reason=a["reason"])
    for line in acknowledged:
        audit.record(project, "request.acknowledged", request_id=line["request_id"], outcome=line["outcome"],
                     subject_hash=line["subject_hash"], covered_by=line["covered_by"], ingest_id=ingest_id)
    if rejected_lines:
        _record_rejections(project, ingest_id, rejected_lines)
    ledger.unrecorded_ingest = None
    for f in files:
        if _identity(f) != identities[f.name]:
            log.info("ingest: an inbox entry changed while it was being read: left for the next run")
            ledger.consumed_inbox.pop(inbox_key(f.name, salt), None)
        elif _remove_entry(f, folders):
            ledger.consumed_inbox.pop(inbox_key(f.name, salt), None)
        elif f.name in folders:  # what is left of it: a new folder under the name (a reused inode) is not it
            ledger.consumed_inbox[inbox_key(f.name, salt)]["listing"] = _listing(f, salt)
    # The record is needed only through the crash window (a later file could reuse a freed inode number), and for
    # entries that cannot be removed, which it keeps from being read again.
    ledger.save()
    counts = {
        "batch_id": batch_id, "files": len(files), "rows": len(requests) + len(bad_files),
        "accepted": len(accepted), "acknowledged": len(acknowledged), "rejected": len(rejected_lines),
        "rejected_files": len(bad_files), "samples": len({s for a in accepted for s in a["sample_ids"]}),
        # What `unlearn run` prints about them: request ids (as the audit log keeps them) and reason codes only.
        "rejected_requests": [{"request_id": line["request_id"], "reasons": line["reasons"]}
                              for line in rejected_lines[:20]],
    }
    if counts["rows"] != counts["accepted"] + counts["rejected"] + counts["acknowledged"]:  # a bug, never input
        raise PipelineError(f"request accounting mismatch: {counts}")
    log.info("ingest: %s", counts)
    return write_state(project, "ingest", counts)


def inbox_key(name: str, salt: bytes) -> str:
    """The ledger's key for an inbox entry in ``consumed_inbox``: its name as records keep it (a dropped file's name
    may be personal data, kept only as a salted hash; review of 2026-12-07)."""
    return recorded_file_name(name, salt)


def batch_subject(project: Project, request_id: str, batch_id: str) -> str | None:
    """A request's salted subject hash as its batch file records it (None where the file or entry is missing):
    batches accepted before the ledger kept subject hashes still compare a resend's subject (third review)."""
    try:
        document = json.loads((project.batches_dir / f"{batch_id}.json").read_text())
        found = next((r.get("subject_hash") for r in document["requests"] if r.get("request_id") == request_id), None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def waiting_files(project: Project) -> Iterator[ParsedFile]:
    """The inbox files the next ingest will read, parsed as it parses them, in its order (sorted names): upload
    names and folders left out, as are files an ingest already committed and could not remove; the row cap applies,
    so a flood of rows is refused, not decoded. For `request submit`'s and `request status`'s look at the inbox."""
    if not project.incoming_dir.is_dir():
        return
    with os.scandir(project.incoming_dir) as scan:  # DirEntry type checks do not follow symlinks
        names = sorted(e.name for e in scan if not skipped_in_inbox(e.name) and not e.is_dir(follow_symlinks=False))
    committed = ingested_entries(project.requests_dir, names)
    for name in names:
        if name not in committed:
            yield parse_request_file(project.incoming_dir / name, max_rows=project.params.requests.max_rows_per_file)


def ingested_entries(requests_dir: Path, names: list[str]) -> set[str]:
    """Those of ``names`` (entries of ``requests_dir/incoming``) an ingest already committed and could not remove:
    still in the inbox, the very file it read (same identity). ``unlearn status`` and ``serve``'s watcher leave them
    out, as ingest does: they are not waiting to be ingested, and a run for them would find nothing to do."""
    try:
        ledger = Ledger(requests_dir / "ledger.json")
        if not ledger.consumed_inbox or not (requests_dir / ".salt").exists():
            return set()
        salt = load_or_create_salt(requests_dir / ".salt")
    except Exception:  # noqa: BLE001 - status and the watcher must not fail on a ledger ingest will name
        return set()
    out = set()
    for name in names:
        committed = _committed(ledger, name, salt)
        identity = _identity(requests_dir / "incoming" / name)
        if committed is not None and identity is not None and list(identity) == committed.get("identity"):
            out.add(name)
    return out


def _committed(ledger: Ledger, name: str, salt: bytes) -> dict[str, Any] | None:
    """The ledger's ``consumed_inbox`` entry of an inbox entry: keyed by its recorded name (an earlier release's
    entry by the raw name)."""
    return ledger.consumed_inbox.get(inbox_key(name, salt)) or ledger.consumed_inbox.get(name)


def _skip_committed(ledger: Ledger, files: list[Path], folders: set[str], salt: bytes) -> list[Path]:
    """The inbox entries to read: without those an earlier ingest committed but a crash left in the inbox.

    Why: the ledger commit comes before the inbox clean-up. A crash in between left the entry, and the next
    run read it again: the one submission was recorded a second time, as an acknowledged "duplicate" in the
    ledger and the audit log (and a rejected file was rejected twice), which never happened (review of
    2026-12-06). An entry that is still the very file the committed ingest read (same device, inode, size and
    modification time) is removed now; a resend under the same name is a new file and is read as usual.
    """
    left, stuck = [], {}
    for f in files:
        committed = _committed(ledger, f.name, salt)
        identity = _identity(f)
        # A folder's size and time change as its contents are removed: one left partly removed is matched on its
        # device, inode and what is left in it (a new folder can reuse the inode; third review of 2026-12-07).
        same = committed is not None and identity is not None and (
            list(identity) == committed.get("identity")
            or (f.name in folders and committed.get("listing") is not None
                and list(identity)[:2] == committed["identity"][:2] and _listing(f, salt) == committed["listing"]))
        if same and file_sha256(f) == committed.get("sha256"):
            log.info("ingest: an inbox entry already committed by %s was left by an interrupted run: removed",
                     committed.get("ingest_id"))
            if not _remove_entry(f, folders):
                stuck[inbox_key(f.name, salt)] = {**committed, **({"listing": _listing(f, salt)}
                                                                   if f.name in folders else {})}
            continue
        left.append(f)
    ledger.consumed_inbox = stuck  # only entries still in the inbox need it (a freed inode number is reused)
    return left


def _listing(folder: Path, salt: bytes) -> str | None:
    """A salted digest of the names left in a folder, all levels (names may be personal data); None when it cannot
    be listed (then it matches nothing, and the folder is read, and refused, again)."""
    names = []
    try:
        for parent, dirs, files in os.walk(folder, onerror=_raise):
            names += [os.path.relpath(os.path.join(parent, n), folder) for n in (*dirs, *files)]
            if len(names) > 100_000:
                return None
    except (OSError, RecursionError):  # unreadable, or nested past the interpreter's recursion limit
        return None
    return hash_subject("inbox-folder-listing\x00" + "\x00".join(sorted(names)), salt)


def _raise(exc: OSError) -> None:
    raise exc


def _remove_entry(path: Path, folders: set[str]) -> bool:
    """Remove an inbox entry: a folder with its contents, else the file (a symlink: the link, never its target).

    Returns False when the file cannot be removed (immutable, or another user's in a sticky shared inbox): the
    caller keeps it in the ledger's ``consumed_inbox`` so that it is skipped, not read again, while it stays. It
    raised, and every later run raised on it too: one file wedged every request after it (review of 2026-12-07).
    """
    if path.name in folders:  # one that cannot be removed whole is skipped like a file (it was rejected every run)
        return remove_tree(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the name may be personal data: not logged
        log.warning("ingest: an inbox file already ingested cannot be removed (%s); it is skipped while it stays: "
                    "remove it by hand", exc.strerror or exc)
        return False
    return True


def _identity(path: Path) -> tuple[int, ...] | None:
    """The entry's identity (device, inode, size, modification time; the link itself, never its target)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remove_tree(root: Path) -> bool:
    """Delete a folder dropped into the inbox, after the ledger commit: never raises, never recurses.

    Python 3.11's ``shutil.rmtree`` recurses per level, and a deeply nested folder also outgrows
    PATH_MAX, so a 3000-level folder wedged every later ingest. This flattens the tree instead: every
    sub-folder met is renamed up into ``root`` (short paths, two descriptors open at a time), files and
    symbolic links are unlinked where they are (a link is never followed), emptied folders removed.
    What cannot be removed is logged without names and retried on the next ingest. Returns whether the folder
    is gone.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    counter = 0
    try:
        top = os.open(root, flags)
    except OSError as exc:  # gone already counts as removed; anything else does not
        return isinstance(exc, FileNotFoundError)
    try:
        while True:
            with os.scandir(top) as entries:
                names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            if not names:
                break
            for name, is_dir in names:
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                inner = os.open(name, flags, dir_fd=top)
                try:
                    with os.scandir(inner) as entries:
                        children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
                    for child, child_is_dir in children:
                        if not child_is_dir:
                            os.unlink(child, dir_fd=inner)
                            continue
                        while True:  # a fresh name in root: renaming onto an existing empty folder would replace it
                            counter += 1
                            target = f".flat-{counter}"
                            try:
                                os.stat(target, dir_fd=top, follow_symlinks=False)
                            except FileNotFoundError:
                                break
                        os.rename(child, target, src_dir_fd=inner, dst_dir_fd=top)
                finally:
                    os.close(inner)
                os.rmdir(name, dir_fd=top)
        os.close(top)
        top = -1
        os.rmdir(root)
    except OSError as exc:
        log.warning("ingest: a folder in the inbox could not be removed completely (%s); retried next run",
                    exc.strerror)
        return False
    finally:
        if top >= 0:
            os.close(top)
    return True


PENDING_SUFFIX = ".pending"


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING_SUFFIX)


def _settle_pending(project: Project, committed: str | None) -> None:
    """Give the committed ingest's destination files their names; remove any other ingest's pending files (it was
    cut off before its commit, and its inbox files are read again)."""
    for folder in (project.rejected_dir, project.acknowledged_dir, project.batches_dir):
        if not folder.is_dir():
            continue
        for path in folder.glob(f"*{PENDING_SUFFIX}"):
            final = path.with_name(path.name.removesuffix(PENDING_SUFFIX))
            if committed is not None and final.name.split(".")[0] == committed:
                os.replace(path, final)
            else:
                path.unlink(missing_ok=True)


def _record_rejections(project: Project, ingest_id: str, lines: list[dict[str, Any]], **extra: Any) -> None:
    """One audit record for an ingest's rejected rows and files, anchoring the rejection log by its digest.

    One record per rejected row made a small file of empty rows an hour of appends under the pipeline's lock
    (review of 2026-12-07). The log (``rejected/<ingest>.jsonl``) keeps every line; its SHA-256 in the hash chain
    makes any later change to it visible.
    """
    path = project.rejected_dir / f"{ingest_id}.jsonl"
    codes: dict[str, int] = {}
    for line in lines:
        for code in line["reasons"]:
            codes[code] = codes.get(code, 0) + 1
    ids = [line["request_id"] for line in lines if line["request_id"] is not None]
    audit.record(project, "ingest.rejected", ingest_id=ingest_id, rows=len(lines), reasons=dict(sorted(codes.items())),
                 request_ids=ids[:100], request_ids_left_out=max(0, len(ids) - 100), log=path.name,
                 log_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), **extra)


def _recover_audit_records(project: Project, ledger: Ledger) -> None:
    """Re-record ``request.accepted`` for requests a crash kept out of the audit log after the ledger commit, and
    the acknowledgements and rejections of the ingest it cut off (the ledger names it until they are recorded)."""
    unrecorded = ledger.unrecorded_ingest
    if unrecorded:
        acknowledged = project.acknowledged_dir / f"{unrecorded}.jsonl"
        if acknowledged.exists():
            # counted per request id: one ingest can acknowledge the same request twice (two files repeating it)
            seen: dict[str, int] = {}
            for record in audit.records(project, "request.acknowledged", ingest_id=unrecorded):
                seen[record.get("request_id")] = seen.get(record.get("request_id"), 0) + 1
            for line in map(json.loads, acknowledged.read_text().splitlines()):
                if seen.get(line["request_id"], 0) > 0:
                    seen[line["request_id"]] -= 1
                    continue
                audit.record(project, "request.acknowledged", request_id=line["request_id"],
                             outcome=line["outcome"], subject_hash=line["subject_hash"],
                             covered_by=line["covered_by"], ingest_id=unrecorded, recovered=True)
        rejected = project.rejected_dir / f"{unrecorded}.jsonl"
        if rejected.exists() and not audit.has_record(project, "ingest.rejected", ingest_id=unrecorded):
            _record_rejections(project, unrecorded, list(map(json.loads, rejected.read_text().splitlines())),
                               recovered=True)
        ledger.unrecorded_ingest = None
        ledger.save()
    if not project.audit_path.exists() and not ledger.oldest_first():
        return
    recorded = {(r.get("request_id"), r.get("batch_id"))
                for r in audit.records(project, "request.accepted")}
    for batch_id in ledger.oldest_first():
        for request_id in ledger.batch(batch_id)["request_ids"]:
            if (request_id, batch_id) not in recorded:
                audit.record(project, "request.accepted", request_id=request_id, batch_id=batch_id, recovered=True)


def _write_deletions(project: Project, ledger: Ledger) -> None:
    """The data-defining part of the ledger: which batches exist (each deletes a fixed sample set).

    ``dvc.yaml`` makes prepare, references and unlearn depend on this file rather than on the
    ledger, whose lifecycle progress (statuses, step times, evidence) changes on every run:
    a second ``dvc repro`` with no new request then re-runs nothing that defines data or models.
    """
    path = project.requests_dir / "deletions.json"
    document = {"version": 1, "batches": sorted(ledger.batches)}
    try:
        current = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):  # derived from the ledger: a damaged copy is written again, not a traceback
        log.warning("ingest: %s was unreadable; written again from the ledger", path.name)
        current = None
    if current != document:
        write_json_atomic(path, document)

