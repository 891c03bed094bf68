"""Task runners chosen by ``orchestration`` in params.yaml (Prefect has no setting for this)."""

from __future__ import annotations

from typing import Any

from unlearn.config import OrchestrationConfig


def build_task_runner(config: OrchestrationConfig) -> Any:
    """The Prefect task runner for fan-out work (reference models, sweeps).

    Args:
        config: ``orchestration`` from params.yaml.

    Returns:
        A ``ThreadPoolTaskRunner`` ("threads"; "sequential" is one worker), or a
        ``prefect_dask.DaskTaskRunner`` connected to ``dask_address`` or starting a local
        cluster of ``max_workers`` single-threaded worker processes ("dask").
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    workers = 1 if config.task_runner == "sequential" else config.max_workers
    return ThreadPoolTaskRunner(max_workers=workers)
