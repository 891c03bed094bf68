"""Versions removed from the registry by hand while scheduled for retirement (tasks.lifecycle.settle_deregistered).

Left open by the note of 2026-12-07: the purge never met such a version again, so its batches' ledger entries said
"scheduled" for good, their certificates stayed interim and called it "kept for rollback", and nothing looked for
its files again. Now the purge looks for them where the entry says they were, closes the entry once they are shown
gone, and otherwise says why it cannot.
"""

import json
import shutil

import pytest
from conftest import FAST, run_stages

pytestmark = pytest.mark.e2e

SETUP = {**FAST, "unlearn": {**FAST["unlearn"], "escalation": []}, "gate": {"on_inconclusive": "promote_low_power"},
         "lifecycle": {"retirement_grace_hours": 24}}


def _drop(project, request_id, ids):
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / f"{request_id}.json").write_text(json.dumps(
        {"request_id": request_id, "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
         "subject_ref": f"subject-{request_id}", "sample_ids": ids}))


def _path(location):
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)


def test_a_version_removed_from_the_registry_while_scheduled_is_closed_once_its_files_are_shown_gone(
        make_project, tmp_path):
    import mlflow

    from tasks import model_files, tracking
    from tasks.doctor import diagnose
    from tasks.lifecycle import DEREGISTERED, run_purge
    from tasks.project import load_project
    from unlearn.audit import AuditLog
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    project = load_project(make_project(SETUP))
    run_stages(project, "ingest", "prepare", "train")
    train_ids = SampleStore(project.store_dir).split_ids("train")
    _drop(project, "R-1", train_ids[:int(0.03 * len(train_ids))].tolist())
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote")
    mlflow.set_tracking_uri(project.tracking_uri)
    client, name = mlflow.MlflowClient(), tracking.model_name(project)
    (baseline_at,) = model_files.model_artifact_locations(client, client.get_model_version(name, "1"))
    copy_of_1 = client.create_model_version(name, source=str(_path(baseline_at)))  # the baseline's own folder
    outside = tmp_path / "hand-copy"
    shutil.copytree(_path(baseline_at), outside)
    loose = client.create_model_version(name, source=str(outside))  # no lineage: taken as trained on everything
    moved = client.create_model_version(name, source=str(tmp_path / "elsewhere"))
    run_purge(project)
    (batch_id,) = Ledger(project.ledger_path).batches

    def entries():
        return Ledger(project.ledger_path).batch(batch_id)["retirement"]

    scheduled = entries()
    for version in ("1", str(copy_of_1.version), str(loose.version), str(moved.version)):
        assert scheduled[version]["action"] == "scheduled" and "held" not in scheduled[version], version
    assert scheduled[str(loose.version)]["files"] == [str(outside)]  # where its files are, kept with the entry

    # An operator removes the hand versions from the registry before they are due
    for version in (copy_of_1, loose, moved):
        client.delete_model_version(name, str(version.version))
    ledger = Ledger(project.ledger_path)  # the moved one's paths were recorded in another registered model
    ledger.batch(batch_id)["retirement"][str(moved.version)]["registry"] = "0"
    ledger.save()
    run_purge(project)
    held = {version: entry.get("held", "") for version, entry in entries().items()}
    assert all(entries()[v]["action"] == "scheduled" for v in held)
    assert held["1"] == ""  # still registered: retired when due, as before
    assert held[str(copy_of_1.version)].startswith(DEREGISTERED) and "also those of version 1" in held[
        str(copy_of_1.version)]  # never "remove its files": they are a registered version's
    assert held[str(loose.version)].startswith(DEREGISTERED) and f"remain at {outside}" in held[str(loose.version)]
    assert "cannot be located" in held[str(moved.version)]
    findings = {f.subject: f.problem for f in diagnose(project)}
    assert f"remain at {outside}" in findings[f"version {loose.version}"]
    run_stages(project, "certify")
    (certificate,) = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    assert certificate["status"] == "awaiting_retirement"
    statement = certificate["retirement"]["statement"]
    held_part = next(part for part in statement.split("model version(s) ") if " are due for retirement" in part)
    assert str(loose.version) in held_part.split(" are due")[0].split(", ")
    assert "removed from the registry by hand" in statement
    assert f"held: {DEREGISTERED}" in next(project.certificates_dir.glob("*.html")).read_text()

    # Then version 1 (a logged model) too: the purge looks for its logged model's files, and finds them there
    client.delete_model_version(name, "1")
    run_purge(project)
    assert f"remain at {baseline_at}" in entries()["1"]["held"]
    assert model_files.artifacts_remaining(baseline_at) > 0  # the pipeline deletes only through a version

    # The files are removed by hand: each entry whose files are shown gone is closed, once, with an audit record
    shutil.rmtree(_path(baseline_at))
    shutil.rmtree(outside)
    for _ in range(2):
        run_purge(project)
    closed = entries()
    for version in ("1", str(copy_of_1.version), str(loose.version)):
        entry = closed[version]
        assert entry["action"] == "retired" and entry["deregistered"] is True and "held" not in entry, version
        assert entry["weights_searched"] is False and entry["retired_at"] and DEREGISTERED in entry["reason"]
    records = AuditLog(project.audit_path).records("model.retired", deregistered=True)
    assert sorted(r["model_version"] for r in records) == sorted(["1", str(copy_of_1.version), str(loose.version)])
    assert next(r for r in records if r["model_version"] == "1")["model_id"] == closed["1"]["model_id"]
    assert closed[str(moved.version)]["action"] == "scheduled"  # nothing shown of it: still said, never closed
    run_stages(project, "certify")
    (certificate,) = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    assert certificate["status"] == "awaiting_retirement"  # the moved one's files were never shown gone
    shown = {v["version"]: v for v in certificate["retirement"]["versions"]}
    assert shown[str(loose.version)]["artifacts_deleted"] is True and shown[str(loose.version)]["deregistered"]
    assert "so no fingerprint of its weights was taken" in next(project.certificates_dir.glob("*.html")).read_text()

    # Once the last one is closed too (its entry recorded in this registered model after all), the batch is final
    ledger = Ledger(project.ledger_path)
    ledger.batch(batch_id)["retirement"][str(moved.version)]["registry"] = closed[str(loose.version)]["registry"]
    ledger.save()
    run_purge(project)
    run_stages(project, "certify")
    (certificate,) = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    assert certificate["status"] == "complete"
    assert not any(DEREGISTERED in f.problem for f in diagnose(project))
