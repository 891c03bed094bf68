import hashlib
import json

import pytest

from unlearn.requests import (
    Ledger,
    LedgerError,
    RequestRouter,
    content_digest,
    hash_subject,
    load_or_create_salt,
    parse_request_file,
    sanitize_file_name,
)


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


def test_ledger_statuses_promoting_is_not_pending_and_order_is_by_creation(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    # Names sort the other way round from creation times: the order must follow creation.
    ledger.add_batch("b-z", ["r1"], ["x"], "2026-01-01T00:00:00Z")
    ledger.add_batch("b-m", ["r2"], ["y"], "2026-01-02T00:00:00Z")
    ledger.add_batch("b-a", ["r3"], ["z"], "2026-01-03T00:00:00Z")
    assert ledger.pending() == ["b-z", "b-m", "b-a"]
    ledger.set_status("b-m", Ledger.PROMOTING, {"outcome": "promoting"})
    assert Ledger.PROMOTING == "promoting"
    assert ledger.pending() == ["b-z", "b-a"]
    assert ledger.batches_with_status(Ledger.PROMOTING) == ["b-m"]
    ledger.set_status("b-a", Ledger.PROMOTING, {"outcome": "promoting"})
    assert ledger.batches_with_status("promoting") == ["b-m", "b-a"]
    assert ledger.batches_with_status(Ledger.COMPLETED) == []
    assert ledger.deleted_ids() == {"x", "y", "z"}  # a batch being promoted still deletes its samples


def test_find_request_reports_accepted_and_acknowledged_requests(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    digest = content_digest(sample_ids=["x"])
    ledger.add_batch("b1", ["r1"], ["x"], "2026-01-01T00:00:00Z", request_digests={"r1": digest})
    ledger.acknowledge("r2", {"outcome": "already_deleted", "covered_by": ["b1"], "at": "t1",
                              "subject_hash": "hmac-sha256:00", "content_digest": digest})
    ledger.acknowledge("r2", {"outcome": "duplicate", "at": "t2"})  # a repeat: counted, first record kept
    ledger.save()
    reloaded = Ledger(tmp_path / "ledger.json")
    assert reloaded.find_request("r1") == {"kind": "accepted", "request_id": "r1", "batch_id": "b1",
                                           "status": "pending", "created_at": "2026-01-01T00:00:00Z",
                                           "content_digest": digest, "subject_hash": None}
    found = reloaded.find_request("r2")
    assert found["kind"] == "acknowledged" and found["outcome"] == "already_deleted"
    assert found["covered_by"] == ["b1"] and found["repeats"] == 1 and found["last_at"] == "t2"
    assert reloaded.find_request("nope") is None
    assert reloaded.request_ids() == {"r1"}  # an acknowledgement deleted nothing
    reloaded.set_status("b1", Ledger.COMPLETED, {})
    assert reloaded.find_request("r1")["status"] == "completed"


def test_ledger_without_acknowledgements_or_digests_still_loads(tmp_path):
    path = tmp_path / "ledger.json"
    old = {"version": 1, "batches": {"b1": {"status": "completed", "request_ids": ["r1"], "sample_ids": ["x"],
                                            "created_at": "2026-01-01T00:00:00Z", "history": []}}}
    path.write_text(json.dumps(old))
    ledger = Ledger(path)
    assert ledger.acknowledged == {} and ledger.deleted_ids() == {"x"}
    assert ledger.find_request("r1")["content_digest"] is None
    assert ledger.deleted_by() == {"x": "b1"}
    ledger.save()
    assert json.loads(path.read_text())["acknowledged"] == {}


@pytest.mark.parametrize("document", ['{"batches": []}', '{"batches": {}, "acknowledged": []}', "[1]", "{"])
def test_corrupt_ledger_is_an_error(tmp_path, document):
    (tmp_path / "ledger.json").write_text(document)
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "ledger.json")


def test_content_digest_ignores_order_and_repeats():
    assert content_digest(sample_ids=["b", "a", "a"]) == content_digest(sample_ids=["a", "b"])
    assert content_digest(sample_ids=["a"]) != content_digest(sample_ids=["a", "b"])
    assert content_digest(forget_class="3") == content_digest(forget_class=3)
    assert content_digest(forget_class="3") != content_digest(sample_ids=["3"])
    with pytest.raises(ValueError):
        content_digest()


def _router(tmp_path, *, completed: bool = False, purged: bool = False):
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.add_batch("b2", ["old"], ["y", "z"], "2026-01-02T00:00:00Z",
                     request_digests={"old": content_digest(sample_ids=["y", "z"])})
    ledger.add_batch("b1", ["older"], ["x", "y"], "2026-01-01T00:00:00Z")  # no digest (an old ledger)
    for batch_id in ("b1", "b2") if completed else ():
        ledger.set_status(batch_id, Ledger.COMPLETED, {"at": "t", "outcome": "promoted"})
    if purged:
        ledger.mark_step(["b1", "b2"], "purged", "t")
    return RequestRouter(ledger, "b3")


def test_router_routes_repeats_conflicts_and_deleted_samples(tmp_path):
    router = _router(tmp_path)
    route = router.route
    # Every sample in earlier batches: acknowledged, with those batches (oldest first); "requested" while one of
    # them is not completed and purged (completed is set at promotion, before the purge), "deleted" once all are.
    gone = route("r1", content_digest(sample_ids=["z", "y"]), ["z", "y"])
    assert (gone.destination, gone.outcome, gone.covered_by) == ("acknowledged", "already_requested", ("b1", "b2"))
    unpurged = _router(tmp_path, completed=True).route("r1", content_digest(sample_ids=["z", "y"]), ["z", "y"])
    assert unpurged.outcome == "already_requested"
    deleted = _router(tmp_path, completed=True, purged=True).route("r1", content_digest(sample_ids=["z", "y"]),
                                                                   ["z", "y"])
    assert (deleted.outcome, deleted.covered_by) == ("already_deleted", ("b1", "b2"))
    assert deleted.detail == "every sample it names is already deleted"
    # Some new: accepted with only those.
    some = route("r2", content_digest(sample_ids=["x", "w"]), ["x", "w"])
    assert (some.destination, some.sample_ids, some.already_deleted_count, some.covered_by) == (
        "accepted", ("w",), 1, ("b1",))
    # Another request of the same ingest naming "w" is accepted too (not "already deleted").
    assert route("r3", content_digest(sample_ids=["w"]), ["w"]).sample_ids == ("w",)
    # Repeats: of an earlier batch, of this ingest's batch, of an acknowledgement.
    old = route("old", content_digest(sample_ids=["y", "z"]), ["y", "z"])
    assert (old.destination, old.outcome, old.batch_id) == ("acknowledged", "duplicate", "b2")
    again = route("r2", content_digest(sample_ids=["w", "x"]), ["w", "x"])
    assert (again.outcome, again.batch_id) == ("duplicate", "b3")
    repeat = route("r1", content_digest(sample_ids=["y", "z"]), ["y", "z"])
    assert (repeat.outcome, repeat.batch_id, repeat.covered_by) == ("duplicate", None, ("b1", "b2"))
    # Conflicts: same id, different content; or an old id whose content was never recorded.
    for request_id, ids in (("old", ["y"]), ("r2", ["w"]), ("older", ["x", "y"])):
        conflict = route(request_id, content_digest(sample_ids=ids), ids)
        assert (conflict.destination, conflict.outcome) == ("rejected", "request_id_conflict"), request_id
    # An old id without a recorded digest is a conflict even for the same content: it cannot be confirmed.
    unknown = route("older", content_digest(sample_ids=["x", "y"]), ["x", "y"])
    assert unknown.outcome == "request_id_conflict" and "without a content digest" in unknown.detail


def test_the_same_id_and_content_for_another_subject_is_a_conflict_not_a_repeat(tmp_path):
    """A second person's request under the same id and samples was acknowledged as "same request" and absorbed:
    the certificate named the first subject only, and the second got no error (review of 2026-12-07)."""
    ledger = Ledger(tmp_path / "ledger.json")
    digest = content_digest(sample_ids=["y", "z"])
    ledger.add_batch("b1", ["kept"], ["y", "z"], "2026-01-01T00:00:00Z", request_digests={"kept": digest},
                     request_subjects={"kept": "hmac-sha256:alice"})
    ledger.add_batch("b0", ["legacy"], ["q"], "2025-12-01T00:00:00Z",
                     request_digests={"legacy": content_digest(sample_ids=["q"])})  # no subject recorded
    route = RequestRouter(ledger, "b2").route
    other = route("kept", digest, ["y", "z"], "hmac-sha256:mallory")
    assert (other.outcome, other.detail) == ("request_id_conflict",
                                             "request id already accepted in b1 for another subject; use a new id")
    assert "mallory" not in other.detail and "alice" not in other.detail
    assert route("kept", digest, ["y", "z"], "hmac-sha256:alice").outcome == "duplicate"
    # an older record without a subject hash is compared on content alone, as before
    assert route("legacy", content_digest(sample_ids=["q"]), ["q"], "hmac-sha256:anyone").outcome == "duplicate"
    # within one ingest
    assert route("new", content_digest(sample_ids=["w"]), ["w"], "hmac-sha256:bob").destination == "accepted"
    again = route("new", content_digest(sample_ids=["w"]), ["w"], "hmac-sha256:carol")
    assert (again.outcome, again.detail) == ("request_id_conflict",
                                             "request id used earlier in this ingest for another subject")
    assert Ledger.find_request(ledger, "kept")["subject_hash"] == "hmac-sha256:alice"


def test_hostile_file_names_are_not_parsed_and_are_sanitised(tmp_path):
    valid = json.dumps({"request_id": "r1", "sample_ids": ["a"], "received_at": "2026-01-01",
                        "reason": "other", "subject_ref": "s"}).encode()
    for name in ("..%2f..%2fetc.json", "a..b.json", ".hidden.json", "tab\tname.json", "x\udcff.json"):
        path = tmp_path / name
        path.write_bytes(valid)
        parsed = parse_request_file(path)
        assert parsed.problem.code == "unsafe_file_name" and parsed.requests == [], name
        assert parsed.sha256 == hashlib.sha256(valid).hexdigest() and parsed.size == len(valid)
        assert ".." not in parsed.name and "/" not in parsed.name and "%" not in parsed.name
        assert parsed.name == sanitize_file_name(name) != name
    assert sanitize_file_name("requests (1).json") == "requests (1).json"
    assert sanitize_file_name("a/b") != sanitize_file_name("a_b")  # hostile names never collide with plain ones


def test_symlinks_are_not_followed(tmp_path):
    target = tmp_path / "outside.json"
    target.write_text('{"request_id": "r1"}')
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "link.json").symlink_to(target)
    parsed = parse_request_file(tmp_path / "inbox" / "link.json")
    assert parsed.problem.code == "not_a_regular_file" and parsed.sha256 is None and parsed.requests == []


def test_subject_hash_accepts_any_json_string(tmp_path):
    salt = load_or_create_salt(tmp_path / ".salt")
    assert hash_subject("\ud800", salt).startswith("hmac-sha256:")  # a lone surrogate from JSON


def test_too_large_file_is_refused_unparsed_but_hashed(tmp_path):
    data = b'{"request_id": "r1"}'
    (tmp_path / "big.json").write_bytes(data)
    parsed = parse_request_file(tmp_path / "big.json", max_bytes=len(data) - 1)
    assert parsed.problem.code == "file_too_large" and parsed.requests == []
    assert (parsed.size, parsed.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert parse_request_file(tmp_path / "big.json", max_bytes=len(data)).problem is None


@pytest.mark.parametrize("data", [
    b'{"request_id": "A", "request_id": "B"}',
    b'[{"request_id": "A", "x": {"y": 1, "y": 2}}]',
    b'{"requests": [{"request_id": "A"}], "requests": []}',
])
def test_duplicate_json_keys_are_a_file_problem_at_any_depth(data):
    from unlearn.requests import parse_request_bytes

    parsed = parse_request_bytes("r.json", data)
    assert parsed.problem is not None and parsed.problem.code == "duplicate_json_key"
    assert not parsed.requests


def test_the_salt_is_created_whole_once_and_a_damaged_one_is_an_error(tmp_path):
    """`request submit` now creates the salt too, beside a running ingest: a reader between the other process's
    create and write read an empty salt, and hashed with no secret (review of 2026-12-05)."""
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    path = tmp_path / "requests" / ".salt"
    with ThreadPoolExecutor(8) as pool:
        salts = list(pool.map(lambda _: load_or_create_salt(path), range(32)))
    assert len(set(salts)) == 1 and len(salts[0]) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [".salt"]  # no temporary file left
    path.write_text("")
    with pytest.raises(ValueError, match="not 32 hex-encoded bytes"):
        load_or_create_salt(path)


def test_too_many_rows_stop_the_parse_early():
    """The row cap was applied after the whole file was decoded: 16 MiB of `{}` rows built 5.6 M dicts (1.1 GB, 19 s)
    before `too_many_rows` (review of 2026-12-07). JSON decoding and CSV reading now stop just past the cap.

    Timing-free: each flood ends in bytes that are not JSON. A parser that stopped just past the cap says
    `too_many_rows`; one that read on to the end says `malformed_json`. (Seconds are measured by
    benchmarks/ingest.py, never asserted here.)"""
    from unlearn.requests import parse_request_bytes

    for row in (b"{}", b"[]", b"0", b'{"request_id": "R"}'):  # any kind of row (third review)
        rows = b",".join([row] * 50_000)
        for flood in (b"[" + rows + b", oops", b'{"requests": [' + rows + b", oops"):
            parsed = parse_request_bytes("f.json", flood, max_rows=10)
            assert parsed.problem.code == "too_many_rows" and "(10) rows" in parsed.problem.detail, flood[:40]
        # the same rows under the cap reach the malformed tail: the tail does make a parse that reads on fail
        assert parse_request_bytes("f.json", b"[" + row + b", oops", max_rows=10).problem.code == "malformed_json"
    wrapped = json.dumps({"requests": [{"request_id": f"R-{i}"} for i in range(11)]}).encode()
    assert parse_request_bytes("w.json", wrapped, max_rows=10).problem.code == "too_many_rows"
    assert parse_request_bytes("w.json", wrapped, max_rows=11).problem is None
    csv_rows = b"request_id,sample_ids,received_at,reason,subject_ref\n" + b"R,x,2026-01-01,other,s\n" * 11
    assert parse_request_bytes("c.csv", csv_rows, max_rows=10).problem.code == "too_many_rows"
    assert len(parse_request_bytes("c.csv", csv_rows, max_rows=11).requests) == 11
    broken_tail = csv_rows + b"R,x,2026-01-01,other,s\n" * 50_000 + b'R,"never closed\n'  # strict CSV refuses it
    assert parse_request_bytes("c.csv", broken_tail, max_rows=10).problem.code == "too_many_rows"
    assert parse_request_bytes("c.csv", csv_rows + b'R,"never closed\n', max_rows=20).problem.code == "malformed_csv"
    # only top-level rows count: rows holding objects are one row each (they were counted per object)
    nested = [{"request_id": f"R-{i}", "extra": {"a": {}}} for i in range(5)]
    assert len(parse_request_bytes("n.json", json.dumps(nested).encode(), max_rows=5).requests) == 5
    assert len(parse_request_bytes("n.json", json.dumps({"requests": nested}).encode(), max_rows=5).requests) == 5
    for bad, code in ((b"[1, 2,]", "malformed_json"), (b"[1] x", "malformed_json"), (b'{"requests": [], "a": 1}',
                      "not_a_request_file"), (b'{"requests": [], "requests": []}', "duplicate_json_key")):
        assert parse_request_bytes("b.json", bad, max_rows=10).problem.code == code, bad
