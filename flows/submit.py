"""``unlearn request submit``: one deletion request into the project's inbox, checked first.

The file is written atomically under a name hashed from the request id (no user text reaches a path); a request
that could never be applied (an unknown sample, an id already used for other content or another subject) is refused
here, with the reason, instead of being rejected later by ingestion.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearn.files import write_text_atomic


def submit_request(root: Path, request: dict[str, Any]) -> Path:
    """Write one request as a JSON file into the project's incoming folder, atomically.

    The file name is derived from a hash of the request id, so no user-supplied text
    reaches the file system path.

    Returns:
        The written file.

    Raises:
        PipelineError: If the request is invalid: the checks ingestion will run (schema, reason,
            received_at, subject_ref, known sample ids or class: ``tasks.validation.precheck_request``,
            the same rules without Great Expectations, so the command stays fast), so a typo exits 2
            here, naming the problem, instead of being queued and rejected later. Nothing is
            written. The same for a request id already used for different content, by a request
            still in the inbox or one the ledger recorded (ingestion would reject it as
            ``request_id_conflict``); a repeat of the same request is queued (ingestion acknowledges
            it as a duplicate, a no-op).
    """
    import re

    from tasks.project import PipelineError, load_project
    from tasks.validation import REQUEST_ID_PATTERN, precheck_request
    from unlearn.requests import hash_subject, load_or_create_salt
    from unlearn.requests.parsing import RawRequest

    request_id = request.get("request_id")
    # Refuse here, before anything is written: ingestion would only reject it later.
    if not isinstance(request_id, str) or not re.match(REQUEST_ID_PATTERN, request_id):
        # Not echoed: an id that fails the pattern may be personal data (an e-mail address), as ingestion assumes.
        raise PipelineError("the request id is malformed: use 1-128 letters, digits and . _ : - starting with a "
                            "letter or digit (it is not repeated here: it may be personal data)")
    project = load_project(root, check_registries=False)  # writes the inbox only
    params = project.params
    request = {k: v for k, v in request.items() if v is not None}  # what is checked is what is written
    known = {"request_id", "sample_ids", "forget_class", "received_at", "reason", "subject_ref"}
    raw = RawRequest("cli", 0, request, tuple(sorted((k for k in request if k not in known), key=str)))
    settings = dict(reasons=params.requests.reasons, max_ids=params.requests.max_ids_per_request,
                    max_clock_skew_seconds=params.requests.max_clock_skew_seconds)
    dataset = _store_ids(project)

    def check(row: RawRequest) -> Any:
        verdict = precheck_request(row, **(dataset or _source_ids(project)), **settings)
        if dataset and "unknown_sample_id" in verdict.reasons:  # the source may have grown since the store was built
            verdict = precheck_request(row, **_source_ids(project), **settings)
        return verdict

    verdict = check(raw)
    if not verdict.valid:  # the detail never quotes a sample id or the subject reference
        raise PipelineError(f"request {request_id} is invalid and was not queued: {verdict.detail}")
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    # Salted: the name is published in events, and a request id may be guessable (a ticket number, an address).
    salt = load_or_create_salt(project.salt_path)
    # Domain-separated from subject hashes: a request id equal to its subject reference must not link the two.
    digest = hash_subject(f"inbox-file-name\x00{request.get('request_id')}", salt).removeprefix("hmac-sha256:")[:12]
    conflict = _request_id_conflict(project, request, lambda row: check(row).valid, salt)
    if conflict:
        raise PipelineError(f"request {request_id} was not queued: its id is already used {conflict}, so ingestion "
                            "would reject it (request_id_conflict); use a new id")
    target = project.incoming_dir / f"request-{stamp}-{digest}.json"
    write_text_atomic(target, json.dumps(request, indent=2))
    return target


def _request_id_conflict(project: Any, request: dict[str, Any], valid: Callable[[Any], bool],
                         salt: bytes) -> str | None:
    """Why ingestion would reject ``request`` as ``request_id_conflict`` (None: it would not).

    Why here: ingestion rejects such a request, but only when it runs, after ``submit`` has said "queued".
    The same order as ingestion's router (unlearn/requests/routing.py): an id the ledger recorded is decided
    by the ledger (the same content is a repeat; other content, or a record without a content digest, is a
    conflict); otherwise by the first valid request with that id waiting in the inbox, in ingestion's file
    order. Every inbox file is read, as ingestion lists and reads them (sorted names, files still being written
    skipped, no symlink followed, nothing but a regular file, a size cap): a client's file drop under any name
    claims an id as a submitted file does (only the files under this id's salted name were read before). "Same
    content" is :func:`~unlearn.requests.content_digest`, as ingestion compares it, and the same subject (its
    salted hash where the ledger recorded one).

    Args:
        valid: Whether a queued row passes the checks ingestion runs first (an invalid one claims no id).
        salt: The project's subject salt.
    """
    from tasks.stage.ingest import batch_subject, waiting_files
    from unlearn.requests import Ledger, hash_subject, request_digest

    def digest_of(values: dict[str, Any]) -> str | None:
        try:
            return request_digest(values)
        except (KeyError, TypeError, ValueError):
            return None

    request_id, mine = request["request_id"], digest_of(request)
    in_ledger = False  # recorded without a subject: the first repeat waiting in the inbox sets it, as ingestion's does
    if project.ledger_path.exists():
        found = Ledger(project.ledger_path).find_request(request_id)
        if found is not None:
            if found.get("content_digest") is None:
                return "in the ledger, recorded without a content digest (a repeat cannot be confirmed)"
            if found["content_digest"] != mine:
                return "in the ledger for different content"
            recorded = found.get("subject_hash") or (batch_subject(project, request_id, found["batch_id"])
                                                      if found.get("kind") == "accepted" else None)
            if recorded:
                subject = request.get("subject_ref")
                other = not isinstance(subject, str) or recorded != hash_subject(subject, salt)
                return "in the ledger for another subject" if other else None
            in_ledger = True
    for parsed in waiting_files(project):
        for row in parsed.requests:
            if row.values.get("request_id") == request_id and valid(row):
                if digest_of(row.values) != mine:
                    if in_ledger:
                        continue  # ingestion rejects it against the ledger's record: it claims nothing
                    return "by a request waiting in the inbox, for different content"
                other = row.values.get("subject_ref") != request.get("subject_ref")
                return "by a request waiting in the inbox, for another subject" if other else None
    return None


def _store_ids(project: Any) -> dict[str, Any] | None:
    """The dataset's sample ids and class names as the store knows them (None before the first store).

    The store holds the source minus the deleted samples, so its index plus the ledger's deleted ids
    are every id ingestion validates against, read from two small files instead of the source.
    """
    from unlearn.data.store import SampleStore, StoreError
    from unlearn.requests import Ledger

    try:
        store = SampleStore(project.store_dir)
    except StoreError:
        return None
    deleted = Ledger(project.ledger_path).deleted_ids() if project.ledger_path.exists() else set()
    return {"known_ids": set(store.ids.tolist()) | set(deleted), "classes": tuple(store.classes)}


def _source_ids(project: Any) -> dict[str, Any]:
    """The dataset's sample ids and class names from the source itself, as ingestion reads them."""
    from unlearn.data import load_source

    source = load_source(project.params.data)
    return {"known_ids": set(source.ids.tolist()), "classes": tuple(source.classes)}
