"""A command killed with SIGKILL takes Prefect's temporary server down with it (no orphan)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

DRIVER = """
import time
from flows.ephemeral import temporary_server_dies_with_parent
assert temporary_server_dies_with_parent()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start(timeout=150)
print(server.server_process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_temporary_server_dies_with_a_killed_parent(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    parent = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the temporary server did not start (exit {parent.poll()})"
        server = int(line)
        assert _alive(server)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = _alive(server)
        if alive:
            os.kill(server, signal.SIGKILL)
        assert not alive, "the temporary Prefect server outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
