"""The project's audit trail: every deletion step appended to one hash-chained log.

A thin layer over :class:`unlearn.audit.AuditLog` at ``data/audit/audit.jsonl``. Records hold
counts, batch and request ids, model versions and salted subject hashes, never sample ids
or sample data (the log refuses such fields).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasks.project import PipelineError, Project

KEY_ENV = "UNLEARN_AUDIT_KEY_FILE"


def audit_key(project: Project) -> bytes | None:
    """The keyed-mode HMAC key from ``$UNLEARN_AUDIT_KEY_FILE``, or None when keyed mode is off.

    Raises:
        PipelineError: The key file is unreadable, too short, or inside the project (a key stored with
            the log proves nothing: whoever can rewrite the log can read the key).
    """
    from unlearn.audit import AuditError, load_key

    name = os.environ.get(KEY_ENV)
    if not name:
        return None
    path = Path(name).resolve()
    root = project.root.resolve()
    if path == root or root in path.parents:
        raise PipelineError(f"{KEY_ENV} points inside the project ({path}); keep the audit key outside it")
    try:
        return load_key(path)
    except AuditError as exc:
        raise PipelineError(str(exc)) from None


def record(project: Project, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the project's audit log.

    Args:
        project: The project.
        event: Dotted event name, e.g. ``"batch.accepted"``.
        **fields: JSON-serialisable details (no personal data).

    Returns:
        The appended record (with its sequence number and hash).
    """
    from unlearn.audit import AuditLog

    return AuditLog(project.audit_path, key=audit_key(project)).append(event, **fields)


def check_appendable(project: Project) -> None:
    """Raise what :func:`record` would raise about the key or the log, appending nothing.

    Called before an action whose record follows it and which cannot be undone (the champion alias moving):
    an unreadable key or a log that refuses appends then stops the step before the action, and the champion
    stays as it was (review of 2026-12-07: a consolidation moved the alias, then failed on its record).
    """
    from unlearn.audit import AuditLog

    AuditLog(project.audit_path, key=audit_key(project)).check_appendable()


def head(project: Project) -> dict[str, Any]:
    """The last record's sequence number and hash: the anchor certificates and MLflow runs carry."""
    from unlearn.audit import AuditLog

    report = AuditLog(project.audit_path, key=audit_key(project)).verify()
    return {"head_seq": report.head_seq, "head_hash": report.head_hash, "chain_ok": report.ok}


def records(project: Project, event: str, **match: Any) -> list[dict[str, Any]]:
    """The log's ``event`` records with these field values, in order."""
    from unlearn.audit import AuditLog

    return AuditLog(project.audit_path).records(event, **match)


def has_record(project: Project, event: str, **match: Any) -> bool:
    """Whether the log holds an ``event`` record with these field values (recovery re-records lost events)."""
    from unlearn.audit import AuditLog

    return bool(AuditLog(project.audit_path).records(event, **match))
