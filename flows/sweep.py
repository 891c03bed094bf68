"""``method-sweep``: compare unlearning methods on the pending deletion, fanned out over the task runner.

    unlearn sweep                                    every method of the ladder except retrain
    unlearn sweep --method finetune amun --set amun.epochs=3,5 --set amun.lr=0.01,0.02

The flow holds the project lock, runs what the pipeline runs before unlearning (ingest ->
prepare -> train -> references), prepares the shared evidence once, runs every candidate as a
task mapped over the task runner that ``params.yaml: orchestration`` names (sequential, threads,
or Dask), and records ``data/reports/sweep.json``, ``sweep.md`` and an MLflow parent run with a
nested run per candidate. Nothing is promoted; the pending requests stay pending for
``unlearn run``. Stage functions: :mod:`tasks.sweep`.

Prefect is imported only when the flow is first used, so that registering the command keeps
every other ``unlearn`` command fast: ``sweep_flow`` is built on first access.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _method_sweep(root: str = ".", methods: list[str] | None = None,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """Compare unlearning methods on the pending deletion (the body of the ``method-sweep`` flow).

    Args:
        root: Project directory.
        methods: Method names (default: the ladder without ``retrain``).
        overrides: Grid overrides ``METHOD.KEY=V1,V2`` (cartesian product per method).

    Returns:
        The ingest, prepare, train and references summaries, ``sweep`` (:func:`tasks.sweep.record_sweep`'s
        summary), and wall times in seconds (``timings``).
    """
    from flows.pipeline import project_root, run_until_unlearning, stage_timer
    from flows.runners import fan_out
    from tasks import prefect_tasks as t
    from tasks.locking import pipeline_lock
    from tasks.project import load_project
    from tasks.sweep import cleanup_sweep, require_something_to_sweep

    root = project_root(root)
    project = load_project(root)
    candidates = t.plan_sweep_task(root, methods, overrides)  # bad input fails before any work
    with pipeline_lock(project) as waited:
        results: dict[str, Any] = {"timings": {}, "root": root, "lock_wait_seconds": round(waited, 3)}
        timed = stage_timer(results["timings"])
        require_something_to_sweep(project)  # before the stages: minutes of training on a fresh project
        run_until_unlearning(project, results, timed)
        try:
            prepared = timed("sweep", lambda: t.prepare_sweep_task(root, candidates))
            outcomes = timed("sweep", lambda: fan_out(t.sweep_candidate_task, root, "candidate",
                                                      prepared["candidates"]))
            results["sweep"] = timed("sweep", lambda: t.record_sweep_task(root, prepared, outcomes))
        finally:
            cleanup_sweep(project)  # the champion copy: a model trained on the samples being deleted
    return results


@functools.cache
def _build_flow() -> Any:
    from prefect import flow

    return flow(name="method-sweep")(_method_sweep)


def __getattr__(name: str) -> Any:
    # PEP 562: ``from flows.sweep import sweep_flow`` builds the Prefect flow on first use.
    if name == "sweep_flow":
        return _build_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_sweep_flow(root: str, methods: list[str] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the ``method-sweep`` flow (its candidates run on the task runner ``params.yaml: orchestration`` names).

    Args:
        root: Project directory.
        methods: See :func:`tasks.sweep.plan_sweep`.
        overrides: See :func:`tasks.sweep.plan_sweep`.

    Returns:
        What the flow returns.
    """
    from flows.pipeline import command_run_settings
    from tasks.project import load_project

    with command_run_settings():
        return _build_flow()(root=str(load_project(root).root), methods=methods, overrides=overrides)


# --------------------------------------------------------------------------- command line


def add_commands(commands: Any) -> dict[str, Callable[[Any], int]]:
    """Add ``sweep`` to the ``unlearn`` parser.

    Args:
        commands: The subparsers action of the ``unlearn`` parser.

    Returns:
        ``{"sweep": handler}``.
    """
    sweep = commands.add_parser(
        "sweep", help="compare unlearning methods on the pending deletion (nothing is promoted)",
        description="Unlearn the pending deletion once per candidate, fanned out over params.yaml's task runner, "
                    "and compare the candidates with the exact retrain; writes data/reports/sweep.json and sweep.md.")
    # SUPPRESS: without --root here, the global `unlearn --root DIR sweep` value stays.
    sweep.add_argument("--root", default=argparse.SUPPRESS, help="project directory (default: .)")
    sweep.add_argument("--method", dest="methods", action="extend", nargs="+", metavar="NAME",
                       help="methods to compare (default: params.yaml's ladder without retrain)")
    sweep.add_argument("--set", dest="overrides", action="extend", nargs="+", metavar="METHOD.KEY=V1,V2",
                       help="grid values of one method keyword argument (YAML scalars); candidates are the "
                            "cartesian product per method, other kwargs from params.yaml")
    return {"sweep": _cmd_sweep}


def _cmd_sweep(args: argparse.Namespace) -> int:
    from flows.exit_codes import EXIT_ERROR
    from tasks.project import load_project
    from tasks.sweep import plan_sweep

    project = load_project(getattr(args, "root", "."))  # params checked against the registries
    candidates = plan_sweep(project, args.methods, args.overrides)  # bad input: exit 2 before Prefect starts
    # Written, not printed: like `unlearn status`, this module is a command's output, not logging.
    sys.stdout.write(f"sweeping {len(candidates)} candidate(s): {', '.join(c['label'] for c in candidates)}\n")
    sys.stdout.flush()
    result = run_sweep_flow(str(project.root), args.methods, args.overrides)["sweep"]
    sys.stdout.write(Path(result["table"]).read_text() + "\n")
    sys.stdout.write(f"report: {result['report']} (table: {result['table']}); MLflow run {result['run_id']}\n")
    if result["errors"]:
        failed = [c["label"] for c in result["candidates"] if c["verdict"] == "error"]
        sys.stderr.write(f"error: {len(failed)} candidate(s) could not run: {', '.join(failed)} (see the table)\n")
        return EXIT_ERROR
    return 0
