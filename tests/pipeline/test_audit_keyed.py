"""Keyed audit mode end to end: records carry MACs, verify checks them, and the key must live outside the project."""

import json


def _request(request_id):
    return {"request_id": request_id, "sample_ids": ["digits-0001"], "received_at": "2026-11-24T10:00:00Z",
            "reason": "gdpr_erasure", "subject_ref": "keyed-subject"}


def test_keyed_audit_log_detects_a_rehash_and_refuses_a_key_inside_the_project(make_project, tmp_path, monkeypatch,
                                                                                capsys):
    from flows.cli import main
    from tasks.project import load_project
    from tasks.stage.catalog import STAGE_FUNCTIONS
    from unlearn.audit import _canonical, _digest

    key = tmp_path / "outside" / "audit.key"
    key.parent.mkdir()
    key.write_text("ab" * 32)
    key.chmod(0o600)
    monkeypatch.setenv("UNLEARN_AUDIT_KEY_FILE", str(key))
    root = make_project()
    project = load_project(root)
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / "r.json").write_text(json.dumps([_request("K-1"), _request("K-2")]))
    STAGE_FUNCTIONS["ingest"](project)
    records = [json.loads(line) for line in project.audit_path.read_text().splitlines()]
    assert len(records) == 2 and all(len(r["mac"]) == 64 for r in records)
    assert main(["--root", str(root), "audit", "verify"]) == 0
    assert "keyed (HMAC)" in capsys.readouterr().out

    # a forger without the key drops a record and re-hashes the chain and the head anchor
    kept = records[1:]
    kept[0] = {k: v for k, v in kept[0].items() if k not in ("hash", "mac")} | {"seq": 0, "prev": "0" * 64}
    kept[0]["hash"] = _digest(kept[0])
    project.audit_path.write_text(_canonical(kept[0]) + "\n")
    project.audit_path.with_suffix(".head").write_text(json.dumps({"seq": 0, "hash": kept[0]["hash"]}))
    assert main(["--root", str(root), "audit", "verify"]) == 2
    assert "MAC missing or wrong" in capsys.readouterr().err
    monkeypatch.delenv("UNLEARN_AUDIT_KEY_FILE")
    assert main(["--root", str(root), "audit", "verify"]) == 0  # what keyed mode adds: unkeyed, this passes
    capsys.readouterr()

    inside = root / "audit.key"
    inside.write_text("cd" * 32)
    monkeypatch.setenv("UNLEARN_AUDIT_KEY_FILE", str(inside))
    assert main(["--root", str(root), "audit", "verify"]) == 2
    assert "inside the project" in capsys.readouterr().err
