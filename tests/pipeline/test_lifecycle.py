"""The deletion lifecycle end to end: escalation, retirement, purge, certificates, audit, faults,
concurrency. Real Prefect (test harness), MLflow (SQLite), DVC (repo + local remote) and GX."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_stages

pytestmark = pytest.mark.e2e

# 12 forget samples are fewer than min_samples: the evidence is inconclusive up front whatever the model,
# and on_inconclusive: retrain escalates at once to the exact retrain (the ladder's later rungs are skipped).
ESCALATE = {"min_samples": 20, "on_inconclusive": "retrain"}


def _submit(root, request_id, ids, subject="alice@example.com"):
    from flows.cli import submit_request

    submit_request(root, {"request_id": request_id, "sample_ids": ids, "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": subject})


def _client(project):
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri)
    return mlflow.MlflowClient()


def _files_containing(root, needles):
    """Relative paths of files under root whose bytes contain any of the needles."""
    hits = set()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.add(str(path.relative_to(root)))
    return hits


def test_escalation_retirement_purge_and_certificate(prefect_server, champion_project, tmp_path, capsys):
    from flows.cli import main
    from flows.pipeline import pipeline_flow
    from tasks.project import load_project
    from unlearn.data import SampleStore, load_source

    root, first = champion_project({**FAST, "gate": ESCALATE,
                         "unlearn": {**FAST["unlearn"], "escalation": ["salun", "retrain"],
                                     "methods": {**FAST["unlearn"]["methods"], "salun": {"epochs": 2}}}})
    project = load_project(root)
    store = SampleStore(project.store_dir)
    forget = sorted(store.split_ids("train")[:12].tolist())
    test_only = sorted(store.split_ids("test")[:3].tolist())
    _submit(root, "R-1", forget)
    _submit(root, "R-T", test_only, subject="bob@example.com")
    pool_only = sorted(store.split_ids("pool")[:2].tolist())  # the reference pool: no production model saw it
    _submit(root, "R-P", pool_only, subject="dan@example.com")
    second = pipeline_flow(root=str(root))

    # escalation: amun's evidence is inconclusive, the policy escalates to the exact retrain; each attempt is a run
    assert second["promote"]["status"] == "promoted" and second["promote"]["evidence"] == "exact"
    assert second["promote"]["attempts"] == [["amun", "inconclusive"], ["retrain", "pass"]]
    client = _client(project)
    name = project.params.registry.model_name
    runs = client.search_runs([client.get_experiment_by_name("unlearn").experiment_id],
                              "tags.stage = 'unlearn'")
    assert sorted((r.data.tags["method"], r.data.tags["verdict"]) for r in runs) == [
        ("amun", "inconclusive"), ("retrain", "pass")]
    versions = {str(v.version): v.tags for v in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == {"1", "2"}  # attempts that did not pass are runs, not model versions
    assert versions["2"]["method"] == "retrain" and client.get_registered_model(name).aliases == {"champion": 2}

    # retirement: the baseline saw the samples; its artifacts are gone, its entry is a tombstone
    assert versions["1"]["retired"] == "true" and versions["1"]["artifacts_deleted"] == "true"
    model_dir = project.artifact_root.rglob(versions["1"]["model_id"])
    assert not any(p.is_file() for d in model_dir for p in d.rglob("*"))

    # purge: the deleted samples' bytes are nowhere in the project (data, DVC cache and remote, MLflow)
    source = load_source(project.params.data)
    deleted = np.isin(source.ids, forget + test_only + pool_only)
    live = {img.tobytes() for img in SampleStore(project.store_dir).load().images}
    needles = [img.tobytes() for img in source.images[deleted] if img.tobytes() not in live]
    assert len(needles) >= 10
    assert _files_containing(root, needles) == set()
    assert first["prepare"]["data_version"] in second["purge"]["versions_redacted"]
    assert second["purge"]["scan"]["matches"] == 0 and second["purge"]["scan"]["files"] > 10
    # every deleted sample was searched for (the quarantined training bytes, the source for the rest)
    assert second["purge"]["scan"]["samples_not_searched"] == 0
    assert second["purge"]["scan"]["samples"] == len(set(forget + test_only + pool_only))

    # certificates and status
    assert main(["--root", str(root), "request", "status", "R-1", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "completed" and status["step"] == "certified"
    assert main(["--root", str(root), "request", "certificate", "R-1", "--out", str(tmp_path / "cert")]) == 0
    certificate = json.loads(next((tmp_path / "cert").glob("*.json")).read_text())
    # a page that is not its JSON's (a write cut off between the two, or an edit) is never handed out, and is named
    from tasks.certificate import html_matches as html_matches_page
    from tasks.certify import certificate_paths
    from tasks.doctor import diagnose
    from tasks.project import load_project

    json_path, html_path = certificate_paths(load_project(root), "R-1")
    page = html_path.read_text()
    assert not [f for f in diagnose(load_project(root)) if f.subject == html_path.name]
    html_path.write_text(page.replace(certificate["digest"], "0" * 64))
    (finding,) = [f for f in diagnose(load_project(root)) if f.subject == html_path.name]
    assert "not the page of" in finding.problem
    capsys.readouterr()
    assert main(["--root", str(root), "request", "certificate", "R-1"]) == 0  # rendered again from the JSON
    assert f"{html_path.name} did not show {json_path.name}'s digest" in capsys.readouterr().err
    assert html_path.read_text() == page and not [f for f in diagnose(load_project(root)) if f.subject ==
                                                    html_path.name]
    document = json_path.read_text()
    json_path.write_text(document.replace('"complete"', '"in_progress"', 1))  # the JSON itself edited: refused
    html_path.write_text("")
    assert main(["--root", str(root), "request", "certificate", "R-1"]) == 2
    assert "does not match its own digest" in capsys.readouterr().err and html_path.read_text() == ""
    json_path.write_text(document)
    html_path.write_text(page)
    # a JSON edited with its digest field left as it was, beside its untouched page: refused, not handed out
    json_path.write_text(document.replace('"complete"', '"in_progress"', 1))
    assert html_matches_page(json_path)
    assert main(["--root", str(root), "request", "certificate", "R-1"]) == 2
    assert "does not match its own digest" in capsys.readouterr().err
    json_path.write_text(document)
    # a planted copy with a valid digest of its own (sorting first) is neither handed out nor rendered
    from tasks.certificate import certificate_digest

    forged = json.loads(document)
    forged["retirement"]["statement"] = "forged"
    forged["digest"] = certificate_digest({k: v for k, v in forged.items() if k != "digest"})
    planted = json_path.with_name("A-planted.json")
    planted.write_text(json.dumps(forged))
    capsys.readouterr()
    assert main(["--root", str(root), "request", "certificate", "R-1"]) == 0
    assert json_path.name in capsys.readouterr().out and not planted.with_suffix(".html").exists()
    from tasks.certify import render_page_again

    assert render_page_again(load_project(root), planted) is False and not planted.with_suffix(".html").exists()
    real = json_path.read_text()
    json_path.unlink()  # the planted one alone, with a page of its own: still refused (not the recorded document)
    from tasks.certificate_html import render_html

    planted.with_suffix(".html").write_text(render_html(forged, {}, planted.name))
    assert main(["--root", str(root), "request", "certificate", "R-1"]) == 2
    assert "not the document the audit log recorded issuing" in capsys.readouterr().err
    json_path.write_text(real)
    planted.unlink()
    planted.with_suffix(".html").unlink()
    assert certificate["status"] == "complete" and certificate["model"]["version"] == "2"
    assert [a["method"] for a in certificate["model"]["attempts"]] == ["amun", "retrain"]
    assert certificate["purge"]["scan"]["matches"] == 0 and certificate["verification"]["verdict"] == "pass"
    assert certificate["verification"]["evidence"] == "exact"
    # the retired baseline's weights were searched for across the project, not only listed gone from the store
    assert [(v["version"], v["weights_searched"]) for v in certificate["retirement"]["versions"]] == [("1", True)]
    assert "escalated to the exact retrain" in certificate["verification"]["escalation_reason"]
    steps = {s["step"]: s["at"] for s in certificate["timeline"]}
    assert all(steps[s] for s in ("received", "validated", "data_version", "unlearned", "verified", "promoted",
                                  "retired", "purged", "certified"))
    # "unlearned" is when the promoted rung's model (the exact retrain) was made, after the first rung's verdict
    from tasks import audit

    first_verdict = audit.records(project, "attempt.verified")[0]
    assert first_verdict["verdict"] != "pass" and steps["unlearned"] > first_verdict["at"]
    assert steps["unlearned"] < steps["verified"]
    html = next((tmp_path / "cert").glob("*.html")).read_text()
    assert "data:image/png;base64" in html and "retrain" in html
    capsys.readouterr()
    assert main(["--root", str(root), "request", "certificate", "R-T"]) == 0  # test-split only: data only
    test_cert = json.loads(next(p for p in project.certificates_dir.glob("*.json")
                                if json.loads(p.read_text())["request_id"] == "R-T").read_text())
    assert test_cert["status"] == "data_only"
    # no model was tested on its samples: the batch model's verdict is not quoted as this request's proof
    assert test_cert["verification"]["evidence"] == "not_applicable" and test_cert["verification"]["verdict"] is None
    assert test_cert["verification"]["statement"].startswith("not applicable: no production model trained on")
    assert main(["--root", str(root), "request", "certificate", "R-P"]) == 0  # pool only: data only (was "complete")
    pool_cert = json.loads(next(p for p in project.certificates_dir.glob("*.json")
                                if json.loads(p.read_text())["request_id"] == "R-P").read_text())
    assert pool_cert["status"] == "data_only"
    capsys.readouterr()
    assert main(["--root", str(root), "request", "status", "R-T", "--json"]) == 0  # says what its certificate says
    t_status = json.loads(capsys.readouterr().out)
    assert t_status["evidence"].startswith("not applicable") and t_status["verification"]["evidence"] == \
        "not_applicable"
    assert main(["--root", str(root), "request", "status", "R-1", "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["evidence"].startswith("not applicable")
    assert main(["--root", str(root), "request", "status", "NO-SUCH-REQUEST"]) == 2

    # no personal data in the trail: subjects only as salted hashes, no raw sample ids
    trail = [project.audit_path, root / "mlflow.db", *project.certificates_dir.glob("*")]
    blob = b"".join(p.read_bytes() for p in trail)
    assert not any(s in blob for s in (b"alice@example.com", b"bob@example.com", b"dan@example.com"))
    assert not any(i.encode() in blob for i in forget + test_only + pool_only)

    # every claim agrees with the disk; then the doctor names each planted disagreement
    from tasks.doctor import diagnose

    assert diagnose(project, deep=True) == []
    capsys.readouterr()
    assert main(["--root", str(root), "doctor"]) == 0
    from urllib.parse import urlparse

    from tasks import model_files

    (location,) = model_files.model_artifact_locations(client, client.get_model_version(name, "1"))
    retired_dir = Path(urlparse(location).path) if location.startswith("file:") else Path(location)
    retired_dir.mkdir(parents=True, exist_ok=True)
    (retired_dir / "resurrected.bin").write_bytes(b"weights came back")  # the store lists a file again
    fingerprints = json.loads((project.state_dir / "retired-weights.json").read_text())["1"]
    assert fingerprints  # taken before the weights were deleted
    stray = root / "backup-of-v1.bin"  # a copy of the retired weights somewhere in the project
    stray.write_bytes(b"header" + bytes.fromhex(next(iter(fingerprints.values()))) + b"trailer")
    found = {(f.check, f.subject) for f in diagnose(project)}
    assert ("registry", "version 1") in found and ("weights", f"{root.name}/backup-of-v1.bin") in found
    capsys.readouterr()
    assert main(["--root", str(root), "doctor"]) == 2
    assert "backup-of-v1.bin" in capsys.readouterr().err
    (retired_dir / "resurrected.bin").unlink()
    stray.unlink()
    assert diagnose(project) == []

    # the audit log verifies, and any edit is detected
    capsys.readouterr()
    assert main(["--root", str(root), "audit", "verify"]) == 0
    lines = project.audit_path.read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert {"model.verified", "model.promoted", "model.retired", "purge.completed", "certificate.issued"} <= set(events)
    edited = json.loads(lines[1])
    edited["event"] = "tampered"
    project.audit_path.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    assert main(["--root", str(root), "audit", "verify"]) == 2
    assert "line 2" in capsys.readouterr().err
    # a deleted log is not an intact one while the ledger holds work, and certificates quote its anchors
    project.audit_path.unlink()
    project.audit_path.with_suffix(".head").unlink()
    assert main(["--root", str(root), "audit", "verify"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "not in the log" in err


FAULT_POINTS = ["ingest", "prepare", "train", "references", "attempt", "verify", "promote", "move_champion",
                "purge", "certify"]
# Where the flow composes a stage from tasks of its own (the reference fan-out, a task per rung and per
# verification), the fault and the re-run go through the Prefect flow; elsewhere the flow only calls the
# stage function, so the round runs the stages in-process (no Prefect run per point, same functions).
FLOW_POINTS = {"references", "attempt", "verify"}


def _run_stages_like_the_flow(root):
    """The flow's stages in its order, in this process and without a Prefect run (what ``dvc repro`` runs),
    under the project lock, with the flow's DVC commits: ingest+prepare after prepare, all at the end."""
    from tasks import dvc_ops
    from tasks.locking import pipeline_lock
    from tasks.project import load_project

    project = load_project(root)
    with pipeline_lock(project):
        run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")
        dvc_ops.commit(project)


def test_a_crash_after_any_stage_loses_nothing_and_duplicates_nothing(prefect_server, champion_project, monkeypatch):
    """Inject a failure after each stage in turn (and between registering and moving the alias), then re-run."""
    from flows.pipeline import pipeline_flow
    from tasks import tracking
    from tasks.project import load_project
    from tasks.stage import catalog, references
    from tasks.stage import unlearn as unlearn_stage
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    client = _client(project)
    name = project.params.registry.model_name
    train_ids = SampleStore(project.store_dir).split_ids("train").tolist()
    expected_versions = 1
    for round_number, point in enumerate(FAULT_POINTS):
        request_id = f"R-{round_number}"
        _submit(root, request_id, train_ids[round_number * 5:(round_number + 1) * 5])
        champion_before = str(tracking.champion_version(project, client).version)
        run = (lambda: pipeline_flow(root=str(root))) if point in FLOW_POINTS else (
            lambda: _run_stages_like_the_flow(root))

        class InjectedFault(RuntimeError):
            pass

        with monkeypatch.context() as patch:
            if point == "move_champion":  # between registering the version and moving the alias
                def crash(*args, point=point, **kwargs):
                    raise InjectedFault(point)

                patch.setattr(tracking, "move_champion", crash)
            elif point == "references":  # the flow fans reference training out: fail after registering
                def crash_refs(*args, original=references.register_references, point=point):
                    original(*args)
                    raise InjectedFault(point)

                patch.setattr(references, "register_references", crash_refs)
            elif point == "attempt":  # after unlearning, before verification
                def crash_attempt(project, method, original=unlearn_stage.run_attempt, point=point):
                    original(project, method)
                    raise InjectedFault(point)

                patch.setattr(unlearn_stage, "run_attempt", crash_attempt)
            else:
                original = catalog.STAGE_FUNCTIONS[point]

                def crash_after(project, original=original, point=point):
                    original(project)
                    raise InjectedFault(point)

                patch.setitem(catalog.STAGE_FUNCTIONS, point, crash_after)
            with pytest.raises(InjectedFault):
                run()
        champion = tracking.champion_version(project, client)
        if str(champion.version) != champion_before:  # only a verified successor may have taken over
            assert champion.tags["verdict"] == "pass" and point in ("promote", "purge", "certify")
        run()  # the re-run completes the round

        ledger = Ledger(project.ledger_path)
        owners = [b for b, v in ledger.batches.items() if request_id in v["request_ids"]]
        assert len(owners) == 1, (point, owners)  # not lost, not applied twice
        batch = ledger.batches[owners[0]]
        assert batch["status"] == "completed" and {"promoted", "purged", "certified"} <= set(batch["steps"])
        expected_versions += 1
        versions = client.search_model_versions(f"name='{name}'")
        assert len(versions) == expected_versions, (point, [(v.version, v.tags.get("request_batches"))
                                                             for v in versions])  # no duplicate model version
        champion = tracking.champion_version(project, client)
        assert champion.tags["request_batches"] == owners[0] and champion.tags["verdict"] == "pass"
        assert not list(project.incoming_dir.iterdir())
        assert not list(project.quarantine_dir.glob("*.npz"))
    from unlearn.audit import AuditLog

    assert AuditLog(project.audit_path).verify().ok


def test_two_pipeline_runs_started_together_serialise(prefect_server, champion_project, monkeypatch):
    from flows.cli import main
    from flows.pipeline import pipeline_flow
    from tasks import tracking
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []},
                                "lifecycle": {"retirement_grace_hours": 1.0}})
    project = load_project(root)
    _submit(root, "R-A", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    results, errors = [], []

    def run():
        try:
            results.append(pipeline_flow(root=str(root)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Both runs must meet at the lock: the test holds it until each has announced that it waits (else one run could
    # finish before the other even reached the lock, both would have waited 0 s, and which waited is a coin toss).
    import logging

    from tasks.locking import pipeline_lock

    waiting = threading.Semaphore(0)

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for another pipeline run" in record.getMessage():
                waiting.release()

    handler, logger = Waiting(), logging.getLogger("unlearn.pipeline")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    threads = [threading.Thread(target=run) for _ in range(2)]
    try:
        with pipeline_lock(project):
            for thread in threads:
                thread.start()
            assert all(waiting.acquire(timeout=120) for _ in threads), "a run never reached the lock"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    for thread in threads:
        thread.join()
    assert not errors, errors
    outcomes = sorted(r["promote"]["status"] for r in results)
    assert outcomes == ["nothing_to_promote", "promoted"]  # the second saw the first's result
    waited = max(results, key=lambda r: r["lock_wait_seconds"])
    assert waited["promote"]["status"] == "nothing_to_promote" and waited["lock_wait_seconds"] > 0
    client = _client(project)
    assert len(client.search_model_versions(f"name='{project.params.registry.model_name}'")) == 2
    assert str(tracking.champion_version(project, client).version) == "2"

    # a grace period keeps the old champion loadable (rollback) until it is due; then it retires
    name = project.params.registry.model_name
    old = client.get_model_version(name, "1")
    assert "retired" not in old.tags and old.tags["retire_due_at"] > "2026"
    assert client.get_registered_model(name).aliases == {"champion": 2, "previous": 1}
    tracking.load_model(project, client, "1")
    first_certificate = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert first_certificate["retirement"]["versions"][0]["artifacts_deleted"] is False
    # interim: version 1 trained on the samples and is still loadable, so the certificate does not say "complete"
    assert first_certificate["status"] == "awaiting_retirement"
    assert first_certificate["retirement"]["statement"].startswith("interim certificate: model version(s) 1 trained")
    assert "interim certificate" in next(project.certificates_dir.glob("*.html")).read_text()
    client.set_model_version_tag(name, "1", "retire_due_at", "2000-01-01T00:00:00Z")
    # A stray copy of version 1's weights under the project: a retirement after its batch's purge searched only
    # the artifact store's listing (review of 2026-12-06); now the project is scanned as a purge's is.
    import torch

    stray = root / "backup-of-v1.pt"
    torch.save(tracking.load_model(project, client, "1").state_dict(), stray)
    assert main(["--root", str(root), "stage", "purge"]) == 2
    assert client.get_model_version(name, "1").tags["retired"] == "true"
    # retired, but a copy of its weights is known to exist: no final "complete" certificate is issued yet
    assert main(["--root", str(root), "stage", "certify"]) == 0
    assert json.loads(next(project.certificates_dir.glob("*.json")).read_text())["status"] == "awaiting_retirement"
    # one an earlier release marked final in this state (it issued "complete") is issued again, interim
    from tasks import audit
    from unlearn.requests import Ledger

    ledger = Ledger(project.ledger_path)
    (batch_id,) = ledger.batches
    ledger.set_certificate_final(batch_id, True)
    ledger.save()
    issued = len(audit.records(project, "certificate.issued"))
    assert main(["--root", str(root), "stage", "certify"]) == 0
    reissued = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert reissued["status"] == "awaiting_retirement"
    assert "not yet been searched" in reissued["retirement"]["statement"]
    assert len(audit.records(project, "certificate.issued")) == issued + 1
    assert Ledger(project.ledger_path).batch(batch_id)["certificate_final"] is False
    stray.unlink()
    assert main(["--root", str(root), "stage", "purge"]) == 0  # the version is still unscanned: scanned now
    (scanned,) = audit.records(project, "retirement.scanned")
    assert scanned["model_versions"] == ["1"] and scanned["matches"] == 0
    assert main(["--root", str(root), "stage", "purge"]) == 0 and len(audit.records(project, "retirement.scanned")) == 1
    assert client.get_registered_model(name).aliases == {"champion": 2}
    assert main(["--root", str(root), "stage", "certify"]) == 0  # the certificate is re-issued, final
    final = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert final["retirement"]["versions"][0]["artifacts_deleted"] is True
    assert final["status"] == "complete" and "statement" not in final["retirement"]
    assert any(step["step"] == "retired" and step["at"] for step in final["timeline"])
    _no_retirement_is_never_read_as_nothing_to_retire(project, root, batch_id, monkeypatch)
    # a scheduled version deleted from the registry outside the pipeline is named, not left interim in silence
    from tasks.doctor import diagnose

    assert not [f for f in diagnose(project) if "scheduled for retirement" in f.problem]
    ledger = Ledger(project.ledger_path)
    ledger.record_retirement(batch_id, "99", {"version": "99", "action": "scheduled", "due_at": "2099-01-01T00:00:00Z"})
    ledger.save()
    assert [f.subject for f in diagnose(project) if "scheduled for retirement" in f.problem] == ["version 99"]
    ledger.record_retirement(batch_id, "1", {**ledger.batch(batch_id)["retirement"]["1"], "action": "scheduled"})
    ledger.save()  # a tombstone whose batch's entry still says scheduled (its retired_batches tag left it out)
    assert [f.subject for f in diagnose(project) if "still says scheduled" in f.problem] == ["version 1"]
    _moved_registry_is_not_taken_for_this_one(project, client, batch_id, monkeypatch)


def _no_retirement_is_never_read_as_nothing_to_retire(project, root, batch_id, monkeypatch):
    """Review of 2026-12-07: a registry error read as "no champion" made the purge retire nothing and mark the batch
    retired (all of no entries done), and certify issued a final "complete" certificate while the version that
    trained on the deleted samples stayed loadable; a version scheduled after that never made it interim again."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from flows.cli import main
    from tasks import audit, tracking
    from tasks.lifecycle import run_purge
    from unlearn.requests import Ledger

    def locked(*args, **kwargs):
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    before = project.ledger_path.read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(mlflow.MlflowClient, "get_model_version_by_alias", locked)
        with pytest.raises(MlflowException, match="database is locked"):
            run_purge(project)
    assert project.ledger_path.read_bytes() == before
    # no champion (its alias removed by hand) and no withdrawal: which versions trained on the samples cannot be
    # told, so the batch is not marked retired
    ledger = Ledger(project.ledger_path)
    retired_at = ledger.steps(batch_id).pop("retired")
    recorded = ledger.batch(batch_id).pop("retirement")  # as if the alias went before this batch's first purge
    ledger.save()
    client = tracking.setup(project)
    name = tracking.model_name(project)
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION).version
    client.delete_registered_model_alias(name, tracking.CHAMPION)
    try:
        assert run_purge(project)["retired"] == []
        assert "retired" not in Ledger(project.ledger_path).steps(batch_id)
        assert main(["--root", str(root), "stage", "certify"]) == 0  # re-issued: no longer final
        undetermined = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
        assert undetermined["status"] == "awaiting_retirement" and undetermined["retirement"]["versions"] == []
        assert "has not been determined yet" in undetermined["retirement"]["statement"]
        assert main(["--root", str(root), "stage", "certify"]) == 0  # nothing changed: not issued again
        issued = len(audit.records(project, "certificate.issued"))
        assert main(["--root", str(root), "stage", "certify"]) == 0 and len(
            audit.records(project, "certificate.issued")) == issued
        # still interim, but what it says of the retirement changed (a version scheduled): issued again, naming it
        ledger = Ledger(project.ledger_path)
        ledger.record_retirement(batch_id, "1", {**recorded["1"], "action": "scheduled"})
        ledger.save()
        assert main(["--root", str(root), "stage", "certify"]) == 0
        assert len(audit.records(project, "certificate.issued")) == issued + 1
        scheduled = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
        assert scheduled["status"] == "awaiting_retirement" and "model version(s) 1 trained" in scheduled[
            "retirement"]["statement"]
        assert next(e for e in scheduled["timeline"] if e["step"] == "retired")["at"] is None
        ledger = Ledger(project.ledger_path)
        ledger.batch(batch_id).pop("retirement")
        ledger.save()
    finally:
        client.set_registered_model_alias(name, tracking.CHAMPION, champion)
    run_purge(project)  # with the champion back: version 1's tombstone names the batch, recorded and retired again
    ledger = Ledger(project.ledger_path)
    assert "retired" in ledger.steps(batch_id) and ledger.batch(batch_id)["retirement"]["1"]["action"] == "retired"
    assert main(["--root", str(root), "stage", "certify"]) == 0  # final again, naming it
    again = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert again["status"] == "complete" and [v["version"] for v in again["retirement"]["versions"]] == ["1"]
    ledger = Ledger(project.ledger_path)
    ledger.steps(batch_id)["retired"] = retired_at
    ledger.batch(batch_id)["retirement"] = recorded
    ledger.save()
    # a version scheduled after the batch was marked retired and certified final: issued again, interim, naming it
    entries = dict(ledger.batch(batch_id)["retirement"])
    ledger.record_retirement(batch_id, "1", {**entries["1"], "action": "scheduled", "due_at": "2099-01-01T00:00:00Z"})
    ledger.save()
    assert ledger.batch(batch_id)["certificate_final"] is True
    assert main(["--root", str(root), "stage", "certify"]) == 0
    interim = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert interim["status"] == "awaiting_retirement" and "model version(s) 1 trained on these samples" in interim[
        "retirement"]["statement"]
    assert next(e for e in interim["timeline"] if e["step"] == "retired")["at"] is None  # (the step is in the ledger)
    assert Ledger(project.ledger_path).batch(batch_id)["certificate_final"] is False
    ledger = Ledger(project.ledger_path)
    ledger.batch(batch_id)["retirement"] = entries
    ledger.save()
    assert main(["--root", str(root), "stage", "certify"]) == 0  # retired again: final again
    assert json.loads(next(project.certificates_dir.glob("*.json")).read_text())["status"] == "complete"
    assert Ledger(project.ledger_path).batch(batch_id)["certificate_final"] is True
    # a batch no version trained on (samples deleted before the first baseline, which then covered them): nothing to
    # retire, so retired and final at once; requiring an entry left such certificates interim for good (a review's
    # catch of this fix's first form)
    ledger = Ledger(project.ledger_path)
    ledger.batch(batch_id).pop("retirement")
    ledger.steps(batch_id).pop("retired")
    ledger.save()
    run_purge(project)  # (here the tombstone of version 1 names the batch: its entry is recorded again)
    assert "retired" in Ledger(project.ledger_path).steps(batch_id)
    ledger = Ledger(project.ledger_path)
    assert ledger.batch(batch_id)["retirement"]["1"]["action"] == "retired"
    ledger.batch(batch_id).pop("retirement")
    ledger.set_certificate_final(batch_id, False)
    ledger.save()
    assert main(["--root", str(root), "stage", "certify"]) == 0
    bare = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert bare["status"] == "complete" and bare["retirement"]["versions"] == []
    assert Ledger(project.ledger_path).batch(batch_id)["certificate_final"] is True
    ledger = Ledger(project.ledger_path)
    ledger.batch(batch_id)["retirement"] = entries
    ledger.set_certificate_final(batch_id, False)
    ledger.save()
    assert main(["--root", str(root), "stage", "certify"]) == 0
    assert json.loads(next(project.certificates_dir.glob("*.json")).read_text())["retirement"]["versions"]
    # an interim certificate from before the retirement basis was recorded is issued again once, then not again
    ledger = Ledger(project.ledger_path)
    ledger.record_retirement(batch_id, "1", {**entries["1"], "action": "scheduled"})
    ledger.set_certificate_final(batch_id, False)
    ledger.batch(batch_id).pop("certificate_retirement")
    ledger.save()
    issued = len(audit.records(project, "certificate.issued"))
    for _ in range(2):
        assert main(["--root", str(root), "stage", "certify"]) == 0
    assert len(audit.records(project, "certificate.issued")) == issued + 1
    ledger = Ledger(project.ledger_path)
    assert ledger.batch(batch_id)["certificate_final"] is False and "certificate_retirement" in ledger.batch(batch_id)
    # what it shows of a version changed (its reason): issued again, so the certificate says what the ledger says
    ledger.record_retirement(batch_id, "1", {**ledger.batch(batch_id)["retirement"]["1"], "reason": "another"})
    ledger.save()
    assert main(["--root", str(root), "stage", "certify"]) == 0
    assert len(audit.records(project, "certificate.issued")) == issued + 2
    ledger = Ledger(project.ledger_path)
    ledger.batch(batch_id)["retirement"] = entries
    ledger.save()
    assert main(["--root", str(root), "stage", "certify"]) == 0  # retired: final
    assert Ledger(project.ledger_path).batch(batch_id)["certificate_final"] is True


def _moved_registry_is_not_taken_for_this_one(project, client, batch_id, monkeypatch):
    """A project moved to another registry on purpose keeps its ledger, audit log and reports while its versions are
    numbered from 1 again: nothing recorded of the old registry's version N is taken for this registry's version N
    (the certificate's model, the doctor's checks, the recovered retirement record), and the reverse."""
    from types import SimpleNamespace

    from tasks import audit, tracking
    from tasks.certify import batch_file, build_certificate, trained_ids
    from tasks.doctor import diagnose
    from tasks.lifecycle import _retirement_recorded
    from unlearn.requests import Ledger

    name = project.params.registry.model_name
    v1 = client.get_model_version(name, "1")
    ledger = Ledger(project.ledger_path)
    own = tracking.version_model_id(v1)
    assert own and ledger.batch(batch_id)["retirement"]["1"]["model_id"] == own
    # the doctor: a scheduled entry of another model under this number is not this version's
    ledger.record_retirement(batch_id, "1", {**ledger.batch(batch_id)["retirement"]["1"], "model_id": "m-0ld"})
    ledger.save()
    problems = [f.problem for f in diagnose(project) if f.subject == "version 1"]
    assert len(problems) == 1 and "as logged model m-0ld" in problems[0] and "is another model" in problems[0]
    # one written before entries named their model: told by its due time, which the version carries as a tag
    entry = {k: v for k, v in ledger.batch(batch_id)["retirement"]["1"].items() if k != "model_id"}
    assert entry["due_at"] == v1.tags["retire_due_at"]
    ledger.record_retirement(batch_id, "1", entry)
    ledger.save()
    (problem,) = [f.problem for f in diagnose(project) if f.subject == "version 1"]
    assert problem.startswith("retired, but the ledger entry of")  # this version's own: still says scheduled
    ledger.record_retirement(batch_id, "1", {**entry, "due_at": "2001-01-01T00:00:00Z"})
    ledger.save()
    (problem,) = [f.problem for f in diagnose(project) if f.subject == "version 1"]
    assert "is another model" in problem and "as logged model" not in problem
    # a held entry of another model's version 2 is not said of this registry's live version 2 (review of 2026-12-07)
    assert client.get_model_version(name, "2").tags.get("retired") != "true"
    ledger.record_retirement(batch_id, "2", {"version": "2", "action": "scheduled", "reason": "r", "model_id": "m-0ld",
                                             "due_at": "2001-01-01T00:00:00Z", "held": "registered by hand"})
    ledger.save()
    problems = [f.problem for f in diagnose(project) if f.subject == "version 2"]
    assert any("is another model" in p for p in problems) and not any("due for retirement" in p for p in problems)
    ledger.batch(batch_id)["retirement"].pop("2")
    ledger.save()
    # the doctor: a certificate's "artifacts deleted" of another model's version 1 cannot be checked here
    certificate = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert certificate["retirement"]["versions"][0]["model_id"] == own
    (project.certificates_dir / "moved.json").write_text(json.dumps({"retirement": {"versions": [
        {"version": "1", "artifacts_deleted": True, "model_id": "m-0ld"}]}}))
    problems = [f.problem for f in diagnose(project) if f.subject == "moved.json" and "artifacts" in f.problem]
    assert len(problems) == 1 and "(logged model m-0ld) were deleted" in problems[0]  # (and its digest: planted)
    (project.certificates_dir / "moved.json").unlink()
    # the audit log: the old registry's "version 1 retired" is not the new version 1's, and the reverse
    assert _retirement_recorded(project, v1)
    other = SimpleNamespace(version="1", model_id="m-new", tags={"retired": "true", "retired_batches": "b-new"})
    assert not _retirement_recorded(project, other)
    audit.record(project, "model.retired", model_version="7", batch_ids=["b-x", "b-y"])  # before model ids
    assert _retirement_recorded(project, SimpleNamespace(version="7", model_id="m-7", tags={"retired_batches": "b-x"}))
    assert not _retirement_recorded(project, SimpleNamespace(version="7", model_id="m-7",
                                                             tags={"retired_batches": "b-z"}))
    # the certificate: the promoted version is found by its attempt's run, not by its number; this registry has no
    # such run, so the model is said to be missing and no other model's lineage is quoted
    request = batch_file(project, batch_id)["requests"][0]
    trained = trained_ids(project, ledger, batch_id)
    found = build_certificate(project, client, ledger, request, batch_id, trained)
    assert found["model"]["version"] == "2" and "registry_record" not in found["model"]
    monkeypatch.setattr(tracking, "find_version_by_run", lambda *args: None)
    moved = build_certificate(project, client, ledger, request, batch_id, trained)
    assert moved["model"]["registry_record"] == "missing" and moved["model"]["parent_version"] is None
    assert moved["model"]["run_id"] == found["model"]["run_id"] and "does not hold as version 2" in moved[
        "model"]["statement"]
    assert moved["model"]["method"] == found["model"]["method"]  # from the local report, keyed by the run
    assert moved["verification"]["verdict"] == found["verification"]["verdict"] == "pass"
    assert "evidence_unavailable" not in moved["verification"]  # read from the report, not the ledger's note
    from tasks.certificate_html import render_html

    html = render_html(moved, {}, "moved.json")
    assert "does not hold as version 2" in html and "the ladder is kept with the version" in html
    # the report gone too: the ledger's note still says which verdict, and that its evidence is not shown
    report = project.reports_dir / "attempts" / f"{found['model']['run_id']}.json"
    report.rename(report.with_suffix(".kept"))
    try:
        bare = build_certificate(project, client, ledger, request, batch_id, trained)
    finally:
        report.with_suffix(".kept").rename(report)
    assert bare["verification"]["verdict"] == "pass" and bare["verification"]["evidence_unavailable"] == "missing"


def test_a_truncated_champion_artifact_is_a_clear_error_and_disturbs_nothing(prefect_server, champion_project,
                                                                            capsys):
    from flows.cli import main
    from flows.pipeline import pipeline_flow
    from tasks import tracking
    from tasks.project import PipelineError, load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    client = _client(project)
    champion = tracking.champion_version(project, client)
    state_file = next(p for p in project.artifact_root.rglob("state_dict.pt")
                      if champion.tags["model_id"] in str(p))
    state_file.write_bytes(state_file.read_bytes()[:100])  # truncated mid-write, say
    _submit(root, "R-TRUNC", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    with pytest.raises(PipelineError, match="missing or corrupt artifact"):
        pipeline_flow(root=str(root))
    capsys.readouterr()
    assert main(["--root", str(root), "stage", "unlearn"]) == 2
    assert "corrupt artifact" in capsys.readouterr().err
    # nothing lost or half-done: the request waits in its batch, the champion is the same version
    ledger = Ledger(project.ledger_path)
    assert [ledger.batches[b]["request_ids"] for b in ledger.pending()] == [["R-TRUNC"]]
    assert str(tracking.champion_version(project, client).version) == str(champion.version)
    assert len(client.search_model_versions(f"name='{project.params.registry.model_name}'")) == 1


def test_a_champion_moved_back_past_a_deletion_is_replaced_by_an_exact_retrain(prefect_server, champion_project):
    """The grace window keeps the previous version loadable for a rollback. Moved back to v1, the champion holds
    batch 1's samples again; the next batch was unlearned from it alone and its model claimed to cover batch 1
    too, and purge then retired v2, the one model that had forgotten it (review of 2026-12-06). Now doctor says
    so, and the next batch goes straight to the exact retrain on the current data."""
    import yaml

    from tasks import tracking
    from tasks.doctor import diagnose
    from tasks.project import load_project
    from tasks.stage.state import read_escalation
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    retrain = {**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []},
               "lifecycle": {"retirement_grace_hours": 24}}
    root, _ = champion_project(retrain)
    project = load_project(root)
    client = _client(project)
    ids = SampleStore(project.store_dir).split_ids("train").tolist()
    _submit(root, "R-FIRST", ids[:6])
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")
    assert str(tracking.champion_version(project, client).version) == "2"
    assert not [f for f in diagnose(project) if f.check == "lineage"]
    client.set_registered_model_alias(tracking.model_name(project), "champion", "1")  # the operator's rollback
    (finding,) = [f for f in diagnose(project) if f.check == "lineage"]
    assert finding.subject == "version 1" and "does not cover" in finding.problem
    # the next batch, under a ladder that would otherwise try AMUN first
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unlearn"].update({"method": "amun", "escalation": []})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(root)
    _submit(root, "R-SECOND", ids[6:12])
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn")
    state = read_escalation(project)
    assert [a.method for a in state.attempts] == ["retrain"] and "moved back" in state.reason
    run_stages(project, "promote", "purge", "certify")
    champion = tracking.champion_version(project, client)
    assert str(champion.version) == "3" and champion.tags["method"] == "retrain"
    ledger = Ledger(project.ledger_path)
    assert champion.tags["covers_through"] == ledger.newest(ledger.batches)  # true of an exact retrain
    from flows.status import collect_status, format_status

    report = collect_status(root, runs=5)  # exact by construction, not a pass that could have failed: said so
    assert (report["champion"]["verdict"], report["champion"]["evidence"]) == ("pass", "exact")
    assert "verdict pass (exact)" in format_status(report)
    assert not [f for f in diagnose(project) if f.check == "lineage"]

    # Each certificate names the data versions whose index listed its batch's samples. The second purge found the
    # first batch's version already redacted, read before the second batch existed: listed apart, not claimed
    # (every version either purge saw had been listed as redacted on both; reviews of 2026-12-07).
    from tasks.certify import certificate_paths

    first, second = (json.loads(certificate_paths(project, r)[0].read_text())["data"] for r in ("R-FIRST", "R-SECOND"))
    assert second["version_before"] == first["version_after"] != first["version_before"]
    for request_id in ("R-FIRST", "R-SECOND"):  # each purge closed one batch: its counts are that batch's
        assert json.loads(certificate_paths(project, request_id)[0].read_text())["purge"]["closed_together"] == 1
    for data in (first, second):
        assert data["redacted_versions"] == [data["version_before"]] and data["redacted_earlier_versions"] == []
    assert first["found_redacted_versions"] == [] and second["found_redacted_versions"] == [first["version_before"]]
    page = certificate_paths(project, "R-SECOND")[1].read_text()
    section = page.split('<section id="data">')[1].split("</section>")[0]
    assert section.index("Redacted by this purge") < section.index("no record of") < section.index(
        first["version_before"])

    # The champion's model registered again by hand: the next purge took it for a contaminated version (no lineage
    # tags) and deleted the champion's own files (review of 2026-12-07). It is left alone now.
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri)
    copy = mlflow.register_model(f"models:/{tracking.version_model_id(champion)}", tracking.model_name(project))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lifecycle"]["retirement_grace_hours"] = 0  # a contaminated version would go at once
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(root)
    run_stages(project, "purge")
    tags = client.get_model_version(tracking.model_name(project), copy.version).tags
    assert "retired" not in tags and "retire_due_at" not in tags
    assert str(tracking.champion_version(project, client).version) == "3"
    assert not [f for f in diagnose(project) if f.check == "registry"]  # the champion's files are all there

