"""A deletion that leaves nothing to train on: the data goes, the model that held it goes, nothing wedges."""

import json

import pytest
from conftest import FAST, run_stages

pytestmark = pytest.mark.e2e


def _request(request_id, **target):
    return {"request_id": request_id, "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
            "subject_ref": f"subject-{request_id}", **target}


def test_deleting_every_training_sample_withdraws_the_model_and_keeps_the_pipeline_working(champion_project):
    import mlflow

    from flows.cli import main
    from tasks import tracking
    from tasks.doctor import diagnose
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project(FAST)  # the session's baseline: champion v1 trained on the whole store
    project = load_project(root)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / "all.json").write_text(json.dumps(
        [_request(f"CLASS-{c}", forget_class=str(c)) for c in range(10)]))
    run_stages(project, "ingest", "prepare")
    assert len(SampleStore(project.store_dir).split_ids("train")) == 0
    for stage in ("train", "references", "unlearn", "promote", "purge", "certify"):
        assert main(["--root", str(root), "stage", stage]) == 0, stage

    state = json.loads((project.state_dir / "unlearn.json").read_text())
    assert state["status"] == "model_withdrawn" and state["withdrawn_version"] == "1"
    mlflow.set_tracking_uri(project.tracking_uri)
    client = mlflow.MlflowClient()
    assert tracking.champion_version(project, client) is None  # nothing serves the deleted data
    v1 = client.get_model_version(tracking.model_name(project), "1")
    assert v1.tags["retired"] == "true" and v1.tags["artifacts_deleted"] == "true"
    assert "withdrawn" in v1.tags["retired_reason"]
    certificates = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    assert len(certificates) == 10
    for certificate in certificates:
        assert certificate["status"] == "complete" and certificate["model"]["withdrawn"] is True
        assert certificate["model"]["withdrawn_version"] == "1"
        assert [v["artifacts_deleted"] for v in certificate["retirement"]["versions"]] == [True]
        assert certificate["data"]["version_before"] and certificate["data"]["version_after"]
        assert certificate["data"]["version_before"] != certificate["data"]["version_after"]
    html = next(project.certificates_dir.glob("*.html")).read_text()
    assert "withdrawn, no successor" in html

    # later requests still go through: a test-split deletion completes as data-only
    test_ids = SampleStore(project.store_dir).split_ids("test")[:2].tolist()
    (project.incoming_dir / "later.json").write_text(json.dumps(_request("LATER-1", sample_ids=test_ids)))
    run_stages(project, "ingest", "prepare")
    for stage in ("train", "references", "unlearn", "promote", "purge", "certify"):
        assert main(["--root", str(root), "stage", stage]) == 0, stage
    assert main(["--root", str(root), "request", "status", "LATER-1"]) == 0
    later = next(json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")
                 if json.loads(p.read_text())["request_id"] == "LATER-1")
    assert later["status"] == "data_only"
    assert later["data"]["version_before"] and later["data"]["version_after"]
    assert diagnose(project) == []
