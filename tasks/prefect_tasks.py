"""Prefect tasks: thin wrappers around the stage functions and the DVC operations.

Tasks take the project root (a string) rather than objects, so they stay picklable for any
task runner. Retries go on I/O (DVC) only, never on training.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import dvc_ops, sweep
from tasks.project import load_project
from tasks.stage import catalog, references
from tasks.stage import unlearn as unlearn_stage


def _retry_io(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures only: a bad request or parameter fails the same way twice."""
    from tasks.project import PipelineError
    from unlearn.config import ConfigError

    try:
        state.result(raise_on_failure=True)
    except (PipelineError, ConfigError):
        return False
    except Exception:  # noqa: BLE001 - anything else (OS, database, network) may be transient
        return True
    return False


def _stage_task(name: str, retries: int = 0):
    # Idempotent stages (promote, purge, certify) are safe to retry after a transient I/O error.
    options = {"retries": retries, "retry_delay_seconds": 2, "retry_condition_fn": _retry_io} if retries else {}

    @task(name=name, cache_policy=NO_CACHE, log_prints=False, **options)
    def run(root: str) -> dict[str, Any]:
        # Looked up at call time, so a test can inject a fault into any stage.
        return catalog.STAGE_FUNCTIONS[name](load_project(root))

    run.__doc__ = f"Prefect task for the {name!r} stage (tasks.stage.catalog.STAGE_FUNCTIONS[{name!r}])."
    return run


ingest_task = _stage_task("ingest")
prepare_task = _stage_task("prepare")
train_task = _stage_task("train")
references_task = _stage_task("references")
verify_task = _stage_task("verify")
promote_task = _stage_task("promote", retries=2)
purge_task = _stage_task("purge", retries=2)
certify_task = _stage_task("certify", retries=2)


@task(name="unlearn-attempt", cache_policy=NO_CACHE)
def attempt_task(root: str, method: str) -> dict[str, Any]:
    """One rung of the escalation ladder: unlearn the pending batches with ``method``."""
    return unlearn_stage.run_attempt(load_project(root), method)


@task(name="dvc-init", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
def dvc_init_task(root: str) -> None:
    """Initialise Git/DVC and the default remote if needed."""
    dvc_ops.ensure_repo(load_project(root))


@task(name="dvc-commit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
def dvc_commit_task(root: str, stage_names: list[str]) -> None:
    """Record stage outputs (all stages when empty) in dvc.lock and the DVC cache."""
    dvc_ops.commit(load_project(root), *stage_names)


@task(name="data-version", cache_policy=NO_CACHE)
def data_version_task(root: str) -> str:
    """The data version (DVC hash of data/store) recorded in dvc.lock."""
    return dvc_ops.data_version(load_project(root))


@task(name="dvc-push", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def dvc_push_task(root: str) -> None:
    """Upload the data versions to the default remote."""
    dvc_ops.push(load_project(root))


@task(name="plan-references", cache_policy=NO_CACHE)
def plan_references_task(root: str) -> list[Any]:
    """Reference models to train (retires those of another recipe first)."""
    return references.plan_references(load_project(root))


@task(name="train-reference", cache_policy=NO_CACHE)
def train_reference_task(root: str, plans: list[Any]) -> list[dict[str, Any]]:
    """Train a group of reference models (one, or all of them when batched): fanned out by the task runner."""
    return references.train_references(load_project(root), plans)


@task(name="register-references", cache_policy=NO_CACHE)
def register_references_task(root: str, plans: list[Any], trained: list[dict[str, Any]]) -> dict[str, Any]:
    """Store trained reference models with their lineage."""
    return references.register_references(load_project(root), plans, trained)


# --------------------------------------------------------------------------- method sweeps (tasks.sweep)


@task(name="sweep-plan", cache_policy=NO_CACHE)
def plan_sweep_task(root: str, methods: list[str] | None, overrides: list[str] | None) -> list[dict[str, Any]]:
    """The sweep's candidates (method + kwargs), validated against the method registry."""
    return sweep.plan_sweep(load_project(root), methods, overrides)


@task(name="sweep-prepare", cache_policy=NO_CACHE)
def prepare_sweep_task(root: str, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Save the champion's weights and cache the shared evidence once, before the candidates fan out."""
    return sweep.prepare_sweep(load_project(root), candidates)


@task(name="sweep-candidate", cache_policy=NO_CACHE)
def sweep_candidate_task(root: str, candidate: dict[str, Any]) -> dict[str, Any]:
    """Unlearn and evaluate one candidate: fanned out by the task runner (any worker process)."""
    return sweep.run_candidate(load_project(root), candidate)


@task(name="sweep-record", cache_policy=NO_CACHE)
def record_sweep_task(root: str, prepared: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the sweep's report and table and log them to MLflow (parent run + one nested run per candidate)."""
    return sweep.record_sweep(load_project(root), prepared, results)
