"""Task runners chosen by ``orchestration`` in params.yaml (Prefect has no setting for this).

The flows fan work out through :func:`fan_out`, which builds the configured runner itself, so a
flow honours ``params.yaml`` however it is started: ``unlearn run``, a served deployment's run
subprocess, or a direct call from Python. A local Dask cluster lives only as long as the fan-out.
"""

from __future__ import annotations

from typing import Any

from unlearn.config import OrchestrationConfig

# Dask's nanny sets these in every worker before it starts. OMP/MKL/OpenBLAS = 1 keeps one worker
# per core; MALLOC_TRIM_THRESHOLD_ is left out on purpose: setting it at all switches glibc's dynamic
# mmap threshold off, so torch's many short-lived (>128 KiB) buffers are mmapped and unmapped per step,
# which made a worker train the digits CNN 25-30 % slower (benchmarks/orchestration/dask_references.py).
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
# Dask's statistical profiler samples every worker thread's stack every 10 ms; with torch's tiny
# Python-bound steps that holds the GIL often enough to cost several percent. Nobody reads it here.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
                 "distributed.worker.profile.enabled": False}


def local_dask_cluster(**cluster_kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose workers are configured for CPU-bound torch tasks.

    Args:
        **cluster_kwargs: Passed to ``LocalCluster`` (``n_workers``, ``threads_per_worker``, ...).

    Returns:
        The started cluster (a context manager; Prefect's ``DaskTaskRunner`` closes it).
    """
    import dask
    from distributed import LocalCluster

    # The nanny reads both settings when it is created, so they only need to hold during start-up.
    with dask.config.set(WORKER_CONFIG):
        return LocalCluster(**cluster_kwargs)


def fan_out(task: Any, root: str, parameter: str, items: list[Any],
            config: OrchestrationConfig | None = None) -> list[Any]:
    """Run ``task(root=root, <parameter>=item)`` for every item on the configured task runner.

    Called from inside a flow: each call is a task run of that flow, whichever runner executes it.

    Args:
        task: A Prefect task taking ``root`` and ``parameter``.
        root: Project directory (passed unmapped to every call).
        parameter: The name of the task's mapped parameter.
        items: One value of ``parameter`` per task run (picklable, for Dask).
        config: The runner settings; default ``orchestration`` from the project's params.yaml.

    Returns:
        The task results, in the order of ``items``.
    """
    from prefect import unmapped

    if not items:
        return []
    if config is None:
        from tasks.project import load_project

        config = load_project(root).params.orchestration
    if config.task_runner == "sequential":
        # Called directly, each task runs in this (the flow's) thread. Not a one-thread pool: once
        # torch has used its OpenMP threads from one thread, using them from another counts as
        # oversubscription to libgomp, whose waits then turn passive, and this CNN trained
        # 2.3x slower (benchmarks/orchestration/dask_references.py, "Prefect, sequential").
        return [task(root=root, **{parameter: item}) for item in items]
    with build_task_runner(config) as runner:
        futures = runner.map(task, {"root": unmapped(root), parameter: list(items)})
        # Results are collected before the runner (and a local Dask cluster) shuts down.
        return [future.result() for future in futures]


def build_task_runner(config: OrchestrationConfig) -> Any:
    """The Prefect task runner for fan-out work (reference models, method sweeps).

    Args:
        config: ``orchestration`` from params.yaml.

    Returns:
        A ``ThreadPoolTaskRunner`` ("threads"; "sequential" is one worker, though :func:`fan_out`
        runs sequential work in the flow's own thread instead), or a
        ``prefect_dask.DaskTaskRunner`` connected to ``dask_address`` or starting a local
        cluster (:func:`local_dask_cluster`) of ``max_workers`` single-threaded worker processes ("dask").
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_class=local_dask_cluster,
                              cluster_kwargs={"n_workers": config.max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    workers = 1 if config.task_runner == "sequential" else config.max_workers
    return ThreadPoolTaskRunner(max_workers=workers)
