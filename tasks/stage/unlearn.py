"""The unlearn stage: run the escalation ladder, each attempt verified by the two-sided gate."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from tasks import dvc_ops, progress, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    check_architecture,
    load_forget,
    log_dataset,
    resolve_device,
    tag_list,
    unlearning_data,
)
from tasks.stage.escalation import begin_unlearning, skipped_report
from tasks.stage.retrain import retrained_model
from tasks.stage.state import UNLEARNING, Attempt, read_escalation, write_escalation
from tasks.stage.verify import run_verify
from unlearn.data import SampleStore
from unlearn.files import atomic_path, utc_now
from unlearn.methods import method_info, recalibrates_bn, run_method
from unlearn.requests import Ledger, hash_ids, load_or_create_salt

log = logging.getLogger("unlearn.pipeline")


def run_attempt(project: Project, method: str) -> dict[str, Any]:
    """One rung of the ladder: make the champion forget the pending batches with ``method``.

    The model is saved under ``data/models/`` and an MLflow run records method, parameters,
    counts and lineage (never sample ids: a digest of them). ``retrain`` reuses the exact
    retrain the gate compares against when it is cached.

    Args:
        project: The project.
        method: A registered method name (the state's ``next_method``).

    Returns:
        The updated state.
    """
    import mlflow
    from mlflow.entities import LoggedModelInput
    from mlflow.exceptions import MlflowException

    params = project.params
    state = read_escalation(project)
    if state.status != UNLEARNING or state.next_method != method:
        raise PipelineError(f"no escalation is waiting for {method!r} (state: {state.status}, "
                            f"next: {state.next_method}); run the unlearn stage")
    client = tracking.setup(project)
    try:
        parent = client.get_model_version(tracking.model_name(project), state.parent_version)
    except MlflowException:
        parent = None  # load_model below says what is wrong with it
    check_architecture(project, parent)
    store = SampleStore(project.store_dir)
    forget = load_forget(project, state.batches)
    device = resolve_device(project)
    data = unlearning_data(project, store, forget)
    champion = tracking.champion_version(project, client)
    original = tracking.load_model(project, client, state.parent_version)
    kwargs = params.method_kwargs(method)
    number = len(state.attempts) + 1
    with mlflow.start_run(run_name=f"unlearn-{method}") as run:
        mlflow.log_params({"method": method, "seed": params.seed, "n_forget": len(forget),
                           "n_retain": len(data.retain), "parent_version": state.parent_version,
                           "attempt": number, "recalibrate_bn": recalibrates_bn(method, params.unlearn.recalibrate_bn),
                           **{f"method_{k}": v for k, v in kwargs.items()}})
        mlflow.set_tags({
            "stage": "unlearn", "method": method, "attempt": str(number), "ladder": ",".join(state.ladder),
            "request_batches": tag_list(state.batches),
            "forget_ids_digest": hash_ids(forget.ids.tolist(), load_or_create_salt(project.salt_path)),
            "data_version_before": state.data_version_before, "data_version_after": state.data_version_after,
            "git_commit": dvc_ops.git_commit(project),
        })
        log_dataset(store, state.data_version_after, "retain")
        if champion is not None and champion.tags.get("model_id"):
            mlflow.log_input(model=LoggedModelInput(model_id=champion.tags["model_id"]))
        started = time.perf_counter()
        if method == "retrain":
            model, _, _ = retrained_model(project, store, data)
        else:
            model = run_method(method, original, data, device=device, seed=params.seed, kwargs=kwargs,
                               recalibrate_bn=params.unlearn.recalibrate_bn)
        seconds = time.perf_counter() - started
        mlflow.log_metric("unlearn_seconds", seconds)
        recalibrated = method_info(model).get("bn_recalibrated")
        if recalibrated is not None:  # what was done, not what was configured: 0 for a model without batch norm
            mlflow.log_metric("bn_layers_recalibrated", recalibrated)
    candidate = project.models_dir / f"candidate-{number}-{method}.pt"
    with atomic_path(candidate) as tmp:
        torch.save(model.cpu().state_dict(), tmp)
    saved_at = utc_now(precise=True)  # the batches' "unlearned" step: the first rung's now, the passing rung's later
    state.attempts.append(Attempt(method=method, run_id=run.info.run_id, candidate=candidate.name,
                                  unlearn_seconds=seconds, started_at=saved_at))
    ledger = Ledger(project.ledger_path)
    ledger.mark_step(state.batches, "unlearned", saved_at)
    ledger.save()
    log.info("unlearn: attempt %d, %s forgot %d samples in %.1fs", number, method, len(forget), seconds)
    return write_escalation(project, state)


def run_unlearn(project: Project, *, attempt: Any = None, verify: Any = None) -> dict[str, Any]:
    """Run the escalation ladder: each method in turn until one's model passes verification.

    ``params.yaml: unlearn.method`` is tried first, then ``unlearn.escalation`` in order; every
    attempt is an MLflow run with its verdict. The Prefect flow passes its tasks as ``attempt``
    and ``verify`` so each rung is a task; ``dvc repro`` calls this with the plain functions.

    Args:
        project: The project.
        attempt: ``(project, method) -> state`` (default :func:`run_attempt`).
        verify: ``(project) -> report`` (default :func:`run_verify`).

    Returns:
        The final state: attempts with verdicts, the chosen attempt (or None if all failed).
    """
    attempt = attempt or run_attempt
    verify = verify or run_verify
    begin_unlearning(project)
    state = read_escalation(project)
    if not state.attempts:
        skipped_report(project, state.status)  # dvc.yaml declares the report as an output
    # A bar only when there is something to run: the ladder's length bounds the attempts.
    total = len(state.ladder) - len(state.attempts) if state.next_method else 0
    with progress.bar(total, "escalation", unit="attempt") if total > 0 else contextlib.nullcontext(
            progress.SILENT) as bar:
        while state.next_method:
            bar.set_description(f"escalation: {state.next_method}")
            attempt(project, state.next_method)
            verify(project)
            state = read_escalation(project)
            bar.update(1)
            done = state.attempts[-1] if state.attempts else None
            bar.set_postfix({"last": f"{done.method} {done.verdict}" if done else "None None"})
    return state.to_json()

