"""A real SIGKILL at every step of promote, retire and purge, then recovery: no claim disagrees with the disk.

One project is brought (stage by stage, without Prefect) to the point where a verified candidate waits
for promotion, and saved. For each crash point (``crash_driver.POINTS``: just before or after a registry
write, an artifact deletion, a ledger save or an audit append) the driver restores it at the same path,
runs promote -> purge -> certify in a forked child that kills itself with SIGKILL at that point, then
recovers in a fresh child by running the same stages again, and checks everything the project claims
(``crash_driver.check_claims``): ``unlearn doctor --deep`` finds nothing, the audit chain and the
certificates' anchors verify, exactly one new version exists and it is the champion, every
``artifacts_deleted`` claim is true on disk, no audit record was lost.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, run_stages
from crash_driver import POINTS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Build the project once, run every crash point through the driver, return its results by point."""
    import yaml

    from tasks.project import load_project
    from unlearn.data import SampleStore

    base = tmp_path_factory.mktemp("crash")
    root = base / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}}.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train", "references")
    forget = sorted(SampleStore(project.store_dir).split_ids("train")[:6].tolist())
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / "r.json").write_text(json.dumps(
        {"request_id": "CRASH-1", "sample_ids": forget, "received_at": "2026-11-24T10:00:00Z",
         "reason": "gdpr_erasure", "subject_ref": "crash-subject"}))
    run_stages(project, "ingest", "prepare", "references", "unlearn")
    saved = base / "saved"
    shutil.copytree(root, saved, symlinks=True)
    out = base / "results.json"
    driver = Path(__file__).with_name("crash_driver.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, str(driver), str(root), str(saved), str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert out.exists(), f"the crash driver produced nothing (exit {run.returncode}): {run.stderr[-3000:]}"
    results = json.loads(out.read_text())
    results["_stderr"] = run.stderr[-3000:]
    return results


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_then_recovery_leaves_every_claim_true(outcomes, point):
    result = outcomes.get(point)
    assert result is not None, f"{point} did not run: {outcomes['_stderr']}"
    assert result["crash_status"] == -9, f"{point}: the crash point was not reached ({result})"
    assert result["recovery_status"] == 0, f"{point}: recovery raised: {outcomes['_stderr']}"
    assert result["problems"] == []
