"""A change made, then its record: a crash in between must leave no claim false and every record recoverable.

Found by the review of 2026-12-05 (each case reproduced with a SIGKILL): the champion moved by a consolidation
with no audit record and the flow's purge skipped; a withdrawal certified as taking away no model; a withdrawn
or data-only batch with no audit record; a certificate counting no retired reference model when two were. In
each case `unlearn doctor` said nothing. Here the crash is an exception raised at the same point (the stage's
``finally`` blocks hold no claim), the doctor must name what is missing, and the next run must write it.
"""

import json

import pytest
from conftest import FAST, drop_request, run_stages

pytestmark = pytest.mark.e2e


class Crash(BaseException):
    """Stands for a SIGKILL: not an Exception, so no handler in the pipeline swallows it."""


def _crash_on_record(monkeypatch, event):
    from tasks import audit

    real = audit.record

    def record(project, name, **fields):
        if name == event:
            raise Crash(f"killed before the {event} record")
        return real(project, name, **fields)

    monkeypatch.setattr(audit, "record", record)


def _problems(project):
    from tasks.doctor import diagnose

    return [f"[{f.check}] {f.subject}: {f.problem}" for f in diagnose(project)]


def _events(project, event):
    return [r for r in map(json.loads, project.audit_path.read_text().splitlines()) if r["event"] == event]


def test_a_consolidation_cut_off_before_its_record_is_recorded_by_the_next_one(champion_project, monkeypatch):
    from tasks import tracking
    from tasks.consolidate import run_consolidate
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project(FAST)
    project = load_project(root)
    drop_request(project, "T-1", SampleStore(project.store_dir).split_ids("test")[:2].tolist())  # data only
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote")
    with monkeypatch.context() as patch:
        _crash_on_record(patch, "model.consolidated")
        with pytest.raises(Crash):
            run_consolidate(project, force=True)
    champion = tracking.champion_version(project, tracking.setup(project))
    assert champion.tags["method"] == "consolidate" and not _events(project, "model.consolidated")
    assert any("no model.consolidated record" in p for p in _problems(project))

    again = run_consolidate(project, force=True)  # was: not_due, and nothing ever recorded the move
    assert again["status"] == "consolidated" and again["recovered"] and again["version"] == str(champion.version)
    (record,) = _events(project, "model.consolidated")
    assert record["model_version"] == str(champion.version) and record["previous_version"] == "1"
    assert _problems(project) == []
    assert run_consolidate(project, force=True)["status"] == "not_due"  # recorded once
    assert len(_events(project, "model.consolidated")) == 1


@pytest.mark.parametrize("crash", ["after_alias_removed", "before_audit_record"])
def test_an_interrupted_withdrawal_names_the_withdrawn_champion_and_its_record(champion_project, monkeypatch,
                                                                              crash):
    import yaml

    from tasks import tracking
    from tasks.project import load_project
    from tasks.stage.escalation import begin_unlearning
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project(FAST)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["min_samples"] = 100_000  # after the baseline: any deletion leaves too few to train on
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(root)
    drop_request(project, "W-1", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    run_stages(project, "ingest", "prepare")
    with monkeypatch.context() as patch:
        if crash == "after_alias_removed":
            real = tracking.withdraw_champion

            def withdraw(*args, **kwargs):
                real(*args, **kwargs)
                raise Crash("killed after the alias went, before the ledger's save")

            patch.setattr(tracking, "withdraw_champion", withdraw)
        else:
            _crash_on_record(patch, "model.withdrawn")
        with pytest.raises(Crash):
            begin_unlearning(project)
    assert tracking.champion_version(project, tracking.setup(project)) is None
    if crash == "before_audit_record":
        assert any("completed as model_withdrawn, but the audit log has no model.withdrawn" in p
                   for p in _problems(project))

    begin_unlearning(project)  # the next run
    ledger = Ledger(project.ledger_path)
    (batch_id,) = ledger.batches
    note = ledger.last_note(batch_id)
    assert note["outcome"] == "model_withdrawn" and note["model_version"] == "1"  # was None after the first crash
    (record,) = _events(project, "model.withdrawn")
    assert record["model_version"] == "1" and record["batch_ids"] == [batch_id]
    assert record.get("recovered", False) == (crash == "before_audit_record")
    assert _problems(project) == []
    run_stages(project, "promote", "purge", "certify")
    (certificate,) = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    assert certificate["model"]["withdrawn"] is True and certificate["model"]["withdrawn_version"] == "1"


def test_references_retired_by_a_prepare_cut_off_before_the_ledger_save_are_still_counted(champion_project,
                                                                                       monkeypatch):
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.references import ReferenceBank
    from unlearn.requests import Ledger

    root, _ = champion_project(FAST)
    project = load_project(root)
    drop_request(project, "P-1", SampleStore(project.store_dir).split_ids("pool")[:3].tolist())
    run_stages(project, "ingest")
    with monkeypatch.context() as patch:
        real = ReferenceBank.retire_containing

        def retire(self, *args, **kwargs):
            retired = real(self, *args, **kwargs)
            assert retired, "the pool deletion must retire references for this test to mean anything"
            raise Crash("killed after the bank's save, before the ledger's")

        patch.setattr(ReferenceBank, "retire_containing", retire)
        with pytest.raises(Crash):
            run_stages(project, "prepare")
    (batch_id,) = Ledger(project.ledger_path).batches
    tombstones = ReferenceBank(project.references_dir).retired_by([batch_id])
    assert tombstones and any("reference model(s) this batch's deletion retired" in p for p in _problems(project))

    run_stages(project, "prepare")
    assert Ledger(project.ledger_path).batch(batch_id)["references_retired"] == tombstones  # was: []
    run_stages(project, "prepare")
    assert Ledger(project.ledger_path).batch(batch_id)["references_retired"] == tombstones  # each once
    assert _problems(project) == []


def test_a_verdict_cut_off_before_its_records_is_recorded_when_the_escalation_resumes(champion_project,
                                                                                     monkeypatch):
    """The escalation state is written first: a crash before the ledger's `verified` step and the
    `attempt.verified` record left both out for good (a resumed escalation never verifies a kept attempt again),
    and the certificate's timeline said the batch was never verified."""
    from conftest import RETRAIN

    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project(RETRAIN)  # the exact retrain: a pass, whatever the data
    project = load_project(root)
    drop_request(project, "V-1", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    run_stages(project, "ingest", "prepare")
    with monkeypatch.context() as patch:
        from tasks.stage import verify

        def crash(*args, **kwargs):
            raise Crash("killed after the escalation state, before the ledger and the audit log")

        patch.setattr(verify, "record_verdict", crash)
        with pytest.raises(Crash):
            run_stages(project, "references", "unlearn")
    (batch_id,) = Ledger(project.ledger_path).pending()
    assert "verified" not in Ledger(project.ledger_path).steps(batch_id) and not _events(project, "attempt.verified")

    result = run_stages(project, "unlearn", "promote")
    (record,) = _events(project, "attempt.verified")
    assert record["recovered"] and record["verdict"] == "pass" and record["method"] == "retrain"
    assert record["batch_ids"] == [batch_id] and record["attempt"] == 1
    assert result["promote"]["status"] == "promoted" and "verified" in Ledger(project.ledger_path).steps(batch_id)
    run_stages(project, "unlearn")  # nothing pending: recorded once
    assert len(_events(project, "attempt.verified")) == 1


def test_a_verdict_whose_report_is_gone_is_redone_not_promoted_and_nothing_wedges(champion_project, monkeypatch):
    """Promotion read the chosen attempt's report file: with it gone (deleted, a partial restore) or empty, every run
    failed there with a traceback, for this request and every one after it (left alone in four notes). Reviews then
    found the same read in the recovery of a lost verdict record (it crashed the unlearn stage) and in certify and
    request status (a completed batch's damaged report stopped every later certificate)."""
    from conftest import RETRAIN

    from flows.cli import main
    from tasks.project import PipelineError, load_project
    from tasks.request_status import request_status
    from tasks.stage.state import read_escalation
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project(RETRAIN)  # the exact retrain: a pass, whatever the data
    project = load_project(root)
    drop_request(project, "G-1", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    with monkeypatch.context() as patch:  # the verdict's records cut off too: recovery must not read the report
        from tasks.stage import verify

        def crash(*args, **kwargs):
            raise Crash("killed after the escalation state, before the ledger and the audit log")

        patch.setattr(verify, "record_verdict", crash)
        with pytest.raises(Crash):
            run_stages(project, "ingest", "prepare", "references", "unlearn")
    (lost,) = read_escalation(project).attempts
    report = project.reports_dir / "attempts" / lost.report
    report.write_text("")  # an empty write (missing, garbled, another run's: test_ladder_state.py)
    problem = "unreadable"
    assert any(f"has a report that is {problem}" in p and "attempt 1 (retrain)" in p and "redoes it" in p
               for p in _problems(project))
    with pytest.raises(PipelineError, match=f"report of the chosen attempt .* is {problem}"):
        run_stages(project, "promote")
    assert main(["--root", str(root), "stage", "promote"]) == 2
    assert main(["--root", str(root), "stage", "verify"]) == 2
    (batch_id,) = Ledger(project.ledger_path).pending()  # nothing moved

    result = run_stages(project, "unlearn", "promote")
    (redone,) = read_escalation(project).attempts
    assert redone.run_id != lost.run_id and (project.reports_dir / "attempts" / redone.report).is_file()
    (record,) = _events(project, "attempt.report_lost")
    assert record["run_id"] == lost.run_id and record["state_verdict"] == "pass" and record["problem"] == problem
    assert record["batch_ids"] == [batch_id] and record["dropped_from_escalation"]
    (verified,) = _events(project, "attempt.verified")  # the redone attempt's, never one read from no evidence
    assert verified["run_id"] == redone.run_id and not verified.get("recovered")
    assert result["promote"]["status"] == "promoted"
    assert Ledger(project.ledger_path).batch(batch_id)["status"] == Ledger.COMPLETED
    assert not any("has a report that" in p for p in _problems(project))

    # Completed, not yet certified: certify reads the report, and must not stop at it.
    (project.reports_dir / "attempts" / redone.report).write_text("")
    assert any("has a report that is unreadable" in p and "says its evidence is unavailable" in p
               for p in _problems(project))
    run_stages(project, "purge", "certify")
    assert request_status(project, "G-1")["evidence"].startswith("unavailable")
    certificate = json.loads(next(project.certificates_dir.glob("*.json")).read_text())
    assert certificate["status"] == "complete" and certificate["verification"]["evidence_unavailable"] == problem
    assert certificate["verification"]["verdict"] == "pass"  # the version's tags say so; the details are gone
    assert "report behind it is unreadable" in certificate["verification"]["statement"]
    html = next(project.certificates_dir.glob("*.html")).read_text()
    assert "(report unavailable)" in html and "No metric was tested" not in html
    assert any("certificate issued or re-issued from it says its evidence is unavailable" in p
               for p in _problems(project))  # a delayed retirement re-issues it: still worth saying


def test_each_batch_is_credited_only_with_the_references_its_own_samples_retired(champion_project):
    """The crash fix first credited every pending batch with every reference any of them retired: a test-split
    deletion arriving while a pool deletion was held said two reference models were retired (third review)."""
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.references import ReferenceBank
    from unlearn.requests import Ledger

    root, _ = champion_project(FAST)
    project = load_project(root)
    store = SampleStore(project.store_dir)
    drop_request(project, "A-1", store.split_ids("pool")[:1].tolist())  # one sample: one of the two references
    run_stages(project, "ingest", "prepare")  # A stays pending (held, or the run stopped here)
    (a,) = Ledger(project.ledger_path).batches
    retired_by_a = ReferenceBank(project.references_dir).retired_by([a])
    assert retired_by_a and Ledger(project.ledger_path).batch(a)["references_retired"] == retired_by_a
    drop_request(project, "B-1", store.split_ids("test")[:2].tolist())  # test samples: no reference trained on them
    bank = ReferenceBank(project.references_dir)
    (damaged,) = [r.ref_id for r in bank.records.values() if r.status == "live"]
    next((project.references_dir / damaged).glob("members*")).unlink()  # no deletion retires it: no batch's credit
    run_stages(project, "ingest", "prepare")
    ledger = Ledger(project.ledger_path)
    (b,) = [x for x in ledger.batches if x != a]
    assert ledger.batch(b).get("references_retired", []) == [] and ledger.batch(a)["references_retired"] == retired_by_a
    record = ReferenceBank(project.references_dir).records[damaged]
    assert record.status != "live" and record.retired_reason == "files missing or corrupt" and not record.retired_by


def test_a_recovered_consolidation_record_says_what_the_consolidation_did(champion_project, monkeypatch):
    """The recovered record took its numbers from after the move (0 deleted since the exact model) and the force
    flag of the recovering call (third review); they now come from the tags the consolidation registered."""
    from tasks import tracking
    from tasks.consolidate import drift, run_consolidate
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project({**FAST, "gate": {"on_inconclusive": "promote_low_power"}})
    project = load_project(root)
    drop_request(project, "T-1", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    assert run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")["promote"]["status"] == \
        "promoted"
    before = drift(project, tracking.setup(project), Ledger(project.ledger_path))
    assert before["deleted_since_exact"] == 5 and before["batches_since_exact"] == 1
    with monkeypatch.context() as patch:
        _crash_on_record(patch, "model.consolidated")
        with pytest.raises(Crash):
            run_consolidate(project, force=True)
    again = run_consolidate(project, force=False)  # what the consolidate-due trigger runs
    assert again["status"] == "consolidated" and again["recovered"] and again["forced"] is True
    (record,) = _events(project, "model.consolidated")
    assert record["forced"] is True and record["recovered"] is True
    assert (record["deleted_since_exact"], record["batches_since_exact"]) == (5, 1)


def test_a_consolidation_record_lost_before_a_promotion_from_it_is_still_written(champion_project, monkeypatch):
    """Recovery lived only in the consolidation: a request promoted from the unrecorded consolidation first, and
    its time as champion was missing from the audit log for good, with the doctor silent (third review)."""
    from conftest import RETRAIN

    from tasks import tracking
    from tasks.consolidate import run_consolidate
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project(RETRAIN)
    project = load_project(root)
    drop_request(project, "T-1", SampleStore(project.store_dir).split_ids("test")[:2].tolist())  # a new data version
    run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")
    with monkeypatch.context() as patch:
        _crash_on_record(patch, "model.consolidated")
        with pytest.raises(Crash):
            run_consolidate(project, force=True)
    consolidated = str(tracking.champion_version(project, tracking.setup(project)).version)
    drop_request(project, "R-1", SampleStore(project.store_dir).split_ids("train")[:3].tolist())
    result = run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")
    assert result["promote"]["status"] == "promoted" and result["promote"]["previous_champion"] == consolidated
    (record,) = _events(project, "model.consolidated")
    assert record["model_version"] == consolidated and record["recovered"] is True
    assert not [p for p in _problems(project) if "model.consolidated" in p]


def test_a_pass_never_promoted_does_not_stay_the_batch_verified_time(champion_project):
    """A pass, then a crash before promote, then a new batch: the escalation starts afresh over both batches, but
    the first batch kept its first "verified" time (mark_step keeps the first), and its certificate showed that
    time beside the verdict of the model actually promoted (review of 2026-12-06)."""
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    ids = SampleStore(project.store_dir).split_ids("train").tolist()
    drop_request(project, "R-A", ids[:6])
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn")  # verified: pass; promote never ran
    (first,) = Ledger(project.ledger_path).pending()
    earlier = Ledger(project.ledger_path).steps(first)["verified"]
    drop_request(project, "R-B", ids[6:12])
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn", "promote")
    ledger = Ledger(project.ledger_path)
    (second,) = [b for b in ledger.batches if b != first]
    assert ledger.steps(first)["verified"] == ledger.steps(second)["verified"] > earlier
    assert ledger.steps(first)["unlearned"] == ledger.steps(second)["unlearned"]
    assert {ledger.batch(b)["status"] for b in (first, second)} == {"completed"}


def test_a_rejection_cut_off_before_its_record_is_recorded_by_the_next_promote(champion_project, monkeypatch):
    """Promote saved the batches' rejection, then wrote `model.rejected`; killed in between, every later run took
    the early return for an already-rejected version and the audit log never held the rejection (review of
    2026-12-07). The exact retrain is made to fail as exact, the one way to the rejected path."""
    from tasks.project import load_project
    from tasks.stage import evaluation
    from unlearn.data import SampleStore

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}})
    project = load_project(root)
    drop_request(project, "R-X", SampleStore(project.store_dir).split_ids("train")[:4].tolist())
    monkeypatch.setattr(evaluation.Evaluation, "verdict", property(lambda self: "fail"))
    monkeypatch.setattr(evaluation.Evaluation, "exact", False, raising=False)
    run_stages(project, "ingest", "prepare", "train", "references", "unlearn")
    # An earlier release's record (no run, no model) of another registry's version 2, for batches of its own: it
    # is not this rejection, and took its place (review of 2026-12-07)
    from tasks import audit

    audit.record(project, "model.rejected", model_version="2", batch_ids=["b-of-another-registry"])
    with monkeypatch.context() as patch:
        _crash_on_record(patch, "model.rejected")
        with pytest.raises(Crash):
            run_stages(project, "promote")
    assert len(_events(project, "model.rejected")) == 1
    run_stages(project, "promote")
    (record,) = [r for r in _events(project, "model.rejected") if r.get("run_id")]
    assert record["model_version"] == "2"
    run_stages(project, "promote")  # recorded once
    assert len(_events(project, "model.rejected")) == 2
