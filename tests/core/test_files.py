"""The one atomic writer and the one UTC clock (unlearn/files.py)."""

import json
import re
from datetime import UTC, datetime

import pytest

from unlearn.files import atomic_path, utc_now, utc_timestamp, write_json_atomic, write_jsonl_atomic
from unlearn.requests import skipped_in_inbox


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_writes_create_the_folder_and_temporaries_are_skipped_by_the_inbox(tmp_path):
    target = tmp_path / "new" / "rows.jsonl"
    seen = []
    with atomic_path(target) as tmp:
        seen.append(tmp)
        assert skipped_in_inbox(tmp.name) and tmp.parent == target.parent
        tmp.write_text("first\n")
    assert target.read_text() == "first\n"
    write_jsonl_atomic(target, [{"b": 2}, {"a": 1}])
    assert target.read_text() == '{"b": 2}\n{"a": 1}\n'
    assert not seen[0].exists()


def test_the_clock_is_utc_at_two_precisions():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", utc_now(precise=True))
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-01-02T03:04:05Z"
    assert utc_timestamp(moment, precise=True) == "2026-01-02T03:04:05.000006Z"


def test_a_write_is_on_the_disk_before_it_replaces_the_file_and_the_rename_after(tmp_path, monkeypatch):
    """Review of 2026-12-07: temp file and rename, but no fsync: after a power loss the ledger could say a certificate
    was issued while the certificate file was empty or the older one."""
    import os

    from unlearn import files

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "ledger.json"
    files.write_json_atomic(target, {"certified": True})
    (first, what), (second, where), (third, folder) = events
    assert first == "fsync" and what.startswith(str(tmp_path / ".ledger.json.")) and what.endswith(".tmp")
    assert (second, where) == ("replace", str(target)) and (third, folder) == ("fsync", str(tmp_path))
    assert json.loads(target.read_text()) == {"certified": True}


def test_a_folder_that_cannot_be_synced_does_not_turn_a_finished_write_into_a_failure(tmp_path, monkeypatch):
    """Review of 2026-12-07: the folder's fsync (after the rename) raised where the folder could be written but not
    opened, so a caller was told a write failed that had happened."""
    from unlearn import files

    real = files._fsync

    def no_folders(path):
        if path.is_dir():
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(files, "_fsync", no_folders)
    files.write_json_atomic(tmp_path / "state.json", {"ok": 1})
    assert json.loads((tmp_path / "state.json").read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
