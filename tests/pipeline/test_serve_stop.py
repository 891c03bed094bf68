"""Stopping `unlearn serve` is bounded (flows/serve_stop.py), and its inbox watcher announces what a stopped run
left behind, survives files vanishing mid-scan and clocks running ahead, and never publishes a dropped file's name
(review of 2026-12-07). No Prefect server: the runner is imitated where it matters (a run joined in a thread that
cannot be cancelled, as Prefect's runner joins its run processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import serve
from flows.serve_stop import RunStopper

REPO = Path(__file__).resolve().parents[2]


def _sleeper(ignore_sigterm: bool, ready) -> None:
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(120)


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_the_stopper_terminates_runs_after_the_grace_and_kills_those_that_ignore_it(ignore_sigterm):
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    run = context.Process(target=_sleeper, args=(ignore_sigterm, ready))
    run.start()
    assert ready.wait(60)
    said = []
    stopper = RunStopper(0.3, said.append, processes=lambda: [p for p in [run] if p.is_alive()], kill_after=1.0)
    try:
        started = time.monotonic()
        stopper.begin()
        assert run.is_alive() and "1 run(s) in flight get 0.3 s to finish" in said[0]
        stopper.join(timeout=20)
        run.join(timeout=10)
        assert not run.is_alive() and time.monotonic() - started < 10
        assert stopper.terminated == [run.pid]
        assert stopper.killed == ([run.pid] if ignore_sigterm else [])
        assert run.exitcode == (-signal.SIGKILL if ignore_sigterm else -signal.SIGTERM)
    finally:
        if run.is_alive():
            run.kill()


def _short_run() -> None:
    time.sleep(1.0)


def test_a_run_that_finishes_within_the_grace_is_left_alone():
    run = multiprocessing.get_context("spawn").Process(target=_short_run)
    run.start()
    said = []
    stopper = RunStopper(5, said.append, processes=lambda: [p for p in [run] if p.is_alive()])
    stopper.begin()
    assert "1 run(s) in flight get 5 s to finish" in said[0]
    run.join(timeout=30)
    stopper.join(timeout=30)  # the countdown returns once the grace is over and nothing is alive
    assert run.exitcode == 0 and stopper.terminated == [] and stopper.killed == [] and len(said) == 1


# A runner that waits for its run as Prefect's does (a thread join shielded from cancellation): SIGINT stops the
# script within the grace plus a few seconds, the run is terminated, and a second SIGINT skips the grace.
RUNNER = textwrap.dedent("""
    import asyncio, multiprocessing, sys, time
    import anyio
    from flows.serve_stop import RunStopper, serve_until_signal

    def sleep_long(stubborn):
        if stubborn:  # a run that ignores SIGTERM: only SIGKILL (30 s later, or a third signal) ends it
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)

    async def runner():
        run = multiprocessing.get_context("spawn").Process(target=sleep_long, args=(sys.argv[2] == "stubborn",))
        run.start()
        time.sleep(1.5)  # its SIGTERM handler is in place
        print("run started", run.pid, flush=True)
        async with anyio.create_task_group() as runs:  # as Prefect's runner: a task group of uncancellable joins
            runs.start_soon(anyio.to_thread.run_sync, run.join)

    if __name__ == "__main__":
        stopper = RunStopper(float(sys.argv[1]), lambda line: print(line, flush=True))
        print("stopped by", asyncio.run(serve_until_signal(runner, stopper)), flush=True)
""")


@pytest.mark.parametrize("signals", [1, 2, 3])
def test_serve_until_signal_stops_within_its_bound_even_while_a_run_is_joined(tmp_path, signals):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    grace = 3.0 if signals == 1 else 120.0  # more signals: the grace is skipped, or this would take minutes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, str(script), str(grace), "stubborn" if signals == 3 else "plain"],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("run started"), line
        run_pid = int(line.split()[-1])
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        for sig in [signal.SIGTERM, signal.SIGINT][:signals - 1]:  # SIGINT and SIGTERM count together
            time.sleep(0.5)
            process.send_signal(sig)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - started < (grace + 10 if signals == 1 else 10)
    if signals < 3:
        assert process.returncode == 0, out
        assert "stopped by SIGINT" in out and "still in flight: stopping them" in out
    else:  # the third: the runs are killed and the signal takes its default action (exit now, not a clean stop)
        assert process.returncode == 128 + signal.SIGINT and "stopped at once (1 run(s) killed)" in out, out
    deadline = time.monotonic() + 10  # killed; an orphan is reaped by init a moment later
    while time.monotonic() < deadline:
        try:
            os.kill(run_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the run {run_pid} is still alive after serve stopped")


def test_the_watcher_announces_batches_left_pending_once_after_start(tmp_path):
    from unlearn.requests import Ledger

    (tmp_path / "data" / "requests" / "incoming").mkdir(parents=True)
    ledger = Ledger(tmp_path / "data" / "requests" / "ledger.json")
    ledger.add_batch("b1", ["r1"], ["s1"], "2026-12-07T00:00:00Z")
    ledger.save()
    now, sent = [1_000_000.0], []
    watcher = serve.InboxWatcher(tmp_path, 900, send=lambda e, p: sent.append((e, p)) or True, clock=lambda: now[0])
    assert watcher.poll() == []  # the server's trigger service may not know serve's new automations yet
    now[0] += serve.STARTUP_ANNOUNCE_DELAY_SECONDS
    assert watcher.poll() == [serve.WINDOW_ELAPSED]
    assert sent == [(serve.WINDOW_ELAPSED, {"pending_files": 0, "pending_batches": 1})]
    now[0] += 10_000
    assert watcher.poll() == []  # once per start: a batch held on purpose does not start a run every window
    # completed but not purged (a run stopped in purge): still announced; purged: nothing left to announce
    ledger.set_status("b1", Ledger.COMPLETED, {"at": "t", "outcome": "promoted"})
    ledger.save()
    assert serve.InboxWatcher(tmp_path, 900, send=lambda *_: True).pending_batches() == 1
    ledger.mark_step(["b1"], "purged", "t")
    ledger.save()
    fresh = serve.InboxWatcher(tmp_path, 900, send=lambda e, p: sent.append((e, p)) or True, clock=lambda: now[0])
    now[0] += serve.STARTUP_ANNOUNCE_DELAY_SECONDS
    assert fresh.poll() == [] and fresh.announce_pending_after is None


def test_a_damaged_ledger_or_salt_never_makes_the_watcher_fail(tmp_path):
    requests = tmp_path / "data" / "requests"
    (requests / "incoming").mkdir(parents=True)
    (requests / "ledger.json").write_text("{not json")
    (requests / ".salt").write_bytes(b"short")
    (requests / "incoming" / "dropped.csv").write_text("x")
    os.utime(requests / "incoming" / "dropped.csv", (time.time() - 60, time.time() - 60))
    sent = []
    watcher = serve.InboxWatcher(tmp_path, 3600, send=lambda e, p: sent.append(p) or True)
    assert watcher.pending_batches() == 0
    assert watcher.poll() == [serve.SUBMITTED] and sent[0]["file"] == "dropped file (name not published)"


def test_a_file_dated_in_the_future_is_still_announced_and_its_window_still_elapses(tmp_path):
    inbox = tmp_path / "data" / "requests" / "incoming"
    inbox.mkdir(parents=True)
    now, sent = [time.time()], []
    watcher = serve.InboxWatcher(tmp_path, 60, send=lambda e, p: sent.append(e) or True, clock=lambda: now[0])
    (inbox / "copied.csv").write_text("request_id\n")
    os.utime(inbox / "copied.csv", (now[0] + 3600, now[0] + 3600))  # `cp -p` from a host whose clock runs ahead
    assert watcher.poll() == []
    now[0] += serve.CLAIM_GRACE_SECONDS
    assert watcher.poll() == [serve.SUBMITTED]
    now[0] += 60
    assert watcher.poll() == [serve.WINDOW_ELAPSED]


def test_a_file_vanishing_mid_scan_does_not_hide_the_others(tmp_path, monkeypatch):
    inbox = tmp_path / "data" / "requests" / "incoming"
    inbox.mkdir(parents=True)
    for name in ("a.csv", "b.csv", "c.csv"):
        (inbox / name).write_text("x")
    real_scandir = os.scandir

    class Vanishing:
        def __init__(self, entries):
            self.entries = entries

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            for entry in self.entries:
                if entry.name == "b.csv":
                    (inbox / "b.csv").unlink()  # ingested between the listing and its stat
                yield entry

    def scandir(path):
        with real_scandir(path) as scan:
            return Vanishing(sorted(scan, key=lambda e: e.name))

    monkeypatch.setattr(serve.os, "scandir", scandir)
    watcher = serve.InboxWatcher(tmp_path, 60, send=lambda *_: True)
    assert sorted(watcher.pending()) == ["a.csv", "c.csv"]


def test_a_dropped_files_name_is_published_only_as_a_salted_hash(tmp_path):
    import hashlib

    name = "alice@example.com-erase-me.csv"
    salted = serve.request_payload(name, "watcher", b"0" * 32)
    other_salt = serve.request_payload(name, "watcher", b"1" * 32)
    assert salted["file"].startswith("hmac:") and salted != other_salt
    assert hashlib.sha256(name.encode()).hexdigest()[:16] not in json.dumps(salted)  # not guessable unsalted
    assert serve.request_payload(name, "watcher") == {"file": "dropped file (name not published)",
                                                      "source": "watcher"}
    # the watcher salts with the project's salt
    inbox = tmp_path / "data" / "requests" / "incoming"
    inbox.mkdir(parents=True)
    (inbox / name).write_text("x")
    os.utime(inbox / name, (time.time() - 60, time.time() - 60))
    sent = []
    serve.InboxWatcher(tmp_path, 3600, send=lambda e, p: sent.append(p) or True).poll()
    assert sent and sent[0]["file"].startswith("hmac:") and "alice" not in json.dumps(sent)
    assert (tmp_path / "data" / "requests" / ".salt").exists()


def test_purge_searches_the_quarantined_bytes_and_counts_what_it_cannot_search_for(tmp_path, monkeypatch):
    """The quarantine holds the bytes the models trained on; the upstream source may have dropped a sample since.
    Both are searched for, the quarantine first; a damaged quarantine file falls back to the source."""
    import types

    import numpy as np

    from tasks import lifecycle
    from unlearn.data.store import Arrays

    source = types.SimpleNamespace(ids=np.array(["s1", "s2", "t1"]), labels=np.array([0, 1, 0]),
                                   images=np.full((3, 1, 2, 2), 7, dtype=np.uint8))
    monkeypatch.setattr(lifecycle, "load_source", lambda cfg: source)
    project = types.SimpleNamespace(params=types.SimpleNamespace(data=None))
    quarantined = Arrays(np.array(["q1", "s1"]), np.full((2, 1, 2, 2), 9, dtype=np.uint8), np.array([2, 0]))
    got = lifecycle.deleted_arrays(project, ["q1", "s1", "t1", "gone"], known=quarantined)
    assert sorted(got.ids.tolist()) == ["q1", "s1", "t1"]  # "gone" is in neither: counted by run_purge
    assert int(got.images[got.ids.tolist().index("s1")].max()) == 9  # the trained bytes, not the source's
    assert lifecycle.deleted_arrays(project, ["q1"]).ids.tolist() == []  # without the quarantine: not found
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    import tasks.project

    monkeypatch.setattr(tasks.project, "quarantine_path", lambda project, batch: quarantine / f"{batch}.npz")
    np.savez(quarantine / "b1.npz", ids=quarantined.ids, images=quarantined.images, labels=quarantined.labels)
    (quarantine / "b2.npz").write_bytes(b"PK\x03\x04 truncated")
    read = lifecycle._quarantined(project, ["b1", "b2", "b3"])
    assert read.ids.tolist() == ["q1", "s1"]


def test_stop_grace_is_validated():
    from unlearn.config import ConfigError, parse_params

    assert parse_params({}).serve.stop_grace_seconds == 120
    for bad in (-1, float("nan"), float("inf"), 1e10):
        with pytest.raises(ConfigError, match="serve.stop_grace_seconds"):
            parse_params({"serve": {"stop_grace_seconds": bad}})
