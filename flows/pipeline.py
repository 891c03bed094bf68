"""Flows: one per stage, and ``unlearning-pipeline`` chaining them.

Without ``PREFECT_API_URL`` they run against Prefect's temporary local server; with it, against
that server. ``dvc repro`` runs the same stage functions (see dvc.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow

from tasks import prefect_tasks as t
from tasks.project import Project, load_project
from tasks.stage.checks import check_params


@contextmanager
def command_run_settings() -> Iterator[None]:
    """Prefect settings for a flow run started by an ``unlearn`` command.

    On Prefect's temporary server (no ``PREFECT_API_URL``) flow-run heartbeats are turned off:
    they exist so that a long-lived server can mark crashed runs, and the temporary server dies
    with this process, so nobody watches them. In Prefect 3.8 the heartbeat thread also delays
    the end of every flow run by up to a second (it sleeps in 1 s steps and is joined on exit),
    which was most of the Prefect overhead of a deletion run (benchmarks/orchestration/overhead.py).
    Against a configured server (served deployments, a team server) nothing changes.
    """
    from prefect.settings import get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def run_pipeline(root: str) -> dict[str, Any]:
    """Run the ``unlearning-pipeline`` flow once, as ``unlearn run`` does.

    Args:
        root: Project directory.

    Returns:
        What :func:`pipeline_flow` returns.
    """
    with command_run_settings():
        return pipeline_flow(root=str(Path(root).resolve()))


def project_root(root: str) -> str:
    """Open the project (params.yaml validated and checked against the registries) and return its absolute root."""
    project = load_project(root)  # validates params.yaml before anything runs
    check_params(project.params)
    return str(project.root)


@contextmanager
def _locked(root: str) -> Iterator[str]:
    """Validate the project and hold its pipeline lock: no two flows touch one project at once."""
    from tasks.locking import pipeline_lock

    root = project_root(root)
    with pipeline_lock(load_project(root)):
        yield root


@flow(name="ingest")
def ingest_flow(root: str = ".") -> dict[str, Any]:
    """Validate incoming deletion requests into a pending batch."""
    with _locked(root) as root:
        t.dvc_init_task(root)
        result = t.ingest_task(root)
        t.dvc_commit_task(root, ["ingest"])
    return result


@flow(name="prepare")
def prepare_flow(root: str = ".") -> dict[str, Any]:
    """Materialise the sample store and record its data version with DVC."""
    with _locked(root) as root:
        t.dvc_init_task(root)
        result = t.prepare_task(root)
        t.dvc_commit_task(root, ["ingest", "prepare"])
        result["data_version"] = t.data_version_task(root)
        t.dvc_push_task(root)
    return result


@flow(name="train")
def train_flow(root: str = ".") -> dict[str, Any]:
    """Train and register the baseline (no-op when a champion exists)."""
    with _locked(root) as root:
        return t.train_task(root)


def _reference_models(root: str) -> dict[str, Any]:
    """Plan, train (fanned out over params.yaml's task runner) and register reference models."""
    from flows.runners import fan_out
    from tasks.stage.references import use_batched

    plans = t.plan_references_task(root)
    groups = [plans] if plans and use_batched(load_project(root)) else [[p] for p in plans]
    trained = [r for group in fan_out(t.train_reference_task, root, "plans", groups) for r in group]
    return t.register_references_task(root, plans, trained)


@flow(name="references")
def references_flow(root: str = ".") -> dict[str, Any]:
    """Top up the cached reference models (one task per model, run by the task runner)."""
    with _locked(root) as root:
        return _reference_models(root)


def _escalate(root: str) -> dict[str, Any]:
    """The escalation ladder (tasks.stage.unlearn.run_unlearn) with each attempt and verification a task."""
    from tasks.stage.unlearn import run_unlearn

    return run_unlearn(load_project(root), attempt=lambda _, method: t.attempt_task(root, method),
                       verify=lambda _: t.verify_task(root))


@flow(name="unlearn")
def unlearn_flow(root: str = ".") -> dict[str, Any]:
    """Unlearn every pending batch from the champion, escalating through the ladder, verifying each attempt."""
    with _locked(root) as root:
        return _escalate(root)


@flow(name="verify")
def verify_flow(root: str = ".") -> dict[str, Any]:
    """Verify the latest escalation attempt against a retrained reference."""
    with _locked(root) as root:
        return t.verify_task(root)


@flow(name="promote")
def promote_flow(root: str = ".") -> dict[str, Any]:
    """Register the unlearned model; move the champion alias if it passed."""
    with _locked(root) as root:
        result = t.promote_task(root)
        t.dvc_commit_task(root, [])
    return result


@flow(name="purge")
def purge_flow(root: str = ".") -> dict[str, Any]:
    """Retire models trained on deleted samples, purge every data copy, scan for the bytes."""
    with _locked(root) as root:
        return t.purge_task(root)


@flow(name="certify")
def certify_flow(root: str = ".") -> dict[str, Any]:
    """Write deletion certificates for closed batches."""
    with _locked(root) as root:
        return t.certify_task(root)


def _io_tasks(project: Project) -> tuple[Any, Any, Any]:
    """The DVC init, commit and push tasks with ``lifecycle.io_retries`` retries."""
    retries = project.params.lifecycle.io_retries
    return tuple(task.with_options(retries=retries) for task in (t.dvc_init_task, t.dvc_commit_task,
                                                                 t.dvc_push_task))


def stage_timer(timings: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    """``timed(name, call)``: run ``call`` and add its wall time to ``timings[name]``."""

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = call()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return value

    return timed


def run_until_unlearning(project: Project, results: dict[str, Any],
                         timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    """ingest -> prepare (DVC commit, data version, push) -> train -> references, as tasks of the current flow.

    What the pipeline runs before unlearning, and a method sweep before its candidates. The
    caller holds the project lock.

    Args:
        project: The project (validated).
        results: Filled with each stage's summary (``ingest``, ``prepare``, ``train``, ``references``).
        timed: From :func:`stage_timer`; wall times go under the stage names.
    """
    root = str(project.root)
    init, commit, push = _io_tasks(project)
    timed("ingest", lambda: init(root))
    results["ingest"] = timed("ingest", lambda: t.ingest_task(root))
    results["prepare"] = timed("prepare", lambda: t.prepare_task(root))
    timed("prepare", lambda: commit(root, ["ingest", "prepare"]))
    results["prepare"]["data_version"] = timed("prepare", lambda: t.data_version_task(root))
    timed("prepare", lambda: push(root))
    results["train"] = timed("train", lambda: t.train_task(root))
    results["references"] = timed("references", lambda: _reference_models(root))


@flow(name="unlearning-pipeline")
def pipeline_flow(root: str = ".") -> dict[str, Any]:
    """ingest -> prepare -> train -> references -> unlearn (+verify per attempt) -> promote -> purge -> certify.

    The stages run as tasks of this one flow run rather than as subflows: a subflow run costs
    about a second of API round trips on its own, a task a few milliseconds, and the stage
    flows above stay available for running one stage at a time. The whole run holds the
    project's pipeline lock, so two runs started together serialise.

    Args:
        root: Project directory.

    Returns:
        Each stage's summary and its wall time in seconds (``timings``).
    """
    from tasks.locking import pipeline_lock

    root = project_root(root)
    project = load_project(root)
    _, commit, _ = _io_tasks(project)
    with pipeline_lock(project) as waited:
        results: dict[str, Any] = {"timings": {}, "root": str(Path(root)), "lock_wait_seconds": round(waited, 3)}
        timed = stage_timer(results["timings"])
        run_until_unlearning(project, results, timed)
        results["unlearn"] = timed("unlearn", lambda: _escalate(root))
        results["promote"] = timed("promote", lambda: t.promote_task(root))
        results["purge"] = timed("purge", lambda: t.purge_task(root))
        results["certify"] = timed("certify", lambda: t.certify_task(root))
        timed("certify", lambda: commit(root, []))
    return results
