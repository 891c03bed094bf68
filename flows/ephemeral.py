"""Prefect's temporary server must not outlive the command that started it.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server in a child process
(``python -m uvicorn ...``) and stops it when the parent exits normally. A parent killed with
SIGKILL (the OOM killer, a CI timeout, ``kill -9``) gets no chance to, and the server stays
behind holding a port and memory. On Linux the child can ask the kernel to send it SIGTERM when
its parent dies (``prctl(PR_SET_PDEATHSIG)``); this module arranges that for the temporary
server only, by giving Prefect's server module a ``subprocess`` whose ``Popen`` sets it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import types

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int):
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def temporary_server_dies_with_parent() -> bool:
    """Make every temporary Prefect server this process starts die with it (Linux only).

    Returns:
        True when installed (or already installed), False where the platform has no PDEATHSIG.
    """
    if not sys.platform.startswith("linux"):
        return False
    from prefect.server.api import server as prefect_server

    if getattr(prefect_server.subprocess, "_unlearn_pdeathsig", False):
        return True

    def popen(*args, **kwargs):
        kwargs.setdefault("preexec_fn", _die_with(os.getpid()))
        return subprocess.Popen(*args, **kwargs)

    # Only Prefect's server module sees this namespace; every other user of subprocess is untouched.
    patched = types.SimpleNamespace(**{k: getattr(subprocess, k) for k in dir(subprocess) if not k.startswith("__")})
    patched.Popen = popen
    patched._unlearn_pdeathsig = True
    prefect_server.subprocess = patched
    return True
