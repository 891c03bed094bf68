"""The promote stage: register the escalation's model with its lineage; move ``champion`` if it passed."""

from __future__ import annotations

import json
import logging
from typing import Any

from tasks import audit, dvc_ops, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    input_example,
    load_candidate_state,
    mark_step,
    model_architecture,
    newest_batch,
    read_state,
    tag_list,
    utc_now,
    write_state,
)
from unlearn.data import SampleStore
from unlearn.models import build_model
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")


def run_promote(project: Project) -> dict[str, Any]:
    """Register the escalation's model with its lineage; move ``champion`` only if it passed.

    Crash-safe and idempotent: the version is found again by its run id instead of being
    registered twice; the batches are marked ``promoting`` (with the version) before the alias
    moves and ``completed`` after, so a re-run finishes an interrupted promotion. When every
    rung failed, the last attempt is registered with its verdict and no alias; the champion
    does not move and the batches stay pending.

    Returns:
        Version, verdict, aliases.
    """
    client = tracking.setup(project)
    ledger = Ledger(project.ledger_path)
    finished = finish_promotions(project, client, ledger)
    state = read_state(project, "unlearn")
    if state.get("status") != "done" or not state.get("run_id"):
        if finished:
            return write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return write_state(project, "promote", {"status": "nothing_to_promote"})
    if any(ledger.batches.get(b, {}).get("status") != Ledger.PENDING for b in state["batches"]):
        # Already promoted (this run's batches are completed) or superseded: nothing to do.
        if finished:
            return write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return write_state(project, "promote", {"status": "nothing_to_promote", "reason": "batches not pending"})
    champion = tracking.champion_version(project, client)
    if champion is None or str(champion.version) != state["parent_version"]:
        # The escalation started from another champion: its model never forgot what the current
        # champion forgot. Never promote it; the next run starts a fresh escalation.
        raise PipelineError(f"the escalation started from version {state['parent_version']} but the champion is "
                            f"{None if champion is None else champion.version}; re-run the pipeline")
    chosen = state["attempts"][state["chosen"]] if state["chosen"] is not None else state["attempts"][-1]
    report = json.loads((project.reports_dir / "attempts" / chosen["report"]).read_text())
    if report["run_id"] != chosen["run_id"]:
        raise PipelineError("verification report belongs to another unlearning run; re-run unlearn")
    passed = report["verdict"] == "pass"
    existing = tracking.find_version_by_run(project, client, chosen["run_id"])
    if existing is not None:
        version = str(existing.version)
    else:
        version = _register_candidate(project, state, chosen, report, passed)
    previous = None
    last_notes = [ledger.batches[b]["history"][-1] if ledger.batches[b]["history"] else {} for b in state["batches"]]
    if not passed and all(n.get("outcome") == "verification_failed" and str(n.get("model_version")) == version
                          for n in last_notes):
        return write_state(project, "promote", {"status": "rejected", "version": version, "verdict": "fail",
                                                 "method": chosen["method"], "unchanged": True,
                                                 **_aliases(project, client)})
    if passed:
        for batch_id in state["batches"]:
            ledger.set_status(batch_id, Ledger.PROMOTING, {"at": utc_now(), "outcome": "promoting",
                                                           "model_version": version})
        ledger.save()
        audit.record(project, "model.verified", model_version=version, method=chosen["method"],
                     batch_ids=state["batches"], attempts=len(state["attempts"]))
        finished = finish_promotions(project, client, ledger)
        previous = state["parent_version"]
    else:
        for batch_id in state["batches"]:
            ledger.set_status(batch_id, Ledger.PENDING, {"at": utc_now(), "outcome": "verification_failed",
                                                         "model_version": version})
        ledger.save()
        audit.record(project, "model.rejected", model_version=version, batch_ids=state["batches"],
                     attempts=len(state["attempts"]), failures=len(report["failures"]))
    result = {"status": "promoted" if passed else "rejected", "version": version, "verdict": report["verdict"],
              "method": chosen["method"], "attempts": [[a["method"], a["verdict"]] for a in state["attempts"]],
              "previous_champion": previous, **_aliases(project, client)}
    log.info("promote: version %s %s", version, result["status"])
    return write_state(project, "promote", result)



def _aliases(project: Project, client: Any) -> dict[str, Any]:
    aliases = client.get_registered_model(tracking.model_name(project)).aliases
    return {"aliases": {k: str(v) for k, v in aliases.items()}}



def _register_candidate(project: Project, state: dict[str, Any], chosen: dict[str, Any],
                        report: dict[str, Any], passed: bool) -> str:
    """Log the chosen attempt's model in its run and register it, with lineage tags."""
    import mlflow

    store = SampleStore(project.store_dir)
    architecture = model_architecture(project, store)
    model = build_model(architecture["model"], architecture["in_channels"], architecture["num_classes"])
    model.load_state_dict(load_candidate_state(project, chosen))
    ledger = Ledger(project.ledger_path)
    covers = newest_batch(ledger, state["batches"] + [state.get("parent_covers_through") or ""]) if passed \
        else state.get("parent_covers_through", "")
    metrics = report["models"]["unlearned"]
    with mlflow.start_run(run_id=chosen["run_id"]):
        version, _ = tracking.log_model(project, model, input_example(store), architecture=architecture, tags={
            "role": "unlearned", "method": chosen["method"], "verdict": report["verdict"],
            "gate_failures": "; ".join(report["failures"]), "parent_version": state["parent_version"],
            "data_version": state["data_version_after"], "data_version_before": state["data_version_before"],
            "data_version_after": state["data_version_after"], "request_batches": tag_list(state["batches"]),
            "covers_through": covers, "ladder": ",".join(f"{a['method']}:{a['verdict']}" for a in state["attempts"]),
            "run_id": chosen["run_id"], "git_commit": dvc_ops.git_commit(project),
            **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()},
        })
    return version



def finish_promotions(project: Project, client: Any, ledger: Ledger) -> list[str]:
    """Complete batches left ``promoting``: move the alias (if not yet) and mark them completed."""
    done = []
    for batch_id in ledger.batches_with_status(Ledger.PROMOTING):
        version = str(ledger.batches[batch_id]["history"][-1]["model_version"])
        champion = tracking.champion_version(project, client)
        moved = champion is None or str(champion.version) != version
        if moved:
            tracking.move_champion(project, client, version)
        # Recorded per batch, also when a re-run finds the alias already moved (crash in between).
        audit.record(project, "model.promoted", model_version=version, batch_id=batch_id,
                     previous_version=None if champion is None or not moved else str(champion.version),
                     recovered=not moved)
        ledger.set_status(batch_id, Ledger.COMPLETED,
                          {"at": utc_now(), "outcome": "promoted", "model_version": version})
        mark_step(ledger, [batch_id], "promoted")
        ledger.save()
        done.append(version)
    return done

