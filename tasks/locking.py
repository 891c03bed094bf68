"""One pipeline run at a time per project: an exclusive lock on ``data/.pipeline.lock``.

Two flows started together serialise: the second waits (up to ``lifecycle.lock_timeout_seconds``)
and then runs on the first one's result. The lock is an ``flock`` on an open file, so the kernel
releases it when the holder exits, crashed or not: a stale lock cannot block the project.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.project import PipelineError, Project

log = logging.getLogger("unlearn.pipeline")


@contextmanager
def pipeline_lock(project: Project, timeout: float | None = None) -> Iterator[float]:
    """Hold the project's pipeline lock for the duration of the block.

    Args:
        project: The project.
        timeout: Seconds to wait for another run to finish (default: ``lifecycle.lock_timeout_seconds``).

    Yields:
        Seconds spent waiting for the lock.

    Raises:
        PipelineError: If the lock is still held by another run after ``timeout`` seconds.
    """
    timeout = project.params.lifecycle.lock_timeout_seconds if timeout is None else timeout
    path = project.lock_path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    started = time.monotonic()
    announced = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started > timeout:
                    raise PipelineError(f"another pipeline run holds {path} ({_holder(fd)}); "
                                        f"gave up after {timeout:.0f}s") from None
                if not announced:
                    log.info("waiting for another pipeline run to finish (%s)", _holder(fd))
                    announced = True
                time.sleep(0.2)
        waited = time.monotonic() - started
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode(), 0)
        yield waited
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 256, 0) or b"{}")
        return f"pid {info.get('pid')}"
    except (OSError, ValueError):
        return "unknown holder"
