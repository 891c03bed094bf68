"""The ``unlearning-pipeline`` flow: every stage as a task of one flow run.

Without ``PREFECT_API_URL`` it runs against Prefect's temporary local server; with it, against
that server. ``dvc repro`` (through ``unlearn stage NAME``) runs the same stage functions
(:mod:`tasks.stage.catalog`).
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
    return str(load_project(root).root)


def reference_models(root: str) -> dict[str, Any]:
    """Plan, train (fanned out over params.yaml's task runner) and register reference models, as tasks.

    Call it inside a flow (the pipeline's, a method sweep's): the fan-out maps a task over the
    runner that ``params.yaml: orchestration`` names.
    """
    from flows.runners import fan_out
    from tasks.stage.references import use_batched

    plans = t.plan_references_task(root)
    groups = [plans] if plans and use_batched(load_project(root)) else [[p] for p in plans]
    trained = [r for group in fan_out(t.train_reference_task, root, "plans", groups) for r in group]
    return t.register_references_task(root, plans, trained)


def _escalate(root: str) -> dict[str, Any]:
    """The escalation ladder (tasks.stage.unlearn.run_unlearn) with each attempt and verification a task."""
    from tasks.stage.unlearn import run_unlearn

    return run_unlearn(load_project(root), attempt=lambda _, method: t.attempt_task(root, method),
                       verify=lambda _: t.verify_task(root))


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
    results["references"] = timed("references", lambda: reference_models(root))


@flow(name="unlearning-pipeline")
def pipeline_flow(root: str = ".") -> dict[str, Any]:
    """ingest -> prepare -> train -> references -> unlearn (+verify per attempt) -> promote -> purge -> certify.

    The stages run as tasks of this one flow run rather than as subflows: a subflow run costs
    about a second of API round trips on its own, a task a few milliseconds (one stage at a
    time runs as ``unlearn stage NAME``, which is what ``dvc repro`` does). The whole run holds the
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
