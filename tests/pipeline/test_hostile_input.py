"""Hostile request files: each is refused with its exact reason code, and disturbs nothing else.

Every case runs one ingest over a ledger that already holds a batch, with the hostile file, a
valid bystander file and (for row-level cases) a valid sibling row in the hostile file itself.
After it: no exception escaped run_ingest, the earlier batch and acknowledgements are as they
were, the bystanders were accepted, the inbox is empty, and the subject reference written into
the hostile file is nowhere on disk.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tasks.project import PipelineError, load_project
from tasks.stage.ingest import run_ingest
from unlearn.requests import Ledger, content_digest

SECRET = "hostile-subject-7f3a@example.com"  # a subject reference that must never be stored


def _request(request_id, ids, **extra):
    return {"request_id": request_id, "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
            "reason": "gdpr_erasure", "subject_ref": SECRET, **extra}


SIBLING = _request("SIB-1", ["digits-0011"])  # a valid row next to the hostile one
BYSTANDER = _request("OK-1", ["digits-0012"])  # a valid request in another file


@pytest.fixture
def project(make_project):
    """A project whose ledger already holds one (pending) batch."""
    project = load_project(make_project())
    ledger = Ledger(project.ledger_path)
    ledger.add_batch("batch-earlier", ["OLD-1"], ["digits-0100"], "2026-01-01T00:00:00Z")
    ledger.save()
    project.incoming_dir.mkdir(parents=True)
    return project


def _ingest(project, files: dict[str, bytes], *, expect_accepted: set[str],
            expect_acknowledged: frozenset[str] = frozenset()) -> tuple[dict, list[dict]]:
    """Drop ``files`` and the bystander, ingest, check nothing else was disturbed.

    Returns:
        The counts and the rejection lines that are not about the bystanders.
    """
    ledger_before = Ledger(project.ledger_path)
    (project.incoming_dir / "bystander.json").write_text(json.dumps(BYSTANDER))
    for name, data in files.items():
        (project.incoming_dir / name).write_bytes(data)
    counts = run_ingest(project)
    accepted = set()
    if counts["batch_id"]:
        batch = json.loads((project.batches_dir / f"{counts['batch_id']}.json").read_text())
        accepted = {r["request_id"] for r in batch["requests"]}
    assert accepted == expect_accepted | {"OK-1"}
    ledger = Ledger(project.ledger_path)
    assert ledger.batches["batch-earlier"] == ledger_before.batches["batch-earlier"]
    assert set(ledger.batches) == {"batch-earlier", counts["batch_id"]}
    assert set(ledger.acknowledged) == set(ledger_before.acknowledged) | expect_acknowledged
    assert all(ledger.acknowledged[k] == v for k, v in ledger_before.acknowledged.items())
    assert list(project.incoming_dir.iterdir()) == []
    assert counts["rows"] == counts["accepted"] + counts["rejected"] + counts["acknowledged"]
    for path in project.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
    rejected = [json.loads(line) for f in project.rejected_dir.glob("*.jsonl") for line in f.read_text().splitlines()]
    for line in rejected:  # a clear reason: a code and words
        assert line["reasons"] and line["detail"].startswith(line["reasons"][0] + ":")
    return counts, rejected


def _recorded(project, name: str) -> str:
    """An inbox file's name as ingest records it (a salted hash unless request submit wrote it)."""
    from unlearn.requests import load_or_create_salt
    from unlearn.requests.hashing import recorded_file_name

    return recorded_file_name(name, load_or_create_salt(project.salt_path))


def _json(document) -> bytes:
    return json.dumps(document).encode()


# Row-level: the file parses, the row is refused. (case id, the hostile row, its exact reasons)
ROWS = [
    ("request_id_int", {**_request("X", ["digits-0001"]), "request_id": 12}, ["request_id_missing_or_not_string"]),
    ("request_id_newline", _request("H-1\n", ["digits-0001"]), ["request_id_malformed"]),
    ("request_id_1mb", _request("H" * 1_000_000, ["digits-0001"]), ["request_id_malformed"]),
    ("sample_ids_string", _request("H-1", "digits-0001"), ["sample_ids_not_list_of_strings"]),
    ("sample_ids_ints", _request("H-1", [1, 2]), ["sample_ids_not_list_of_strings"]),
    ("reason_list", {**_request("H-1", ["digits-0001"]), "reason": ["gdpr_erasure"]}, ["reason_missing_or_not_string"]),
    ("received_at_number", {**_request("H-1", ["digits-0001"]), "received_at": 20261124},
     ["received_at_missing_or_not_string"]),
    ("received_at_far_future", {**_request("H-1", ["digits-0001"]), "received_at": "2999-01-01"},
     ["received_at_in_future"]),
    ("received_at_tomorrow", {**_request("H-1", ["digits-0001"]), "received_at": "2099-01-01T00:00:00+14:00"},
     ["received_at_in_future"]),
    ("empty_id_list", _request("H-1", []), ["sample_ids_count_out_of_range"]),
    ("empty_string_id", _request("H-1", [""]), ["sample_id_malformed"]),
    ("negative_int_id", _request("H-1", [-1]), ["sample_ids_not_list_of_strings"]),
    ("negative_string_id", _request("H-1", ["-1"]), ["sample_id_malformed"]),
    ("huge_int_id", _request("H-1", [10**30]), ["sample_ids_not_list_of_strings"]),
    ("huge_string_id_1mb", _request("H-1", ["d" * 1_000_000]), ["sample_id_malformed"]),
    ("huge_digits_id", _request("H-1", ["digits-" + "9" * 40]), ["unknown_sample_id"]),
    ("unknown_ids", _request("H-1", ["digits-0001", "cifar10-train-00001"]), ["unknown_sample_id"]),
    ("duplicate_ids_in_request", _request("H-1", ["digits-0001", "digits-0001"]), ["duplicate_sample_id_in_request"]),
    ("nul_in_id", _request("H-1", ["digits-00\x0001"]), ["sample_id_malformed"]),
    ("newline_in_id", _request("H-1", ["digits-0001\n"]), ["sample_id_malformed"]),
    ("not_an_object", "just a string", ["not_a_request_object"]),
    ("unknown_field", {**_request("H-1", ["digits-0001"]), "sample_id": "digits-0002"}, ["unknown_field"]),
    # Lone surrogates are valid JSON escapes but not UTF-8 (pandas' Arrow strings refuse them).
    ("surrogate_field_name", {**_request("H-1", ["digits-0001"]), "\ud800": 1}, ["unknown_field"]),
    ("surrogate_reason", {**_request("H-1", ["digits-0001"]), "reason": "\udfff"}, ["reason_not_allowed"]),
    ("surrogate_id", _request("H-1", ["digits-\ud800"]), ["sample_id_malformed"]),
]


@pytest.mark.parametrize(("row", "reasons"), [(r, c) for _, r, c in ROWS], ids=[i for i, _, _ in ROWS])
def test_hostile_row_is_rejected_with_its_code(project, row, reasons):
    counts, rejected = _ingest(project, {"hostile.json": _json([row, SIBLING])}, expect_accepted={"SIB-1"})
    (line,) = rejected
    assert (line["source_file"], line["row"], line["reasons"]) == (_recorded(project, "hostile.json"), 0, reasons)
    assert (counts["accepted"], counts["rejected"], counts["acknowledged"]) == (2, 1, 0)
    # A malformed id is not copied into the log (it may be megabytes long or hold control characters).
    assert line["request_id"] in (None, "H-1")
    assert len(json.dumps(line)) < 2000


def test_json_array_of_strings_rejects_each_row(project):
    counts, rejected = _ingest(project, {"strings.json": _json(["a", "b"])}, expect_accepted=set())
    assert sorted((r["row"], r["reasons"][0]) for r in rejected) == [(0, "not_a_request_object"),
                                                                     (1, "not_a_request_object")]
    assert all(r["reasons"] == ["not_a_request_object"] for r in rejected)
    assert (counts["rows"], counts["rejected"], counts["rejected_files"]) == (3, 2, 0)


CSV_HEADER = b"request_id,sample_ids,received_at,reason,subject_ref\n"
CSV_SIBLING = b"SIB-1,digits-0011,2026-11-24,other," + SECRET.encode() + b"\n"


@pytest.mark.parametrize("row", [
    b"H-1,digits-0001,2026-11-24,other," + SECRET.encode() + b",extra cell\n",   # a cell too many
    b"H-1,digits-0001,2026-11-24\n",                                             # cells missing
], ids=["ragged_long", "ragged_short"])
def test_ragged_csv_row_is_rejected_alone(project, row):
    _, rejected = _ingest(project, {"ragged.csv": CSV_HEADER + row + CSV_SIBLING}, expect_accepted={"SIB-1"})
    (line,) = rejected
    assert (line["row"], line["reasons"], line["request_id"]) == (0, ["csv_row_wrong_column_count"], "H-1")


# File-level: the file cannot be parsed; it is deleted, its name, size and sha256 are logged.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
FILES = [  # (case id, file name, content, exact code, a phrase its detail must hold)
    ("malformed_json", "bad.json", b'{"request_id": "H-1", "subject_ref": "' + SECRET.encode() + b'", "sample_ids": [',
     "malformed_json", "(line 1, column"),
    ("csv_unterminated_quote", "quote.csv",
     CSV_HEADER + b'H-1,"digits-0001,2026-11-24,other,' + SECRET.encode() + b"\n", "malformed_csv",
     "unexpected end of data"),
    ("csv_missing_header", "noheader.csv", CSV_SIBLING, "malformed_csv", "5 column(s) and no request_id"),
    ("non_utf8", "latin.json", b'{"request_id": "H-1", "reason": "\xe9", "subject_ref": "' + SECRET.encode() + b'"}',
     "not_utf8", "invalid byte at offset 33"),
    ("utf16_bom", "wide.json", json.dumps(_request("H-1", ["digits-0001"])).encode("utf-16"), "not_utf8",
     "UTF-16/32 byte-order mark"),
    ("png_as_json", "image.json", PNG, "not_utf8", "invalid byte at offset 0"),
    ("json_number", "number.json", b"5", "not_a_request_file", "got a JSON number"),
    ("requests_not_a_list", "wrapped.json", b'{"requests": 5}', "not_a_request_file", '"requests" must be a list'),
    ("txt_extension", "notes.txt", _json(_request("H-1", ["digits-0001"])), "unsupported_file_type", "got .txt"),
    ("zero_bytes_json", "empty.json", b"", "empty_file", "the file is empty"),
    ("zero_bytes_csv", "empty.csv", b"", "empty_file", "the file is empty"),
    ("deeply_nested_json", "deep.json", b"[" * 100_000 + b"]" * 100_000, "malformed_json", "nested too deeply"),
    ("duplicate_key", "dup.json",
     b'{"request_id": "H-1", "sample_ids": ["digits-0008"], "sample_ids": ["digits-0010"], "received_at": '
     b'"2026-11-24", "reason": "other", "subject_ref": "' + SECRET.encode() + b'"}',
     "duplicate_json_key", "'sample_ids' appears twice"),
    ("duplicate_request_id", "dupid.json",
     b'[{"request_id": "H-1", "request_id": "H-2", "sample_ids": ["digits-0008"], "received_at": "2026-11-24", '
     b'"reason": "other", "subject_ref": "x"}]', "duplicate_json_key", "'request_id' appears twice"),
    ("duplicate_key_nested", "dupdeep.json",
     b'{"requests": [{"request_id": "H-1", "sample_ids": ["digits-0008"], "received_at": "2026-11-24", '
     b'"reason": "other", "subject_ref": "x", "' + SECRET.encode() + b'": {"a": 1, "a": 2}}]}',
     "duplicate_json_key", "a key outside the schema"),
    ("duplicate_wrapper", "dupwrap.json", b'{"requests": [], "requests": []}', "duplicate_json_key",
     "'requests' appears twice"),
    ("dots_in_name", "a..b.json", _json(_request("H-1", ["digits-0001"])), "unsafe_file_name", "contain '..'"),
    ("encoded_traversal_name", "..%2f..%2fetc.json", _json(_request("H-1", ["digits-0001"])), "unsafe_file_name",
     "must not start with a dot"),
]


@pytest.mark.parametrize(("name", "data", "code", "phrase"), [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_hostile_file_is_rejected_whole_and_deleted(project, name, data, code, phrase):
    counts, rejected = _ingest(project, {name: data}, expect_accepted=set())
    (line,) = rejected
    assert line["reasons"] == [code] and line["row"] is None and line["request_id"] is None
    assert (line["file_size"], line["file_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert ".." not in line["source_file"] and "%" not in line["source_file"]
    assert phrase in line["detail"] and SECRET not in line["detail"]
    assert (counts["rejected_files"], counts["rows"], counts["accepted"]) == (1, 2, 1)
    # Only the rejection log is kept: no copy of the file anywhere.
    assert [p.name for p in project.rejected_dir.iterdir()] == [f"{counts['batch_id']}.jsonl"]


def test_symlink_in_the_inbox_is_neither_followed_nor_read(project, tmp_path):
    outside = tmp_path / "outside.json"  # a valid request, outside the inbox
    outside.write_text(json.dumps(_request("LINKED-1", ["digits-0001"])))
    before = outside.read_bytes()
    (project.incoming_dir / "link.json").symlink_to(outside)
    counts, rejected = _ingest(project, {}, expect_accepted=set())
    (line,) = rejected
    assert line["reasons"] == ["not_a_regular_file"] and line["source_file"] == _recorded(project, "link.json")
    assert line["file_sha256"] is None  # the target was never read
    assert outside.read_bytes() == before  # and not touched
    assert Ledger(project.ledger_path).find_request("LINKED-1") is None
    assert counts["rejected_files"] == 1


def test_dangling_symlink_is_removed(project, tmp_path):
    (project.incoming_dir / "gone.json").symlink_to(tmp_path / "does-not-exist.json")
    _, rejected = _ingest(project, {}, expect_accepted=set())
    assert [r["reasons"] for r in rejected] == [["not_a_regular_file"]]


def test_fifo_in_the_inbox_neither_blocks_nor_is_read(project):
    os.mkfifo(project.incoming_dir / "pipe.json")  # opening it for reading would wait for a writer
    _, rejected = _ingest(project, {}, expect_accepted=set())
    assert [r["reasons"] for r in rejected] == [["not_a_regular_file"]]


def test_folder_in_the_inbox_is_rejected_and_removed_unread(project, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    folder = project.incoming_dir / "sub.json"
    folder.mkdir()
    (folder / "inner.json").write_text(json.dumps(_request("IN-1", ["digits-0001"])))
    (folder / "link.json").symlink_to(outside)
    counts, rejected = _ingest(project, {}, expect_accepted=set())  # asserts the inbox ends up empty
    (line,) = rejected
    assert (line["source_file"], line["reasons"], line["file_sha256"]) == (_recorded(project, "sub.json"),
                                                                           ["not_a_regular_file"], None)
    assert "folder" in line["detail"] and counts["rejected_files"] == 1
    assert Ledger(project.ledger_path).find_request("IN-1") is None  # not recursed into
    assert outside.read_text() == "keep me"  # a link inside was removed, its target untouched


def test_lone_surrogate_subject_ref_is_hashed_not_crashing(project):
    text = json.dumps(_request("H-1", ["digits-0001"])).replace(json.dumps(SECRET)[1:-1], "\\ud800")
    counts, rejected = _ingest(project, {"surrogate.json": text.encode()}, expect_accepted={"H-1"})
    assert rejected == [] and counts["accepted"] == 2


def _unknown_ids(n):
    return [f"u-{i:07d}" for i in range(n)]


def test_request_with_max_ids_is_checked(project):
    """How long this takes is measured by benchmarks/ingest.py (target < 20 s), never asserted here."""
    limit = project.params.requests.max_ids_per_request
    assert limit == 100_000
    data = _json([_request("BIG-1", _unknown_ids(limit)), SIBLING])
    counts, rejected = _ingest(project, {"big.json": data}, expect_accepted={"SIB-1"})
    (line,) = rejected
    assert line["reasons"] == ["unknown_sample_id"] and line["request_id"] == "BIG-1"
    assert f"{limit} sample id(s) are not in the dataset" in line["detail"]


def test_request_over_max_ids_is_out_of_range(project):
    limit = project.params.requests.max_ids_per_request
    data = _json([_request("BIG-2", _unknown_ids(limit + 1)), SIBLING])
    _, rejected = _ingest(project, {"big.json": data}, expect_accepted={"SIB-1"})
    (line,) = rejected
    assert line["reasons"] == ["sample_ids_count_out_of_range"]  # its ids are not even looked at
    assert f"names {limit + 1} sample ids; a request names 1 to {limit}" in line["detail"]


def test_nothing_disturbed_when_a_hostile_file_arrives_with_a_repeat(project):
    """A hostile file next to a repeat of the earlier request: the repeat stays a no-op."""
    ledger = Ledger(project.ledger_path)
    ledger.batches["batch-earlier"]["request_digests"] = {"OLD-1": content_digest(sample_ids=["digits-0100"])}
    ledger.save()
    counts, rejected = _ingest(project, {"repeat.json": _json(_request("OLD-1", ["digits-0100"])),
                                         "bad.json": b"{"}, expect_accepted=set(),
                                expect_acknowledged={"OLD-1"})
    assert [r["reasons"] for r in rejected] == [["malformed_json"]]
    assert counts["acknowledged"] == 1
    assert Ledger(project.ledger_path).acknowledged["OLD-1"]["batch_id"] == "batch-earlier"


# --------------------------------------------------------------------------- unlearn request submit


@pytest.mark.parametrize("request_id", ["../../etc/passwd", "R-1\n", "", "-R", "R 1", "R" * 129, "R-\x00"])
def test_submit_refuses_a_malformed_request_id_before_writing(make_project, request_id):
    from flows.cli import submit_request

    root = make_project()
    with pytest.raises(PipelineError, match="malformed"):
        submit_request(root, {"request_id": request_id, "sample_ids": ["digits-0001"]})
    assert not (root / "data" / "requests" / "incoming").exists()


def test_submit_command_exits_2_on_a_malformed_id_and_accepts_a_good_one(make_project):
    root = make_project()
    incoming = root / "data" / "requests" / "incoming"

    def submit(request_id):
        return subprocess.run([sys.executable, "-m", "flows.cli", "--root", str(root), "request", "submit",
                               "--request-id", request_id, "--sample-ids", "digits-0001", "--subject-ref", "s"],
                              capture_output=True, text=True, timeout=300)

    bad = submit("alice.smith@example.com")
    assert bad.returncode == 2 and "malformed" in bad.stderr and "Traceback" not in bad.stderr
    assert "alice" not in bad.stderr + bad.stdout  # a malformed id may be personal data: never echoed
    assert not incoming.exists() or list(incoming.iterdir()) == []
    good = submit("REQ-000123")
    assert good.returncode == 0, good.stderr
    assert len(list(incoming.glob("request-*.json"))) == 1


@pytest.mark.parametrize("command", ["status", "certificate"])
def test_request_lookups_refuse_a_malformed_id_without_echoing_it(make_project, capsys, command):
    """An operator may type an e-mail address where a request id goes: `request status` and `request certificate`
    said "unknown request id 'alice.smith@example.com'" (review of 2026-12-06); submit never echoes such an id."""
    from flows.cli import main

    root = make_project()
    assert main(["--root", str(root), "request", command, "alice.smith@example.com"]) == 2
    out = capsys.readouterr()
    assert "not well-formed" in out.err and "alice" not in out.err + out.out
    assert main(["--root", str(root), "request", command, "REQ-404"]) == 2  # well-formed, unknown: named
    assert "REQ-404" in capsys.readouterr().err


@pytest.mark.parametrize("extra, code", [
    (["--sample-ids", "digits-0001", "no-such-sample"], "unknown_sample_id"),
    (["--sample-ids", "digits-0001", "--reason", "typo_reason"], "reason_not_allowed"),
    (["--sample-ids", "digits-0001", "--received-at", "yesterday"], "received_at_not_iso8601"),
    # read by Python as noon with no zone, a day off at +12:00 (review of 2026-12-07)
    (["--sample-ids", "digits-0001", "--received-at", "2026-12-07+12:00"], "received_at_not_iso8601"),
    (["--sample-ids", "digits-0001", "--received-at", "2026-12-07Z"], "received_at_not_iso8601"),
    (["--sample-ids", "digits-0001", "--subject-ref", ""], "subject_ref_bad_length"),
    (["--forget-class", "42"], "unknown_class"),
    (["--sample-ids", "digits-0001", "digits-0001"], "duplicate_sample_id_in_request"),
])
def test_submit_validates_as_ingestion_will_and_queues_nothing_bad(make_project, capsys, extra, code):
    """A typo exited 0 ('queued') and was rejected by the next run, whose exit status was 0 too (review)."""
    from flows.cli import main

    root = make_project()
    incoming = root / "data" / "requests" / "incoming"
    args = ["--request-id", "REQ-1", "--subject-ref", "s", *extra]
    assert main(["--root", str(root), "request", "submit", *args]) == 2
    err = capsys.readouterr().err
    assert code in err and "Traceback" not in err, err
    assert "no-such-sample" not in err  # never quotes the ids it names
    assert not incoming.exists() or list(incoming.iterdir()) == []


def test_the_run_summary_names_rejected_requests_and_their_reason_codes(tmp_path):
    from flows.summary import format_summary

    rejected = [{"request_id": "REQ-7", "reasons": ["reason_not_allowed"]},
                {"request_id": None, "reasons": ["request_id_malformed"]}]
    result = {"root": str(tmp_path), "unlearn": {"status": "data_only"},
              "ingest": {"rows": 3, "accepted": 1, "rejected": 2, "batch_id": "b", "rejected_requests": rejected}}
    text = format_summary(result)
    assert "rejected: REQ-7: reason_not_allowed; (unreadable id): request_id_malformed" in text


def test_submit_writes_the_request_it_checked(make_project):
    """A None field was dropped for the check but written to the file, which ingestion then rejected (review)."""
    from flows.cli import submit_request

    root = make_project()
    path = submit_request(root, {"request_id": "R-1", "sample_ids": ["digits-0001"], "forget_class": None,
                                 "received_at": "2026-11-24T10:00:00Z", "reason": "other", "subject_ref": "s"})
    assert "forget_class" not in json.loads(path.read_text())

    # The file's name is published in events: its digest of the request id is salted with the project's secret
    # (a plain SHA-256 of a guessable id, a ticket number or an address, could be reversed by trying them).
    import hashlib

    assert path.name.endswith(".json") and hashlib.sha256(b"R-1").hexdigest()[:12] not in path.name
    from flows.serve import request_payload

    assert request_payload(path.name, "cli")["file"] == path.name  # still recognised as a submitted name


def test_submit_refuses_an_id_already_used_for_other_content_and_queues_a_repeat(make_project):
    """A reused id was queued ('submitted', exit 0) and only rejected by the next run as request_id_conflict."""
    from flows.cli import submit_request

    root = make_project()
    incoming = root / "data" / "requests" / "incoming"
    first = {"request_id": "R-1", "sample_ids": ["digits-0001", "digits-0002"], "subject_ref": "s",
             "received_at": "2026-11-24T10:00:00Z", "reason": "other"}
    submit_request(root, first)
    # the same request again (a client's retry; ids in another order): queued, ingestion acknowledges it
    submit_request(root, {**first, "sample_ids": ["digits-0002", "digits-0001"]})
    assert len(list(incoming.glob("request-*.json"))) == 2
    as_class = {**{k: v for k, v in first.items() if k != "sample_ids"}, "forget_class": "3"}
    for other in ({**first, "sample_ids": ["digits-0003"]}, as_class):
        with pytest.raises(PipelineError, match="already used by a request waiting in the inbox") as raised:
            submit_request(root, other)
        assert "digits-0003" not in str(raised.value)
    assert len(list(incoming.glob("request-*.json"))) == 2
    submit_request(root, {**first, "request_id": "R-2", "sample_ids": ["digits-0003"]})  # another id is free

    # the ledger: an id a run already recorded, for other content
    for path in incoming.glob("request-*.json"):
        path.unlink()
    project = load_project(root, check_registries=False)
    ledger = Ledger(project.ledger_path)
    ledger.add_batch("batch-earlier", ["OLD-1"], ["digits-0100"], "2026-01-01T00:00:00Z",
                     request_digests={"OLD-1": content_digest(sample_ids=["digits-0100"])})
    ledger.save()
    with pytest.raises(PipelineError, match="already used in the ledger"):
        submit_request(root, {**first, "request_id": "OLD-1", "sample_ids": ["digits-0101"]})
    submit_request(root, {**first, "request_id": "OLD-1", "sample_ids": ["digits-0100"]})  # a repeat
    assert len(list(incoming.glob("request-*.json"))) == 1

    # the same id and content for another subject: a conflict, not a repeat (it was absorbed as "same request";
    # review of 2026-12-07), in the inbox and in the ledger; the subject is never echoed
    with pytest.raises(PipelineError, match="waiting in the inbox, for another subject") as raised:
        submit_request(root, {**first, "request_id": "OLD-1", "sample_ids": ["digits-0100"], "subject_ref": "mal"})
    assert "mal" not in str(raised.value)
    from unlearn.requests import hash_subject, load_or_create_salt

    ledger = Ledger(project.ledger_path)
    ledger.add_batch("batch-later", ["NEW-1"], ["digits-0200"], "2026-01-02T00:00:00Z",
                     request_digests={"NEW-1": content_digest(sample_ids=["digits-0200"])},
                     request_subjects={"NEW-1": hash_subject("s", load_or_create_salt(project.salt_path))})
    ledger.save()
    with pytest.raises(PipelineError, match="already used in the ledger for another subject"):
        submit_request(root, {**first, "request_id": "NEW-1", "sample_ids": ["digits-0200"], "subject_ref": "mal"})
    submit_request(root, {**first, "request_id": "NEW-1", "sample_ids": ["digits-0200"]})  # its own subject


def test_submits_id_check_reads_the_inbox_and_ledger_as_ingestion_does(make_project):
    """A review: submit's first check accepted what ingestion then rejected, hung on a FIFO, crashed on deep JSON."""
    import threading

    from flows.cli import submit_request

    root = make_project()
    incoming = root / "data" / "requests" / "incoming"
    base = {"request_id": "R-1", "subject_ref": "s", "received_at": "2026-11-24T10:00:00Z", "reason": "other"}
    queued = submit_request(root, {**base, "sample_ids": ["digits-0001"]})
    # an editor saved the queued file with a byte-order mark: ingestion still reads it, so it still claims R-1
    queued.write_bytes(b"\xef\xbb\xbf" + queued.read_bytes())
    with pytest.raises(PipelineError, match="waiting in the inbox"):
        submit_request(root, {**base, "sample_ids": ["digits-0002"]})
    # a queued row that ingestion will reject (unknown reason) claims no id: the new request is the first valid one
    queued.write_text(json.dumps({**base, "reason": "no-such-reason", "sample_ids": ["digits-0001"]}))
    submit_request(root, {**base, "sample_ids": ["digits-0002"]})
    # a FIFO or a deeply nested file under the id's name: never read into, never a traceback
    for path in incoming.glob("request-*.json"):
        path.unlink()
    name = queued.name
    os.mkfifo(incoming / name)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (submit_request(root, {**base, "sample_ids": ["digits-0003"]}),
                                              done.set()), daemon=True)
    worker.start()
    worker.join(30)
    assert done.is_set(), "submit blocked on a FIFO in the inbox"
    (incoming / name).unlink()
    (incoming / name).write_text("[" * 200_000 + "]" * 200_000)
    submit_request(root, {**base, "sample_ids": ["digits-0003"]})
    # a client's file drop under a name of its own claims the id as well (only this id's salted name was read)
    for path in incoming.iterdir():
        path.unlink()
    (incoming / "crm-export 2026-11-24.json").write_text(json.dumps({**base, "sample_ids": ["digits-0004"]}))
    (incoming / ".crm-export.json.tmp").write_text(json.dumps({**base, "sample_ids": ["digits-0005"]}))  # mid-write
    with pytest.raises(PipelineError, match="waiting in the inbox"):
        submit_request(root, {**base, "sample_ids": ["digits-0003"]})
    submit_request(root, {**base, "sample_ids": ["digits-0004"]})  # the same request: a repeat, queued

    # a ledger record without a content digest (kept before digests were): ingestion rejects any reuse
    for path in incoming.glob("request-*.json"):
        path.unlink()
    ledger = Ledger(load_project(root, check_registries=False).ledger_path)
    ledger.add_batch("batch-earlier", ["OLD-1"], ["digits-0100"], "2026-01-01T00:00:00Z")
    ledger.save()
    with pytest.raises(PipelineError, match="without a content digest"):
        submit_request(root, {**base, "request_id": "OLD-1", "sample_ids": ["digits-0100"]})
    assert list(incoming.glob("request-*.json")) == []


def test_an_inbox_file_that_cannot_be_removed_wedges_nothing(project, monkeypatch):
    """An ingested file the pipeline cannot delete (immutable, another user's in a sticky shared inbox) raised
    PermissionError at the clean-up and again at the start of every later run: no request after it was ever
    ingested (review of 2026-12-07). It is now skipped while it stays, and never read twice."""
    from pathlib import Path

    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == "stuck.json":
            raise PermissionError(1, "Operation not permitted")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    (project.incoming_dir / "stuck.json").write_text(json.dumps(_request("STUCK-1", ["digits-0001"])))
    first = run_ingest(project)
    assert first["accepted"] == 1 and (project.incoming_dir / "stuck.json").exists()
    (project.incoming_dir / "later.json").write_text(json.dumps(_request("LATER-1", ["digits-0002"])))
    second = run_ingest(project)  # raised here, and on every run after
    assert (second["accepted"], second["acknowledged"], second["rejected"]) == (1, 0, 0)  # not read again
    third = run_ingest(project)
    assert third["files"] == 0
    ledger = Ledger(project.ledger_path)
    assert ledger.find_request("LATER-1") is not None and not ledger.acknowledged
    # keyed by the name as records keep it (a salted hash: a dropped file's name may be personal data)
    assert set(ledger.consumed_inbox) == {_recorded(project, "stuck.json")}
    assert b"stuck" not in project.ledger_path.read_bytes()
    from flows.serve import InboxWatcher
    from flows.status import _requests
    from tasks.stage.ingest import ingested_entries

    assert ingested_entries(project.requests_dir, ["stuck.json", "other.json"]) == {"stuck.json"}
    assert _requests(project)["incoming_files"] == 0 and _requests(project)["ingested_not_removed"] == 1
    assert InboxWatcher(project.root, 60, send=lambda *a: True).pending() == {}  # no run is started for it
    monkeypatch.setattr(Path, "unlink", real_unlink)  # removable again: removed, and the record dropped
    assert run_ingest(project)["files"] == 0 and not (project.incoming_dir / "stuck.json").exists()
    assert Ledger(project.ledger_path).consumed_inbox == {}


def test_a_huge_sparse_file_is_refused_without_reading_it_to_the_end(project, monkeypatch):
    """The size cap hashed the whole file anyway: a 4 GB sparse file took 16 s per ingest and per `request submit`
    (review of 2026-12-07). At most the first HASH_CAP bytes are read now: counted here, not timed
    (benchmarks/ingest.py measures the seconds)."""
    from unlearn.requests import parsing
    from unlearn.requests.parsing import HASH_CAP, MAX_FILE_BYTES, file_sha256, parse_request_file

    path = project.incoming_dir / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(1 << 32)  # 4 GiB, no blocks on disk
    read = []
    real_fdopen = os.fdopen

    class Counted:
        """The parser's file handle, counting the bytes it hands out."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def fileno(self):
            return self.handle.fileno()

        def read(self, size=-1):
            chunk = self.handle.read(size)
            read.append(len(chunk))
            return chunk

    monkeypatch.setattr(parsing.os, "fdopen", lambda *a, **k: Counted(real_fdopen(*a, **k)))
    parsed = parse_request_file(path)
    assert sum(read) == HASH_CAP  # a parse that read on would count 4 GiB here
    assert parsed.problem.code == "file_too_large" and parsed.size == 1 << 32
    assert f"{1 << 32} bytes > {MAX_FILE_BYTES}" in parsed.problem.detail
    assert parsed.sha256 == hashlib.sha256(bytes(HASH_CAP)).hexdigest() == file_sha256(path)
    assert sum(read) == 2 * HASH_CAP
    monkeypatch.undo()
    counts = run_ingest(project)
    assert counts["rejected_files"] == 1 and not path.exists()


@pytest.mark.parametrize(("name", "data", "phrase"), [
    ("ledger.json", b"\xff\xfe{}", "corrupt"),
    ("ledger.json", b'{"batches": {"b1": {"status": "pending"}}}', "batch 'b1' lacks"),
    ("ledger.json", b'{"batches": {"b1": {"status": "pending", "request_ids": [], "sample_ids": 5, '
                    b'"created_at": "x", "history": []}}}', "malformed sample_ids"),
    ("ledger.json", b'{"batches": {"b1": {"status": "completed", "request_ids": [], "sample_ids": [], '
                    b'"created_at": "x", "history": [], "retirement": {"1": "retired"}}}}', "malformed retirement"),
])
def test_a_damaged_ledger_is_named_with_exit_2_and_a_damaged_deletions_file_is_rewritten(make_project, capsys,
                                                                                        name, data, phrase):
    """A ledger in bad UTF-8 or with a batch missing its fields, and a garbled deletions.json, gave tracebacks and
    exit 1 (review of 2026-12-07)."""
    from flows.cli import main

    root = make_project()
    folder = root / "data" / "requests"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    assert main(["--root", str(root), "stage", "ingest"]) == 2
    err = capsys.readouterr().err
    assert "ledger.json" in err and phrase in err and "Traceback" not in err
    (folder / "ledger.json").unlink()
    (folder / "deletions.json").write_text("garbage")
    assert main(["--root", str(root), "stage", "ingest"]) == 0
    assert json.loads((folder / "deletions.json").read_text())["batches"] == []


def test_unknown_field_names_are_named_only_when_they_are_near_misses_of_the_schema(project):
    """Any plain key was copied into the rejection log, a customer id used as a key included (review of
    2026-12-07); a typo of a schema field is still named, so the operator can fix it."""
    customer_keyed = {"cust_88123_jdoe": _request("H-1", ["digits-0001"])}
    typo = {**_request("H-2", ["digits-0002"]), "Sample-IDs": ["digits-0003"], "alice_smith_1984": True}
    _, rejected = _ingest(project, {"keyed.json": _json(customer_keyed), "typo.json": _json(typo)},
                          expect_accepted=set())
    details = " ".join(line["detail"] for line in rejected)
    assert "cust_88123_jdoe" not in details and "alice_smith_1984" not in details
    assert "Sample-IDs" in details and "other field(s)" in details


def test_a_dropped_files_name_is_recorded_only_as_a_salted_hash(project):
    """A dropped file's name may be personal data: it was kept almost verbatim in the rejection and acknowledgement
    logs, the ledger and the batch file (review of 2026-12-07). Request submit's own names are kept as they are."""
    from flows.cli import submit_request

    plain, unsafe = "alice.smith-erase-me.json", "alice@example.com-erase-me.json"  # read; refused unread
    submitted = submit_request(project.root, _request("SUB-1", ["digits-0003"]))
    _, rejected = _ingest(project, {plain: _json([_request("A-1", ["digits-0001"]), {"request_id": "A-2"}]),
                                    unsafe: _json(_request("A-3", ["digits-0002"])),
                                    "bob.jones.1984-again.json": _json(BYSTANDER)},
                          expect_accepted={"A-1", "SUB-1"}, expect_acknowledged=frozenset({"OK-1"}))
    assert {(line["request_id"], line["source_file"]) for line in rejected} == {
        ("A-2", _recorded(project, plain)), (None, _recorded(project, unsafe))}
    assert all(line["source_file"].startswith("hmac:") for line in rejected)
    for path in project.root.rglob("*"):
        if path.is_file() and path != project.salt_path:
            data = path.read_bytes()
            assert b"alice" not in data and b"bob.jones" not in data, path
    batch = json.loads(next(project.batches_dir.glob("*.json")).read_text())
    assert {r["request_id"]: r["source_file"] for r in batch["requests"]}["SUB-1"] == submitted.name


def test_many_rows_cost_one_audit_record_and_too_many_refuse_the_file(make_project):
    """One audit record per rejected row: 8,000 empty rows (24 KB) held the pipeline's lock for 43 s and added
    3.5 MB to the log (review of 2026-12-07). Now an ingest's rejections are one record anchoring the rejection
    log by its digest, and a file over requests.max_rows_per_file is refused whole."""
    from tasks import audit

    project = load_project(make_project({"requests": {"max_rows_per_file": 500}}))
    project.incoming_dir.mkdir(parents=True)
    (project.incoming_dir / "empty-rows.json").write_bytes(b"[" + b",".join([b"{}"] * 500) + b"]")
    (project.incoming_dir / "too-many.json").write_bytes(b"[" + b",".join([b"{}"] * 501) + b"]")
    (project.incoming_dir / "ok.json").write_text(json.dumps(BYSTANDER))
    counts = run_ingest(project)
    assert (counts["accepted"], counts["rejected"], counts["rejected_files"]) == (1, 501, 1)
    log_path = project.rejected_dir / f"{counts['batch_id']}.jsonl"
    (record,) = audit.records(project, "ingest.rejected")
    assert record["rows"] == 501 and record["reasons"]["too_many_rows"] == 1 and record["log"] == log_path.name
    assert record["log_sha256"] == hashlib.sha256(log_path.read_bytes()).hexdigest()
    assert sum(record["reasons"].values()) >= 501 and not audit.records(project, "request.rejected")
    (line,) = [json.loads(t) for t in log_path.read_text().splitlines() if "too_many_rows" in t]
    assert "more than requests.max_rows_per_file (500) rows: split the file" in line["detail"]


def test_a_crash_after_the_commit_leaves_no_rejection_or_acknowledgement_unrecorded(project, monkeypatch):
    """The ledger commit came before the audit records; the next run skips the committed files, so a crash in
    between lost the rejections' and acknowledgements' records for good (review of 2026-12-07)."""
    from tasks import audit

    (project.incoming_dir / "first.json").write_text(json.dumps(BYSTANDER))
    run_ingest(project)
    real = audit.record

    def crash_on_rejections(project_, event, **fields):
        if event in ("ingest.rejected", "request.acknowledged"):
            raise KeyboardInterrupt("killed")
        return real(project_, event, **fields)

    monkeypatch.setattr(audit, "record", crash_on_rejections)
    (project.incoming_dir / "again.json").write_text(json.dumps(BYSTANDER))  # a duplicate: acknowledged
    (project.incoming_dir / "bad.json").write_text(json.dumps({"request_id": "BAD-1"}))
    with pytest.raises(KeyboardInterrupt):
        run_ingest(project)
    monkeypatch.setattr(audit, "record", real)
    assert Ledger(project.ledger_path).unrecorded_ingest is not None
    assert run_ingest(project)["files"] == 0  # the committed files are not read again ...
    (rejected,) = audit.records(project, "ingest.rejected")  # ... and their records are written
    assert rejected["recovered"] is True and rejected["request_ids"] == ["BAD-1"]
    (acknowledged,) = audit.records(project, "request.acknowledged")
    assert acknowledged["request_id"] == "OK-1" and acknowledged["recovered"] is True
    assert Ledger(project.ledger_path).unrecorded_ingest is None
    run_ingest(project)
    assert len(audit.records(project, "ingest.rejected")) == 1  # recovered once


def test_uploads_in_progress_are_left_alone_and_a_file_changed_while_read_waits(project, monkeypatch):
    """A file read mid-write was routed as read: a cut-off row lost the rest of a request (the complete file then
    conflicted with it), and an upload tool's temporary file was refused as unsupported and deleted under it
    (review of 2026-12-07)."""
    from unlearn.requests import parsing

    for name in (".req.json.a1B2c3", "req.json.filepart", "req.json.part", ".req.json.tmp"):
        (project.incoming_dir / name).write_text('{"request_id": "PART')
    assert run_ingest(project)["files"] == 0 and len(list(project.incoming_dir.iterdir())) == 4
    from flows.status import _requests

    shown = _requests(project)  # left alone, but said: an abandoned upload would otherwise stay unseen
    assert shown["uploads_in_progress"] == 4 and shown["incoming_files"] == 0 and shown["oldest_upload_hours"] >= 0
    for path in project.incoming_dir.iterdir():
        path.unlink()
    growing = project.incoming_dir / "growing.csv"
    growing.write_text("request_id,sample_ids,received_at,reason,subject_ref\nC-1,digits-0001;digits-0002;")
    real_parse = parsing.parse_request_file

    def parse_while_written(path, *args, **kwargs):  # the writer appends the rest while ingest reads
        parsed = real_parse(path, *args, **kwargs)
        if path.name == "growing.csv" and "digits-0003" not in path.read_text():
            with open(path, "a") as handle:
                handle.write("digits-0003,2026-11-24T10:00:00Z,gdpr_erasure,someone\n")
        return parsed

    monkeypatch.setattr("tasks.stage.ingest.parse_request_file", parse_while_written)
    assert run_ingest(project)["files"] == 0 and growing.exists()  # left for the next run, nothing routed
    assert Ledger(project.ledger_path).find_request("C-1") is None and not list(project.rejected_dir.glob("*"))
    counts = run_ingest(project)
    assert counts["accepted"] == 1 and not growing.exists()
    batch = json.loads((project.batches_dir / f"{counts['batch_id']}.json").read_text())
    assert batch["requests"][0]["sample_ids"] == ["digits-0001", "digits-0002", "digits-0003"]


@pytest.mark.parametrize("crash_at", ["commit", "after_commit"])
def test_a_crash_around_the_commit_leaves_no_file_of_an_ingest_that_did_not_happen(project, monkeypatch, crash_at):
    """Destination files were written under their names before the ledger commit: a crash at the commit left the
    rejection log of an ingest that never happened, and `request status` listed one submission's rejection twice
    (review of 2026-12-07). They are pending until the commit, and named after it (by the next run if need be)."""
    from tasks.stage import ingest

    (project.incoming_dir / "bad.json").write_text(json.dumps({"request_id": "BAD-1"}))
    (project.incoming_dir / "ok.json").write_text(json.dumps(BYSTANDER))
    if crash_at == "commit":
        monkeypatch.setattr(Ledger, "save", lambda self: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    else:
        monkeypatch.setattr(ingest, "_settle_pending", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("killed"))
                            if a[1] is not None else None)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(project)
    monkeypatch.undo()
    assert not list(project.rejected_dir.glob("*.jsonl"))  # nothing a reader takes
    counts = run_ingest(project)
    rejected = list(project.rejected_dir.iterdir())
    batches = [p for p in project.batches_dir.iterdir()]
    assert len(rejected) == 1 and rejected[0].suffix == ".jsonl" and all(p.suffix == ".json" for p in batches)
    if crash_at == "commit":  # read again, once
        assert counts["rejected"] == 1 and counts["accepted"] == 1
    else:  # committed: named now, not read again
        assert counts["files"] == 0
    lines = [json.loads(t) for t in rejected[0].read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["BAD-1"]
    assert Ledger(project.ledger_path).find_request("OK-1") is not None


def test_second_review_of_the_ingest_fixes(project, monkeypatch, tmp_path):
    """A second review of the day's ingest fixes (2026-12-07): an unusual extension reached the rejection detail
    (erase.janedoe1984); two acknowledgements of one request in one ingest were recovered as one; a caller's
    max_bytes above the hash cap parsed a truncated file as whole; a damaged consumed_inbox entry was a traceback."""
    from tasks import audit
    from unlearn.requests import LedgerError
    from unlearn.requests.parsing import HASH_CAP, parse_request_file

    _, rejected = _ingest(project, {"erase.janedoe1984": b"{}", "notes.txt": b"{}"}, expect_accepted=set())
    details = sorted(line["detail"] for line in rejected)
    assert details == ["unsupported_file_type: expected .json or .csv, got .txt",
                       "unsupported_file_type: expected .json or .csv, got another extension"]
    real = audit.record

    def crash_on_acknowledgements(project_, event, **fields):
        if event == "request.acknowledged":
            raise KeyboardInterrupt("killed")
        return real(project_, event, **fields)

    (project.incoming_dir / "b.json").write_text(json.dumps(BYSTANDER))  # OK-1 twice: two acknowledgements
    (project.incoming_dir / "c.json").write_text(json.dumps(BYSTANDER))
    monkeypatch.setattr(audit, "record", crash_on_acknowledgements)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(project)
    monkeypatch.setattr(audit, "record", real)
    run_ingest(project)
    assert len(audit.records(project, "request.acknowledged")) == 2
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * (HASH_CAP + 10))
    parsed = parse_request_file(big, max_bytes=HASH_CAP + 100)
    assert parsed.size == HASH_CAP + 10  # read whole, not cut at the cap
    ledger = json.loads(project.ledger_path.read_text())
    ledger["consumed_inbox"] = {"x": "oops"}
    project.ledger_path.write_text(json.dumps(ledger))
    with pytest.raises(LedgerError, match="consumed_inbox entry"):
        Ledger(project.ledger_path)


def test_a_folder_that_cannot_be_removed_whole_is_rejected_once(project, monkeypatch):
    """A dropped folder whose contents could not all be removed was rejected again on every run: a new rejection
    log and audit record each time (second review of 2026-12-07)."""
    from tasks import audit

    folder = project.incoming_dir / "dropped"
    folder.mkdir()
    (folder / "inner.json").write_text("{}")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).endswith("inner.json"):
            raise PermissionError(1, "Operation not permitted")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    counts = [run_ingest(project)["rejected_files"] for _ in range(3)]
    assert counts == [1, 0, 0] and folder.exists()
    assert len(audit.records(project, "ingest.rejected")) == 1 and len(list(project.rejected_dir.iterdir())) == 1
    (folder / "later.json").write_text("{}")  # what is left changed: no longer the folder that was rejected
    assert run_ingest(project)["rejected_files"] == 1  # (third review: a new folder can reuse the inode)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert run_ingest(project)["files"] == 0 and not folder.exists()  # removable again: removed, not re-read
