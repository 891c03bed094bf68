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
    # Asked first without the lock (it only reads the ledger and the audit history): every completed pipeline run
    # triggers this deployment, and a run that is not due should not queue on the project lock behind the next
    # pipeline run only to find that out. Asked again under the lock, where the answer counts.
    if only_if_due and not method_audit.due(project):
        return {"status": "not_due"}
    with pipeline_lock(project):
        if only_if_due and not method_audit.due(project):
            return {"status": "not_due"}
        return method_audit.audit_method(project, batch=batch, method=method)


@flow(name="consolidate")
def consolidate_flow(root: str = ".", force: bool = False, triggered: bool = False) -> dict[str, Any]:
    """Consolidate when due (or ``force``), then purge: old versions that saw deleted samples retire.

    ``triggered``: the run started after a pipeline run (the ``consolidate-due`` deployment). It returns
    ``skipped`` without waiting for the project lock while batches are pending (no state file, no drift figures);
    the command and the cron deployment always take the lock and report in full.

    Returns:
        The consolidation summary, with ``purge`` when a model was promoted.
    """
    from tasks.consolidate import run_consolidate
    from tasks.lifecycle import run_purge
    from tasks.locking import pipeline_lock
    from unlearn.requests import Ledger

    project = load_project(str(Path(root).resolve()))
    if triggered and not force:
        # As the audit above: without the lock, the one answer that needs no registry (run_consolidate refuses while
        # batches are pending, and says so the same way). Triggered after every pipeline run, this spares a burst of
        # requests a queue of consolidation runs waiting on the lock to be told so.
        ledger = Ledger(project.ledger_path)
        waiting = ledger.pending() + ledger.batches_with_status(Ledger.PROMOTING)
        if waiting:
            return {"status": "skipped",
                    "reason": f"{len(waiting)} batch(es) pending: the escalation finishes them first"}
    with pipeline_lock(project):
        result = run_consolidate(project, force=force)
        if result["status"] == "consolidated":
            result["purge"] = run_purge(project)
    return result
