"""Request ingestion: Great Expectations validation, routing and accounting (no Prefect)."""

import json

import pytest

from tasks.project import load_project
from tasks.stages import run_ingest
from unlearn.requests import Ledger


def _request(request_id, ids, **extra):
    return {"request_id": request_id, "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
            "reason": "gdpr_erasure", "subject_ref": "alice@example.com", **extra}


def _drop(project, name, content):
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (project.incoming_dir / name).write_bytes(data)


def _rejected(project):
    return [json.loads(line) for f in sorted(project.rejected_dir.glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def test_every_row_ends_in_exactly_one_place(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", [
        _request("R-1", ["digits-0001", "digits-0002"]),
        _request("R-2", ["digits-9999"]),                       # unknown id
        _request("R-1", ["digits-0003"]),                       # duplicate request id
        _request("R-3", ["digits-0004", "digits-0004"]),        # duplicate inside a request
        _request("R-4", []),                                    # empty
        {**_request("R-5", ["digits-0005"]), "reason": 7},      # wrong type
    ])
    _drop(project, "b.csv", b"request_id,sample_ids,received_at,reason,subject_ref\n"
                            b"R-6,digits-0006;digits-0007,2026-11-24,other,bob\n")
    _drop(project, "broken.json", b'{"request_id": ')
    counts = run_ingest(project)
    assert counts["files"] == 3 and counts["rows"] == 8
    assert counts["accepted"] == 2 and counts["rejected"] == 6 and counts["rejected_files"] == 1
    reasons = {(r["request_id"], r["source_file"]): r["reasons"] for r in _rejected(project)}
    assert reasons[("R-2", "a.json")] == ["unknown_sample_id"]
    assert reasons[("R-1", "a.json")] == ["duplicate_request_id"]
    assert reasons[("R-3", "a.json")] == ["duplicate_sample_id_in_request"]
    assert reasons[("R-4", "a.json")] == ["sample_ids_count_out_of_range"]
    assert reasons[("R-5", "a.json")] == ["reason_missing_or_not_string"]
    assert reasons[(None, "broken.json")] == ["malformed_json"]
    assert (project.rejected_dir / counts["batch_id"] / "broken.json").exists()  # kept for a human
    assert list(project.incoming_dir.iterdir()) == []
    ledger = Ledger(project.ledger_path)
    assert ledger.pending() == [counts["batch_id"]]
    assert ledger.deleted_ids() == {"digits-0001", "digits-0002", "digits-0006", "digits-0007"}
    batch = json.loads((project.batches_dir / f"{counts['batch_id']}.json").read_text())
    stored = json.dumps(batch) + project.ledger_path.read_text()
    assert "alice@example.com" not in stored and "bob" not in stored  # only salted hashes


def test_repeated_request_and_already_deleted_ids_are_rejected(make_project):
    project = load_project(make_project())
    _drop(project, "a.json", _request("R-1", ["digits-0001"]))
    assert run_ingest(project)["accepted"] == 1
    _drop(project, "b.json", [_request("R-1", ["digits-0002"]), _request("R-2", ["digits-0001"])])
    counts = run_ingest(project)
    assert counts["accepted"] == 0 and counts["batch_id"] is None
    codes = sorted(r["reasons"][0] for r in _rejected(project))
    assert codes == ["duplicate_request_id", "sample_already_deleted"]


def test_empty_inbox_is_a_no_op(make_project):
    project = load_project(make_project())
    assert run_ingest(project)["rows"] == 0
    assert project.ledger_path.exists()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"not,a\nrequest,file\n"])
def test_files_that_are_not_requests_are_rejected_whole(make_project, content):
    project = load_project(make_project())
    _drop(project, "weird.csv", content)
    counts = run_ingest(project)
    assert counts["accepted"] == 0 and counts["rejected_files"] == 1


def test_class_wise_request_deletes_every_training_sample_of_the_class(make_project):
    from unlearn.config import DataConfig
    from unlearn.data import load_source

    project = load_project(make_project())
    _drop(project, "a.json", [
        {k: v for k, v in _request("C-1", []).items() if k != "sample_ids"} | {"forget_class": "3"},
        {k: v for k, v in _request("C-2", []).items() if k != "sample_ids"} | {"forget_class": "ten"},
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
