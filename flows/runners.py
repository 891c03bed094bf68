"""Task runners chosen by ``orchestration`` in params.yaml (Prefect has no setting for this)."""

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


def build_task_runner(config: OrchestrationConfig) -> Any:
    """The Prefect task runner for fan-out work (reference models, method sweeps).

    Args:
        config: ``orchestration`` from params.yaml.

    Returns:
        A ``ThreadPoolTaskRunner`` ("threads"; "sequential" is one worker), or a
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
