"""Benchmark: a deletion request lands -> the served pipeline has decided it (issue #12).

Starts a real `prefect server start` on loopback (fresh PREFECT_HOME), makes a fresh digits project
with the shipped params.yaml (AMUN, the equivalence gate, the reference pool) except
``serve.trigger_after_requests: 1`` and ``serve.watch_interval_seconds: 1``, runs the baseline
(`unlearn run`: champion v1 and the pool references), starts `unlearn serve`, then submits requests
of ``--batch`` production training samples (never pool samples) one at a time with the `unlearn`
command. For each it records

  submit -> decided      from launching `unlearn request submit` to the triggered flow run's end:
                         the batch is then either completed (new champion, or withdrawn) or held;
  submit -> run start    the trigger's share (event, automation, runner poll, flow import);
  stage seconds          the run's task runs by name (Prefect API), where the rest of the time goes;

and what the run decided: the gate's verdict, whether the champion moved, the batch's status.

Settings (``--policies``): ``gate.on_inconclusive: hold`` (the shipped default: a batch whose
evidence is inconclusive waits for later batches, so a 10-sample batch on digits is *decided*
but no new champion is *verified*) and ``promote_low_power`` (the same run promotes, with the
certificate saying the evidence had no power). A verified champion for 10 digits samples does not
exist here: the positive control (the parent) is not detectable on 10 samples, so no gate can
call the candidate equivalent; the table says which happened.

Writes benchmarks/results/landing_latency.{json,md}. Target (issue #12): landing -> verified
champion for a batch of 10 on digits <= 10 s with a running Prefect server (27 s before #12).

Usage: python benchmarks/orchestration/landing_latency.py [--submissions N] [--batch 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "orchestration"))
from trigger_latency import FINAL, api_get, api_post, served_project, timestamp  # noqa: E402

TARGET_SECONDS = 10.0


def _project(workdir: Path, policy: str, warm: bool = True) -> Path:
    root = workdir / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["serve"] = {**params.get("serve", {}), "trigger_after_requests": 1, "watch_interval_seconds": 1,
                       "warm_start": warm}
    params["gate"]["on_inconclusive"] = policy
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _production_ids(root: Path, count: int, offset: int) -> list[str]:
    """``count`` training-split ids outside the reference pool (what a user's deletion names)."""
    from unlearn.config import load_params
    from unlearn.data import load_source
    from unlearn.references import reference_pool_mask

    params = load_params(root / "params.yaml")
    source = load_source(params.data)
    train = source.ids[source.splits == "train"]
    production = train[~reference_pool_mask(train, params.verify.references.pool_fraction, params.seed)]
    return [str(i) for i in production[offset:offset + count]]


def _champion(root: Path) -> tuple[str | None, dict]:
    import mlflow

    from tasks import tracking
    from tasks.project import load_project

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # this project's own registry, never another setting's
    project = load_project(root, check_registries=False)
    uri = project.tracking_uri
    version = tracking.champion_version(project, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri))
    return (None, {}) if version is None else (str(version.version), dict(version.tags))


def _batch_of(root: Path, request_id: str) -> dict:
    ledger = json.loads((root / "data" / "requests" / "ledger.json").read_text())
    for batch in ledger.get("batches", {}).values():
        if request_id in batch.get("request_ids", []):
            return batch
    return {}


def measure(policy: str, warm: bool, submissions: int, batch: int, gap: float = 0.0) -> list[dict]:
    """One server, one project, ``submissions`` requests of ``batch`` samples; a row per request."""
    unlearn = str(BIN / "unlearn")
    rows = []
    with served_project(lambda workdir: _project(workdir, policy, warm), "unlearn-landing-") as (url, root, env,
                                                                                              query):
        for i in range(submissions):
            request_id = f"LAND-{i}"
            ids = _production_ids(root, batch, offset=i * batch)
            time.sleep(gap)  # the previous run's aftermath (maintenance runs it triggers) settles first
            champion_before, _ = _champion(root)
            before = {r["id"] for r in api_post(url, "/flow_runs/filter", query)}
            started = time.time()
            subprocess.run([unlearn, "--root", str(root), "request", "submit", "--request-id", request_id,
                            "--sample-ids", *ids, "--subject-ref", f"bench-{i}"],
                           env=env, check=True, capture_output=True)
            submitted = time.time()
            deadline = time.time() + 600
            while True:
                new = [r for r in api_post(url, "/flow_runs/filter", query) if r["id"] not in before]
                if new:
                    run = api_get(url, f"/flow_runs/{new[0]['id']}")
                    if run["state_type"] in FINAL:
                        break
                if time.time() > deadline:
                    raise SystemExit("no triggered run finished within 600 s")
                time.sleep(0.2)
            tasks = api_post(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
            stages: dict[str, float] = {}
            for task in tasks:
                name = task["name"].rsplit("-", 1)[0]
                stages[name] = stages.get(name, 0.0) + float(task.get("total_run_time") or 0.0)
            champion_after, tags = _champion(root)
            batch_row = _batch_of(root, request_id)
            rows.append({
                "request": i, "policy": policy, "warm_start": warm, "samples": batch, "run_state": run["state_type"],
                "submit_command_s": submitted - started,
                "submit_to_created_s": timestamp(run["created"]) - started,
                "submit_to_start_s": timestamp(run["start_time"]) - started,
                "submit_to_decided_s": timestamp(run["end_time"]) - started,
                "run_s": timestamp(run["end_time"]) - timestamp(run["start_time"]),
                "batch_status": batch_row.get("status"),
                "champion_moved": champion_after != champion_before,
                "verdict": tags.get("verdict") if champion_after != champion_before else None,
                "evidence": tags.get("evidence") if champion_after != champion_before else None,
                "stage_seconds": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--policies", nargs="+", default=["hold", "promote_low_power"])
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds to wait after a run ends before the next request (0: at once)")
    parser.add_argument("--starts", nargs="+", choices=["warm", "cold"], default=["warm", "cold"],
                        help="serve.warm_start on (runs fork from a preloaded interpreter) and/or off")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    if not args.render:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                   "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
        started = time.time()
        settings = {f"{policy}, {start} start": measure(policy, start == "warm", args.submissions, args.batch, args.gap)
                    for start in args.starts for policy in args.policies}
        command = ("python benchmarks/orchestration/landing_latency.py --submissions "
                   f"{args.submissions} --batch {args.batch} --policies {' '.join(args.policies)} "
                   f"--starts {' '.join(args.starts)} --gap {args.gap:g}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "landing_latency.json").write_text(json.dumps(
            {"command": command, "machine": machine, "target_seconds": TARGET_SECONDS, "batch": args.batch,
             "settings": settings, "wall_s": time.time() - started}, indent=2))
    payload = json.loads((RESULTS / "landing_latency.json").read_text())
    text = markdown(payload)
    (RESULTS / "landing_latency.md").write_text(text)
    print(text)


def markdown(payload: dict) -> str:
    """The results page from the JSON payload."""
    machine, settings, command = payload["machine"], payload["settings"], payload["command"]
    batch = payload.get("batch") or next(iter(settings.values()))[0]["samples"]
    lines = [f"# Request lands -> pipeline decided: a batch of {batch} on digits, served", "",
             f"Command: `{command}`. Machine: {machine['cpus']} CPUs, Python {machine['python']}; 1-min load "
             f"average {machine['load_average_1min_at_start']} at start. Real `prefect server start` on loopback, "
             "`unlearn serve` (trigger after 1 request, 1 s poll), the shipped params.yaml otherwise (AMUN, "
             "equivalence gate, reference pool); each request after the previous run finished. `warm start` is "
             "`serve.warm_start: true` (the default: each run forks from an interpreter that imported the libraries "
             "once, flows/warm.py); `cold start` makes every run a fresh interpreter.", "",
             "| setting | request | submit cmd s | -> run created s | -> run start s | submit -> decided s | run s "
             "| batch | champion moved | verdict (evidence) |", "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for setting, rows in settings.items():
        for r in rows:
            verdict = f"{r['verdict']} ({r['evidence']})" if r["champion_moved"] else "-"
            lines.append(f"| {setting} | {r['request']} | {r.get('submit_command_s', float('nan')):.1f} "
                         f"| {r.get('submit_to_created_s', float('nan')):.1f} | {r['submit_to_start_s']:.1f} "
                         f"| {r['submit_to_decided_s']:.1f} | {r['run_s']:.1f} | {r['batch_status']} "
                         f"| {r['champion_moved']} | {verdict} |")
    lines.append("")
    for setting, rows in settings.items():
        decided = [r["submit_to_decided_s"] for r in rows]
        promoted = [r["submit_to_decided_s"] for r in rows if r["champion_moved"]]
        verified = [r for r in rows if r["champion_moved"] and r["verdict"] == "pass"]
        lines.append(f"- **{setting}**: submit -> decided median {statistics.median(decided):.1f} s "
                     f"(max {max(decided):.1f} s); champion moved in {len(promoted)} of {len(rows)}; "
                     f"verified (gate pass) in {len(verified)}.")
    starts = sorted({"warm" if r.get("warm_start", False) else "cold" for rows in settings.values() for r in rows},
                    reverse=True)
    stage_totals: dict[str, dict[str, list[float]]] = {}
    for rows in settings.values():
        for r in rows:
            start = "warm" if r.get("warm_start", False) else "cold"
            for name, seconds in r["stage_seconds"].items():
                stage_totals.setdefault(name, {}).setdefault(start, []).append(seconds)

    def cell(values: list[float] | None) -> str:
        return f"{statistics.median(values):.2f} ({len(values)})" if values else "-"

    lines += ["", "Task-run seconds inside the flow run (Prefect API): median over the runs where the task ran "
              "(in how many runs it ran; the pool's reference models are trained with the baseline, "
              "then reused; before 2026-12-05 a setting's first batch trained them):", "",
              "| task | " + " | ".join(f"{s} start s (runs)" for s in starts) + " |",
              "|---|" + "---:|" * len(starts),
              *(f"| {name} | " + " | ".join(cell(per.get(s)) for s in starts) + " |"
                for name, per in sorted(stage_totals.items(),
                                        key=lambda kv: -max(statistics.median(v) for v in kv[1].values()))), "",
              f"Target: landing -> verified champion for {batch} samples <= {TARGET_SECONDS:g} s. A verified "
              "champion needs a gate `pass`, which needs a detectable positive control; see the verdict column "
              "for what this data allowed.", ""]
    verified = [r for rows in settings.values() for r in rows if r["champion_moved"] and r["verdict"] == "pass"]
    met = bool(verified) and max(r["submit_to_decided_s"] for r in verified) <= TARGET_SECONDS
    lines.append(f"Result: {'met' if met else 'MISSED'}: {len(verified)} verified champion(s).")
    for setting, rows in settings.items():
        decided = sorted(r["submit_to_decided_s"] for r in rows)
        within = sum(d <= TARGET_SECONDS for d in decided)
        lines.append(f"- {setting}: fastest decision {decided[0]:.1f} s, median {statistics.median(decided):.1f} s; "
                     f"{within} of {len(decided)} decided within {TARGET_SECONDS:g} s.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
