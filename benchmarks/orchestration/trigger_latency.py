"""Benchmark: latency from `unlearn request submit` to the triggered flow run starting.

Starts a real `prefect server start` on loopback (fresh PREFECT_HOME), makes a fresh project
(fast recipe, exact retraining, ``serve.trigger_after_requests: 1``), trains the baseline, runs
`unlearn serve`, then submits requests one at a time with the `unlearn` command. For each it
reads the triggered flow run from the Prefect API and records

  submit -> run start    from launching `unlearn request submit` to the run's ``start_time``
                         (the run entered Running in its subprocess): what a user waits;
  event -> run start     from the end of the submit command (file written, event sent);
  event -> run created   the automation's share (event -> trigger -> run scheduled).

Each submission waits for the previous run to finish, so the project lock adds nothing.
Writes benchmarks/results/orchestration_trigger.{json,md}. Target (issue #6): submit -> run
start at most 10 s.

Usage: python benchmarks/orchestration/trigger_latency.py [--submissions N] [--poll SECONDS ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
from demo_pipeline import prefect_server  # noqa: E402 - a sibling script, not a package

TARGET_SECONDS = 10.0
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def api_post(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def api_get(url: str, path: str):
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
        return json.loads(response.read())


def timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _project(workdir: Path, poll: float) -> Path:
    root = workdir / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["epochs"] = 8
    params["verify"]["bootstrap"] = 20
    params["verify"]["references"] = {"count": 2, "batched": "auto"}
    params["unlearn"].update({"method": "retrain", "escalation": []})
    params["serve"] = {**params.get("serve", {}), "trigger_after_requests": 1, "watch_interval_seconds": poll}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


@contextmanager
def served_project(make_project: Callable[[Path], Path], prefix: str) -> Iterator[tuple[str, Path, dict, dict]]:
    """A real Prefect server, a project from ``make_project(workdir)`` with its baseline run, and `unlearn serve`.

    Yields ``(api url, project root, environment for unlearn commands, flow-run filter of the on-request
    deployment)`` once the served automations are loaded; stops `unlearn serve` on exit.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, prefect_server(Path(tmp) / "home") as url:
        root = make_project(Path(tmp))
        env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(Path(tmp) / "client-home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        unlearn = str(BIN / "unlearn")
        subprocess.run([unlearn, "--root", str(root), "run"], env=env, check=True, capture_output=True)
        with open(Path(tmp) / "serve.log", "w") as log:
            served = subprocess.Popen([unlearn, "serve", "--root", str(root)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while len(api_post(url, "/automations/filter")) < 2:
                if time.time() > deadline or served.poll() is not None:
                    raise SystemExit((Path(tmp) / "serve.log").read_text()[-3000:])
                time.sleep(0.5)
            time.sleep(2)  # the trigger service loads new automations
            deployment = next(d for d in api_post(url, "/deployments/filter") if d["name"].startswith("on-request-"))
            yield url, root, env, {"deployments": {"id": {"any_": [deployment["id"]]}}}
        finally:
            served.terminate()
            served.wait(timeout=60)


def measure(submissions: int, poll: float) -> dict:
    """Run the whole scenario once; return the per-submission latencies."""
    unlearn = str(BIN / "unlearn")
    with served_project(lambda workdir: _project(workdir, poll), "unlearn-trigger-") as (url, root, env, query):
        rows = []
        for i in range(submissions):
            before = {r["id"] for r in api_post(url, "/flow_runs/filter", query)}
            started = time.time()
            subprocess.run([unlearn, "--root", str(root), "request", "submit", "--request-id", f"LAT-{i}",
                            "--sample-ids", f"digits-{i:04d}", "--subject-ref", f"bench-{i}"],
                           env=env, check=True, capture_output=True)
            submitted = time.time()
            deadline = submitted + 300
            while True:
                new = [r for r in api_post(url, "/flow_runs/filter", query) if r["id"] not in before]
                if new and new[0]["start_time"]:
                    run = new[0]
                    break
                if time.time() > deadline:
                    raise SystemExit("no triggered run started")
                time.sleep(0.2)
            rows.append({"submit_to_start_s": timestamp(run["start_time"]) - started,
                         "event_to_start_s": timestamp(run["start_time"]) - submitted,
                         "event_to_created_s": timestamp(run["created"]) - submitted,
                         "submit_command_s": submitted - started})
            print(f"submission {i}: {rows[-1]}", flush=True)
            while api_get(url, f"/flow_runs/{run['id']}")["state_type"] not in FINAL:
                time.sleep(1)  # the next submission must not wait for the project lock
    return {"submissions": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=3)
    parser.add_argument("--poll", type=float, nargs="+", default=[5.0, 1.0],
                        help="serve.watch_interval_seconds values to measure (default: 5 1)")
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    settings = []
    for poll in args.poll:
        rows = measure(args.submissions, poll)["submissions"]
        summary = {key: {"median": statistics.median(r[key] for r in rows), "max": max(r[key] for r in rows)}
                   for key in rows[0]}
        settings.append({"poll_seconds": poll, "summary": summary, "submissions": rows})
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/orchestration/trigger_latency.py", *sys.argv[1:]])
    (RESULTS / "orchestration_trigger.json").write_text(json.dumps(
        {"command": command, "machine": machine, "target_seconds": TARGET_SECONDS, "settings": settings}, indent=2))
    lines = ["# Trigger latency: `unlearn request submit` -> triggered flow run starts", "",
             f"Command: `{command}`.", "",
             f"Machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}; 1-min load "
             f"average {machine['load_average_1min_at_start']} at start"
             + (" (other work was running: noisy). " if float(machine["load_average_1min_at_start"]) > 1.5 else ". ")
             + "Real `prefect server start` on loopback, `unlearn serve`, `trigger_after_requests: 1`; "
             f"{args.submissions} submissions per setting, each after the previous run finished.", ""]
    for setting in settings:
        summary, poll = setting["summary"], setting["poll_seconds"]
        worst = summary["submit_to_start_s"]["max"]
        lines += [f"## `serve.watch_interval_seconds: {poll:g}` (inbox and runner poll interval)", "",
                  "| | median s | max s |", "|---|---:|---:|",
                  *(f"| {key} | {v['median']:.1f} | {v['max']:.1f} |" for key, v in summary.items()), "",
                  f"Target submit -> run start <= {TARGET_SECONDS:g} s: "
                  f"{'met' if worst <= TARGET_SECONDS else 'MISSED'} "
                  f"(median {summary['submit_to_start_s']['median']:.1f} s, worst {worst:.1f} s).", ""]
    lines += ["`submit_to_start_s`: from launching `unlearn request submit` to the run's start time (Running); "
              "`event_to_start_s`: from the submit command's exit (file written, event sent; the event can reach "
              "the server before the process has exited, hence slightly negative `event_to_created_s`); "
              "`event_to_created_s`: event -> automation -> run scheduled; `submit_command_s`: the CLI itself "
              "(process start, imports, write, emit).", "",
              "Where the time goes: the automation creates the run within ~0.2 s; then the runner's poll "
              "(up to one interval) and the run subprocess importing the flow module (`flows.pipeline` "
              "imports Prefect and torch through `tasks.stage`: about 2-3 s idle, more on a loaded box) "
              "before the run enters Running.", ""]
    (RESULTS / "orchestration_trigger.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
