"""`dvc repro` drives the same stages as the Prefect flow, and a repeat run redoes nothing."""

import pytest
from conftest import FAST, dvc_repro

pytestmark = pytest.mark.e2e


def test_dvc_repro_applies_a_request_and_a_repeat_run_changes_nothing(repro_baseline):
    from flows.cli import submit_request
    from tasks import dvc_ops
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    # the session's first `dvc repro` of a fresh project (it asserts success) built this baseline
    root = repro_baseline({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    ids = SampleStore(project.store_dir).split_ids("train")[:6].tolist()
    submit_request(root, {"request_id": "R-DVC", "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "carol"})
    applied = dvc_repro(root)
    assert "Running stage 'promote'" in applied and "Running stage 'certify'" in applied
    ledger = Ledger(project.ledger_path)
    (batch,) = ledger.batches.values()
    assert batch["status"] == "completed" and "certified" in batch["steps"]
    version = dvc_ops.data_version(project)
    again = dvc_repro(root)
    # only the stages that look at the inbox and the clock run again, and they find nothing to do
    for stage in ("prepare", "train", "references", "unlearn", "promote"):
        assert f"Stage '{stage}' didn't change, skipping" in again, again
    assert dvc_ops.data_version(project) == version
    assert Ledger(project.ledger_path).batches == ledger.batches
