"""A pytest plugin for benchmarks/suite_time.py: when each test starts and ends, per xdist worker.

Loaded with ``-p suite_clock`` (benchmarks/ on ``PYTHONPATH``) and active only when ``UNLEARN_SUITE_CLOCK_DIR``
names a directory: each process (the controller and every worker) appends ``<unix time> <start|end> <node id>``
lines to ``<worker>.log`` there. Nothing else is recorded (no test output, no data).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

_HANDLE: list[IO[str]] = []


def _log() -> IO[str] | None:
    directory = os.environ.get("UNLEARN_SUITE_CLOCK_DIR")
    if not directory:
        return None
    if not _HANDLE:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
        _HANDLE.append((Path(directory) / f"{worker}.log").open("a", buffering=1))
    return _HANDLE[0]


def pytest_sessionstart(session) -> None:  # noqa: ARG001 - pytest's hook signature
    if (log := _log()) is not None:
        log.write(f"{time.time():.3f} session -\n")


def pytest_runtest_logstart(nodeid: str, location) -> None:  # noqa: ARG001
    if (log := _log()) is not None:
        log.write(f"{time.time():.3f} start {nodeid}\n")


def pytest_runtest_logfinish(nodeid: str, location) -> None:  # noqa: ARG001
    if (log := _log()) is not None:
        log.write(f"{time.time():.3f} end {nodeid}\n")
