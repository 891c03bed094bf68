"""`unlearn status` on a fresh project and after a baseline; progress bars on and off."""

import json
import threading
from pathlib import Path

import pytest
from conftest import FAST


def _status(capsys, root, *extra):
    from flows.cli import main

    code = main(["--root", str(root), "status", *extra])
    out = capsys.readouterr().out
    return code, out


def test_status_fresh_project(make_project, capsys):
    root = make_project(registry=False)
    code, out = _status(capsys, root)
    assert code == 0
    assert "nothing has run yet" in out and "champion:\n  none yet" in out
    assert "0 request(s) in 0 pending batch(es)" in out and "none issued yet" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{root.resolve()}/mlflow.db" in out
    # how to reach Prefect: start a server, or (when a test session's server is configured) its URL
    assert ("prefect server start" in out or "PREFECT_API_URL" in out) and "dvc metrics show" in out
    assert not (root / "mlflow.db").exists()  # status reads; it never creates the registry
    code, out = _status(capsys, root, "--json")
    report = json.loads(out)
    assert code == 0 and report["fresh"] is True and report["champion"] is None and report["problems"] == {}


def test_status_says_whether_the_last_certificate_is_complete_or_interim(make_project, capsys):
    """Review of 2026-12-07: status showed the last certificate's request, verdict and model, never its status, so an
    operator could not tell from it that a deletion was unfinished (a version that trained on the samples kept)."""
    from tasks.project import load_project

    root = make_project(registry=False)
    certificates = load_project(root, check_registries=False).certificates_dir
    certificates.mkdir(parents=True)
    (certificates / "R-1.json").write_text(json.dumps({"request_id": "R-1", "status": "awaiting_retirement",
                                                       "verification": {"verdict": "pass"}, "model": {"version": 2}}))
    code, out = _status(capsys, root)
    assert code == 0 and "request R-1  status awaiting_retirement  verdict pass" in out
    code, out = _status(capsys, root, "--json")
    assert json.loads(out)["certificate"]["status"] == "awaiting_retirement"
    state = load_project(root, check_registries=False).state_dir
    state.mkdir(parents=True)
    (state / "retired-weights-scanned.json").write_text("{}")  # a long stage name ran into its time
    code, out = _status(capsys, root)
    assert "  retired-weights-scanned  20" in out


def test_status_missing_and_broken_pieces(make_project, tmp_path, capsys, monkeypatch):
    from flows.cli import main

    code = main(["status", "--root", str(tmp_path / "nowhere")])  # the subcommand's own --root
    assert code == 2 and "not a project root" in capsys.readouterr().out  # a wrong --root (was exit 0: review)
    root = make_project(registry=False)
    (root / "data" / "requests").mkdir(parents=True)
    (root / "data" / "requests" / "ledger.json").write_text("{not json")
    (root / "data" / "state").mkdir(parents=True)
    (root / "data" / "state" / "train.json").write_text("[truncated")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4299/api")
    code, out = _status(capsys, root)
    # a train stage's state without a registry here: the pin's guard says where the models went (exit 2)
    assert code == 2 and "its registry is neither named" in out
    assert "could not read requests: LedgerError" in out and "problem JSONDecodeError" in out
    assert "http://127.0.0.1:4299  (PREFECT_API_URL server)" in out
    (root / "params.yaml").write_text("seed: [not an int\n")
    code, out = _status(capsys, root)
    assert code == 2 and "params" in out  # shown, and a nonzero exit: nothing else can be trusted


def test_certificate_out_must_be_a_folder_it_can_write(make_project, tmp_path, capsys, monkeypatch):
    """`--out` naming an existing file crashed with a traceback and exit 1 (review of 2026-12-05)."""
    from flows import cli
    from tasks import certify

    certificate = tmp_path / "cert.json"
    certificate.write_text('{"digest": "' + "d" * 64 + '"}')
    certificate.with_suffix(".html").write_text(f"<p>Digest: <code>{'d' * 64}</code></p>")
    monkeypatch.setattr(certify, "certificate_paths",
                        lambda *a, **k: [certificate, certificate.with_suffix(".html")])
    monkeypatch.setattr("tasks.request_status.request_status",
                        lambda *a, **k: {"kind": "accepted", "status": "completed"})
    root = make_project()
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    assert cli.main(["--root", str(root), "request", "certificate", "R-1", "--out", str(taken)]) == 2
    assert "is not a folder" in capsys.readouterr().err and taken.read_text() == "x"


def test_a_certificate_replaced_while_it_is_copied_is_not_handed_out(make_project, tmp_path, capsys, monkeypatch):
    """`request certificate --out` checked the files, then copied them outside the pipeline's lock: a run issuing
    the certificate again between the two copies handed out an old JSON beside the new page (review of 2026-12-07,
    left open then). The copies are checked themselves; a mixed pair is removed and the command exits 2."""
    import shutil

    from flows import cli
    from tasks import audit
    from tasks.certificate import write_certificate
    from tasks.project import load_project

    root = make_project()
    project = load_project(root, check_registries=False)
    document = {"request_id": "R-1", "status": "complete", "issued_at": "2026-12-07T10:00:00Z"}

    def issue(status):  # what certify does: both files, then the audit record naming the JSON's digest
        json_path, _ = write_certificate({**document, "status": status}, {}, project.certificates_dir)
        audit.record(project, "certificate.issued", request_id="R-1",
                     certificate_digest=json.loads(json_path.read_text())["digest"])

    issue("interim")
    monkeypatch.setattr("tasks.request_status.request_status",
                        lambda *a, **k: {"kind": "accepted", "status": "completed"})
    out = tmp_path / "handout"
    real_copy, copied = shutil.copy2, []

    def copy_then_reissue(src, dst, **kwargs):  # a run re-issues the certificate right after the JSON is copied
        result = real_copy(src, dst, **kwargs)
        copied.append(Path(src).suffix)
        if Path(src).suffix == ".json" and copied.count(".json") == 1:
            issue("complete")
        return result

    monkeypatch.setattr(shutil, "copy2", copy_then_reissue)
    assert cli.main(["--root", str(root), "request", "certificate", "R-1", "--out", str(out)]) == 2
    assert "changed while it was copied" in capsys.readouterr().err and not list(out.iterdir())
    assert cli.main(["--root", str(root), "request", "certificate", "R-1", "--out", str(out)]) == 0  # no race now
    handed = json.loads(next(out.glob("*.json")).read_text())
    assert handed["status"] == "complete" and sorted(p.suffix for p in out.iterdir()) == [".html", ".json"]


@pytest.mark.e2e
def test_status_after_baseline(prefect_server, champion_project, _session_champion, capsys):
    """Status against the session's champion: its baseline flow ran with UNLEARN_PROGRESS=1."""
    from flows.cli import submit_request

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    assert "train baseline" in _session_champion.stderr  # the epoch bar of run_train, from a Prefect task
    submit_request(root, {"request_id": "R-1", "sample_ids": ["digits-0001"], "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "alice"})
    code, out = _status(capsys, root, "--json")
    report = json.loads(out)
    assert code == 0 and report["problems"] == {} and report["fresh"] is False
    champion = report["champion"]
    assert champion["version"] == "1" and champion["method"] == "train" and champion["verdict"] == "baseline"
    assert champion["data_version"] == report["data_version"] and champion["data_version"].endswith(".dir")
    assert report["requests"]["incoming_files"] == 1 and report["requests"]["pending_batches"] == 0
    assert [r["run_name"] for r in report["runs"]] == ["baseline"] and report["runs"][0]["stage"] == "train"
    assert {s["stage"] for s in report["stages"]} >= {"ingest", "prepare", "train", "unlearn"}
    code, out = _status(capsys, root)
    assert "version 1 of unlearn-classifier  method train  verdict baseline" in out
    assert "1 file(s) waiting in the inbox" in out and "baseline" in out


def test_progress_bars_silent_unless_terminal(capsys, monkeypatch):
    from tasks import progress

    monkeypatch.delenv("UNLEARN_PROGRESS", raising=False)
    assert not progress.enabled()  # pytest captures stderr: not a terminal
    with progress.bar(3, "quiet") as bar:
        bar.update(1)
        bar.set_postfix({"a": 1})
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("UNLEARN_PROGRESS", "0")
    assert not progress.enabled()


def test_progress_bars_from_worker_threads(capsys, monkeypatch, tiny_images):
    import torch

    from tasks import progress
    from unlearn.models import build_model
    from unlearn.training import SGDRecipe, train_model

    monkeypatch.setenv("UNLEARN_PROGRESS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what the CLI sets for library bars: ours still draw
    images, labels = (torch.as_tensor(a) for a in tiny_images)
    recipe = SGDRecipe(epochs=3, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, augment=False)
    seen: list[int] = []

    def work(k: int) -> None:
        with progress.bar(recipe.epochs, f"model {k}", unit="epoch") as bar:
            train_model(build_model("small_cnn", 1, 4), images, labels, recipe, device="cpu", seed=k,
                        on_epoch=progress.epoch_callback(bar, lambda epoch, m: seen.append(epoch)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    err = capsys.readouterr().err
    assert "model 0" in err and "model 1" in err and "epoch" in err
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]


def test_a_certificate_is_not_handed_out_where_the_audit_log_cannot_be_read(make_project, tmp_path, capsys,
                                                                           monkeypatch):
    """Whether the log recorded issuing it is what makes it the certificate (review of 2026-12-07): where the log
    cannot be read (None), it is refused with a clear error, not handed out with a note."""
    from flows import cli
    from tasks import certify

    certificate = tmp_path / "cert.json"
    certificate.write_text('{"digest": "' + "d" * 64 + '"}')
    monkeypatch.setattr(certify, "certificate_paths", lambda *a, **k: (certificate, certificate.with_suffix(".html")))
    monkeypatch.setattr("tasks.request_status.request_status",
                        lambda *a, **k: {"kind": "accepted", "status": "completed"})
    monkeypatch.setattr(certify, "is_recorded", lambda *a, **k: None)
    root = make_project()
    assert cli.main(["--root", str(root), "request", "certificate", "R-1"]) == 2
    assert "cannot be checked to be the one issued" in capsys.readouterr().err
