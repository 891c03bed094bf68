import json

from unlearn.requests import Ledger, hash_subject, load_or_create_salt, parse_request_file


def test_json_forms_and_csv_are_parsed(tmp_path):
    one = {"request_id": "r1", "sample_ids": ["a"], "received_at": "2026-01-01", "reason": "other",
           "subject_ref": "s"}
    (tmp_path / "a.json").write_text(json.dumps(one))
    (tmp_path / "b.json").write_text(json.dumps({"requests": [one, {**one, "request_id": "r2"}]}))
    (tmp_path / "c.csv").write_text(
        "request_id,sample_ids,received_at,reason,subject_ref\nr3,x;y z,2026-01-01,other,s\n")
    assert len(parse_request_file(tmp_path / "a.json").requests) == 1
    assert len(parse_request_file(tmp_path / "b.json").requests) == 2
    (row,) = parse_request_file(tmp_path / "c.csv").requests
    assert row.values["sample_ids"] == ["x", "y", "z"]


def test_unparseable_files_are_problems_not_exceptions(tmp_path):
    cases = {"bad.json": b"{not json", "latin.csv": b"request_id\n\xff\xfe\n", "notes.txt": b"hi",
             "empty.json": b"[]", "noheader.csv": b"a,b\n1,2\n"}
    codes = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        codes[name] = parse_request_file(tmp_path / name).problem.code
    assert codes == {"bad.json": "malformed_json", "latin.csv": "not_utf8",
                     "notes.txt": "unsupported_file_type", "empty.json": "empty_file",
                     "noheader.csv": "malformed_csv"}


def test_subject_hash_is_salted_and_hides_the_reference(tmp_path):
    salt = load_or_create_salt(tmp_path / ".salt")
    assert load_or_create_salt(tmp_path / ".salt") == salt
    digest = hash_subject("alice@example.com", salt)
    assert "alice" not in digest and digest == hash_subject("alice@example.com", salt)
    assert digest != hash_subject("alice@example.com", b"other salt")


def test_ledger_tracks_deleted_ids_and_status(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.add_batch("b1", ["r1"], ["x", "y", "x"], "2026-01-01T00:00:00Z")
    ledger.save()
    reloaded = Ledger(tmp_path / "ledger.json")
    assert reloaded.deleted_ids() == {"x", "y"} and reloaded.pending() == ["b1"]
    reloaded.set_status("b1", Ledger.COMPLETED, {"outcome": "promoted"})
    assert reloaded.pending() == [] and reloaded.request_ids() == {"r1"}
