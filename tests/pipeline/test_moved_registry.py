"""A project moved to another registry on purpose (``data/.registry`` deleted) keeps its ledger, audit log and
reports while the new registry numbers its versions from 1 again. What was recorded about the old registry's
version N must never be read as this registry's version N: records and ledger notes are matched on the model or
run they name (the end-to-end part is in ``test_lifecycle.py``'s ``_moved_registry_is_not_taken_for_this_one``)."""

import json
from types import SimpleNamespace

import pytest
from conftest import RETRAIN


def _version(number, model_id, run_id, batches=""):
    return SimpleNamespace(version=str(number), model_id=model_id, run_id=run_id, source="",
                           tags={"request_batches": batches})


class _Registry:
    """The two calls the lookups make, on a list of versions."""

    def __init__(self, versions):
        self.versions = versions

    def search_model_versions(self, query):
        if "run_id=" in query:
            run_id = query.split("run_id='")[1].rstrip("'")
            return [mv for mv in self.versions if mv.run_id == run_id]
        return list(self.versions)


def test_an_audit_record_names_this_version_only_through_its_model_or_run():
    from tasks.tracking import record_names_version

    new = _version(2, "m-new", "run-new", "b-new")
    assert record_names_version({"model_version": "2", "model_id": "m-new"}, new)
    assert not record_names_version({"model_version": "2", "model_id": "m-0ld"}, new)
    assert record_names_version({"model_version": "2", "run_id": "run-new", "batch_id": "b-new"}, new)
    assert not record_names_version({"model_version": "2", "run_id": "run-0ld", "batch_id": "b-new"}, new)
    assert not record_names_version({"model_version": "3", "model_id": "m-new"}, new)
    # written before records named either: by the number, and the batch where the record has one
    assert record_names_version({"model_version": "2"}, new)
    assert record_names_version({"model_version": "2", "batch_id": "b-new"}, new)
    assert not record_names_version({"model_version": "2", "batch_id": "b-0ld"}, new)
    cut = _version(2, "m-new", "run-new", "b-1,b-2,... (120 in all)")  # a tag cut short cannot tell
    assert record_names_version({"model_version": "2", "batch_id": "b-0ld"}, cut)
    # a consolidation's record from before: its data version must be the version's
    new.tags["data_version"] = "d-new"
    assert record_names_version({"model_version": "2", "data_version": "d-new"}, new)
    assert not record_names_version({"model_version": "2", "data_version": "d-0ld"}, new)


def test_a_promotion_is_found_by_its_run_never_by_a_number_another_model_holds(tmp_path):
    from tasks import tracking

    project = SimpleNamespace(params=SimpleNamespace(registry=SimpleNamespace(model_name="m")))
    client = _Registry([_version(1, "m-a", "run-a"), _version(2, "m-b", "run-b", "b-new")])
    assert tracking.registered_promotion(project, client, "2", "run-b", "b-new").model_id == "m-b"
    assert tracking.registered_promotion(project, client, "2", "run-0ld", "b-0ld") is None  # another registry's 2
    assert tracking.registered_promotion(project, client, "1", "run-b", "b-new") is None  # found, under another number
    # a note written before notes named the run: the number, and the version's batches must name the batch
    assert tracking.registered_promotion(project, client, "2", None, "b-new").model_id == "m-b"
    assert tracking.registered_promotion(project, client, "2", None, "b-0ld") is None
    assert tracking.registered_promotion(project, client, "7", None, "b-new") is None


def test_a_method_audit_never_audits_another_registrys_version_as_this_ones(tmp_path):
    """Promotions are told apart by their run: the old registry's version 2 and the new one's are two promotions;
    the old one is skipped (its method and parent are not in this registry), and asked for by its batch it is a
    clear error, not another model's audit. An audit names the run it audited, and that is what counts as audited."""
    from tasks.method_audit import pick, promotions
    from tasks.project import PipelineError
    from unlearn.requests import Ledger

    ledger = Ledger(tmp_path / "ledger.json")
    for batch_id, run_id in (("b-0ld", "run-0ld"), ("b-new", "run-new")):
        ledger.add_batch(batch_id, [f"R-{batch_id}"], [f"s-{batch_id}"], "2026-12-07T00:00:00Z")
        ledger.set_status(batch_id, Ledger.PROMOTING, {"outcome": "promoting", "model_version": "2", "run_id": run_id})
        ledger.set_status(batch_id, Ledger.COMPLETED, {"outcome": "promoted", "model_version": "2"})
    assert [(p["model_version"], p["run_id"], p["batches"]) for p in promotions(ledger)] == [
        ("2", "run-0ld", ["b-0ld"]), ("2", "run-new", ["b-new"])]

    project = SimpleNamespace(state_dir=tmp_path, params=SimpleNamespace(registry=SimpleNamespace(model_name="m")))
    new = _version(2, "m-new", "run-new", "b-new")
    new.tags.update(method="amun", parent_version="1")
    client = _Registry([_version(1, "m-base", "run-base"), new])
    chosen = pick(project, client, ledger)
    assert (chosen["run_id"], chosen["method"], chosen["parent_version"]) == ("run-new", "amun", "1")
    with pytest.raises(PipelineError, match="registry this project no longer uses"):
        pick(project, client, ledger, batch="b-0ld")
    # audited already: by the run it names; the old registry's version 2 is never taken for it
    (tmp_path / "audits.json").write_text(json.dumps({"audits": [
        {"model_version": "2", "audited_run_id": "run-new", "method": "amun", "batch_ids": ["b-new"]}]}))
    assert pick(project, client, ledger) is None
    (tmp_path / "audits.json").write_text(json.dumps({"audits": [
        {"model_version": "2", "audited_run_id": "run-0ld", "method": "amun", "batch_ids": ["b-0ld"]}]}))
    assert pick(project, client, ledger)["run_id"] == "run-new"
    # an audit from before audits named the run: by the number and the batches together
    for batches, audited in ((["b-0ld"], False), (["b-new"], True)):
        (tmp_path / "audits.json").write_text(json.dumps({"audits": [
            {"model_version": "2", "method": "amun", "batch_ids": batches}]}))
        assert (pick(project, client, ledger) is None) is audited


def test_a_promotion_left_half_done_never_moves_the_alias_to_another_registrys_version(make_project):
    """A batch left ``promoting`` (a crash) whose version this registry does not hold: the alias is not moved to
    whatever version has the number now and nothing is recorded as promoted; the batch goes back to pending (the
    next run unlearns it from the current champion), so it blocks no request after it."""
    from tasks import audit
    from tasks.project import load_project
    from tasks.stage.promote import finish_promotions
    from unlearn.requests import Ledger

    project = load_project(make_project())
    ledger = Ledger(project.ledger_path)
    ledger.add_batch("b-0ld", ["R-1"], ["s-1"], "2026-12-07T00:00:00Z")
    ledger.set_status("b-0ld", Ledger.PROMOTING, {"outcome": "promoting", "model_version": "2", "run_id": "run-0ld",
                                                  "verdict": "pass"})
    ledger.save()
    client = _Registry([_version(1, "m-base", "run-base"), _version(2, "m-new", "run-new", "b-new")])
    assert finish_promotions(project, client, ledger) == []  # (the fake registry has no alias to move: it would raise)
    saved = Ledger(project.ledger_path).batch("b-0ld")
    assert saved["status"] == Ledger.PENDING and saved["history"][-1]["outcome"] == "promotion_abandoned"
    (record,) = audit.records(project, "batch.promotion_abandoned")
    assert (record["batch_id"], record["model_version"], record["run_id"]) == ("b-0ld", "2", "run-0ld")
    assert not audit.records(project, "model.promoted") and not audit.records(project, "model.verified")
    # request status no longer quotes the abandoned attempt's evidence (review of 2026-12-07), a new attempt's again
    from tasks.request_status import verification_status

    ledger = Ledger(project.ledger_path)
    assert verification_status(project, ledger, "b-0ld")["evidence"].startswith(
        "none current: its promotion was abandoned")
    ledger.set_status("b-0ld", Ledger.PENDING, {"outcome": "held", "run_id": "run-again", "hold_until": "soon"})
    assert "run run-again" in verification_status(project, ledger, "b-0ld")["evidence"]


@pytest.mark.e2e
def test_an_escalation_from_another_registrys_champion_is_never_promoted(champion_project):
    """An escalation cut off before promotion, then the project moved: the new registry's version 1 has the number
    the escalation started from, but not its model. Its candidates never unlearned from this champion, so promote
    refuses them (the lineage would be false); the unlearn stage's next run starts a fresh escalation (the state
    names the model: ``begin_unlearning`` resumes attempts only from the same one)."""
    from tasks import tracking
    from tasks.project import PipelineError, load_project
    from tasks.stage.promote import run_promote
    from tasks.stage.state import DONE, Attempt, Escalation, read_escalation, write_escalation
    from unlearn.requests import Ledger

    root, _ = champion_project(RETRAIN)
    project = load_project(root)
    client = tracking.setup(project)
    ledger = Ledger(project.ledger_path)
    ledger.add_batch("b-1", ["R-1"], [], "2026-12-07T00:00:00Z")
    ledger.save()
    attempt = Attempt(method="retrain", run_id="run-0ld", candidate="run-0ld.pt", unlearn_seconds=1.0,
                      started_at="2026-12-07T00:00:00Z", verdict="pass")
    write_escalation(project, Escalation(DONE, batches=["b-1"], parent_version="1", parent_model_id="m-0ld",
                                         attempts=[attempt], chosen=0, run_id="run-0ld", method="retrain"))
    with pytest.raises(PipelineError, match=r"version 1 \(logged model m-0ld\) but the champion is 1 \(another"):
        run_promote(project)
    assert [str(mv.version) for mv in tracking.all_versions(project, client)] == ["1"]  # nothing registered
    assert Ledger(project.ledger_path).batch("b-1")["status"] == Ledger.PENDING
    assert read_escalation(project).parent_model_id == "m-0ld"  # (written and read back)
