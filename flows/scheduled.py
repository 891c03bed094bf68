"""The ``method-audit`` and ``consolidate`` Prefect flows (served by ``unlearn serve``; :mod:`flows.maintenance`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tasks.project import load_project


@flow(name="method-audit")
def audit_flow(root: str = ".", batch: str | None = None, method: str | None = None,
               only_if_due: bool = False) -> dict[str, Any]:
    """Audit one past batch (the newest not yet audited, unless ``batch``/``method`` say otherwise).

    Args:
        root: Project directory.
        batch: Audit the promotion that completed this batch.
        method: Audit this method on it instead of the one the batch used.
        only_if_due: Return ``not_due`` unless ``gate.audit.every_batches`` batches were promoted since
            the last audit (the event-triggered deployment).

    Returns:
        The audit record (:func:`tasks.method_audit.audit_method`).
    """
    from tasks import method_audit
    from tasks.locking import pipeline_lock

    project = load_project(str(Path(root).resolve()))
    with pipeline_lock(project):
        if only_if_due and not method_audit.due(project):
            return {"status": "not_due"}
        return method_audit.audit_method(project, batch=batch, method=method)


@flow(name="consolidate")
def consolidate_flow(root: str = ".", force: bool = False) -> dict[str, Any]:
    """Consolidate when due (or ``force``), then purge: old versions that saw deleted samples retire.

    Returns:
        The consolidation summary, with ``purge`` when a model was promoted.
    """
    from tasks.consolidate import run_consolidate
    from tasks.lifecycle import run_purge
    from tasks.locking import pipeline_lock

    project = load_project(str(Path(root).resolve()))
    with pipeline_lock(project):
        result = run_consolidate(project, force=force)
        if result["status"] == "consolidated":
            result["purge"] = run_purge(project)
    return result
