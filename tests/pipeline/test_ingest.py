"""Request ingestion: Great Expectations validation, routing and accounting (no Prefect)."""

import hashlib
import json

import pytest

from tasks.project import load_project
from tasks.stage.ingest import run_ingest
from unlearn.requests import Ledger, content_digest


def _request(request_id, ids, **extra):
    return {"request_id": request_id, "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
            "reason": "gdpr_erasure", "subject_ref": "alice@example.com", **extra}


def _class_request(request_id, forget_class):
    return {k: v for k, v in _request(request_id, []).items() if k != "sample_ids"} | {"forget_class": forget_class}


def _drop(project, name, content):
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (project.incoming_dir / name).write_bytes(data)


def _log(directory):
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in f.read_text().splitlines()]


def _rejected(project):
    return _log(project.rejected_dir)


def _acknowledged(project):
    return _log(project.acknowledged_dir)


def _batch(project, batch_id):
    return json.loads((project.batches_dir / f"{batch_id}.json").read_text())


def test_every_row_ends_in_exactly_one_place(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", [
        _request("R-1", ["digits-0001", "digits-0002"]),
        _request("R-2", ["digits-9999"]),                       # unknown id
        _request("R-1", ["digits-0003"]),                       # same id, different content
        _request("R-3", ["digits-0004", "digits-0004"]),        # duplicate inside a request
        _request("R-4", []),                                    # empty
        {**_request("R-5", ["digits-0005"]), "reason": 7},      # wrong type
        _request("R-1", ["digits-0002", "digits-0001"]),        # same id, same content: a repeat
    ])
    _drop(project, "b.csv", b"request_id,sample_ids,received_at,reason,subject_ref\n"
                            b"R-6,digits-0006;digits-0007,2026-11-24,other,bob\n")
    broken = b'{"request_id": "R-9", "subject_ref": "carol@example.com", '
    _drop(project, "broken.json", broken)
    counts = run_ingest(project)
    assert counts["files"] == 3 and counts["rows"] == 9
    assert (counts["accepted"], counts["acknowledged"], counts["rejected"], counts["rejected_files"]) == (2, 1, 6, 1)
    assert counts["samples"] == 4
    from unlearn.requests import load_or_create_salt
    from unlearn.requests.hashing import recorded_file_name

    salt = load_or_create_salt(project.salt_path)
    a, broken_name = recorded_file_name("a.json", salt), recorded_file_name("broken.json", salt)
    reasons = {(r["request_id"], r["source_file"]): r["reasons"] for r in _rejected(project)}
    assert reasons == {
        ("R-2", a): ["unknown_sample_id"], ("R-1", a): ["request_id_conflict"],
        ("R-3", a): ["duplicate_sample_id_in_request"], ("R-4", a): ["sample_ids_count_out_of_range"],
        ("R-5", a): ["reason_missing_or_not_string"], (None, broken_name): ["malformed_json"],
    }
    # Every rejection says why in words too, starting with its code.
    assert all(r["detail"].startswith(r["reasons"][0] + ":") for r in _rejected(project))
    (repeat,) = _acknowledged(project)
    assert (repeat["request_id"], repeat["row"], repeat["outcome"]) == ("R-1", 6, "duplicate")
    assert repeat["batch_id"] == counts["batch_id"]
    # The unparseable file is not kept (it may name people): its name, size and hash are.
    (file_line,) = [r for r in _rejected(project) if r["row"] is None]
    assert file_line["file_size"] == len(broken)
    assert file_line["file_sha256"] == hashlib.sha256(broken).hexdigest()
    assert [p for p in project.rejected_dir.iterdir() if p.suffix != ".jsonl"] == []
    assert list(project.incoming_dir.iterdir()) == []
    ledger = Ledger(project.ledger_path)
    assert ledger.pending() == [counts["batch_id"]]
    assert ledger.deleted_ids() == {"digits-0001", "digits-0002", "digits-0006", "digits-0007"}
    batch = _batch(project, counts["batch_id"])
    assert [r["request_id"] for r in batch["requests"]] == ["R-1", "R-6"]
    assert batch["requests"][0]["content_digest"] == content_digest(sample_ids=["digits-0001", "digits-0002"])
    stored = b"".join(p.read_bytes() for p in project.requests_dir.rglob("*") if p.is_file())
    for ref in (b"alice@example.com", b"bob", b"carol@example.com"):
        assert ref not in stored  # only salted hashes
    state = json.loads((project.state_dir / "ingest.json").read_text())
    assert state == counts


def test_repeated_request_is_acknowledged_and_a_reused_id_is_a_conflict(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", _request("R-1", ["digits-0001", "digits-0002"]))
    first = run_ingest(project)
    assert first["accepted"] == 1
    ledger_before = project.ledger_path.read_text()

    # The same request again (ids reordered and repeated: the same content) is a no-op.
    _drop(project, "b.json", _request("R-1", ["digits-0002", "digits-0001"]))
    second = run_ingest(project)
    assert (second["accepted"], second["acknowledged"], second["rejected"], second["batch_id"]) == (0, 1, 0, None)
    (ack,) = _acknowledged(project)
    assert (ack["outcome"], ack["batch_id"], ack["request_id"]) == ("duplicate", first["batch_id"], "R-1")
    ledger = Ledger(project.ledger_path)
    assert list(ledger.batches) == [first["batch_id"]]
    assert json.loads(ledger_before)["batches"] == ledger.batches  # nothing re-applied
    found = ledger.find_request("R-1")
    assert found["kind"] == "accepted" and found["batch_id"] == first["batch_id"]
    assert found["acknowledged"]["outcome"] == "duplicate"

    # The same id and samples from another subject is refused too: it was acknowledged as the same request, and
    # the second person's deletion absorbed into the first's certificate (review of 2026-12-07).
    _drop(project, "b2.json", _request("R-1", ["digits-0001", "digits-0002"], subject_ref="mallory@example.com"))
    other = run_ingest(project)
    assert (other["accepted"], other["acknowledged"], other["rejected"]) == (0, 0, 1)
    (conflict,) = _rejected(project)
    assert conflict["reasons"] == ["request_id_conflict"] and "another subject" in conflict["detail"]
    assert "mallory" not in json.dumps(_rejected(project)) + project.ledger_path.read_text()
    for path in project.rejected_dir.glob("*.jsonl"):
        path.unlink()

    # The same id for other samples is refused, not merged and not dropped silently.
    _drop(project, "c.json", _request("R-1", ["digits-0003"]))
    third = run_ingest(project)
    assert (third["accepted"], third["acknowledged"], third["rejected"]) == (0, 0, 1)
    (conflict,) = _rejected(project)
    assert conflict["reasons"] == ["request_id_conflict"] and first["batch_id"] in conflict["detail"]
    assert "digits-0003" not in Ledger(project.ledger_path).deleted_ids()
    # `request status` says so in plain text too (it showed only the accepted request: README review)
    import contextlib
    import io

    from flows.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["--root", str(project.root), "request", "status", "R-1"]) == 0
    assert "later sent again and rejected (request_id_conflict)" in out.getvalue()
    # a damaged line in a rejections file is named, exit 2, not a traceback (review of 2026-12-07)
    (log,) = project.rejected_dir.glob("*.jsonl")
    log.write_text(log.read_text() + "{torn\n")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["--root", str(project.root), "request", "status", "R-1"]) == 2
    assert f"{log.name} line 2 is not a JSON object" in err.getvalue()


def test_already_deleted_samples_are_acknowledged_or_dropped_from_the_request(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", _request("R-1", ["digits-0001", "digits-0002"]))
    first = run_ingest(project)["batch_id"]
    _drop(project, "b.json", [
        _request("R-2", ["digits-0002", "digits-0001"]),   # every sample already deleted
        _request("R-3", ["digits-0002", "digits-0003"]),   # one new sample, one already deleted
    ])
    counts = run_ingest(project)
    assert (counts["accepted"], counts["acknowledged"], counts["rejected"], counts["samples"]) == (1, 1, 0, 1)
    (ack,) = _acknowledged(project)
    # the first batch is only ingested: its samples are not deleted yet, and the acknowledgement says so (review of
    # 2026-12-06: it said "already deleted"); request status shows where the covering batch is now
    assert (ack["request_id"], ack["outcome"], ack["covered_by"]) == ("R-2", "already_requested", [first])
    assert "not finished" in ack["detail"]
    from tasks.request_status import request_status

    status = request_status(project, "R-2")
    assert status["covering_batches"] == {first: "pending"} and status["deleted"] is False
    # status never prints the unsalted digest of the sample ids (reversible for a small request)
    assert "content_digest" not in status and "content_digest" not in request_status(project, "R-1")
    (accepted,) = _batch(project, counts["batch_id"])["requests"]
    assert accepted["request_id"] == "R-3" and accepted["sample_ids"] == ["digits-0003"]
    assert accepted["already_deleted_count"] == 1 and accepted["covered_by"] == [first]
    ledger = Ledger(project.ledger_path)
    assert ledger.batches[counts["batch_id"]]["sample_ids"] == ["digits-0003"]
    assert ledger.find_request("R-2")["kind"] == "acknowledged"
    assert ledger.find_request("R-2")["covered_by"] == [first]
    assert ledger.find_request("R-3")["batch_id"] == counts["batch_id"]
    assert "R-2" not in ledger.request_ids()
    # Resending the acknowledged request is itself only a repeat.
    _drop(project, "c.json", _request("R-2", ["digits-0001", "digits-0002"]))
    again = run_ingest(project)
    assert (again["acknowledged"], again["accepted"]) == (1, 0)
    assert _acknowledged(project)[-1]["outcome"] == "duplicate"
    assert Ledger(project.ledger_path).acknowledged["R-2"]["repeats"] == 1


def test_two_requests_in_one_ingest_naming_the_same_sample_are_both_accepted(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", [_request("R-1", ["digits-0001", "digits-0002"]),
                              _request("R-2", ["digits-0002", "digits-0003"])])
    counts = run_ingest(project)
    assert (counts["accepted"], counts["acknowledged"], counts["samples"]) == (2, 0, 3)
    requests = _batch(project, counts["batch_id"])["requests"]
    assert [r["already_deleted_count"] for r in requests] == [0, 0]
    assert Ledger(project.ledger_path).deleted_ids() == {"digits-0001", "digits-0002", "digits-0003"}


def test_a_request_for_test_split_samples_is_accepted_to_delete_the_data(make_project):
    from unlearn.data import load_source

    project = load_project(make_project())
    source = load_source(project.params.data)
    test_ids = sorted(source.ids[source.splits == "test"][:2].tolist())
    _drop(project, "a.json", _request("T-1", test_ids))
    counts = run_ingest(project)
    assert counts["accepted"] == 1 and counts["samples"] == 2
    assert Ledger(project.ledger_path).deleted_ids() == set(test_ids)


def test_empty_inbox_is_a_no_op(make_project):
    project = load_project(make_project())
    counts = run_ingest(project)
    assert (counts["rows"], counts["acknowledged"], counts["batch_id"]) == (0, 0, None)
    assert project.ledger_path.exists()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"not,a\nrequest,file\n"])
def test_files_that_are_not_requests_are_rejected_whole(make_project, content):
    project = load_project(make_project())
    _drop(project, "weird.csv", content)
    counts = run_ingest(project)
    assert counts["accepted"] == 0 and counts["rejected_files"] == 1
    assert list(project.incoming_dir.iterdir()) == []


def test_class_wise_request_deletes_every_training_sample_of_the_class(make_project):
    from unlearn.config import DataConfig
    from unlearn.data import load_source

    project = load_project(make_project())
    _drop(project, "a.json", [
        _class_request("C-1", "3"),
        _class_request("C-2", "ten"),
        _request("C-3", ["digits-0001"], forget_class="4"),  # both kinds at once
    ])
    counts = run_ingest(project)
    assert counts["accepted"] == 1
    codes = {r["request_id"]: r["reasons"] for r in _rejected(project)}
    assert codes == {"C-2": ["unknown_class"], "C-3": ["need_exactly_one_of_sample_ids_or_forget_class"]}
    source = load_source(DataConfig())
    expected = set(source.ids[(source.labels == 3) & (source.splits == "train")].tolist())
    ledger = Ledger(project.ledger_path)
    assert ledger.deleted_ids() == expected
    assert ledger.forget_classes(ledger.pending()) == [3]


def test_class_request_repeated_or_fully_deleted_is_acknowledged(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", _class_request("C-1", "3"))
    first = run_ingest(project)["batch_id"]
    # The same class under the same id (3 or "3": the same class) is a repeat; under a new id
    # every training sample of it is already deleted.
    _drop(project, "b.json", [_class_request("C-1", 3), _class_request("C-2", "3")])
    counts = run_ingest(project)
    assert (counts["accepted"], counts["acknowledged"], counts["rejected"]) == (0, 2, 0)
    outcomes = {a["request_id"]: (a["outcome"], a.get("batch_id"), a["covered_by"]) for a in _acknowledged(project)}
    # the batch that deletes the class is only ingested: "requested", not "deleted"
    assert outcomes == {"C-1": ("duplicate", first, []), "C-2": ("already_requested", None, [first])}
    # A different class under a used id is a conflict.
    _drop(project, "c.json", _class_request("C-1", "4"))
    assert run_ingest(project)["rejected"] == 1
    assert _rejected(project)[-1]["reasons"] == ["request_id_conflict"]


def test_submits_precheck_agrees_with_ingestions_great_expectations_code_for_code():
    """`unlearn request submit` refuses with precheck_request (plain Python, fast); ingestion decides with Great
    Expectations. The two must give the same codes and sentences on every kind of request."""
    from datetime import UTC, datetime

    from tasks.validation import precheck_request, validate_requests
    from unlearn.requests import NOT_AN_OBJECT, RAGGED_ROW, RawRequest

    ok = {"request_id": "R-1", "sample_ids": ["a-1", "a-2"], "received_at": "2026-11-24T10:00:00Z",
          "reason": "gdpr_erasure", "subject_ref": "s"}
    variants = [
        {}, {"sample_ids": ["a-1", "zz-9", "a-1", "bad id", "a-2"]}, {"sample_ids": []}, {"sample_ids": "a-1"},
        {"sample_ids": ["a-1"] * 5}, {"sample_ids": [1, 2]}, {"request_id": "../x"}, {"request_id": 7},
        {"received_at": "yesterday"}, {"received_at": "2026-13-40"}, {"received_at": "2999-01-01T00:00:00Z"},
        {"received_at": "1999-12-31"}, {"received_at": None}, {"reason": "typo"}, {"reason": 3},
        {"subject_ref": ""}, {"subject_ref": "x" * 513}, {"subject_ref": None}, {"forget_class": "3"},
        {"forget_class": "3", "sample_ids": None}, {"forget_class": "42", "sample_ids": None},
        {"forget_class": True, "sample_ids": None}, {"surprise": 1}, {"": 1}, {"sample_ids": ["\ud800x"]},
    ]
    requests = []
    for i, change in enumerate(variants):
        values = {**ok, **{k: v for k, v in change.items() if v is not None}}
        for key in [k for k, v in change.items() if v is None]:
            values.pop(key)
        extra = tuple(k for k in values if k not in ("request_id", "sample_ids", "forget_class", "received_at",
                                                     "reason", "subject_ref"))
        requests.append(RawRequest("f.json", i, values, extra))
    requests.append(RawRequest("f.json", 98, {NOT_AN_OBJECT: True}))
    requests.append(RawRequest("f.csv", 99, {**ok, RAGGED_ROW: True}))
    requests.append(RawRequest("f.json", 100, {k: v for k, v in ok.items() if k != "sample_ids"}))
    settings = dict(known_ids={"a-1", "a-2", "a-3"}, classes=("0", "1", "2", "3"),
                    reasons=("gdpr_erasure", "other"), max_ids=4, max_clock_skew_seconds=300.0,
                    now=datetime(2026, 12, 1, tzinfo=UTC))
    expected = validate_requests(requests, **settings)
    for request, verdict in zip(requests, expected, strict=True):
        mine = precheck_request(request, **settings)
        assert (mine.reasons, mine.detail) == (verdict.reasons, verdict.detail), request.row
    assert sum(v.valid for v in expected) == 2  # the unchanged request and the class request


def test_request_status_tells_first_tries_queued_and_acknowledged_requests_as_they_are(make_project):
    """Intake review of 2026-12-07: a rejection before the id was accepted was printed as "later sent again and
    rejected ... a new request needs a new id"; a queued request was "unknown" (exit 2); an acknowledged request's
    text status left out whether its samples were deleted; `unlearn status` counted resent accepted requests as
    acknowledged without deleting."""
    import contextlib
    import io

    from flows.cli import main
    from flows.status import collect_status

    project = load_project(make_project(), check_registries=False)

    def status(request_id):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(["--root", str(project.root), "request", "status", request_id])
        return code, out.getvalue()

    _drop(project, "a.json", _request("REQ-9", ["no-such-sample"]))
    run_ingest(project)
    assert "REQ-9: rejected" in status("REQ-9")[1]
    _drop(project, "b.json", _request("REQ-9", ["digits-0010"]))  # fixed and sent again
    code, text = status("REQ-9")
    assert code == 0 and "REQ-9: queued" in text and "waiting in data/requests/incoming" in text
    assert status("REQ-404")[0] == 2  # in no log and not in the inbox: unknown
    run_ingest(project)
    code, text = status("REQ-9")
    assert "REQ-9: accepted" in text and "rejected before it was accepted (unknown_sample_id)" in text
    assert "later sent again" not in text
    _drop(project, "c.json", _request("REQ-10", ["digits-0010"], subject_ref="bob@example.com"))
    _drop(project, "d.json", _request("REQ-9", ["digits-0010"]))  # a client's retry: acknowledged as a duplicate
    run_ingest(project)
    text = status("REQ-10")[1]
    assert "outcome     already_requested" in text and "deleted     False" in text
    assert "covered by" in text and ": pending, not purged yet" in text
    assert collect_status(project.root, runs=0)["requests"]["acknowledged_requests"] == 1  # REQ-10; REQ-9 deletes


def test_a_request_in_a_file_refused_for_its_name_can_be_looked_up(make_project):
    """A file refused as a whole recorded no request id, so `request status` said "unknown ... still in
    incoming" about a request whose file was gone (intake review of 2026-12-07). A file refused for its name is
    read for its ids; one refused for its content is counted in the answer."""
    from tasks.project import PipelineError
    from tasks.request_status import request_status

    project = load_project(make_project(), check_registries=False)
    _drop(project, "erase-me@alice.json", _request("REQ-60", ["digits-0001"]))
    _drop(project, "two.json", b'[{"request_id": "REQ-61", "sample_ids": ["digits-0002"], "received_at": '
                               b'"2026-11-24T10:00:00Z", "reason": "other", "reason": "gdpr_erasure", '
                               b'"subject_ref": "s"}]')
    run_ingest(project)
    assert not list(project.incoming_dir.iterdir())
    found = request_status(project, "REQ-60")
    assert (found["kind"], found["reasons"]) == ("rejected", ["unsafe_file_name"])
    with pytest.raises(PipelineError, match=r"1 file\(s\) were refused as a whole") as raised:
        request_status(project, "REQ-61")
    assert "inbox" in str(raised.value) and "alice" not in json.dumps([json.loads(line) for path in
                                                                       project.rejected_dir.glob("*.jsonl")
                                                                       for line in path.read_text().splitlines()])


def test_request_status_orders_rejections_it_can_order_and_reads_the_inbox_as_ingestion_does(make_project,
                                                                                               monkeypatch):
    """Third review of 2026-12-07: a first try rejected in the ingest that accepted the fix was told as a later
    resend; a conflict dated earlier by a clock stepped back was "before it was accepted"; a file ingested but not
    removable stayed "queued" for good; a queued file with an unsafe name was "not in the inbox"."""
    import contextlib
    import io

    from flows.cli import main
    from tasks.request_status import request_status
    from tasks.stage import ingest

    project = load_project(make_project(), check_registries=False)

    def text(request_id):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["--root", str(project.root), "request", "status", request_id]) == 0
        return out.getvalue()

    _drop(project, "a.json", _request("REQ-2", ["no-such-sample"]))
    _drop(project, "b.json", _request("REQ-2", ["digits-0001"]))
    run_ingest(project)
    shown = text("REQ-2")
    assert "another row with this id was rejected in the same ingest (unknown_sample_id)" in shown
    assert "later sent again" not in shown and "before it was accepted" not in shown
    # a conflict logged under an ingest id that sorts first (the clock stepped back): still a later resend
    (project.rejected_dir / "batch-20000101T000000000000Z-0.jsonl").write_text(json.dumps(
        {"source_file": "x.json", "row": 0, "request_id": "REQ-2", "reasons": ["request_id_conflict"]}) + "\n")
    assert "later sent again and rejected (request_id_conflict)" in text("REQ-2")

    monkeypatch.setattr(ingest, "_remove_entry", lambda *args, **kwargs: False)  # an inbox file it cannot remove
    _drop(project, "c.json", _request("REQ-5", ["no-such-sample"]))
    run_ingest(project)
    assert (project.incoming_dir / "c.json").exists()
    assert request_status(project, "REQ-5")["kind"] == "rejected"  # not "queued" for good
    _drop(project, "erase-me@x.json", _request("REQ-3", ["digits-0003"]))
    found = request_status(project, "REQ-3")
    assert found["kind"] == "queued" and "unsafe_file_name" in found["detail"]


def test_a_batch_accepted_before_subjects_were_kept_still_compares_a_resends_subject(make_project):
    """A ledger an older release wrote has no subject hashes: the batch file's are used (third review)."""
    from flows.submit import submit_request
    from tasks.project import PipelineError

    project = load_project(make_project(), check_registries=False)
    _drop(project, "a.json", _request("R-1", ["digits-0001"]))
    run_ingest(project)
    document = json.loads(project.ledger_path.read_text())
    for batch in document["batches"].values():
        batch.pop("request_subjects")  # as an older release wrote it
    project.ledger_path.write_text(json.dumps(document))
    with pytest.raises(PipelineError, match="already used in the ledger for another subject"):
        submit_request(project.root, _request("R-1", ["digits-0001"], subject_ref="mallory@example.com"))
    _drop(project, "b.json", _request("R-1", ["digits-0001"], subject_ref="mallory@example.com"))
    _drop(project, "c.json", _request("R-1", ["digits-0001"]))  # the same subject: a repeat
    result = run_ingest(project)
    assert (result["rejected"], result["acknowledged"]) == (1, 1)
    (conflict,) = _rejected(project)
    assert conflict["reasons"] == ["request_id_conflict"] and "another subject" in conflict["detail"]
