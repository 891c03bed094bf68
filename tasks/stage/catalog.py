"""Every stage by name: what ``unlearn stage NAME``, ``dvc repro`` (through that command) and the Prefect tasks call."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# The pipeline, in order. "verify" runs inside "unlearn" (once per escalation attempt) and stays
# available on its own to re-verify the latest attempt.
STAGES = ("ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")

# Where each stage's function lives. `dvc repro` starts one process per stage, and a light stage (ingest, purge,
# certify) spent part of its time importing every other stage's module: each is imported when its stage is first
# called, not when the catalog is. (Torch still comes in through the params check, which validates method and
# attack names against their registries.)
_WHERE = {
    "ingest": ("tasks.stage.ingest", "run_ingest"), "prepare": ("tasks.stage.prepare", "run_prepare"),
    "train": ("tasks.stage.train", "run_train"), "references": ("tasks.stage.references", "run_references"),
    "unlearn": ("tasks.stage.unlearn", "run_unlearn"), "verify": ("tasks.stage.verify", "run_verify"),
    "promote": ("tasks.stage.promote", "run_promote"), "purge": ("tasks.lifecycle", "run_purge"),
    "certify": ("tasks.lifecycle", "run_certify"),
}


def _stage(name: str) -> Callable[[Any], dict[str, Any]]:
    module, function = _WHERE[name]

    def run(project: Any) -> dict[str, Any]:
        return getattr(importlib.import_module(module), function)(project)

    run.__name__ = run.__qualname__ = function
    run.__doc__ = f"The {name!r} stage: {module}.{function}(project), imported on first call."
    return run


STAGE_FUNCTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {name: _stage(name) for name in _WHERE}
