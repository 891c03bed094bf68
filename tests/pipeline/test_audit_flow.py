"""Scheduled exact-retrain audits: a method whose audited gap is beyond the margin leaves the ladder."""

import json
import logging

import pytest
import yaml
from conftest import FAST, drop_request, run_stages

pytestmark = pytest.mark.e2e

# The batch is unlearned exactly (so the test does not depend on what the per-batch gate does); the audit then
# replays it with a method configured to do (almost) nothing: fine-tuning with a vanishing learning rate leaves
# the parent's weights in place, so its model remembers the forget set as much as the parent does.
SETUP = {**FAST, "unlearn": {"method": "retrain", "escalation": [],
                             "methods": {"finetune": {"epochs": 1, "lr": 1e-12, "batch_size": 64}}},
         "gate": {"audit": {"every_batches": 1, "cron": None, "retrains": 1}, "resamples": 300}}


def test_an_inert_method_is_demoted_by_its_audit_and_the_escalation_then_skips_it(prefect_server, make_project,
                                                                                   caplog, capsys):
    import mlflow

    from flows.cli import main
    from flows.scheduled import audit_flow
    from flows.status import collect_status
    from tasks import ladder, method_audit, tracking
    from tasks.project import load_project
    from tasks.stage.escalation import begin_unlearning
    from unlearn.audit import AuditLog
    from unlearn.data import SampleStore

    root = make_project(SETUP)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    train_ids = SampleStore(project.store_dir).split_ids("train")
    forget = train_ids[:300].tolist()
    drop_request(project, "R-1", forget)
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote", "purge")
    mlflow.set_tracking_uri(project.tracking_uri)
    client = mlflow.MlflowClient()
    champion = tracking.champion_version(project, client)
    assert champion.tags["method"] == "retrain"
    assert method_audit.due(project)  # every_batches: 1
    assert method_audit.audit_method(project) == {"status": "nothing_to_audit"}  # exact: no gap to audit
    batch = champion.tags["request_batches"]

    record = method_audit.audit_method(project, batch=batch, method="finetune")

    assert record["status"] == "audited" and record["method"] == "finetune" and record["method_used"] == "retrain"
    assert record["model_version"] == str(champion.version) and record["parent_version"] == "1"
    assert record["parent_source"] == "retrained"  # purge retired version 1: it saw the deleted samples
    assert record["n_forget"] == 300 and record["parent_detected"]
    assert record["reference_jackknife"] == {}  # FAST's two references: none left out, and the record says so
    assert record["demoted"] and record["offending"], record
    for check in record["checks"]:
        assert set(check) >= {"metric", "estimate", "ci", "margin", "verdict"}
    assert ladder.demoted(project)["finetune"]["metrics"] == record["offending"]
    assert not method_audit.due(project)
    # MLflow: an audit run with its tags and the audited gap per metric
    run = client.get_run(record["run_id"])
    assert run.data.tags["stage"] == "audit" and run.data.tags["demoted"] == "true"
    assert run.data.tags["parent_source"] == "retrained"
    offending = record["offending"][0]
    assert f"audit.{offending}.estimate" in run.data.metrics and f"audit.{offending}.margin" in run.data.metrics
    # the audit log: one event, counts and numbers only
    events = AuditLog(project.audit_path).records("method.audited")
    assert len(events) == 1 and events[0]["demoted"] is True
    assert not any(sample in json.dumps(events[0]) for sample in forget)
    # unlearn status: the last audit per method, demoted
    shown = collect_status(root)["audits"]["finetune"]
    assert shown["demoted"] and shown["verdict"] == record["verdict"] and offending in shown["gaps"]
    # the ladder amun -> finetune -> retrain now skips finetune
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unlearn"]["escalation"] = ["finetune", "retrain"]
    params["unlearn"]["method"] = "amun"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(root)
    drop_request(project, "R-2", train_ids[300:310].tolist())
    run_stages(project, "ingest", "prepare")
    logger = logging.getLogger("unlearn.pipeline")
    logger.addHandler(caplog.handler)  # `unlearn` CLI runs earlier in a session stop propagation to the root
    try:
        with caplog.at_level("WARNING", logger="unlearn.pipeline"):
            state = begin_unlearning(project)
    finally:
        logger.removeHandler(caplog.handler)
    assert state["ladder"] == ["amun", "retrain"] and state["next_method"] == "amun"
    assert any("skipping finetune" in r.getMessage() for r in caplog.records)
    # the Prefect flow and the command: nothing is due (R-2 is pending), nothing approximate is left to audit
    assert audit_flow(root=str(root), only_if_due=True) == {"status": "not_due"}
    # Triggered after every pipeline run, the maintenance flows answer "not due" / "pending" without queuing on the
    # project lock behind another run: with the lock held, they still return at once.
    import threading

    from flows.scheduled import consolidate_flow
    from tasks.locking import pipeline_lock

    answers = {}
    with pipeline_lock(project):
        workers = [threading.Thread(target=lambda: answers.update(audit=audit_flow(root=str(root), only_if_due=True)),
                                    daemon=True),
                   threading.Thread(target=lambda: answers.update(
                       consolidate=consolidate_flow(root=str(root), triggered=True)), daemon=True)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        waited = any(worker.is_alive() for worker in workers)
    for worker in workers:  # none outlives the test, whatever happened
        worker.join()
    assert not waited, "a maintenance flow waited on the lock"
    assert answers["audit"] == {"status": "not_due"} and answers["consolidate"]["status"] == "skipped"
    capsys.readouterr()
    assert main(["--root", str(root), "audit", "run"]) == 0
    assert "nothing_to_audit" in capsys.readouterr().out
    assert main(["--root", str(root), "audit", "run", "--batch", batch, "--method", "retrain"]) == 2  # exact
