"""Benchmark: the CPU an ``unlearn stage`` process spends in full garbage collections, the command against ``main``.

Why: ``dvc repro`` runs every stage as a process of its own, and each imports PyTorch, MLflow (and Great
Expectations, for ingest). Every full garbage collection traverses every object imported so far: CPython's
defaults run about 15 of them while the stack imports, and the interpreter's final collections at exit traverse it
all again. The ``unlearn`` command (:func:`flows.cli.console`) runs a full collection after 100 middle-generation
ones instead of 10, and before it exits collects the garbage there is and freezes the rest out of the final
collections. This measures what that saves, per stage process.

How: a digits project is built with the shipped ``params.yaml`` (``dvc repro`` once, untimed: ingest, prepare,
train, references, unlearn, promote, purge, certify); then each stage is run again (nothing to do: no request is
pending, the champion exists), ``--repeats`` times per variant, the variants alternating: the ``unlearn`` command
as installed (``console``) and the same arguments through ``main`` alone (``python -c 'sys.exit(main())'``).
Each process's CPU (user + system) comes from ``os.wait4``'s resource usage; OMP/MKL threads are 1, as in the
test suite. Writes benchmarks/results/cli_exit.{json,md}.

Usage: python benchmarks/cli_exit.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")
MAIN_ONLY = "import sys; from flows.cli import main; sys.exit(main())"


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float]:
    """Exit status and CPU seconds (user + system) of one process."""
    with open(os.devnull, "w") as sink:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        process.stderr.close()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}: {err[-2000:]}")
    return process.returncode, usage.ru_utime + usage.ru_stime


def _t95(values: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(Path(sys.executable).parent / "unlearn")]
    variants = {"command": command, "main only": [sys.executable, "-c", MAIN_ONLY]}
    with tempfile.TemporaryDirectory(prefix="unlearn-cli-exit-") as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, root / name)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        from tasks import dvc_ops
        from tasks.project import load_project

        dvc_ops.ensure_repo(load_project(root))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        _run([sys.executable, "-m", "dvc", "repro"], root, env)  # the project: a baseline champion, untimed
        cpu: dict[str, dict[str, list[float]]] = {v: {s: [] for s in STAGES} for v in variants}
        for repeat in range(args.repeats):
            order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for stage in STAGES:
                for variant in order:
                    _, seconds = _run([*variants[variant], "--root", str(root), "stage", stage], root, env)
                    cpu[variant][stage].append(seconds)
    names = list(variants)
    rows, saved_total = [], []
    for stage in STAGES:
        a, b = cpu[names[0]][stage], cpu[names[1]][stage]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        rows.append({"stage": stage, names[0]: statistics.fmean(a), names[1]: statistics.fmean(b),
                     "saved_mean": statistics.fmean(diffs), "saved_ci95": _t95(diffs)})
    for repeat in range(args.repeats):
        saved_total.append(sum(cpu[names[1]][s][repeat] - cpu[names[0]][s][repeat] for s in STAGES))
    document = {
        "command": f"python benchmarks/cli_exit.py --repeats {args.repeats}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "repeats": args.repeats, "cpu_seconds": cpu, "stages": rows,
        "saved_per_chain_mean": statistics.fmean(saved_total), "saved_per_chain_ci95": _t95(saved_total),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cli_exit.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# CPU of an `unlearn stage` process: the command (fewer full collections, `gc.freeze` at exit) against "
        "`main` alone", "",
        f"Command: `{document['command']}`. Commit {document['commit']}, {document['date']}, "
        f"{document['machine']['cpu']}, {document['machine']['cpus']} CPUs, Python {document['machine']['python']}.",
        "", "Each stage run again on a built digits project (nothing to do: what a repeated `dvc repro` runs), "
        f"{args.repeats} times per variant, alternating; CPU = user + system of the process (`wait4`), one "
        "thread. The difference is per pair of runs; the interval is a 95% Student-t interval over the pairs.", "",
        f"| stage | {names[0]} (s) | {names[1]} (s) | saved (s) | 95% interval |", "|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["saved_ci95"]
        lines.append(f"| {row['stage']} | {row[names[0]]:.2f} | {row[names[1]]:.2f} | {row['saved_mean']:.2f} | "
                     f"{low:.2f} to {high:.2f} |")
    low, high = document["saved_per_chain_ci95"]
    lines += ["", f"**All {len(STAGES)} stages: {document['saved_per_chain_mean']:.2f} s of CPU saved per chain "
              f"(95% interval {low:.2f} to {high:.2f}).**", ""]
    (RESULTS / "cli_exit.md").write_text("\n".join(lines))
    print("\n".join(lines))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the machine line of a benchmark's results."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
