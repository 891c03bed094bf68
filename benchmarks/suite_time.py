"""Benchmark: how long ``make test`` takes, against its budget (6 minutes on 2 cores), and where the time goes.

Why a script: the budget is a speed target, and the README used to carry one hand-copied figure per machine.
This runs ``make test`` itself (the command, flags and test selection CI runs; ``WORKERS`` as given; a
``PYTEST_ADDOPTS`` of the caller's is replaced, so no ``-k`` or ``-m`` of theirs narrows what is timed), in this
working tree (CI runs it in a clean clone, which took longer on some machines), one or more times, and writes what
it measured:

- the wall time of each run, their mean with a 95% Student-t interval (two runs or more), and the margin to
  the budget; the budget is met only when every run passed and finished within it;
- the CPU time of ``make`` and every descendant process that was waited for (``getrusage(RUSAGE_CHILDREN)``:
  pytest, its xdist workers and the subprocesses they reaped; a process nobody reaped, such as a server whose
  parent was killed, is not counted), and CPU seconds per wall second (1.7: on average 1.7 cores busy);
- pass / skip / fail counts from pytest's summary line;
- from a pytest plugin (``benchmarks/suite_clock.py``, through ``PYTEST_ADDOPTS``): each test file's time on its
  xdist worker, each worker's last test (the tail where one core waits for the other), the slowest tests.

Writes benchmarks/results/suite_time[_<tag>].{json,md}, after every run (an interrupted benchmark keeps the runs
it finished).

Usage: python benchmarks/suite_time.py [--runs 1] [--workers 2] [--tag NAME]   (``make test-time``: 2 runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUDGET_SECONDS = 360.0  # the developers' guide: `make test` under 6 minutes on 2 cores
_OUTCOMES = ("passed", "failed", "errors", "error", "skipped", "xfailed", "xpassed", "deselected")


def summary_counts(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``972 passed, 19 skipped, 110 warnings in 366.28s``).

    ``error`` and ``errors`` are both counted as ``errors``; an output without a summary line gives ``{}``.
    """
    summary = re.compile(r"^\W*(\d+ (" + "|".join(_OUTCOMES) + r")|no tests ran)\b.* in [\d.]+s")
    lines = [line for line in output.splitlines() if summary.search(re.sub(r"\x1b\[[\d;]*m", "", line))]
    if not lines:
        return {}
    counts: dict[str, int] = {}
    for number, outcome in re.findall(r"(\d+) (" + "|".join(_OUTCOMES) + r")\b", lines[-1]):
        key = "errors" if outcome in ("error", "errors") else outcome
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def read_clock(directory: Path) -> dict[str, list[tuple[float, str, str]]]:
    """Worker name -> its (time, event, node id) lines, in order (``benchmarks/suite_clock.py``'s logs).

    Under xdist the controller's log is left out: the controller replays every test its workers report
    (``pytest_runtest_logstart``/``logfinish`` fire there too), so counting it would count each test twice.
    """
    workers: dict[str, list[tuple[float, str, str]]] = {}
    for path in sorted(directory.glob("*.log")):
        events = []
        for line in path.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                events.append((float(parts[0]), parts[1], parts[2]))
        workers[path.stem] = events
    if any(name != "controller" for name in workers):
        workers.pop("controller", None)
    return workers


def clock_summary(workers: dict[str, list[tuple[float, str, str]]], started: float) -> dict[str, Any]:
    """Per-test and per-file seconds (start to end of each test, setup and teardown included), each worker's
    first and last test in seconds after ``started``, and the tests that started but never ended (a worker that
    died in them: xdist replaces it under another name)."""
    tests: dict[str, float] = {}
    unfinished: list[str] = []
    files: dict[str, float] = defaultdict(float)
    per_worker = {}
    for worker, events in workers.items():
        opened: dict[str, float] = {}
        first = last = None
        for moment, event, node in events:
            if event == "start":
                opened[node] = moment
                first = moment if first is None else first
            elif event == "end" and node in opened:
                seconds = moment - opened.pop(node)
                tests[node] = tests.get(node, 0.0) + seconds
                files[node.split("::", 1)[0]] += seconds
                last = moment
        unfinished += sorted(opened)
        if first is not None:
            per_worker[worker] = {"first_test_s": round(first - started, 2),
                                  "last_test_end_s": round(last - started, 2) if last is not None else None,
                                  "tests": sum(1 for _, event, _ in events if event == "end")}
    return {"workers": per_worker, "files": dict(files), "tests": tests, "unfinished": unfinished}


def run_once(workers: int) -> dict[str, Any]:
    """``make test`` once, with the clock plugin; what it took and what it said."""
    with tempfile.TemporaryDirectory(prefix="unlearn-suite-clock-") as clock:
        env = {**os.environ, "UNLEARN_SUITE_CLOCK_DIR": clock,
               "PYTEST_ADDOPTS": "-p suite_clock",  # only the clock: the caller's options must not narrow the run
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")]))}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_unix, started = time.time(), time.monotonic()
        result = subprocess.run(["make", "test", f"WORKERS={workers}"], cwd=REPO, env=env, capture_output=True,
                                text=True)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        clocked = clock_summary(read_clock(Path(clock)), started_unix)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"returncode": result.returncode, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
            "cores_busy": round(cpu / wall, 2) if wall else None, "counts": summary_counts(result.stdout),
            "tail": result.stdout[-1500:] + result.stderr[-1500:], **clocked}


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    half = float(stats.t.ppf(0.975, len(values) - 1)) * spread / len(values) ** 0.5
    return mean - half, mean + half


def summarise(runs: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    """Mean wall time, its interval, the margin to the budget, and whether every run met it (passing runs only)."""
    walls = [r["wall_s"] for r in runs]
    ok = all(r["returncode"] == 0 and r["counts"].get("passed", 0) > 0 for r in runs)
    mean = sum(walls) / len(walls)
    interval = t_interval(walls)
    files: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, seconds in run["files"].items():
            files[name].append(seconds)
    return {
        "runs": len(runs), "all_passed": ok, "mean_wall_s": round(mean, 1),
        "interval_95_s": [round(v, 1) for v in interval] if interval else None,
        "min_wall_s": min(walls), "max_wall_s": max(walls), "budget_s": budget,
        "over_budget_s": round(mean - budget, 1), "every_run_within_budget": ok and max(walls) <= budget,
        "mean_cpu_s": round(sum(r["cpu_s"] for r in runs) / len(runs), 1),
        "files_mean_s": {k: round(sum(v) / len(v), 1) for k, v in sorted(files.items(), key=lambda kv: -sum(kv[1]))},
    }


def _git_commit() -> str:
    """HEAD, marked when the tree differs from it: changed or untracked files (an untracked test file is collected
    and timed), but not this benchmark's own result files."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = [line for line in status.splitlines() if not line[3:].startswith("benchmarks/results/suite_time")]
    return result.stdout.strip() + ("+uncommitted changes" if dirty else "")


def _machine() -> str:
    """Architecture, CPU model (Linux), CPUs visible, Python: enough to tell two machines' results apart."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return ", ".join(filter(None, [platform.machine(), model, f"{os.cpu_count()} CPUs visible",
                                   f"Python {platform.python_version()}"]))


def write(report: dict[str, Any], tag: str | None) -> Path:
    stem = "suite_time" + (f"_{tag}" if tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    s = report["summary"]
    verdict = ("within the budget in every run" if s["every_run_within_budget"]
               else "a run failed or ran no test: the time does not count" if not s["all_passed"]
               else f"over the budget: the slowest run took {s['max_wall_s']:.1f} s")
    interval = (f", 95% interval {s['interval_95_s'][0]:.1f}-{s['interval_95_s'][1]:.1f} s"
                if s["interval_95_s"] else " (one run: no interval)")
    lines = [
        "# `make test`: wall time against the budget",
        "",
        f"Command: `{report['command']}` (it runs `make test WORKERS={report['workers']}` {s['runs']} time(s), "
        "in the working tree; CI runs it in a clean clone). "
        f"Commit {report['commit']}, {report['date']}, {report['machine']}.",
        "",
        f"**Mean {s['mean_wall_s']:.1f} s{interval}; budget {s['budget_s']:.0f} s: {verdict}.** "
        f"CPU {s['mean_cpu_s']:.0f} s a run (make and the processes it and its descendants waited for).",
        "",
        "| run | exit | wall (s) | CPU (s) | CPU s per wall s | passed | skipped | failed | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(report["runs"], 1):
        c = run["counts"]
        lines.append(f"| {i} | {run['returncode']} | {run['wall_s']:.1f} | {run['cpu_s']:.0f} | {run['cores_busy']} | "
                     f"{c.get('passed', 0)} | {c.get('skipped', 0)} | {c.get('failed', 0)} | {c.get('errors', 0)} |")
    last = report["runs"][-1]
    lines += ["", "## Workers (last run)", "",
              "Seconds after `make` started. The gap between the workers' last tests is time one core waited.", "",
              "| worker | first test | last test ends | tests |", "|---|---|---|---|"]
    for worker, w in sorted(last["workers"].items()):
        ends = "-" if w["last_test_end_s"] is None else f"{w['last_test_end_s']:.1f}"
        lines.append(f"| {worker} | {w['first_test_s']:.1f} | {ends} | {w['tests']} |")
    if last["unfinished"]:
        lines += ["", "Started and never ended (a worker died in them): " + ", ".join(last["unfinished"])]
    lines += ["", "## Test files, mean seconds on their worker (the 20 longest)", "",
              "Start to end of each test, fixtures included: a worker's first test that needs a session fixture (the "
              "Prefect server, the session's baseline project, the DVC baseline) carries its setup, and its last test "
              "the session's teardown.", "", "| file | s |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in list(s["files_mean_s"].items())[:20]]
    slowest = list(last["slowest_tests"].items())[:15]
    lines += ["", "## Slowest tests (last run)", "", "| test | s |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in slowest]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return RESULTS / f"{stem}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="how many times to run make test (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="make test's WORKERS (default 2, as CI)")
    parser.add_argument("--tag", default=None, help="suffix of the result files")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    commit = _git_commit()  # what is measured: the tree as the runs start
    command = " ".join(["python", "benchmarks/suite_time.py", *(argv if argv is not None else sys.argv[1:])])
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for i in range(args.runs):
        runs.append(run_once(args.workers))
        print(f"run {i + 1}: exit {runs[-1]['returncode']}, {runs[-1]['wall_s']:.1f} s, {runs[-1]['counts']}",
              flush=True)
        report = {"command": command, "workers": args.workers, "commit": commit,
                  "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "machine": _machine(),
                  "summary": summarise(runs, BUDGET_SECONDS),
                  "runs": [{k: v for k, v in r.items() if k != "tests"} | {"slowest_tests": dict(sorted(
                      r["tests"].items(), key=lambda kv: -kv[1])[:25])} for r in runs]}
        path = write(report, args.tag)  # after every run: an interrupted benchmark keeps what it measured
    print(f"wrote {path}")
    return 0 if report["summary"]["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
