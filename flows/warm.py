"""Warm flow-run processes for ``unlearn serve``: each served run forks from a preloaded interpreter.

Why: Prefect's runner starts every run of a served deployment in a fresh ``spawn`` interpreter
(``prefect.flow_engine.run_flow_in_subprocess``). That run then imports Prefect, torch (and
``torch._dynamo``, which the first ``torch.optim`` optimiser pulls in), Great Expectations, MLflow,
DVC, scikit-learn and matplotlib: 11 s together on the 2-core machine the benchmarks run on, more
than all the work of a small deletion batch (``benchmarks/orchestration/landing_latency.py``).

With ``serve.warm_start`` (the default where the platform has it), ``unlearn serve`` starts a
multiprocessing *forkserver* once, which imports :data:`PRELOAD` (:mod:`flows.warm_preload`: the
libraries and their first-call set-up) single-threaded, before any CUDA context, thread pool or
Prefect client exists, and Prefect's run subprocesses are started from it
instead of by ``spawn``. Each run is still its own process, a fresh fork of the same pristine
preloaded interpreter, so nothing leaks from one run to the next (as with ``spawn``); what the
run does, its environment (Prefect passes it explicitly) and its results are unchanged.

The routing replaces the ``multiprocessing`` module that ``prefect.flow_engine`` looks the start
method up in (only for that module, and only inside the serve process): it is tied to Prefect
3.8's ``run_flow_in_subprocess``, which :func:`install` checks, falling back to ``spawn`` with a
message when the check fails.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

# The forkserver imports this one module; importing it is the warm-up (imports and first-call set-up).
PRELOAD: tuple[str, ...] = ("flows.warm_preload",)
PROBE_TIMEOUT_SECONDS = 600.0  # the preload imports for about 11 s on 2 cores; far more means it is stuck


def run_with_exit_handlers(target: Any, *args: Any) -> Any:
    """Run a forked run's ``target``, then its ``atexit`` handlers.

    A forkserver child ends with ``os._exit`` where a spawned one ran ``atexit`` (MLflow's end of
    an active run, temporary directories registered for removal at exit, log flushing): run them
    here so a warm run cleans up as a cold one does.

    The run stays in serve's process group, as a spawned one does. A session of its own would spare
    it a terminal's Ctrl-C, but a SIGTERM or SIGHUP to the group (closing the terminal, ``kill
    -- -PGID``) would then kill the forkserver and not the runs: serve would lose sight of them and
    exit while they run on, orphaned, holding the project lock (review of 2026-12-07).
    """
    import atexit

    try:
        return target(*args)
    finally:
        atexit._run_exitfuncs()


class _WarmContext:
    """The forkserver context, with every process's target wrapped by :func:`run_with_exit_handlers`."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def Process(self, *args: Any, target: Any = None, **kwargs: Any) -> Any:  # noqa: N802 - multiprocessing's name
        call_args = tuple(kwargs.pop("args", ()))
        return self._context.Process(*args, target=run_with_exit_handlers, args=(target, *call_args), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _RoutedMultiprocessing:
    """``multiprocessing`` as ``prefect.flow_engine`` sees it, with ``spawn`` served by ``context``."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context if method == "spawn" else multiprocessing.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def available() -> bool:
    """Whether this platform can fork runs from a forkserver (Linux and macOS; not Windows)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def install(preload: tuple[str, ...] = PRELOAD) -> float:
    """Start the forkserver, wait until it has imported ``preload``, and route Prefect's run
    subprocesses through it.

    Call it once in the serve process, before serving. Blocking on the preload here means the
    first triggered run does not pay for it.

    Args:
        preload: Module names the forkserver imports.

    Returns:
        Seconds the preload took.

    Raises:
        RuntimeError: The platform has no forkserver, this Prefect's run_flow_in_subprocess is not
            the one the routing was written for, or the preload failed.
    """
    import inspect

    from prefect import flow_engine

    if not available():
        raise RuntimeError("this platform has no forkserver start method")
    source = inspect.getsource(flow_engine.run_flow_in_subprocess)
    if 'multiprocessing.get_context("spawn")' not in source:
        raise RuntimeError("prefect.flow_engine.run_flow_in_subprocess no longer starts runs with "
                           "multiprocessing.get_context('spawn')")
    # matplotlib picks its backend at import; runs never display (tasks.reporting also asks for Agg).
    os.environ.setdefault("MPLBACKEND", "Agg")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    started = time.perf_counter()
    # The forkserver skips a preload module that fails to import: the probe checks they are all there.
    probe = context.Process(target=exec, name="unlearn-warm-start-probe", args=(
        f"import os, sys; os._exit(0 if all(m in sys.modules for m in {list(preload)!r}) else 4)",))
    probe.start()
    probe.join(timeout=PROBE_TIMEOUT_SECONDS)
    if probe.exitcode is None:
        probe.kill()
        raise RuntimeError(f"the forkserver did not start a process within {PROBE_TIMEOUT_SECONDS:g} s")
    if probe.exitcode != 0:
        raise RuntimeError("the preload failed to import" if probe.exitcode == 4 else
                           f"the forkserver's first process exited with {probe.exitcode}")
    flow_engine.multiprocessing = _RoutedMultiprocessing(_WarmContext(context))  # type: ignore[assignment]
    return time.perf_counter() - started


def is_installed() -> bool:
    """Whether Prefect's run subprocesses are routed through the forkserver in this process."""
    from prefect import flow_engine

    return isinstance(flow_engine.multiprocessing, _RoutedMultiprocessing)


def context() -> Any:
    """The context Prefect's run subprocesses are started with in this process."""
    from prefect import flow_engine

    return flow_engine.multiprocessing.get_context("spawn")
