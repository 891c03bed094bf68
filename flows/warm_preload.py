"""What ``unlearn serve``'s forkserver does once before forking runs (:mod:`flows.warm`).

This module is the forkserver's preload target and is imported nowhere else (a test checks):
importing it *is* the warm-up, the one place in the product where an import does work on
purpose. It imports what a pipeline, audit or consolidation run imports, and does the few
first-call initialisations a run would otherwise pay each time, measured in a deletion run
(``benchmarks/orchestration/landing_latency.py``):

* MLflow's map from modules to installed distributions, built on every process's first
  ``log_model`` to check the model's pip requirements (a scan of site-packages, ~1.3 s);
* matplotlib's first drawing (font loading; the verification plots and the certificate chart).

Last, everything preloaded is moved out of the garbage collector's sight (``gc.freeze``): a run
forked from here would otherwise traverse these millions of long-lived objects in every full
collection, which made its verification and DVC steps slower than in a cold interpreter.

Nothing here touches a project, a registry, a device or a thread pool: every fork starts from
the same clean state. A library that fails to import is skipped (the run imports it itself).
"""

from __future__ import annotations

import gc
import importlib
import io

MODULES: tuple[str, ...] = (
    "torch", "torch._dynamo", "torch.optim", "torch.export", "torch._inductor.codecache",
    "great_expectations", "great_expectations.expectations", "mlflow", "mlflow.pytorch",
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "dvc.repo", "dvc.repo.commit", "sklearn.metrics", "matplotlib.pyplot", "pandas",
    "flows.pipeline", "flows.scheduled", "tasks.prefect_tasks", "tasks.validation", "tasks.tracking",
    "tasks.reporting", "tasks.certificate_html", "tasks.stage.ingest", "tasks.stage.prepare", "tasks.stage.train",
    "tasks.stage.references", "tasks.stage.verify", "tasks.stage.unlearn", "tasks.stage.promote", "tasks.lifecycle",
    "tasks.certify",
    "unlearn.methods", "unlearn.attacks",
)  # every stage module by name (they were reached only through tasks.prefect_tasks before)


def _warm() -> list[str]:
    """Import :data:`MODULES` and run the first-call initialisations; return what was skipped."""
    skipped = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a run that needs it imports it (and reports) itself
            skipped.append(name)
    try:
        import torch
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches([f"torch=={torch.__version__.split('+')[0]}"])
    except Exception:  # noqa: BLE001
        skipped.append("mlflow requirements map")
    try:
        from matplotlib import pyplot as plt

        figure, axes = plt.subplots(figsize=(1, 1))
        axes.set(xscale="log", title="warm", xlabel="x")
        figure.savefig(io.BytesIO(), format="png", dpi=20)
        plt.close(figure)
    except Exception:  # noqa: BLE001
        skipped.append("matplotlib first draw")
    return skipped


SKIPPED: list[str] = _warm()
gc.collect()
gc.freeze()
