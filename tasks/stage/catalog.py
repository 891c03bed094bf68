"""Every stage by name: what ``unlearn stage NAME``, ``dvc repro`` (through that command) and the Prefect tasks call.

Stages are looked up lazily: ``dvc repro`` starts one process per stage, and most runs of most stages find
nothing to do. Importing all eight modules up front loaded torch (about 1 s a process) into stages that never
touch a model (ingest, purge, certify); each name now imports only its own module, on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from importlib import import_module
from typing import Any

# The pipeline, in order. "verify" runs inside "unlearn" (once per escalation attempt) and stays
# available on its own to re-verify the latest attempt.
STAGES = ("ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")

_WHERE = {
    "ingest": ("tasks.stage.ingest", "run_ingest"), "prepare": ("tasks.stage.prepare", "run_prepare"),
    "train": ("tasks.stage.train", "run_train"), "references": ("tasks.stage.references", "run_references"),
    "unlearn": ("tasks.stage.unlearn", "run_unlearn"), "verify": ("tasks.stage.verify", "run_verify"),
    "promote": ("tasks.stage.promote", "run_promote"), "purge": ("tasks.lifecycle", "run_purge"),
    "certify": ("tasks.certify", "run_certify"),
}


class _StageFunctions(MutableMapping[str, Callable[[Any], dict]]):
    """Stage name -> ``run_<stage>(project)``, each imported when first looked up.

    A mapping, not a module-level dict of imported functions, so that looking up one stage imports one
    module; assignable, so tests can put a crashing stand-in under a name (``monkeypatch.setitem``).
    """

    def __init__(self) -> None:
        self._set: dict[str, Callable[[Any], dict]] = {}

    def __getitem__(self, name: str) -> Callable[[Any], dict]:
        if name in self._set:
            return self._set[name]
        module, function = _WHERE[name]  # KeyError for an unknown stage, as a dict would raise
        return getattr(import_module(module), function)

    def __contains__(self, name: object) -> bool:
        return name in _WHERE  # without importing the stage

    def __setitem__(self, name: str, function: Callable[[Any], dict]) -> None:
        if name not in _WHERE:
            raise KeyError(f"no stage named {name!r}")
        module, attribute = _WHERE[name]
        if function is getattr(import_module(module), attribute):
            self._set.pop(name, None)  # its own function again (a test's undo): looked up afresh from now on
        else:
            self._set[name] = function

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"stages cannot be removed from the catalog ({name!r}); assign a function to replace one")

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


STAGE_FUNCTIONS: MutableMapping[str, Callable[[Any], dict]] = _StageFunctions()
