"""`unlearn serve`: the batching window and event payloads (no server), and end to end against a
real `prefect server start`: serve the deployments, submit a request, see the triggered run move
the champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import FAST

from flows import serve
from flows.prefect_server import background_prefect_server

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- pure parts


def test_window_due_after_t_since_the_oldest_pending_request_at_most_once_per_t():
    assert not serve.window_due([], now=1000, window_seconds=60, last_window_event=None)
    assert not serve.window_due([990, 995], now=1000, window_seconds=60, last_window_event=None)
    assert serve.window_due([940, 995], now=1000, window_seconds=60, last_window_event=None)
    assert not serve.window_due([900], now=1000, window_seconds=60, last_window_event=970)  # sent 30 s ago
    assert serve.window_due([900], now=1000, window_seconds=60, last_window_event=930)


def test_event_payload_carries_no_personal_data():
    payload = serve.request_payload("request-20261124T100000123456-0123456789ab.json", "cli")
    assert payload == {"file": "request-20261124T100000123456-0123456789ab.json", "source": "cli"}
    dropped = serve.request_payload("alice@example.com-erase-me.csv", "watcher")
    assert "alice" not in json.dumps(dropped) and dropped["file"] == "dropped file (name not published)"
    salted = serve.request_payload("alice@example.com-erase-me.csv", "watcher", b"s" * 32)
    assert "alice" not in json.dumps(salted) and salted["file"].startswith("hmac:")  # test_serve_stop.py: more
    assert set(serve.project_resource("/a")) == {"prefect.resource.id", "prefect.resource.name"}
    assert serve.project_resource("/a") != serve.project_resource("/b")  # projects never trigger each other


def test_triggers_count_and_window(tmp_path):
    count, window = serve.build_triggers(tmp_path, after_requests=10, window_minutes=15)
    resource = serve.project_resource(tmp_path)["prefect.resource.id"]
    assert count.expect == {serve.SUBMITTED} and count.threshold == 10 and count.within == timedelta(minutes=15)
    assert window.expect == {serve.WINDOW_ELAPSED} and window.threshold == 1
    for trigger in (count, window):
        assert trigger.posture == "Reactive" and trigger.match.model_dump() == {"prefect.resource.id": resource}
    # N = 1: every request fires at once (no bucket, so no dead time after a firing)
    assert serve.build_triggers(tmp_path, 1, 15)[0].within == timedelta(0)


def test_claims_last_line_wins(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("a\nb\n!a\nc\n!c\nc\n")
    assert serve.claimed_files(log) == {"b", "c"}
    assert serve.claimed_files(tmp_path / "missing.txt") == set()


def test_claim_log_is_pruned_to_the_files_still_waiting(tmp_path, monkeypatch):
    inbox = tmp_path / "data" / "requests" / "incoming"
    inbox.mkdir(parents=True)
    log = tmp_path / "data" / "requests" / serve.EMITTED_LOG
    (inbox / "waiting.json").write_text("{}")
    log.write_text("".join(f"ingested-{i}.json\n" for i in range(200)) + "waiting.json\n!gone.json\n")
    assert serve.prune_claims(log, lambda: {"waiting.json"}) == 201
    assert log.read_text() == "waiting.json\n" and serve.claimed_files(log) == {"waiting.json"}
    # the watcher prunes once the log passes its size limit, keeping the claims it still needs
    monkeypatch.setattr(serve, "CLAIM_LOG_PRUNE_BYTES", 10)
    log.write_text("".join(f"ingested-{i}.json\n" for i in range(50)) + "waiting.json\n")
    watcher = serve.InboxWatcher(tmp_path, window_seconds=3600, send=lambda *_: True)
    watcher.poll()
    assert log.read_text() == "waiting.json\n"


def test_watcher_emits_once_per_file_skips_submitted_ones_and_fires_the_window(tmp_path):
    inbox = tmp_path / "data" / "requests" / "incoming"
    inbox.mkdir(parents=True)
    now = [1_000_000.0]
    sent, up = [], [True]

    def send(event, payload):
        if up[0]:
            sent.append((event, payload))
        return up[0]

    watcher = serve.InboxWatcher(tmp_path, window_seconds=60, send=send, clock=lambda: now[0])
    (inbox / "dropped.csv").write_text("request_id,subject_ref\n")
    (inbox / ".partial.csv.tmp").write_text("")  # still being written: ignored
    (inbox / "request-20261124T100000123456-0123456789ab.json").write_text("{}")
    (tmp_path / "data" / "requests" / serve.EMITTED_LOG).write_text(
        "request-20261124T100000123456-0123456789ab.json\n")  # `request submit` already emitted it
    for path in inbox.iterdir():
        os.utime(path, (now[0], now[0]))
    assert watcher.poll() == []  # too fresh: `request submit` may not have claimed it yet
    now[0] += serve.CLAIM_GRACE_SECONDS
    assert watcher.poll() == [serve.SUBMITTED]
    assert sent[0][1]["source"] == "watcher" and "dropped" not in sent[0][1]["file"]
    assert watcher.poll() == []  # nothing new, window not elapsed
    now[0] += 61 - serve.CLAIM_GRACE_SECONDS
    assert watcher.poll() == [serve.WINDOW_ELAPSED]
    assert sent[-1][1] == {"pending_files": 2}
    now[0] += 30
    assert watcher.poll() == []  # not again within T
    # a server outage: the file is retried on the next poll
    up[0] = False
    (inbox / "late.csv").write_text("")
    os.utime(inbox / "late.csv", (now[0] - 60, now[0] - 60))
    assert watcher.poll() == []
    up[0] = True
    assert watcher.poll() == [serve.SUBMITTED]
    # the run ingested everything: the next request opens a fresh window
    for path in inbox.iterdir():
        path.unlink()
    assert watcher.poll() == [] and watcher.last_window_event is None and watcher.seen == set()


def test_serve_config_is_validated():
    from unlearn.config import ConfigError, parse_params

    assert parse_params({}).serve.cron == "0 2 * * *"
    for bad in ({"trigger_after_requests": 0}, {"trigger_window_minutes": 0}, {"cron": "nightly"},
                {"timezone": "Mars/Olympus"}, {"watch_interval_seconds": -1}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="serve"):
            parse_params({"serve": bad})


def test_serve_without_a_server_is_a_clear_error(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": ""}
    result = subprocess.run([str(BIN / "unlearn"), "--root", str(tmp_path), "serve"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unlearn server start" in result.stderr


def test_submit_without_a_server_still_queues(make_project):
    root = make_project()
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on the discard port
    result = subprocess.run([str(BIN / "unlearn"), "--root", str(root), "request", "submit", "--request-id", "R-1",
                             "--forget-class", "3", "--subject-ref", "x"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((root / "data" / "requests" / "incoming").glob("request-*.json"))) == 1
    assert serve.claimed_files(root / "data" / "requests" / serve.EMITTED_LOG) == set()  # the watcher sends it


@pytest.fixture
def events_endpoint():
    """A local HTTP server standing in for ``POST {api}/events``: records requests, answers ``status[0]``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received, status = [], [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)})
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", received, status
    server.shutdown()


def test_emit_posts_one_event_without_personal_data(events_endpoint, monkeypatch, tmp_path):
    url, received, _ = events_endpoint
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:secret")
    payload = serve.request_payload("request-20261124T100000123456-0123456789ab.json", "cli")
    assert serve.emit(serve.SUBMITTED, tmp_path, payload)
    [request] = received
    [event] = request["body"]
    assert request["path"] == "/api/events" and request["auth"].startswith("Basic ")
    assert event["event"] == serve.SUBMITTED and event["payload"] == payload
    assert event["resource"] == serve.project_resource(tmp_path) and event["id"] and event["occurred"]


def test_emit_falls_back_to_prefects_client_when_the_server_refuses(events_endpoint, monkeypatch, tmp_path):
    url, received, status = events_endpoint
    status[0] = 401
    monkeypatch.setenv("PREFECT_API_URL", url)
    calls = []
    monkeypatch.setattr(serve, "_emit_with_prefect", lambda *args: calls.append(args) or True)
    assert serve.emit(serve.SUBMITTED, tmp_path, {"file": "x", "source": "cli"})
    assert len(received) == 1 and len(calls) == 1
    # nothing listening: not sent, and no fallback (a server that is not there refuses any client)
    calls.clear()
    assert not serve.emit(serve.SUBMITTED, tmp_path, {"file": "x", "source": "cli"}, url="http://127.0.0.1:9/api")
    assert calls == []


def test_warm_start_forks_runs_from_the_preloaded_interpreter(tmp_path):
    """What Prefect starts a served run with is a forkserver that already imported the preload;
    the serve process itself stays light (in a subprocess: install patches Prefect's module)."""
    code = textwrap.dedent("""
        import sys
        from prefect import flow_engine
        from flows import warm
        assert "wave" not in sys.modules and not warm.is_installed()
        assert warm.install(preload=("wave",)) > 0 and warm.is_installed()
        context = flow_engine.multiprocessing.get_context("spawn")
        assert context.get_start_method() == "forkserver"
        assert flow_engine.multiprocessing.get_context("fork").get_start_method() == "fork"
        child = context.Process(target=exec, args=("import os, sys; os._exit(0 if 'wave' in sys.modules else 3)",))
        child.start()
        child.join()
        assert child.exitcode == 0, child.exitcode
        assert "wave" not in sys.modules
        # a forkserver child ends with os._exit: the routed context still runs its atexit handlers
        marker = sys.argv[1]
        child = context.Process(target=exec, args=(
            f"import atexit, pathlib; atexit.register(pathlib.Path({marker!r}).write_text, 'ran')",))
        child.start()
        child.join()
        assert child.exitcode == 0 and open(marker).read() == "ran"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "atexit-ran")], cwd=REPO,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_warm_preload_is_imported_by_the_forkserver_only():
    """flows.warm_preload does its work on import, so nothing but the forkserver may import it."""
    for package in ("flows", "tasks", "unlearn"):
        for path in (REPO / package).rglob("*.py"):
            if path.name not in ("warm.py", "warm_preload.py"):
                assert "warm_preload" not in path.read_text(), path


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real `prefect server start` on a free loopback port with its own PREFECT_HOME."""
    with background_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as url:
        yield url


def _api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _why_serve_is_still_running(url: str, pid: int) -> str:
    """What a slow stop of ``unlearn serve`` was waiting for: the flow runs not yet final, and, where
    py-spy is installed, the Python stacks of serve and its child processes (a diagnostic only)."""
    parts = []
    try:
        runs = _api(url, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 20})
        parts.append("flow runs: " + "; ".join(
            f"{run['name']} deployment={run.get('deployment_id')} state={run['state_type']}" for run in runs))
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the test's own outcome
        parts.append(f"flow runs unavailable ({exc})")
    spy = BIN / "py-spy"
    if spy.exists():
        family, index = [str(pid)], 0
        while index < len(family):  # serve, its forkserver and the runs forked from it
            family += subprocess.run(["pgrep", "-P", family[index]], capture_output=True, text=True).stdout.split()
            index += 1
        for target in family:
            dump = subprocess.run([str(spy), "dump", "--pid", target], capture_output=True, text=True, timeout=60)
            parts.append(f"py-spy dump of {target}:\n{dump.stdout[-4000:]}{dump.stderr[-500:]}")
    return "\n".join(parts)


def _champion(root: Path) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    try:
        return str(client.get_model_version_by_alias("unlearn-classifier", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def test_served_deployment_runs_when_a_request_is_submitted(prefect_api, make_project):
    started = time.time()
    root = make_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []},
                         "serve": {"trigger_after_requests": 1, "trigger_window_minutes": 5,
                                   "watch_interval_seconds": 1, "stop_grace_seconds": 30}})
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"}
    baseline = subprocess.run([str(BIN / "unlearn"), "--root", str(root), "run"], env=env, capture_output=True,
                              text=True, timeout=300)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    assert _champion(root) == "1"
    log = root.parent / "serve.log"
    with open(log, "w") as out:
        served = subprocess.Popen([str(BIN / "unlearn"), "serve", "--root", str(root)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        key = serve.project_key(root)
        deadline = time.time() + 60
        while len(_api(prefect_api, "/automations/filter")) < 2 or not _api(
                prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": [f"on-request-{key}"]}}}):
            assert time.time() < deadline and served.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # the server's trigger service loads new automations
        submit = subprocess.run([str(BIN / "unlearn"), "--root", str(root), "request", "submit", "--request-id",
                                 "R-serve-1", "--sample-ids", "digits-0000", "digits-0001", "--subject-ref", "bob"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0 and "event sent" in submit.stdout, submit.stdout + submit.stderr
        deadline = time.time() + 180
        while _champion(root) != "2":
            assert time.time() < deadline, log.read_text()[-3000:]
            assert served.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        # promote moved the alias; purge and certify finish the run
        query = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                 "deployments": {"name": {"any_": [f"on-request-{key}"]}}}
        while not (runs := _api(prefect_api, "/flow_runs/filter", query)):
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert runs[0]["parameters"] == {"root": str(root.resolve())}
    finally:
        served.send_signal(signal.SIGINT)
        stopping = time.time()
        try:
            served.wait(timeout=120)  # runs in flight get 30 s (stop_grace_seconds), then SIGTERM, SIGKILL 30 s later
        except subprocess.TimeoutExpired:
            diagnosis = _why_serve_is_still_running(prefect_api, served.pid)
            served.kill()
            served.wait()
            warnings.warn(f"unlearn serve did not stop within 120 s of SIGINT; {diagnosis}", stacklevel=1)
        else:
            if time.time() - stopping > 30:
                warnings.warn(f"unlearn serve took {time.time() - stopping:.0f} s to stop after SIGINT", stacklevel=1)
    # Under a loaded test session `unlearn serve` sometimes did not exit within 120 s of SIGINT (issue #6's
    # note; the completed run had just triggered the maintenance runs, which the runner waited for without a
    # bound). The stop is bounded now (flows/serve_stop.py): a clean exit is asserted. A stop over 30 s is
    # reported as a warning (with the runs in flight and serve's stacks when it has to be killed).
    assert served.returncode == 0 and "unlearn serve: stopped" in log.read_text(), log.read_text()[-3000:]
    assert "warm start: runs fork from a preloaded interpreter" in log.read_text(), log.read_text()[-3000:]
    assert time.time() - started < 420
