"""`dvc repro` drives the same stages as the Prefect flow, and a repeat run redoes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

pytestmark = pytest.mark.e2e


def _repro(root):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_dvc_repro_applies_a_request_and_a_repeat_run_changes_nothing(make_project):
    from flows.cli import submit_request
    from tasks import dvc_ops
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root = make_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    dvc_ops.ensure_repo(project)
    _repro(root)
    ids = SampleStore(project.store_dir).split_ids("train")[:6].tolist()
    submit_request(root, {"request_id": "R-DVC", "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "carol"})
    applied = _repro(root)
    assert "Running stage 'promote'" in applied and "Running stage 'certify'" in applied
    ledger = Ledger(project.ledger_path)
    (batch,) = ledger.batches.values()
    assert batch["status"] == "completed" and "certified" in batch["steps"]
    version = dvc_ops.data_version(project)
    again = _repro(root)
    # only the stages that look at the inbox and the clock run again, and they find nothing to do
    for stage in ("prepare", "train", "references", "unlearn", "promote"):
        assert f"Stage '{stage}' didn't change, skipping" in again, again
    assert dvc_ops.data_version(project) == version
    assert Ledger(project.ledger_path).batches == ledger.batches
