"""The project's audit trail: every deletion step appended to one hash-chained log.

A thin layer over :class:`unlearn.audit.AuditLog` at ``data/audit/audit.jsonl``. Records hold
counts, batch and request ids, model versions and salted subject hashes, never sample ids
or sample data (the log refuses such fields).
"""

from __future__ import annotations

from typing import Any

from tasks.project import Project


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

    return AuditLog(project.audit_path).append(event, **fields)


def head(project: Project) -> dict[str, Any]:
    """The last record's sequence number and hash: the anchor certificates and MLflow runs carry."""
    from unlearn.audit import AuditLog

    report = AuditLog(project.audit_path).verify()
    return {"head_seq": report.head_seq, "head_hash": report.head_hash, "chain_ok": report.ok}


def has_record(project: Project, event: str, **match: Any) -> bool:
    """Whether the log holds an ``event`` record with these field values (recovery re-records lost events)."""
    from unlearn.audit import AuditLog

    return bool(AuditLog(project.audit_path).records(event, **match))
