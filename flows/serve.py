"""``unlearn serve`` and ``unlearn server start``: the pipeline as long-lived Prefect deployments.

``unlearn serve`` serves two deployments of the ``unlearning-pipeline`` flow for one project:

* ``nightly-<key>``: on the cron schedule of ``serve.cron`` (the nightly batch);
* ``on-request-<key>``: started by events, with a batching window: a run starts after
  ``serve.trigger_after_requests`` (N) requests or ``serve.trigger_window_minutes`` (T) after the
  oldest unprocessed request, whichever comes first.

``<key>`` is a hash of the project's absolute path: projects served against one Prefect server
get their own deployments, and the events name the project as their resource
(``unlearn.project.<key>``), so a request for one project never starts another's run.

Batching window design (Prefect 3.8 automations). One reactive trigger with ``threshold=N,
within=T`` covers only half of "N or T": it fires on the N-th event inside a bucket, but a bucket
that expires with fewer events is dropped silently, and after firing Prefect ignores matching
events until the old bucket's end. So the ``on-request`` deployment has two triggers (each its own
automation; either one starts a run):

1. count: expects ``unlearn.request.submitted`` with ``threshold=N, within=T`` (with N = 1,
   ``within=0``, so every request fires at once and there is no dead time);
2. window: expects ``unlearn.request.window_elapsed`` with ``threshold=1``. The serve process
   emits it when the oldest request file still waiting in ``data/requests/incoming`` is T old
   (file age from its mtime, so it survives restarts), at most once per T.

Requests the count trigger missed (fewer than N, or inside Prefect's dead time) therefore start a
run at most T (+ one poll interval) after they arrived. A run that finds nothing new is cheap, and
runs never overlap on a project: the flow holds the project lock.

``unlearn request submit`` emits ``unlearn.request.submitted`` right after writing its file (best
effort: without a reachable server the file just waits) and claims the file name in
``data/requests/emitted-events.txt``; the serve process's watcher thread emits the same event for
every other file that lands in the inbox (dropped by hand or by another system), once per file.
Events carry only the file name (a timestamp and a salted hash of the request id; a dropped file's
name only as a salted hash) and a source: never a subject reference or a sample id.

A few seconds after it starts, serve also sends a window event when the ledger holds pending
batches: a run stopped before it finished (serve restarted, a run killed) leaves its batch pending
with its requests already out of the inbox, where no file would announce it. Stopping serve
(Ctrl-C, SIGTERM) is bounded: see :mod:`flows.serve_stop`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unlearn.files import write_text_atomic

SUBMITTED = "unlearn.request.submitted"
WINDOW_ELAPSED = "unlearn.request.window_elapsed"
EMITTED_LOG = "emitted-events.txt"  # in data/requests: inbox files whose event was already sent
EMIT_TIMEOUT_SECONDS = 10.0
CLAIM_LOG_PRUNE_BYTES = 16 * 1024  # the claim log is rewritten to the files still in the inbox past this size
CLAIM_GRACE_SECONDS = 15.0  # the watcher leaves a new inbox file this long to `request submit`
# After start, the watcher waits this long before announcing batches left pending: the server's trigger service
# must have loaded the automations serve just created, or the event starts nothing.
STARTUP_ANNOUNCE_DELAY_SECONDS = 10.0


# --------------------------------------------------------------------------- pure parts


def project_key(root: str | Path) -> str:
    """A short, stable id of a project: the first 12 hex digits of SHA-256 of its absolute path."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def project_resource(root: str | Path) -> dict[str, str]:
    """The Prefect resource every event of this project names (trigger matching uses its id)."""
    return {"prefect.resource.id": f"unlearn.project.{project_key(root)}", "prefect.resource.name": "unlearn project"}


def request_payload(file_name: str, source: str, salt: bytes | None = None) -> dict[str, str]:
    """The payload of a ``unlearn.request.submitted`` event: no personal data.

    Args:
        file_name: The inbox file's name. Files written by ``request submit`` are named from a time
            stamp and a salted hash of the request id; other names are reduced to a salted hash.
        source: ``cli`` (request submit) or ``watcher`` (a file dropped into the inbox).
        salt: The project's secret salt (``data/requests/.salt``). A dropped file's name is chosen by
            whoever dropped it (``alice@example.com-erase-me.csv``): an unsalted hash of it could be
            confirmed by hashing guesses (review of 2026-12-07). Without a salt the name is left out.

    Returns:
        ``{"file": ..., "source": ...}``.
    """
    import re

    from unlearn.requests.hashing import SUBMITTED_NAME, recorded_file_name

    if salt is None and not re.fullmatch(SUBMITTED_NAME, file_name):
        return {"file": "dropped file (name not published)", "source": source}
    return {"file": file_name if salt is None else recorded_file_name(file_name, salt), "source": source}


def window_due(pending_since: Iterable[float], now: float, window_seconds: float,
               last_window_event: float | None) -> bool:
    """Whether the batching window has elapsed: the oldest unprocessed request is ``window_seconds``
    old and no window event was sent during the last ``window_seconds``.

    Args:
        pending_since: Arrival time (epoch seconds) of every request file still in the inbox.
        now: The current time (epoch seconds).
        window_seconds: T.
        last_window_event: When the last window event was sent, or None.

    Returns:
        True if a ``unlearn.request.window_elapsed`` event should be sent now.
    """
    oldest = min(pending_since, default=None)
    if oldest is None or now - oldest < window_seconds:
        return False
    # A run may still be ingesting, or may have failed: do not re-fire more often than every T.
    return last_window_event is None or now - last_window_event >= window_seconds


def build_triggers(root: str | Path, after_requests: int, window_minutes: float) -> list[Any]:
    """The two triggers of the ``on-request`` deployment (count and window; see the module docs)."""
    from datetime import timedelta

    from prefect.events import DeploymentEventTrigger

    match = {"prefect.resource.id": project_resource(root)["prefect.resource.id"]}
    window = timedelta(minutes=window_minutes)
    return [
        DeploymentEventTrigger(
            name=f"unlearn {project_key(root)}: {after_requests} request(s)", expect={SUBMITTED}, match=match,
            threshold=after_requests, within=window if after_requests > 1 else timedelta(0)),
        DeploymentEventTrigger(
            name=f"unlearn {project_key(root)}: {window_minutes:g} min window", expect={WINDOW_ELAPSED},
            match=match, threshold=1, within=timedelta(0)),
    ]


# --------------------------------------------------------------------------- emitting events


def api_url() -> str | None:
    """The configured Prefect API URL (environment or active profile), or None.

    ``PREFECT_API_URL`` in the environment is read directly: importing Prefect's settings costs
    about 0.9 s, most of what ``unlearn request submit`` took.
    """
    if os.environ.get("PREFECT_API_URL") is not None:
        return os.environ["PREFECT_API_URL"] or None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _auth_headers() -> dict[str, str]:
    """Prefect's two ways to authenticate to a server: an API key (Cloud) or a basic-auth string,
    read from where the URL came from (the environment, or Prefect's active profile)."""
    import base64

    def setting(name: str) -> str | None:
        if os.environ.get("PREFECT_API_URL") is not None:
            return os.environ.get(name) or None
        import prefect.settings

        value = getattr(prefect.settings, name).value()
        return (value.get_secret_value() if hasattr(value, "get_secret_value") else value) or None

    # The same precedence as Prefect's client: a basic-auth string first, then an API key.
    if auth := setting("PREFECT_API_AUTH_STRING"):
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    if key := setting("PREFECT_API_KEY"):
        return {"Authorization": f"Bearer {key}"}
    return {}


def emit(event: str, root: str | Path, payload: dict[str, Any], url: str | None = None) -> bool:
    """Send one event to the Prefect server at ``url`` (default: PREFECT_API_URL) and wait for it.

    First a plain ``POST {api}/events`` (the server's batch endpoint): no Prefect import and no
    websocket, so ``unlearn request submit`` stays quick. If the server answers with an error
    (authentication kept in a Prefect profile, CSRF protection, ...), the event goes through
    Prefect's own events client, which knows every setting. Never starts Prefect's temporary server
    (events sent there would die with this process).

    Returns:
        Whether the event was sent.
    """
    import urllib.error
    import uuid
    from datetime import UTC, datetime

    url = url or api_url()
    if not url:
        return False
    body = [{"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(), "event": event,
             "resource": project_resource(root), "related": [], "payload": payload}]
    try:
        request = urllib.request.Request(f"{url.rstrip('/')}/events", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **_auth_headers()})
        with urllib.request.urlopen(request, timeout=EMIT_TIMEOUT_SECONDS) as response:
            if 200 <= response.status < 300:
                return True
    except urllib.error.HTTPError:
        pass  # the server is there but refused the plain request: Prefect's client below
    except Exception:  # noqa: BLE001 - unreachable (best effort: the caller decides what a failure means)
        return False
    return _emit_with_prefect(event, root, payload, url)


def _emit_with_prefect(event: str, root: str | Path, payload: dict[str, Any], url: str) -> bool:
    """:func:`emit` through Prefect's websocket events client (auth, CSRF and TLS from Prefect's settings)."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    async def send() -> None:
        async with PrefectEventsClient(api_url=url, reconnection_attempts=0) as client:
            await client.emit(Event(event=event, resource=project_resource(root), payload=payload))

    try:
        asyncio.run(asyncio.wait_for(send(), EMIT_TIMEOUT_SECONDS))
    except Exception:  # noqa: BLE001 - best effort: the caller decides what a failure means
        return False
    return True


def _emitted_log(root: Path) -> Path:
    return Path(root) / "data" / "requests" / EMITTED_LOG


def emit_submitted(root: str | Path, path: Path) -> bool:
    """Best effort: tell the served ``on-request`` deployment that ``path`` was submitted.

    Called by ``unlearn request submit`` after the file is written. A missing or unreachable
    server is not an error: the file waits in the inbox for the watcher, the window or the
    nightly run. The file is claimed in ``data/requests/emitted-events.txt`` *before* the event
    is sent (and released with a ``!name`` line if sending fails), so the watcher, polling in
    between, never sends a second event for it.

    Returns:
        Whether the event was sent.
    """
    root = Path(root).resolve()
    if not api_url():
        return False
    _append(_emitted_log(root), path.name)
    if emit(SUBMITTED, root, request_payload(path.name, "cli")):
        return True
    _append(_emitted_log(root), "!" + path.name)  # the watcher sends it when the server is back
    return False


@contextmanager
def _claims_locked(log: Path) -> Iterator[None]:
    """Serialise appends to and rewrites of the claim log across processes (a sidecar lock file:
    a rewrite replaces the log's inode, so the log itself cannot carry the lock)."""
    import fcntl

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_name(log.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _append(log: Path, line: str) -> None:
    with _claims_locked(log), open(log, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def prune_claims(log: Path, still_waiting: Callable[[], Iterable[str]]) -> int:
    """Drop the claims of files no longer in the inbox (ingested), so the log stays small.

    Args:
        log: The claim log (``data/requests/emitted-events.txt``).
        still_waiting: Lists the inbox's files; called with the lock held, so a file that
            ``request submit`` writes and claims meanwhile keeps its claim.

    Returns:
        How many lines were dropped.
    """
    with _claims_locked(log):
        if not log.exists():
            return 0
        lines = log.read_text(encoding="utf-8").split()
        present = set(still_waiting())
        kept = [line for line in lines if line.lstrip("!") in present]
        write_text_atomic(log, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)


def claimed_files(log: Path) -> set[str]:
    """Inbox files whose event ``request submit`` sent (or is sending): the last line per name wins."""
    claimed: set[str] = set()
    for line in log.read_text(encoding="utf-8").split() if log.exists() else []:
        if line.startswith("!"):
            claimed.discard(line[1:])
        else:
            claimed.add(line)
    return claimed


class InboxWatcher:
    """Polls the inbox; emits one ``submitted`` event per new file and the window events.

    Args:
        root: Project directory.
        window_seconds: T, in seconds.
        send: ``send(event, payload) -> bool``; by default :func:`emit` to PREFECT_API_URL.
        clock: Time source (tests pass a fake one).
    """

    def __init__(self, root: str | Path, window_seconds: float,
                 send: Callable[[str, dict[str, Any]], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root).resolve()
        self.window_seconds = window_seconds
        self.send = send or (lambda event, payload: emit(event, self.root, payload))
        self.clock = clock
        self.seen: set[str] = set()  # files this process has emitted (or found already emitted)
        self.last_window_event: float | None = None
        self.first_seen: dict[str, float] = {}  # when this process first saw each inbox file
        # Batches left unfinished by a run that was stopped (serve restarted, a run killed): their requests are out
        # of the inbox, so no file would announce them; the first polls after :meth:`run` starts do (review of
        # 2026-12-07). Set again by run(): serve builds the watcher before its deployments and automations exist.
        self.announce_pending_after: float | None = self.clock() + STARTUP_ANNOUNCE_DELAY_SECONDS

    def pending(self) -> dict[str, float]:
        """Request files waiting in the inbox: name -> arrival time.

        The arrival time is the file's mtime, or when this watcher first saw it if that is earlier:
        a file copied with its times kept, or written by a host whose clock runs ahead, has an mtime
        in the future and would otherwise never be old enough for the window (review of 2026-12-07).
        """
        from unlearn.requests import skipped_in_inbox

        inbox = self.root / "data" / "requests" / "incoming"
        files: dict[str, float] = {}
        now = self.clock()
        try:
            with os.scandir(inbox) as scan:
                for entry in scan:
                    if skipped_in_inbox(entry.name):
                        continue
                    try:  # one file ingested mid-scan must not cut the scan short
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue
                    files[entry.name] = min(mtime, self.first_seen.setdefault(entry.name, now))
        except FileNotFoundError:
            pass
        if files:  # ingested already but not removable (another user's file): nothing for a run to do
            from tasks.stage.ingest import ingested_entries

            for name in ingested_entries(inbox.parent, list(files)):
                files.pop(name)
        self.first_seen = {name: self.first_seen[name] for name in files}
        return files

    def pending_batches(self) -> int:
        """Batches a run still has to finish: pending, promoting (a run stopped mid-promotion), or completed but not
        purged (stopped mid-purge). 0 when there is no ledger yet or it cannot be read (the run reports that)."""
        from unlearn.requests import Ledger

        path = self.root / "data" / "requests" / "ledger.json"
        try:
            if not path.exists():
                return 0
            ledger = Ledger(path)
            unpurged = [b for b in ledger.batches_with_status(Ledger.COMPLETED) if "purged" not in ledger.steps(b)]
            return len(ledger.pending()) + len(ledger.batches_with_status(Ledger.PROMOTING)) + len(unpurged)
        except Exception:  # noqa: BLE001 - advisory: a damaged ledger must not make every poll fail
            return 0

    def _salt(self) -> bytes | None:
        from unlearn.requests.hashing import load_or_create_salt

        try:
            return load_or_create_salt(self.root / "data" / "requests" / ".salt")
        except (OSError, ValueError):  # unreadable or damaged (SaltError): the name is then left out
            return None

    def poll(self) -> list[str]:
        """One round: emit for new files, then the window event if due.

        Returns:
            The events sent this round.
        """
        sent: list[str] = []
        files, now = self.pending(), self.clock()
        # A file `request submit` just wrote is claimed a moment later (after its imports); a grace
        # period keeps the watcher from sending a second event for it in between.
        new = sorted(name for name in set(files) - self.seen if now - files[name] >= CLAIM_GRACE_SECONDS)
        claimed = claimed_files(_emitted_log(self.root)) if new else set()
        salt = self._salt() if set(new) - claimed else None
        for name in new:
            if name in claimed:
                self.seen.add(name)  # `request submit` emitted it
                continue
            if self.send(SUBMITTED, request_payload(name, "watcher", salt)):
                self.seen.add(name)  # unsent files are retried next round
                sent.append(SUBMITTED)
        self.seen &= set(files)  # ingested files never come back: forget them
        log = _emitted_log(self.root)
        if log.exists() and log.stat().st_size > CLAIM_LOG_PRUNE_BYTES:
            prune_claims(log, lambda: self.pending().keys())
        if window_due(files.values(), now, self.window_seconds, self.last_window_event):
            if self.send(WINDOW_ELAPSED, {"pending_files": len(files)}):
                self.last_window_event = now
                sent.append(WINDOW_ELAPSED)
        if self.announce_pending_after is not None and now >= self.announce_pending_after:
            batches = self.pending_batches()
            if not batches or WINDOW_ELAPSED in sent:  # nothing left over, or the run just started takes it
                self.announce_pending_after = None
            elif self.send(WINDOW_ELAPSED, {"pending_files": len(files), "pending_batches": batches}):
                self.announce_pending_after = None  # once per start; unsent, it is retried next round
                self.last_window_event = now
                sent.append(WINDOW_ELAPSED)
        if not files:
            self.last_window_event = None  # the next request opens a fresh window
        return sent

    def run(self, interval: float, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; errors are printed, never raised."""
        if self.announce_pending_after is not None:
            self.announce_pending_after = self.clock() + STARTUP_ANNOUNCE_DELAY_SECONDS
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a bad poll
                _say(f"unlearn serve: inbox watcher: {exc}", sys.stderr)
            stop.wait(interval)


# --------------------------------------------------------------------------- commands


def _say(message: str, stream: Any = None) -> None:
    """One line to the terminal (this module is a command-line program, like flows/cli.py)."""
    stream = stream or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def _require_server() -> str:
    from tasks.project import PipelineError

    url = api_url()
    if not url:
        raise PipelineError("no Prefect server: schedules and event triggers need a long-lived one. Start it with "
                            "`unlearn server start` and export the PREFECT_API_URL it prints")
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10)
    except OSError as exc:
        raise PipelineError(f"Prefect server at PREFECT_API_URL={url} is not reachable ({exc}); "
                            "start it with `unlearn server start`") from None
    return url


def deployment_specs(root: str | Path) -> list[tuple[Any, dict[str, Any]]]:
    """The ``nightly`` and ``on-request`` deployments of the pipeline flow for one project, as
    ``(flow, options of flow.to_deployment / Runner.add_flow)``."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline import pipeline_flow
    from tasks.project import load_project

    project = load_project(root)
    serve = project.params.serve
    key, parameters = project_key(project.root), {"root": str(project.root)}
    # MODULE_PATH: a run started from the entrypoint imports flows.pipeline, whatever the serve process's cwd.
    common = {"parameters": parameters, "entrypoint_type": EntrypointType.MODULE_PATH,
              "tags": ["unlearn", f"project-{key}"]}
    nightly = dict(name=f"nightly-{key}", schedules=[Cron(serve.cron, timezone=serve.timezone)],
                   description=f"Nightly deletion batch of {project.root}", **common)
    on_request = dict(name=f"on-request-{key}", triggers=build_triggers(project.root, serve.trigger_after_requests,
                                                                         serve.trigger_window_minutes),
                      description=f"Deletion run started by requests to {project.root}", **common)
    return [(pipeline_flow, nightly), (pipeline_flow, on_request)]


def _cmd_serve(args: argparse.Namespace) -> int:
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from flows.serve_stop import RunStopper, serve_until_signal
    from tasks.project import load_project

    url = _require_server()
    project = load_project(args.root)
    config = project.params.serve
    from flows import maintenance

    # The audit and consolidation flows: on their crons and after pipeline runs, as params.yaml configures them.
    specs = deployment_specs(project.root) + maintenance.deployment_specs(project.root, project_key(project.root))
    watcher = InboxWatcher(project.root, config.trigger_window_minutes * 60)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(config.watch_interval_seconds, stop),
                              name="unlearn-inbox-watcher", daemon=True)
    _say(f"serving {project.root} on {url}: {', '.join(options['name'] for _, options in specs)} "
         f"(cron {config.cron!r} {config.timezone}; on-request after {config.trigger_after_requests} request(s) "
         f"or {config.trigger_window_minutes:g} min); inbox polled every {config.watch_interval_seconds:g} s")
    if config.warm_start:
        from flows import warm

        try:
            _say(f"warm start: runs fork from a preloaded interpreter (its imports took {warm.install():.1f} s, once)")
        except Exception as exc:  # noqa: BLE001 - the runs still work, each importing everything itself
            _say(f"warm start unavailable ({exc}): each run starts a fresh interpreter")
    # pause_on_shutdown=False: restarting `unlearn serve` must not leave the nightly schedule paused.
    # query_seconds: Prefect's runner polls for runs to start every 10 s by default; a triggered
    # run should start within the same interval the inbox is polled at.
    # limit=None: no cap on concurrent runs, as prefect.serve has (Runner's own default is 5, and runs
    # queued on the project lock would hold those slots while the nightly or an audit waits).
    runner = Runner(pause_on_shutdown=False, query_seconds=config.watch_interval_seconds, limit=None)
    for flow, options in specs:
        # add_flow (not prefect.serve's add_deployment): the runner keeps the flow object and starts each
        # run from it (prefect.flow_engine.run_flow_in_subprocess, which warm start routes), where a
        # deployment alone makes it run `python -m prefect.engine` and import everything again.
        runner.add_flow(flow, **options)
    thread.start()
    # SIGINT and SIGTERM stop serving within serve.stop_grace_seconds (+30 s), whatever the runs in flight are doing
    # (flows/serve_stop.py: the runner alone waits for them without a bound).
    stopper = RunStopper(config.stop_grace_seconds, _say)
    try:
        asyncio.run(serve_until_signal(runner.start, stopper))
    except (KeyboardInterrupt, TerminationSignal):  # a signal before the handlers were installed
        stopper.begin()
    finally:
        stop.set()
        thread.join(timeout=10)
    _say("unlearn serve: stopped")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from flows.prefect_server import prefect_command

    url = f"http://{args.host}:{args.port}/api"
    _say(f"starting the Prefect server; in other shells run:\n  export PREFECT_API_URL={url}")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [prefect_command(), "server", "start", "--host", args.host, "--port", str(args.port)]
    # exec, not a child process: Ctrl-C and SIGTERM reach the server itself, nothing is orphaned.
    os.execvpe(command[0], command, env)
    return 0  # not reached


def add_commands(commands: Any) -> dict[str, Callable[[Any], int]]:
    """Add ``serve`` and ``server start`` to the ``unlearn`` parser.

    Args:
        commands: The subparsers action of the ``unlearn`` parser.

    Returns:
        Command name -> handler.
    """
    serve = commands.add_parser("serve", help="serve the pipeline: nightly cron + runs triggered by requests "
                                              "(needs PREFECT_API_URL)")
    # SUPPRESS: without --root here, the global `unlearn --root DIR serve` value stays.
    serve.add_argument("--root", default=argparse.SUPPRESS, help="project directory (default: .)")
    server = commands.add_parser("server", help="the long-lived local Prefect server that schedules need")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    start = server_commands.add_parser("start", help="run `prefect server start` in the foreground")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=4200)
    return {"serve": _cmd_serve, "server": _cmd_server}
