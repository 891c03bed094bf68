"""The equivalence gate wired into the per-batch pipeline (issue #12), stage by stage without Prefect:
a known-answer failure of an untouched model, the inconclusive path (held, then escalated to the exact
retrain by the hold bound), and the reference pool (a pool deletion retires exactly the references
that trained on it; a training deletion retires none)."""

import json
from datetime import timedelta

import numpy as np
import pytest
from conftest import FAST, REPO, RETRAIN, run_stages

pytestmark = pytest.mark.e2e

# Membership made detectable: few training samples, many epochs (the model memorises them), and a
# "method" that changes nothing (one epoch of fine-tuning at lr 1e-7, batch-norm statistics not recomputed):
# the candidate IS the parent (but for batch-norm statistics updated by its few batches of D_R).
MEMORISING = {**FAST, "data": {"train_subset": 300}, "train": {"epochs": 40},
              "unlearn": {"method": "finetune", "escalation": [], "recalibrate_bn": False,
                          "methods": {"finetune": {"epochs": 1, "lr": 1e-7, "batch_size": 64}}}}


def _submit(root, request_id, ids):
    from flows.cli import submit_request

    submit_request(root, {"request_id": request_id, "sample_ids": [str(i) for i in ids],
                          "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
                          "subject_ref": f"subject-{request_id}"})


def _trained_then_deleted(make_project, overrides):
    """Train a baseline, delete 80 of its training samples in one request, run the stages up to promote."""
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root = make_project(overrides)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    train_ids = SampleStore(project.store_dir).split_ids("train")
    _submit(root, "R-1", sorted(train_ids[:80].tolist()))
    return root, project, run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")


def _first_report(project):
    """The verification report of the escalation's first attempt."""
    from tasks.stage.state import read_escalation

    return json.loads((project.reports_dir / "attempts" / read_escalation(project).attempts[0].report).read_text())


def _client(project):
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri)
    return mlflow.MlflowClient()


def test_an_untouched_model_conclusively_fails_when_membership_is_detectable(make_project):
    from flows.cli import _verdict_exit
    from flows.summary import format_summary
    from tasks import tracking
    from tasks.stage.context import load_forget
    from tasks.stage.evaluation import evaluate_candidate, evaluation_sets
    from tasks.stage.state import read_escalation
    from unlearn.data import SampleStore

    # four references (two pairs; the jackknife needs 3, the pairs an even count): the conclusive fail holds with
    # the reference-set jackknife in the intervals (unlearn.gate_bootstrap.auc_draws)
    root, project, result = _trained_then_deleted(
        make_project, {**MEMORISING, "verify": {**FAST["verify"], "references": {"count": 4, "batched": "auto"}}})
    state = read_escalation(project)
    report = _first_report(project)
    checks = {c["metric"]: c for c in report["checks"]}
    # Which attack fails depends on the machine's rounding (the demo's run: RMIA conclusively, LiRA's widened
    # interval 0.001 inside its margin); at least one must, and every failing one has the properties below.
    failing = [checks[m] for m in ("mia.lira_offline.auc", "mia.rmia_offline.auc") if checks[m]["verdict"] == "fail"]
    assert failing, checks
    for check in failing:
        # the positive control: the parent's excess over never-trained is detected (interval above 0) ...
        assert check["parent_detected"] and check["parent_ci_low"] > 0
        # ... the margin is half of it, and the untouched candidate lies conclusively beyond it
        assert check["margin"] == pytest.approx(0.5 * check["parent_excess"])
        assert check["ci_low"] >= check["margin"]
    lira = checks["mia.lira_offline.auc"]
    assert lira["parent_detected"] and lira["verdict"] in ("fail", "inconclusive")  # never a pass
    assert report["verdict"] == "fail" and report["evidence"] == "conclusive" and report["mode"] == "equivalence"
    assert report["retrain_seconds"] == 0.0 and "retrain" not in report["models"]  # no retrain to verify
    # ... with intervals that also cover which of the four reference models were trained
    assert report["reference_jackknife"] == {"lira_offline": 4, "rmia_offline": 4}
    assert "jackknife over the 4 reference models" in report["interval_scope"]
    # The only rung failed: the deletion is still honoured, by the exact retrain (a batch left pending would
    # have blocked every later request with it: review of 2026-12-05), and the failed model is never promoted.
    assert report["action"] == "retrain" and "failed the gate conclusively" in report["policy_reason"]
    assert result["promote"]["attempts"] == [["finetune", "fail"], ["retrain", "pass"]]
    assert result["promote"]["status"] == "promoted" and result["promote"]["evidence"] == "exact"
    assert _verdict_exit(result) == 0
    client = _client(project)
    champion = tracking.champion_version(project, client)
    assert str(champion.version) == "2" and champion.tags["method"] == "retrain"
    assert "failed the gate conclusively" in champion.tags["escalation_reason"]
    run = client.get_run(report["run_id"])
    assert run.data.tags["verdict"] == "fail" and run.data.tags["parent_detected"] in ("true", "false")
    assert run.data.metrics["gate.mia.lira_offline.auc.margin"] == pytest.approx(lira["margin"])
    table = format_summary({"root": str(root), **result})
    assert "finetune (fail) -> retrain (pass)" in table and "tol" not in table.split()

    # the parent itself, scored as a candidate with the same references, can never pass
    store = SampleStore(project.store_dir)
    sets = evaluation_sets(project, store, load_forget(project, state.batches), [])
    parent = tracking.load_model(project, client, state.parent_version)
    itself = evaluate_candidate(project, store, sets, parent, method="none", original=parent)
    assert itself.verdict == "fail" and itself.decision.checks[0].estimate == pytest.approx(lira["parent_excess"])
    # the learning curve utility's allowance reads: the references' answers on the negatives, their sizes from
    # the bank's lineage, and the parent's training-set size
    from tasks.stage.evaluation import evaluate_baselines
    from unlearn.references import ReferenceBank

    baselines = evaluate_baselines(project, store, sets, original=parent)
    records = ReferenceBank(project.references_dir).records
    curve = baselines.curve
    assert curve.reference_sizes == tuple(records[i].n_members for i in baselines.reference_ids)
    assert curve.parent_size == len(sets.forget) + len(sets.retain) > max(curve.reference_sizes)
    assert (curve.reference_correct == [r.test.correct for r in baselines.references]).all()

    # Promoted: only the promoted attempt's report is still read (by certificates); a failed rung's lost report is
    # no disagreement the doctor may exit 2 for (review), the promoted one's is.
    from tasks.doctor import diagnose

    (project.reports_dir / "attempts" / state.attempts[0].report).unlink()
    assert not [f for f in diagnose(project) if f.check == "reports"]
    (project.reports_dir / "attempts" / read_escalation(project).attempts[1].report).unlink()
    (finding,) = [f for f in diagnose(project) if f.check == "reports"]
    assert finding.subject == "attempt 2 (retrain)" and "certificate" in finding.problem


def test_inconclusive_evidence_is_held_then_escalated_to_the_exact_retrain_by_the_bound(make_project, capsys):
    from flows.cli import _verdict_exit, main
    from tasks import tracking
    from tasks.project import load_project
    from tasks.stage.escalation import _parse_utc, verdict_action
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    # min_samples 50 makes 10 and 20 forget samples inconclusive up front, whatever the models do
    root = make_project({**FAST, "gate": {"min_samples": 50, "max_hold_batches": 2}})
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    train_ids = sorted(SampleStore(project.store_dir).split_ids("train").tolist())
    _submit(root, "R-1", train_ids[:10])
    run_stages(project, "ingest", "prepare", "references", "unlearn")
    # A crash right after the ledger marked the batch held, before the audit record: the re-run records it.
    from tasks import audit

    real_record = audit.record

    def crash_on_held(project_, event, **fields):
        if event == "batch.held":
            raise KeyboardInterrupt("killed between the ledger save and the audit record")
        return real_record(project_, event, **fields)

    audit.record = crash_on_held
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stages(project, "promote")
    finally:
        audit.record = real_record
    first = run_stages(project, "promote")
    held_records = audit.records(project, "batch.held")
    assert len(held_records) == 1 and held_records[0]["run_id"]

    # held: not an error, nothing registered, champion unchanged, the batch still pending
    assert first["promote"]["status"] == "held" and _verdict_exit(first) == 0
    report = json.loads((project.reports_dir / "verification.json").read_text())
    assert report["verdict"] == "inconclusive" and report["action"] == "hold" and "NOT a pass" in report["reason"]
    ledger = Ledger(project.ledger_path)
    (batch,) = ledger.pending()
    note = ledger.last_note(batch)
    assert note["outcome"] == "held" and note["hold_until"] == first["promote"]["hold_until"]
    created = _parse_utc(ledger.batch(batch)["created_at"])
    assert _parse_utc(note["hold_until"]) == created + timedelta(hours=project.params.gate.max_hold_hours)
    client = _client(project)
    name = tracking.model_name(project)
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert main(["--root", str(root), "request", "status", "R-1"]) == 0
    out = capsys.readouterr().out
    assert "held" in out and note["hold_until"] in out
    # the time bound: once max_hold_hours have passed, the same verdict escalates to the exact retrain
    late = created + timedelta(hours=project.params.gate.max_hold_hours + 1)
    action, _, why = verdict_action(project, "inconclusive", [batch], now=late)
    assert action == "retrain" and "max_hold_hours" in why
    assert verdict_action(project, "inconclusive", [batch], now=created)[0] == "hold"

    # a second batch: both are unlearned together from the same champion; 2 batches reach the bound
    _submit(root, "R-2", train_ids[10:20])
    second = run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")
    assert second["promote"]["status"] == "promoted"
    assert second["promote"]["attempts"] == [["amun", "inconclusive"], ["retrain", "pass"]]
    assert second["promote"]["evidence"] == "exact"
    held_report = json.loads((project.reports_dir / "attempts" / f"{second['unlearn']['attempts'][0]['run_id']}.json")
                             .read_text())
    assert held_report["n_forget"] == 20 and held_report["action"] == "retrain"
    assert "max_hold_batches" in held_report["policy_reason"]
    assert Ledger(project.ledger_path).pending() == []
    tags = client.get_model_version(name, second["promote"]["version"]).tags
    assert tags["method"] == "retrain" and tags["evidence"] == "exact" and tags["parent_version"] == "1"
    assert "escalated to the exact retrain" in tags["escalation_reason"]


def test_a_pool_deletion_retires_exactly_the_references_that_trained_on_it(make_project):
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.references import ReferenceBank

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    store = SampleStore(project.store_dir)
    pool, train = store.split_ids("pool"), store.split_ids("train")
    assert len(pool) and not set(pool) & set(train)  # production training never sees the pool
    _submit(root, "R-1", sorted(train[:10].tolist()))
    run_stages(project, "ingest", "prepare", "references")
    bank = ReferenceBank(project.references_dir)
    live = sorted(r.ref_id for r in bank.records.values() if r.status == "live")
    assert len(live) == 2 and all(set(bank.members(r).tolist()) <= set(pool.tolist()) for r in live)

    # a training-sample deletion retires no reference; a pool sample retires exactly those that saw it
    victim = pool[0]
    expected = bank.affected_by([victim])
    assert expected and len(expected) < len(live)  # complementary pairs: one side of the pair saw it
    _submit(root, "R-2", [victim, *train[10:15].tolist()])
    prepared = run_stages(project, "ingest", "prepare")["prepare"]
    assert prepared["references_retired"] == expected
    bank = ReferenceBank(project.references_dir)
    assert sorted(r.ref_id for r in bank.records.values() if r.status == "live") == sorted(set(live) - set(expected))
    assert victim not in SampleStore(project.store_dir)
    # the pool sample is no forget sample (no production model saw it): the quarantine holds training samples only
    from tasks.stage.context import load_forget
    from unlearn.requests import Ledger

    forget = load_forget(project, Ledger(project.ledger_path).pending())
    assert victim not in set(forget.ids.tolist()) and len(forget) == 15
    # the references stage tops the pool back up; the replacement never saw the deleted pool sample
    state = run_stages(project, "references")["references"]
    assert len(state["trained"]) == len(expected) and len(state["usable"]) == 2
    assert all(victim not in set(ReferenceBank(project.references_dir).members(r).tolist()) for r in state["usable"])
    assert np.isin(state["usable"], live).sum() == len(live) - len(expected)


def test_strict_mode_verifies_against_an_exact_retrain_and_fails_the_untouched_model(make_project):
    """``gate.mode: strict`` (the exact-retrain comparison, kept for audits and for users who want it per
    batch): the verify stage trains the retrain, gates the candidate against it, and says so."""
    from tasks import tracking
    from tasks.project import load_project
    from tasks.stage.state import read_escalation
    from unlearn.data import SampleStore

    root = make_project({**MEMORISING, "gate": {"mode": "strict"}})
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    _submit(root, "R-1", sorted(SampleStore(project.store_dir).split_ids("train")[:80].tolist()))
    result = run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")

    state = read_escalation(project)
    report = json.loads((project.reports_dir / "attempts" / state.attempts[0].report).read_text())
    assert report["mode"] == "strict" and "retrain" in report["models"] and report["retrain_seconds"] > 0
    lira = {c["metric"]: c for c in report["checks"]}["mia.lira_offline.auc"]
    # the untouched candidate is the parent: beyond the margin from the exact retrain, conclusively
    assert lira["verdict"] == "fail" and lira["ci_low"] >= lira["margin"] > 0
    assert report["verdict"] == "fail" and result["promote"]["attempts"] == [["finetune", "fail"], ["retrain", "pass"]]
    # the failed model never became champion: the exact retrain (the verify stage's own, reused) did
    assert result["promote"]["status"] == "promoted" and result["promote"]["evidence"] == "exact"
    assert tracking.champion_version(project, _client(project)).tags["method"] == "retrain"


def test_the_demos_weak_method_is_the_one_that_runs_whatever_the_profile_says(tmp_path):
    """The demo calls its candidate untouched: the digits profile's fine-tuning (5 epochs at lr 0.6) must not win
    over the weak method's arguments, as it did when they were written under unlearn.methods."""
    import yaml

    from flows.cli import WEAK_FINETUNE, detectable_params
    from unlearn.config import load_params

    shipped = load_params(REPO / "params.yaml")
    assert shipped.method_profile is not None and shipped.method_kwargs("finetune") != WEAK_FINETUNE  # a real test
    params = detectable_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = load_params(tmp_path / "params.yaml")
    assert loaded.method_kwargs("finetune") == WEAK_FINETUNE
    assert loaded.unlearn.method == "finetune" and loaded.unlearn.escalation == () and not loaded.unlearn.recalibrate_bn


def test_a_gated_attack_that_refuses_the_sets_is_inconclusive_not_a_crash(champion_project, monkeypatch):
    """``loss_lr`` refused fewer than 6 samples: with ``gate.min_samples`` then at a floor of 2, a 3-sample batch
    reached it, and the refusal crashed the verify stage on every run, holding every later batch behind it
    (break-it review of the gate). The floor is 10 now; an attack may still refuse sets the gate admits
    (loss_lr whenever the forget set outnumbers the negatives), played here by raising loss_lr's minimum. Strict
    mode: a population attack is gated only against exact retrains."""
    from tasks.project import load_project
    from unlearn.attacks import population
    from unlearn.data import SampleStore

    monkeypatch.setattr(population, "_LR_MIN_PER_CLASS", 50)
    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "escalation": []},
                                "gate": {"mode": "strict", "attacks": ["loss_lr"], "min_samples": 10}})
    project = load_project(root)
    _submit(root, "R-TINY", sorted(SampleStore(project.store_dir).split_ids("train")[:12].tolist()))
    run_stages(project, "ingest", "prepare", "references", "unlearn")
    report = _first_report(project)
    assert report["verdict"] == "inconclusive" and report["checks"] == []
    assert "cannot score these samples" in report["reason"] and "NOT a pass" in report["reason"]


# grad_ascent at a rate that wrecks the model (the GPU table of issue #13: 9% accuracy): it forgets everything,
# so no forgetting check can fail it; only the utility check tells it from a good candidate. Under
# promote_low_power an inconclusive candidate ships: before the utility check, this one would have.
DESTROYING = {**MEMORISING, "gate": {"on_inconclusive": "promote_low_power"},
              "unlearn": {"method": "grad_ascent", "escalation": [], "recalibrate_bn": True,
                          "methods": {"grad_ascent": {"epochs": 5, "lr": 0.5, "batch_size": 16}}}}


def test_a_model_destroyed_by_its_unlearning_fails_on_utility_and_is_never_promoted(make_project):
    from tasks import tracking

    _, project, result = _trained_then_deleted(make_project, DESTROYING)
    report = _first_report(project)
    checks = {c["metric"]: c for c in report["checks"]}
    assert all(c["verdict"] != "fail" for m, c in checks.items() if m != "utility")  # it did forget
    utility = checks["utility"]
    assert utility["verdict"] == "fail" and utility["parent_detected"]
    assert utility["margin"] == pytest.approx(project.params.gate.utility_loss_fraction * utility["parent_excess"])
    assert utility["candidate"] < 0.5 * utility["target"]  # destroyed, not a close call
    assert report["verdict"] == "fail" and "lost more accuracy" in report["reason"]
    assert result["promote"]["attempts"] == [["grad_ascent", "fail"], ["retrain", "pass"]]
    champion = tracking.champion_version(project, _client(project))
    assert champion.tags["method"] == "retrain"


def test_a_whole_class_request_gates_utility_on_the_other_classes(champion_project):
    """A whole-class batch's negatives are that class's unseen samples; utility measured there was never measurable,
    so every such batch was held until its bound and then retrained (review). The retrain, which never saw the
    class, keeps its accuracy on the other classes and passes utility with a measured control."""
    from flows.cli import submit_request
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project(RETRAIN)
    project = load_project(root)
    submit_request(root, {"request_id": "C-7", "forget_class": "7", "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "subject-C-7"})
    test_labels = SampleStore(project.store_dir).load_split("test").labels
    run_stages(project, "ingest", "prepare", "references", "unlearn")
    report = _first_report(project)
    checks = {c["metric"]: c for c in report["checks"]}
    utility = checks["utility"]
    assert utility["n_negative"] == int((test_labels != 7).sum())  # every unseen sample of the other classes
    assert utility["parent_detected"] and utility["parent_excess"] > 0.5 and utility["verdict"] == "pass"
    assert checks["class_acc"]["n_negative"] == int((test_labels == 7).sum())


def test_a_person_deleting_every_sample_of_their_class_is_not_a_wedge(champion_project):
    """One person is one class, and their request names every one of their samples, test-split ones included: the
    class is left with no training sample (verified as a forgotten class, class_acc) and with no unseen sample to
    measure class_acc on. The empty test set stopped every verification of the batch, the exact retrain's
    included, and every later batch waited (second review of 2026-12-06). Now no candidate can pass (the class
    cannot be measured: inconclusive) and the exact retrain, exact by construction, is promoted."""
    from tasks import tracking
    from tasks.project import load_project
    from unlearn.data import SampleStore

    root, _ = champion_project({**FAST, "unlearn": {**FAST["unlearn"], "escalation": []},
                                "gate": {"on_inconclusive": "retrain"}})
    project = load_project(root)
    store = SampleStore(project.store_dir)
    train, test = store.load_split("train"), store.load_split("test")
    person = sorted([*train.ids[train.labels == 7].tolist(), *test.ids[test.labels == 7].tolist()])
    _submit(root, "R-PERSON", person)
    run_stages(project, "ingest", "prepare", "references", "unlearn", "promote")
    first = _first_report(project)
    assert first["method"] == "amun" and first["verdict"] == "inconclusive"
    assert first["unmeasured_classes"] == [7] and "cannot be measured" in first["reason"]
    champion = tracking.champion_version(project, _client(project))
    assert str(champion.version) == "2" and champion.tags["method"] == "retrain"
