"""Review of #14 (integrity under attack): reproductions of what still breaks, in the pure core.

Each test asserts the behaviour a privacy engineer would defend; it is marked ``xfail(strict=True)``
while the bug stands, so the suite stays green and the test turns into a failure ("XPASS") the moment
the bug is fixed, which is the signal to drop the marker.
"""

import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from unlearn.audit import AuditError, AuditLog
from unlearn.forensics import scan_for_patterns, weight_patterns
from unlearn.requests.parsing import parse_request_bytes

KEY = bytes(range(32))
A = {"request_id": "A", "sample_ids": ["digits-0008"], "received_at": "2026-01-01", "reason": "gdpr_erasure",
     "subject_ref": "alice"}
B = {**A, "request_id": "B", "sample_ids": ["digits-0010"], "subject_ref": "bob"}


def test_csv_duplicate_column_is_rejected():
    # The JSON fix (#14 item 3) has a CSV twin: csv.DictReader keeps the last of two same-named columns.
    data = (b"request_id,sample_ids,received_at,reason,subject_ref,sample_ids\n"
            b"r1,digits-0008,2026-01-01,gdpr_erasure,s1,digits-0010\n")
    parsed = parse_request_bytes("x.csv", data)
    assert parsed.problem is not None, [r.values for r in parsed.requests]  # today: only digits-0010 kept


def test_request_object_beside_a_requests_list_is_not_dropped():
    parsed = parse_request_bytes("x.json", json.dumps({**A, "requests": [B]}).encode())
    ids = [r.values.get("request_id") for r in parsed.requests]
    # Either both rows are seen, or the file is refused; today A (alice's request) vanishes unreported.
    assert parsed.problem is not None or "A" in ids, ids


def test_audit_line_must_be_canonical_bytes(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    log.append("model.retired", model_version="3", artifacts_deleted=False)
    raw = log.path.read_text()
    # A first-wins JSON reader now sees artifacts_deleted=true; the keyed chain still verifies.
    twice = '{"artifacts_deleted":true,"artifacts_deleted":false'
    log.path.write_text(raw.replace('{"artifacts_deleted":false', twice))
    assert not log.verify().ok


def test_keyed_log_rolls_back_with_a_replayed_head(tmp_path):
    """Documents a limit (passes today): keyed mode cannot see a rollback to any earlier state whose head
    anchor the attacker kept (a backup, a snapshot); the README should say so, or the head should be
    anchored outside the project (e.g. an MLflow tag or the key's host)."""
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    for i in range(6):
        log.append("batch.accepted", batch_id=f"b{i}")
        if i == 2:
            old_head = log.head_path.read_bytes()
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:3]))
    log.head_path.write_bytes(old_head)
    assert log.verify(min_records=1).ok  # three records gone, MACs all valid


def test_unkeyed_append_to_keyed_log_is_refused(tmp_path):
    AuditLog(tmp_path / "audit.jsonl", key=KEY).append("batch.accepted", batch_id="b0")
    with pytest.raises(AuditError):
        AuditLog(tmp_path / "audit.jsonl").append("certificate.issued", request_id="r0")


def test_weight_copy_in_git_objects_is_found(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    weights = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    patterns = weight_patterns({"w": weights})
    np.save(tmp_path / "w.npy", weights)
    assert scan_for_patterns([tmp_path], patterns).matches  # a plain copy is found
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x.invalid"}
    subprocess.run(["git", "add", "w.npy"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "w.npy").unlink()
    with zipfile.ZipFile(tmp_path / "backup.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", weights.tobytes())
    # `git show HEAD:w.npy` and `unzip` both restore the weights; the scan must find them or say it cannot look.
    result = scan_for_patterns([tmp_path], patterns)
    places = {place for place, _ in result.matches}
    assert places == {f"{tmp_path.name}/.git (committed objects)", f"{tmp_path.name}/backup.zip"}, result
    assert not result.errors
    # a gzip copy is found too; a corrupt archive is reported, never taken as clean
    import gzip

    (tmp_path / "backup.zip").unlink()
    subprocess.run(["git", "rm", "-q", "--cached", "w.npy"], cwd=tmp_path, check=True, capture_output=True)
    shutil.rmtree(tmp_path / ".git")
    with gzip.open(tmp_path / "w.npy.gz", "wb") as handle:
        handle.write(weights.tobytes())
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    result = scan_for_patterns([tmp_path], patterns)
    assert {p for p, _ in result.matches} == {f"{tmp_path.name}/w.npy.gz"}
    assert result.errors == (f"{tmp_path.name}/broken.zip",)


def test_symlinked_folder_is_scanned_or_reported(tmp_path):
    project, disk = tmp_path / "project", tmp_path / "bigdisk"
    project.mkdir()
    disk.mkdir()
    weights = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    np.save(disk / "w.npy", weights)
    os.symlink(disk, project / "data")  # data/ on another disk: a common layout
    result = scan_for_patterns([project], weight_patterns({"w": weights}))
    assert result.unfollowed == ("project/data",) and not result.clean  # reported, never a silent "clean"
    assert scan_for_patterns([project / "data"], weight_patterns({"w": weights})).unfollowed == ("data",)
