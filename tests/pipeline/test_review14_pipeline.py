"""Review of #14 (integrity under attack): reproductions in tasks/ (validation, retirement, ingest recovery).

Marked ``xfail(strict=True)`` while the bug stands (see tests/core/test_review14_core.py).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _project(make_project):
    from tasks.project import load_project

    return load_project(make_project())


@pytest.mark.parametrize("received_at", ["2026-13-45", "2026-01-01T00:00:00+99:99",
                                         "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661"])
def test_impossible_received_at_is_rejected(received_at):
    from tasks.validation import validate_requests
    from unlearn.requests import RawRequest

    request = RawRequest("f.json", 0, {"request_id": "r1", "sample_ids": ["digits-0001"], "received_at": received_at,
                                       "reason": "gdpr_erasure", "subject_ref": "s"})
    (verdict,) = validate_requests([request], known_ids={"digits-0001"}, reasons=("gdpr_erasure",), max_ids=10)
    # The certificate would print this string as the day the request was received.
    assert verdict.reasons, "accepted"


def test_retire_in_a_moved_project_claims_nothing_false(make_project):
    import mlflow
    import torch

    from tasks import model_files, tracking
    from tasks.doctor import _registry_findings
    from tasks.project import PipelineError, load_project
    from tasks.retired_weights import retired_weight_patterns
    from unlearn.models import build_model

    project = _project(make_project)
    tracking.setup(project)
    with mlflow.start_run():
        version, _ = tracking.log_model(project, build_model("small_cnn", 1, 10), torch.zeros(2, 1, 8, 8),
                                        architecture={"model": "small_cnn", "in_channels": 1, "num_classes": 10},
                                        classes=[str(c) for c in range(10)], tags={})
    moved = project.root.with_name("moved")
    shutil.move(project.root, moved)  # an operator renames the folder, or restores a backup elsewhere
    project = load_project(moved)
    client = tracking.setup(project)
    mv = client.get_model_version(tracking.model_name(project), version)
    try:
        claimed = model_files.retire_version(project, client, mv, reason="t", batches=["b"], at="2026-12-04T00:00:00Z")
    except PipelineError:
        claimed = False
    weights = list((moved / "mlartifacts").rglob("model.pt2"))
    tags = client.get_model_version(tracking.model_name(project), version).tags
    assert not (weights and tags.get("artifacts_deleted") == "true"), (claimed, weights)
    assert _registry_findings(project, client, retired_weight_patterns(project, client).searched) or not weights


def test_ingest_crash_after_ledger_commit_is_recorded_on_recovery(make_project):
    from tasks.doctor import _audit_findings
    from tasks.stage.ingest import run_ingest

    project = _project(make_project)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / "r.json").write_text(json.dumps({
        "request_id": "R-1", "sample_ids": ["digits-0008"], "received_at": "2026-11-24T10:00:00Z",
        "reason": "gdpr_erasure", "subject_ref": "alice"}))
    driver = ("import os, sys, tasks.audit as a\n"
              "real = a.record\n"
              "def record(p, event, **kw):\n"
              "    if event == 'request.accepted':\n"
              "        os.kill(os.getpid(), 9)\n"
              "    return real(p, event, **kw)\n"
              "a.record = record\n"
              "from tasks.project import load_project\n"
              "from tasks.stage.ingest import run_ingest\n"
              "run_ingest(load_project(sys.argv[1]))\n")
    done = subprocess.run([sys.executable, "-c", driver, str(project.root)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              str(REPO), os.environ.get("PYTHONPATH")]))}, capture_output=True)
    assert done.returncode == -9
    assert (project.incoming_dir / "r.json").exists()  # killed between the ledger commit and the clean-up
    recovered = run_ingest(project)  # recovery: the same stage again
    assert not _audit_findings(project)
    # The file it had committed is removed, not read again: the one submission was recorded a second time, as
    # an acknowledged "duplicate" in the ledger and the audit log (review of 2026-12-06).
    assert recovered["files"] == 0 and not list(project.incoming_dir.iterdir())
    from tasks import audit
    from unlearn.requests import Ledger

    assert Ledger(project.ledger_path).acknowledged == {}
    assert [r["request_id"] for r in audit.records(project, "request.accepted")] == ["R-1"]
    assert not audit.records(project, "request.acknowledged")
    # the same name dropped again (a new file): read, and acknowledged as the duplicate it is
    (project.incoming_dir / "r.json").write_text(json.dumps({
        "request_id": "R-1", "sample_ids": ["digits-0008"], "received_at": "2026-11-24T10:00:00Z",
        "reason": "gdpr_erasure", "subject_ref": "alice"}))
    again = run_ingest(project)
    assert (again["files"], again["acknowledged"]) == (1, 1)
    assert Ledger(project.ledger_path).consumed_inbox == {}  # kept only through the crash window


def test_a_new_file_with_a_committed_files_identity_is_still_read(make_project):
    """A freed inode is reused at once, and a copy may keep its source's size and mtime: the identity alone made
    ingest delete an unread request without a record (second review of 2026-12-06). The content must match too."""
    from tasks.stage.ingest import _identity, run_ingest
    from unlearn.requests import Ledger

    project = _project(make_project)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    path = project.incoming_dir / "r.json"
    path.write_text(json.dumps({"request_id": "R-2", "sample_ids": ["digits-0009"], "received_at":
                                "2026-11-24T10:00:00Z", "reason": "gdpr_erasure", "subject_ref": "bob"}))
    run_ingest(project)  # creates the ledger
    path.write_text(json.dumps({"request_id": "R-3", "sample_ids": ["digits-0010"], "received_at":
                                "2026-11-24T10:00:00Z", "reason": "gdpr_erasure", "subject_ref": "eve"}))
    ledger = Ledger(project.ledger_path)
    ledger.consumed_inbox = {"r.json": {"identity": list(_identity(path)), "sha256": "0" * 64, "ingest_id": "x"}}
    ledger.save()
    counts = run_ingest(project)
    assert (counts["files"], counts["accepted"]) == (1, 1)
    assert Ledger(project.ledger_path).find_request("R-3")["kind"] == "accepted"


def test_deep_folder_in_inbox_does_not_wedge_ingest(make_project):
    from tasks.stage.ingest import run_ingest

    project = _project(make_project)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    try:  # 3000 levels: shutil.rmtree (recursive on Python 3.11) runs out of stack
        os.chdir(project.incoming_dir)
        os.mkdir("a-folder")
        os.chdir("a-folder")
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    (project.incoming_dir / "r1.json").write_text(json.dumps({
        "request_id": "R-1", "sample_ids": ["digits-0001"], "received_at": "2026-11-24T10:00:00Z",
        "reason": "gdpr_erasure", "subject_ref": "alice"}))
    try:
        counts = run_ingest(project)  # today: RecursionError after the ledger commit, on this and every later run
        assert counts["rejected_files"] == 1 and counts["accepted"] == 1
        assert sorted(os.listdir(project.incoming_dir)) in ([], [".gitkeep"])
    finally:
        _remove_deep(project.incoming_dir / "a-folder")  # pytest's own cleanup would hit the same recursion


def _remove_deep(top: Path) -> None:
    """Remove a folder chain of any depth without recursion (dir_fd-relative, no long paths)."""
    if not top.exists():
        return
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    while fds:
        names = os.listdir(fds[-1])
        sub = next((n for n in names if os.path.isdir(os.path.join(f"/proc/self/fd/{fds[-1]}", n))), None)
        if sub is not None:
            fds.append(os.open(sub, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
            continue
        for name in names:
            os.unlink(name, dir_fd=fds[-1])
        os.close(fds.pop())
        if fds:
            parent_names = os.listdir(fds[-1])
            for name in parent_names:
                if os.path.isdir(os.path.join(f"/proc/self/fd/{fds[-1]}", name)) and not os.listdir(
                        os.path.join(f"/proc/self/fd/{fds[-1]}", name)):
                    os.rmdir(name, dir_fd=fds[-1])
    top.rmdir()


def test_planted_certificate_is_a_doctor_finding(make_project):
    from tasks import audit
    from tasks.certificate import write_certificate
    from tasks.doctor import diagnose

    project = _project(make_project)
    record = audit.record(project, "request.rejected", request_id=None, reasons=["malformed_json"])
    # A certificate for a request nobody sent: its digest is recomputable (plain sha256, even in keyed mode),
    # its anchor copied from a real record; the audit log's certificate.issued records name no digest.
    write_certificate({"certificate_version": 1, "request_id": "NEVER-SENT", "subject_hash": "0" * 64,
                       "batch_id": "batch-x", "status": "complete", "issued_at": "2026-12-04T00:00:00Z",
                       "timeline": [{"step": "received", "at": "2026-12-01T00:00:00Z"},
                                    {"step": "certified", "at": "2026-12-02T00:00:00Z"}],
                       "retirement": {"versions": [], "references_retired": 0},
                       "audit": {"head_seq": record["seq"], "head_hash": record["hash"]}}, {},
                      project.certificates_dir)
    (finding,) = diagnose(project)
    assert finding.check == "certificates" and "records no certificate.issued" in finding.problem

    # A request the log did certify, its certificate swapped for another self-consistent document
    audit.record(project, "certificate.issued", request_id="NEVER-SENT", batch_id="batch-x",
                 subject_hash="0" * 64, certificate_digest="f" * 64)
    (finding,) = diagnose(project)
    assert "digest differs" in finding.problem


@pytest.mark.parametrize("status", [403, 404])  # 500 and 503 are retried and then raise: held
def test_artifact_listing_error_is_not_zero_files(monkeypatch, status):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tasks.model_files import artifacts_remaining

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):  # the artifact proxy refuses (auth expired, backing store down, wrong path)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    import mlflow

    previous = mlflow.get_tracking_uri()  # an earlier test may have set one programmatically (it beats the env)
    mlflow.set_tracking_uri(f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        # retire_version writes artifacts_deleted=true when this is 0; it must raise (or not be 0) instead.
        try:
            remaining = artifacts_remaining("mlflow-artifacts:/1/models/m-abc/artifacts")
        except Exception:
            remaining = None
        assert remaining != 0
    finally:
        mlflow.set_tracking_uri(previous)
        server.shutdown()


def test_request_replaced_during_ingest_is_not_lost(make_project, monkeypatch):
    import tasks.stage.ingest as ingest

    project = _project(make_project)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)

    def request(n):
        return json.dumps({"request_id": f"R-{n}", "sample_ids": [f"digits-000{n}"],
                           "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure", "subject_ref": f"s{n}"})

    (project.incoming_dir / "request.json").write_text(request(1))
    real = ingest.validate_requests

    def slow_validation(*args, **kwargs):
        # While validation runs (seconds), a client drops its next request the recommended way:
        # write a .tmp file, rename it into place, under the same name as the last one.
        tmp = project.incoming_dir / ".request.json.tmp"
        tmp.write_text(request(2))
        os.replace(tmp, project.incoming_dir / "request.json")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "validate_requests", slow_validation)
    ingest.run_ingest(project)
    monkeypatch.setattr(ingest, "validate_requests", real)
    ingest.run_ingest(project)
    from unlearn.requests import Ledger

    ledger = Ledger(project.ledger_path)
    seen = {r for b in ledger.oldest_first() for r in ledger.batch(b)["request_ids"]}
    assert {"R-1", "R-2"} <= seen  # R-2 was left in the inbox by the first run and ingested by the second
