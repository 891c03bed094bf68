"""A real, separate ``prefect server start`` for a block of code (tests, benchmarks, the demo).

``unlearn server start`` (:mod:`flows.serve`) is the long-lived one for people.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def prefect_command() -> str:
    """The ``prefect`` executable next to this interpreter (the venv's), else whichever is on PATH."""
    prefect = Path(sys.executable).with_name("prefect")
    return str(prefect) if prefect.exists() else "prefect"


@contextmanager
def background_prefect_server(home: Path, *, startup_timeout: float = 180.0) -> Iterator[str]:
    """Run ``prefect server start`` on a free loopback port, with its own ``PREFECT_HOME``, for a block.

    For tests and benchmarks that need a real, separate Prefect server (``unlearn server start``
    is the long-lived one for people).

    Args:
        home: The server's ``PREFECT_HOME`` (its database lives there).
        startup_timeout: Seconds to wait for its ``/health`` to answer.

    Yields:
        The API URL (``http://127.0.0.1:<port>/api``), for ``PREFECT_API_URL``.

    Raises:
        RuntimeError: If the server exits or does not answer in time.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen([prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + startup_timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"prefect server did not start on port {port}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
