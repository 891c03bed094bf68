import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from unlearn.audit import GENESIS, AuditError, AuditLog

REPO = Path(__file__).resolve().parents[2]


def _log(tmp_path, n=5):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append("request.received", request_id=f"r{i}", n_samples=i, subject_hash=f"hmac-sha256:{i:064x}")
    return log


def _lines(log):
    return log.path.read_text().splitlines(keepends=True)


def _write(log, lines):
    log.path.write_text("".join(lines))


def test_append_and_verify_roundtrip(tmp_path):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    assert log.verify().ok and log.verify().lines == 0 and log.verify().head_seq is None  # nothing yet
    first = log.append("request.received", request_id="r0", n_samples=3, meta={"source": "api"})
    second = log.append("batch.applied", batch_id="b1", counts=[1, 2])
    assert first["seq"] == 0 and first["prev"] == GENESIS and second["prev"] == first["hash"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["at"])
    assert len(first["hash"]) == 64 and first["meta"] == {"source": "api"}
    assert json.loads(log.head_path.read_text()) == {"seq": 1, "hash": second["hash"]}
    assert log.head_path.name == "audit.head"
    report = log.verify()
    assert (report.ok, report.lines, report.head_seq, report.head_hash, report.problems) == (
        True, 2, 1, second["hash"], ())
    assert log.records() == [first, second]


def test_edited_middle_line_is_detected_at_that_line(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    record = json.loads(lines[2])
    record["n_samples"] = 99
    lines[2] = json.dumps(record) + "\n"
    _write(log, lines)
    assert log.verify().problems == ("line 3: hash mismatch (record edited)",)
    record = json.loads(lines[4])
    record["n_samples"] = 7
    _write(log, lines[:4] + [json.dumps(record) + "\n"])
    with pytest.raises(AuditError, match="last line .* is not a valid record"):  # nor is an edited tail chained onto
        log.append("x")


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path):
    from unlearn.audit import _canonical, _digest

    log = _log(tmp_path)
    lines = _lines(log)
    record = json.loads(lines[1])
    record["request_id"] = "forged"
    record["hash"] = _digest(record)
    lines[1] = _canonical(record) + "\n"  # written exactly as the log writes: only the next link can tell
    _write(log, lines)
    assert log.verify().problems == ("line 3: prev does not match the hash of the line before (chain broken)",)
    lines[1] = json.dumps(record) + "\n"  # the same record in another byte form is caught on its own line
    _write(log, lines)
    assert log.verify().problems[0] == "line 2: not in canonical form (rewritten after it was appended)"


def test_removed_middle_line_is_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    _write(log, lines[:2] + lines[3:])
    report = log.verify()
    assert not report.ok and report.lines == 4
    assert report.problems == ("line 3: seq 3 where 2 was expected (gap, line removed?)",)


def test_removed_first_line_is_detected(tmp_path):
    log = _log(tmp_path)
    _write(log, _lines(log)[1:])
    assert log.verify().problems == ("line 1: seq 1 where 0 was expected (gap, line removed?)",)


def test_swapped_lines_are_detected(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    problems = log.verify().problems
    assert problems[0] == "line 2: seq 2 where 1 was expected (gap, line removed?)"
    assert problems[1] == "line 3: seq 1 where 3 was expected (out of order)"


def test_truncated_tail_is_detected_via_head_and_append_refuses(tmp_path):
    log = _log(tmp_path)
    _write(log, _lines(log)[:-1])
    report = log.verify()
    assert report.problems == ("head anchor says seq 4 but the last record is seq 3 (truncated after line 4)",)
    assert report.head_seq == 3
    with pytest.raises(AuditError, match="head anchor"):  # appending would hide the truncation
        log.append("request.received", request_id="r9")
    assert len(_lines(log)) == 4


def test_deleted_log_is_detected_via_head(tmp_path):
    log = _log(tmp_path)
    log.path.unlink()
    report = log.verify()
    assert not report.ok and report.lines == 0
    assert report.problems == ("log has no records but head anchor says seq 4 (log deleted or truncated)",)
    with pytest.raises(AuditError, match="empty"):
        log.append("request.received")


def test_missing_head_is_reported_not_raised(tmp_path):
    log = _log(tmp_path)
    log.head_path.unlink()
    report = log.verify()
    assert not report.ok and report.lines == 5 and report.head_seq == 4
    assert report.problems == ("head anchor audit.head missing (log has 5 lines); truncation cannot be ruled out",)
    with pytest.raises(AuditError, match="missing"):
        log.append("request.received")


def test_head_one_behind_is_the_crash_window_and_tolerated(tmp_path):
    log = _log(tmp_path, 3)
    second = log.records()[1]
    log.head_path.write_text(json.dumps({"seq": 1, "hash": second["hash"]}))  # crash before the anchor moved
    assert log.verify().ok
    assert log.append("request.received")["seq"] == 3 and log.verify().ok
    log.head_path.write_text(json.dumps({"seq": 1, "hash": second["hash"]}))  # two behind: not a crash
    assert log.verify().problems == ("head anchor (seq 1) does not match the tail of the log",)


def test_torn_last_line_blocks_append_and_is_reported(tmp_path):
    log = _log(tmp_path, 3)
    with log.path.open("a") as f:
        f.write('{"seq":3,"at":"2026-')
    with pytest.raises(AuditError, match="newline"):
        log.append("request.received")
    assert log.path.read_text().endswith('"at":"2026-')  # nothing was glued on or repaired
    report = log.verify()
    assert report.lines == 4 and report.head_seq == 2
    assert report.problems == ("line 4: incomplete last line without newline (torn write?)",)
    assert len(log.records()) == 3


def test_invalid_json_line_is_reported_and_checking_continues(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1] = "not json\n"
    lines[3] = "[1, 2]\n"
    _write(log, lines)
    assert log.verify().problems == ("line 2: not a valid JSON record", "line 4: not a valid JSON record")


def test_problem_list_is_bounded(tmp_path):
    log = _log(tmp_path, 60)
    _write(log, ["garbage\n"] * 60)
    problems = log.verify().problems
    assert len(problems) == 51 and problems[-1] == "... and 11 more problems"  # 60 lines + the head anchor


@pytest.mark.parametrize(("fields", "key"), [
    ({"subject_ref": "alice"}, "subject_ref"), ({"sample_ids": ["a"]}, "sample_ids"), ({"Email": "a@b.c"}, "Email"),
    ({"meta": {"name": "alice"}}, "name"), ({"meta": {"deep": [{"images": []}]}}, "images"),
])
def test_personal_data_keys_are_refused(tmp_path, fields, key):
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match=f"'{key}' may hold personal data"):
        log.append("request.received", **fields)
    assert not log.path.exists() or log.path.read_text() == ""


def test_nested_denylisted_key_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"'meta.deep\[0\]': key 'images'"):
        AuditLog(tmp_path / "a.jsonl").append("x", meta={"deep": [{"images": []}]})


def test_long_strings_reserved_names_bad_events_and_unserialisable_values_are_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("ok", note="x" * 4096)
    with pytest.raises(ValueError, match=r"'note': string longer than 4096"):
        log.append("ok", note="x" * 4097)
    with pytest.raises(ValueError, match=r"'meta.blob': string longer"):
        log.append("ok", meta={"blob": "x" * 5000})
    with pytest.raises(ValueError, match="'seq' is reserved"):
        log.append("ok", seq=3)
    for bad in ("Request", "1abc", "a-b", "a" * 65, "ok\n", ""):
        with pytest.raises(ValueError, match="invalid audit event name"):
            log.append(bad)
    with pytest.raises(ValueError, match="'when' is not JSON-serialisable"):
        log.append("ok", when=object())
    with pytest.raises(ValueError, match="'ratio' is not JSON-serialisable"):
        log.append("ok", ratio=float("nan"))
    assert len(log.records()) == 1 and log.verify().ok


def test_records_filtering(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("request.received", request_id="r1")
    log.append("request.received", request_id="r2")
    log.append("batch.applied", request_id="r1", batch_id="b1")
    assert [r["request_id"] for r in log.records("request.received")] == ["r1", "r2"]
    assert [r["event"] for r in log.records(request_id="r1")] == ["request.received", "batch.applied"]
    assert [r["seq"] for r in log.records("batch.applied", request_id="r1", batch_id="b1")] == [2]
    assert log.records("batch.applied", request_id="r2") == []
    assert log.records(missing=None) == []  # an absent field does not equal None
    assert AuditLog(tmp_path / "none.jsonl").records() == []


def test_threads_serialize_appends(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")

    def work(tag):
        for i in range(50):
            AuditLog(log.path).append("thread.append", tag=tag, i=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok, report.problems
    assert report.lines == 200 and [r["seq"] for r in log.records()] == list(range(200))


def test_processes_serialize_appends(tmp_path):
    path = tmp_path / "audit.jsonl"
    code = ("import sys; from pathlib import Path; from unlearn.audit import AuditLog\n"
            "log = AuditLog(Path(sys.argv[1]))\n"
            "for i in range(100): log.append('proc.append', tag=sys.argv[2], i=i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), tag], cwd=REPO) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    log = AuditLog(path)
    report = log.verify()
    assert report.ok, report.problems
    records = log.records()
    assert [r["seq"] for r in records] == list(range(200))
    assert sorted(r["i"] for r in records if r["tag"] == "a") == list(range(100))


def test_a_copy_that_cannot_be_written_is_still_read_and_never_appended_to(tmp_path, monkeypatch):
    """`request certificate` checks the log on a read-only copy of a project (review of 2026-12-07): the reader's lock
    file cannot be created there, so it reads without it; an append still needs the lock and fails."""
    import errno
    import os

    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    log.append("certificate.issued", request_id="R-1", certificate_digest="sha256:aa")
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert [r["certificate_digest"] for r in log.records("certificate.issued", request_id="R-1")] == ["sha256:aa"]
    with pytest.raises(OSError, match="Read-only"):
        log.append("certificate.issued", request_id="R-2")


def test_check_appendable_refuses_what_append_refuses_and_writes_nothing(tmp_path):
    """A step that records after an action it cannot undo checks first (a moved champion alias)."""
    fresh = AuditLog(tmp_path / "fresh" / "audit.jsonl")
    fresh.check_appendable()
    assert not fresh.path.exists() and not fresh.head_path.exists()  # the first append makes them
    log = _log(tmp_path, n=2)
    before, head = log.path.read_bytes(), log.head_path.read_bytes()
    log.check_appendable()  # a sound log: nothing raised, nothing written
    assert log.path.read_bytes() == before and log.head_path.read_bytes() == head
    keyed = AuditLog(tmp_path / "keyed" / "audit.jsonl", key=b"k" * 32)
    keyed.append("request.received", request_id="r0", n_samples=1)
    with pytest.raises(AuditError, match="appending needs the key"):
        AuditLog(keyed.path).check_appendable()
    _write(log, _lines(log)[:1])  # truncated: the head anchor names the record cut off
    with pytest.raises(AuditError, match="disagrees with its head anchor"):
        log.check_appendable()
    log.head_path.unlink()
    with pytest.raises(AuditError, match="head anchor .* is missing"):
        log.check_appendable()
    assert len(_lines(log)) == 1
