"""Attacks the plain chain cannot see on its own, and what keyed mode and outside anchors add."""

import json

import pytest

from unlearn.audit import MIN_KEY_BYTES, Anchor, AuditError, AuditLog, _canonical, _digest, load_key

KEY = bytes(range(32))


def _fill(log, n=6):
    return [log.append("batch.completed", batch_id=f"b{i}", n_samples=i) for i in range(n)]


def _rehash(log, keep):
    """A forger's rewrite: keep some records, recompute every hash and the head anchor (no key)."""
    prev, out = "0" * 64, []
    for seq, rec in enumerate(keep):
        rec = {k: v for k, v in rec.items() if k not in ("hash", "mac")}
        rec.update(seq=seq, prev=prev)
        rec["hash"] = _digest(rec)
        prev = rec["hash"]
        out.append(_canonical(rec) + "\n")
    log.path.write_text("".join(out))
    log.head_path.write_text(json.dumps({"seq": len(keep) - 1, "hash": prev}))


def test_deleted_log_is_not_intact_when_work_exists(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    _fill(log, 3)
    log.path.unlink()
    log.head_path.unlink()
    assert log.verify().ok  # on its own the chain cannot tell "deleted" from "never written"
    report = log.verify(min_records=3)
    assert not report.ok and "missing" in report.problems[0]


def test_rehashed_history_passes_plain_chain_but_not_quoted_anchors(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    records = _fill(log, 6)
    anchor = Anchor("cert-b5.json", records[5]["seq"], records[5]["hash"])
    _rehash(log, records[:2] + records[4:])  # drop two records, re-hash everything after
    assert log.verify().ok  # the naive forgery is internally consistent
    report = log.verify(anchors=[anchor])
    assert not report.ok
    assert any("cert-b5.json" in p for p in report.problems)


def test_keyed_mode_detects_rehash_without_key(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    records = _fill(log, 5)
    assert all(len(r["mac"]) == 64 for r in records)
    assert "mac" in json.loads(log.head_path.read_text())
    report = log.verify()
    assert report.ok and report.keyed
    _rehash(log, records[:3])
    report = log.verify()
    assert not report.ok
    assert sum("MAC" in p for p in report.problems) == 4  # three records and the head anchor
    assert AuditLog(log.path).verify().ok  # without the key the forgery would have passed


def test_keyed_mode_wrong_key_and_unkeyed_records_fail(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    _fill(log, 2)
    assert not AuditLog(log.path, key=KEY).verify().ok  # records written without a key
    keyed = AuditLog(tmp_path / "k.jsonl", key=KEY)
    _fill(keyed, 2)
    assert not AuditLog(keyed.path, key=bytes(32)).verify().ok


def test_mac_is_not_part_of_the_hash_and_appends_chain_in_keyed_mode(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    first, second = _fill(log, 2)
    assert second["prev"] == first["hash"] == _digest(first)


def test_anchor_with_unknown_seq(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    _fill(log, 2)
    report = log.verify(anchors=[Anchor("c.json", 9, "f" * 64)])
    assert not report.ok and "not in the log" in report.problems[0]


def test_load_key(tmp_path):
    hexfile = tmp_path / "k.hex"
    hexfile.write_text(KEY.hex() + "\n")
    hexfile.chmod(0o644)
    with pytest.raises(AuditError, match="accessible to every user .*chmod 600"):
        load_key(hexfile)
    hexfile.chmod(0o640)  # a service group may read it
    assert load_key(hexfile) == KEY
    short = tmp_path / "short"
    short.write_text("abcd")
    short.chmod(0o600)
    with pytest.raises(AuditError, match=f"at least {MIN_KEY_BYTES}"):
        load_key(short)
    with pytest.raises(AuditError, match="cannot be read"):
        load_key(tmp_path / "absent")
    with pytest.raises(AuditError):
        AuditLog(tmp_path / "a.jsonl", key=b"short")
