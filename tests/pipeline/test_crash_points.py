"""A real SIGKILL at every step of promote, retire and purge, then recovery: no claim disagrees with the disk.

One project is brought (stage by stage, without Prefect) to the point where a verified candidate waits
for promotion, and saved. Each case restores it at the same path (MLflow stores absolute artifact
paths), runs promote -> purge -> certify in a subprocess that kills itself with SIGKILL at one point
(just before or after a registry write, an artifact deletion, a ledger save or an audit append), then
recovers in-process by running the same stages again and checks everything the project claims:
``unlearn doctor --deep`` finds no disagreement, the audit chain verifies, exactly one new version
exists and it is the champion, every ``artifacts_deleted`` tag is true on disk.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, run_stages

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

# point -> (patched callable as "module:Class.method" or "module:function", when, condition on the call)
POINTS = {
    "promote.registered_before_model_id_tag": ("mlflow.tracking.client:MlflowClient.set_model_version_tag", "before",
                                              "args[3] == 'model_id'"),
    "promote.before_champion_alias": ("mlflow.tracking.client:MlflowClient.set_registered_model_alias", "before",
                                      "args[2] == 'champion'"),
    "promote.after_champion_alias": ("mlflow.tracking.client:MlflowClient.set_registered_model_alias", "after",
                                     "args[2] == 'champion'"),
    "promote.before_promoted_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'model.promoted'"),
    "retire.before_artifact_delete": (
        "mlflow.store.artifact.local_artifact_repository:LocalArtifactRepository.delete_artifacts", "before", "True"),
    "retire.after_artifact_delete": (
        "mlflow.store.artifact.local_artifact_repository:LocalArtifactRepository.delete_artifacts", "after", "True"),
    "retire.after_artifacts_deleted_tag": ("mlflow.tracking.client:MlflowClient.set_model_version_tag", "after",
                                           "args[3] == 'artifacts_deleted'"),
    "retire.before_retired_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'model.retired'"),
    "purge.after_dvc_redaction": ("tasks.purge:purge_deleted_data", "after", "True"),
    "purge.before_ledger_save": ("unlearn.requests:Ledger.save", "before",
                                 "any('purge' in b for b in args[0].batches.values())"),
    "purge.before_purged_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'purge.completed'"),
    "certify.before_issued_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'certificate.issued'"),
}

DRIVER = r"""
import importlib, os, signal, sys
target, when, condition = sys.argv[2], sys.argv[3], sys.argv[4]
module_name, attr = target.split(":")
module = importlib.import_module(module_name)
owner_name, _, method = attr.rpartition(".")
owner = getattr(module, owner_name) if owner_name else module
original = getattr(owner, method)

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def wrapper(*args, **kwargs):
    hit = eval(condition, {"args": args, "kwargs": kwargs})
    if hit and when == "before":
        die()
    result = original(*args, **kwargs)
    if hit and when == "after":
        die()
    return result

setattr(owner, method, wrapper)
if not owner_name:  # a function: also where it was imported by name
    import tasks.lifecycle
    if getattr(tasks.lifecycle, method, None) is original:
        setattr(tasks.lifecycle, method, wrapper)
from tasks.project import load_project
from tasks.stage.catalog import STAGE_FUNCTIONS
project = load_project(sys.argv[1])
for stage in ("promote", "purge", "certify"):
    STAGE_FUNCTIONS[stage](project)
print("no crash point reached", flush=True)
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project whose verified candidate waits for promotion (built once), and its saved copy."""
    from tasks.project import load_project
    from unlearn.data import SampleStore

    base = tmp_path_factory.mktemp("crash")
    root = base / "project"
    root.mkdir()
    import subprocess as sp

    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}}.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    sp.run(["git", "init", "-q"], cwd=root, check=True)
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
    return root, saved


def _restore(root: Path, saved: Path) -> None:
    """Put the saved project back at the same path, rewriting files in place.

    In place, because this process keeps MLflow's SQLite engine open on ``mlflow.db``: a replaced file
    would leave it holding the deleted inode (read-only), a rewritten one is simply re-read.
    """
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        twin = saved / path.relative_to(root)
        if path.is_symlink() or (path.is_file() and not twin.is_file()):
            path.unlink()
        elif path.is_dir() and not twin.is_dir():
            shutil.rmtree(path)
    for path in sorted(saved.rglob("*")):
        target = root / path.relative_to(saved)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        elif path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            with open(path, "rb") as src, open(target, "r+b" if target.exists() else "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.truncate()


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_then_recovery_leaves_every_claim_true(prepared, point):
    import mlflow

    from tasks import tracking
    from tasks.doctor import diagnose, verify_audit
    from tasks.project import load_project
    from tasks.stage.catalog import STAGE_FUNCTIONS

    root, saved = prepared
    _restore(root, saved)
    target, when, condition = POINTS[point]
    run = subprocess.run([sys.executable, "-c", DRIVER, str(root), target, when, condition], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert run.returncode == -signal.SIGKILL, f"{point}: crash point not reached (rc {run.returncode}): " \
                                              f"{run.stdout[-500:]} {run.stderr[-2000:]}"

    project = load_project(root)
    for stage in ("promote", "purge", "certify", "promote", "purge", "certify"):  # recover, then again: a no-op
        STAGE_FUNCTIONS[stage](project)

    assert diagnose(project, deep=True) == []
    report, findings = verify_audit(project)
    assert report.ok and not findings
    mlflow.set_tracking_uri(project.tracking_uri)
    client = mlflow.MlflowClient()
    versions = tracking.all_versions(project, client)
    assert [str(v.version) for v in versions] == ["1", "2"]  # exactly one new version
    champion = tracking.champion_version(project, client)
    assert str(champion.version) == "2" and champion.tags["verdict"] == "pass"
    old = client.get_model_version(tracking.model_name(project), "1")
    assert old.tags.get("retired") == "true" and old.tags.get("artifacts_deleted") == "true"
    assert sum(tracking.artifacts_remaining(loc) for loc in tracking.model_artifact_locations(client, old)) == 0
    certificate = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert certificate["status"] == "complete"
    assert [v["artifacts_deleted"] for v in certificate["retirement"]["versions"]] == [True]
    events = [r["event"] for r in json.loads("[" + ",".join(project.audit_path.read_text().splitlines()) + "]")]
    assert events.count("model.retired") == 1 and "purge.completed" in events and "certificate.issued" in events
