"""Scheduled exact work, off the request path: deployments and commands of the ``method-audit`` and
``consolidate`` flows (issue #12, item 4; the flows are in :mod:`flows.scheduled`, so building the
``unlearn`` parser imports no Prefect).

* ``method-audit``: replays a past batch with its method and retrains exactly without it; the strict
  gate's audited gap goes to MLflow and the audit log, and a method beyond the margin leaves the ladder
  (:mod:`tasks.method_audit`).
* ``consolidate``: retrains the champion exactly on the current data and promotes it
  (:mod:`tasks.consolidate`), then runs purge so versions that saw deleted samples are retired.

Both hold the project's pipeline lock: they never run beside a deletion run. ``unlearn serve`` serves
them (:func:`deployment_specs`): on their cron (``gate.audit.cron``: audit the newest unaudited batch;
``gate.consolidate.cron``: consolidate unconditionally) and, for the count rules (``every_batches``,
``deleted_fraction``), after each completed pipeline run of the project, where they return at once
unless due.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.exit_codes import EXIT_OK
from tasks.project import load_project
from unlearn.gate import UTILITY_CHECKS


def deployment_specs(root: str | Path, key: str) -> list[tuple[Any, dict[str, Any]]]:
    """The deployments ``unlearn serve`` adds for one project, as ``(flow, deployment options)``; only
    those ``params.yaml`` configures.

    ``audit-<key>`` on ``gate.audit.cron``; ``audit-count-<key>`` when ``gate.audit.every_batches`` > 0;
    ``consolidate-<key>`` on ``gate.consolidate.cron`` (forced: a schedule means "retrain now");
    ``consolidate-due-<key>`` always (the ``deleted_fraction`` rule is always on). The count and
    fraction deployments are triggered by every completed pipeline run of the project and return at
    once unless due.

    Args:
        root: Project directory.
        key: The project's key (:func:`flows.serve.project_key`): deployment names and the tag that
            ties a pipeline run to this project.

    Returns:
        Each deployment's flow and the keyword arguments of ``flow.to_deployment`` (and of
        ``Runner.add_flow``, which ``unlearn serve`` uses so that runs start from the flow object).
    """
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.scheduled import audit_flow, consolidate_flow

    project = load_project(root)
    gate, timezone = project.params.gate, project.params.serve.timezone
    parameters = {"root": str(project.root)}
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["unlearn", f"project-{key}"]}

    def after_pipeline(name: str) -> list[Any]:
        return [DeploymentEventTrigger(
            name=f"unlearn {key}: {name} after a pipeline run", expect={"prefect.flow-run.Completed"},
            match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": "unlearning-pipeline"},
                           {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.project-{key}"}],
            threshold=1)]

    out = []
    if gate.audit.cron:
        out.append((audit_flow, dict(
            name=f"audit-{key}", schedules=[Cron(gate.audit.cron, timezone=timezone)], parameters=parameters,
            description=f"Exact-retrain audit of the unlearning method on a past batch of {project.root}", **common)))
    if gate.audit.every_batches > 0:
        out.append((audit_flow, dict(
            name=f"audit-count-{key}", triggers=after_pipeline("audit"),
            parameters={**parameters, "only_if_due": True},
            description=f"Audit after every {gate.audit.every_batches} batch(es) of {project.root}", **common)))
    if gate.consolidate.cron:
        out.append((consolidate_flow, dict(
            name=f"consolidate-{key}", schedules=[Cron(gate.consolidate.cron, timezone=timezone)],
            parameters={**parameters, "force": True},
            description=f"Scheduled exact retrain of the champion of {project.root}", **common)))
    out.append((consolidate_flow, dict(
        name=f"consolidate-due-{key}", triggers=after_pipeline("consolidate"),
        parameters={**parameters, "triggered": True},
        description=f"Exact retrain of {project.root} once {gate.consolidate.deleted_fraction:.0%} of the training "
                    "set was deleted since the last exact model (or the batch count rule)", **common)))
    return out


def build_deployments(root: str | Path, key: str) -> list[Any]:
    """The maintenance deployments of :func:`deployment_specs` as Prefect ``RunnerDeployment`` objects."""
    return [flow.to_deployment(**options) for flow, options in deployment_specs(root, key)]


# --------------------------------------------------------------------------- CLI


def _print(result: dict[str, Any], as_json: bool, text: str) -> None:
    sys.stdout.write((json.dumps(result, indent=2, sort_keys=True, default=str) if as_json else text) + "\n")


def audit_text(record: dict[str, Any]) -> str:
    """One audit record in plain words: what was audited, each metric's audited gap, the outcome."""
    if record.get("status") != "audited":
        return f"audit: {record.get('status')} (every promoted batch was audited, or none was unlearned approximately)"
    lines = [f"audit of {record['method']} on batch(es) {', '.join(record['batch_ids'])} "
             # the method is re-run on the rebuilt situation: the model audited is that re-run, not version V itself
             f"(re-run as it was for model version {record['model_version']}, "
             f"from parent {record['parent_version'] or '-'} "
             f"{'from the registry' if record['parent_source'] == 'registry' else 'retrained exactly'}; "
             f"{len(record['retrain_seeds'])} exact retrain(s), {record['n_forget']} forget / "
             f"{record['n_negative']} negative samples)"]
    for check in record["checks"]:
        ci = check["ci"]
        interval = "-" if None in ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
        one_sided = check["metric"] in UTILITY_CHECKS  # a loss of accuracy beyond it, not a gap either way
        margin = "-" if check["margin"] is None else f"{'-' if one_sided else '±'}{check['margin']:.4f}"
        estimate = "-" if check["estimate"] is None else f"{check['estimate']:+.4f}"
        lines.append(f"  {check['metric']:<24} gap {estimate}  CI {interval}  margin {margin}  {check['verdict']}")
    lines.append(f"verdict {record['verdict']}: {record['reason']}")
    if record["demoted"]:
        lines.append(f"{record['method']} DEMOTED: it leaves the escalation ladder (gap beyond the margin on "
                     f"{', '.join(record['offending'])})")
    else:
        lines.append(f"{record['method']} stays in the ladder")
    return "\n".join(lines)


def cmd_audit_run(args: argparse.Namespace) -> int:
    """``unlearn audit run [--batch ID] [--method NAME]``."""
    from flows.scheduled import audit_flow

    record = audit_flow(root=str(Path(args.root).resolve()), batch=args.batch, method=args.method)
    _print(record, args.json, audit_text(record))
    return EXIT_OK


def add_audit_run(audit_commands: argparse._SubParsersAction) -> None:
    """Add ``run`` under the ``audit`` command group."""
    run = audit_commands.add_parser("run", help="exact-retrain audit of the unlearning method on a past batch "
                                                "(demotes the method when its audited gap exceeds the margin)")
    run.add_argument("--batch", help="audit the promotion that completed this batch (default: the newest not "
                                     "yet audited)")
    run.add_argument("--method", help="audit this method on the batch instead of the one it used")
    run.add_argument("--json", action="store_true", help="print the audit record as JSON")


def _cmd_consolidate(args: argparse.Namespace) -> int:
    from flows.scheduled import consolidate_flow

    result = consolidate_flow(root=str(Path(args.root).resolve()), force=not args.if_due)
    status = result["status"]
    if status == "consolidated":
        text = (f"consolidated: version {result['version']} (exact retrain on {result['data_version']}) is champion; "
                f"previous {result['previous_champion']}")
    else:
        text = f"consolidate: {status}" + (f" ({result['reason']})" if result.get("reason") else "")
    _print(result, args.json, text)
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register ``consolidate`` on the ``unlearn`` parser (``audit run`` is added by :mod:`flows.integrity`)."""
    consolidate = commands.add_parser("consolidate", help="retrain the champion exactly on the current data and "
                                                          "promote it (refused while batches are pending)")
    consolidate.add_argument("--if-due", action="store_true", help="only when gate.consolidate's deleted_fraction "
                                                                   "or every_batches rule calls for it")
    consolidate.add_argument("--json", action="store_true", help="print the summary as JSON")
    return {"consolidate": _cmd_consolidate}
