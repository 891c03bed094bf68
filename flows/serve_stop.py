"""Stopping ``unlearn serve`` within a bound, whatever its runs are doing.

Why: Prefect's ``Runner``, once cancelled, waits for every flow-run process it started (it joins
each in a worker thread, which cannot be cancelled), and :mod:`multiprocessing` joins the ones
still alive when the interpreter exits. A run waiting on the project lock, an audit's exact
retrain or a consolidation can take up to ``lifecycle.lock_timeout_seconds`` (an hour): Ctrl-C
used to hang that long (review of 2026-12-07; a test once saw serve not stop within 120 s).
Prefect's own SIGTERM handler calls the coroutine ``Runner.stop`` without awaiting it and then
``sys.exit``, so it never stopped anything either.

So serve handles SIGINT and SIGTERM itself (:func:`serve_until_signal`): the first one stops the
runner from starting new runs and gives the runs in flight ``serve.stop_grace_seconds`` to finish
(:class:`RunStopper`); then they are sent SIGTERM, and SIGKILL :data:`KILL_AFTER_SECONDS` later.
A second signal skips the grace, a third gets the signal's default action.

A stopped run is a crash like any other: the pipeline is built to be re-run after one (tested
after each stage by ``tests/pipeline/test_lifecycle.py`` and at every registry, file and ledger
write of promote, retire, purge and certify by ``tests/pipeline/test_crash_points.py``); its batch
stays pending, and the next ``unlearn serve`` announces it (``InboxWatcher.announce_pending_after``).

The runs share serve's process group (:func:`flows.warm.run_with_exit_handlers` says why), so a
signal to the whole group (a terminal's Ctrl-C) interrupts them at once, as under plain Prefect;
the grace applies to a signal sent to serve alone (``kill <pid>``, systemd with ``KillMode=mixed``).
A supervisor should give serve longer than ``stop_grace_seconds`` + 30 s before it kills
(systemd's ``TimeoutStopSec``, ``docker stop -t``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

KILL_AFTER_SECONDS = 30.0  # after SIGTERM, how long a run may take to exit before SIGKILL
MAX_GRACE_SECONDS = 86_400.0  # serve.stop_grace_seconds is capped here (params validation says so too)


def run_processes() -> list[Any]:
    """The flow-run processes this process started and that are still alive.

    Prefect starts every served run as a :mod:`multiprocessing` process (``spawn``, or the warm
    forkserver of :mod:`flows.warm`), so they are this process's multiprocessing children.
    """
    return multiprocessing.active_children()


class RunStopper:
    """Stops the runs in flight after a grace period, from a thread of its own.

    Args:
        grace_seconds: How long the runs may finish on their own after :meth:`begin`.
        say: Prints one line to the operator.
        processes: Returns the live run processes (objects with ``pid`` and ``is_alive()``).
        kill_after: Seconds from SIGTERM to SIGKILL.
    """

    def __init__(self, grace_seconds: float, say: Callable[[str], None],
                 processes: Callable[[], list[Any]] = run_processes, kill_after: float = KILL_AFTER_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.say = say
        self.processes = processes
        self.kill_after = kill_after
        self._now = threading.Event()
        self._thread: threading.Thread | None = None
        self.terminated: list[int] = []  # pids sent SIGTERM
        self.killed: list[int] = []  # pids sent SIGKILL

    def begin(self) -> None:
        """Start the countdown (once); returns at once."""
        if self._thread is not None:
            return
        alive = self.processes()
        if alive:
            self.say(f"unlearn serve: stopping; {len(alive)} run(s) in flight get {self.grace_seconds:g} s to finish, "
                     "then are stopped (Ctrl-C again: stop them now)")
        # A daemon thread: it keeps working while the interpreter runs its exit handlers (multiprocessing's join).
        self._thread = threading.Thread(target=self._countdown, name="unlearn-serve-stop", daemon=True)
        self._thread.start()

    def hurry(self) -> None:
        """End the grace period now (a second Ctrl-C)."""
        self._now.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the countdown to finish (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _signal(self, sig: int, into: list[int]) -> None:
        for process in self.processes():
            try:
                os.kill(process.pid, sig)
                into.append(process.pid)
            except (ProcessLookupError, TypeError):  # exited meanwhile, or never started (pid None)
                pass

    def kill_now(self) -> None:
        """SIGKILL every run still alive (a third signal: the operator wants out now)."""
        self._signal(signal.SIGKILL, self.killed)

    def _countdown(self) -> None:
        self._now.wait(min(self.grace_seconds, MAX_GRACE_SECONDS))
        alive = self.processes()
        if not alive:
            return
        self.say(f"unlearn serve: {len(alive)} run(s) still in flight: stopping them (SIGTERM; their batches stay "
                 "pending for the next run)")
        self._signal(signal.SIGTERM, self.terminated)
        deadline = time.monotonic() + self.kill_after
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill_now()  # nothing left to kill when they all exited in time


async def serve_until_signal(start: Callable[[], Awaitable[Any]], stopper: RunStopper) -> str | None:
    """Run ``start()`` (the runner) until SIGINT or SIGTERM, then stop it within the stopper's bound.

    Args:
        start: Returns the runner's main coroutine (``runner.start()``).
        stopper: What bounds the wait for the runs in flight.

    Returns:
        The name of the signal that stopped serving, or None when the runner ended on its own.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(start())
    await asyncio.sleep(0)  # the runner installs Prefect's SIGTERM handler first thing: ours replace it below
    stopping = asyncio.Event()
    received: list[str] = []  # every signal so far, SIGINT and SIGTERM together

    def on_signal(sig: signal.Signals) -> None:
        _count(stopper, received, sig)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    waiter = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the runner's own error, if it failed
            return None
        stopper.begin()  # before the cancellation: the runner waits for its runs while being cancelled
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return received[0]
    finally:
        waiter.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            if received:  # the rest of the shutdown (the exit handlers join the runs): the same count goes on
                signal.signal(sig, _after_stop(stopper, received))


def _count(stopper: RunStopper, received: list[str], sig: int) -> None:
    """One more stop signal (SIGINT and SIGTERM count together): the first stops serving (the caller's part), the
    second ends the grace, the third kills the runs and exits now (status 128 + the signal, as a shell reports it);
    the killed runs are crashes the next run recovers from."""
    received.append(signal.Signals(sig).name)
    if len(received) == 2:
        stopper.hurry()
    elif len(received) >= 3:
        stopper.kill_now()
        stopper.say(f"unlearn serve: stopped at once ({len(stopper.killed)} run(s) killed)")
        os._exit(128 + int(sig))


def _after_stop(stopper: RunStopper, received: list[str]) -> Callable[[int, Any], None]:
    """The handler for signals after serving stopped, with the same count, so that if the shutdown itself hangs a
    further Ctrl-C or SIGTERM still ends the process."""
    return lambda sig, frame: _count(stopper, received, sig)
