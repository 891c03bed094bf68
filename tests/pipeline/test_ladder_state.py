"""The ladder state audits write (tasks/ladder.py), what status shows of it, and the maintenance deployments."""

import logging

import pytest

from tasks.project import PipelineError, Project


@pytest.fixture
def project(make_project):
    return Project(make_project())


def test_demoted_methods_leave_the_ladder_and_the_exact_retrain_always_remains(project, caplog):
    from tasks import ladder

    assert ladder.active_ladder(project, ("amun", "salun", "retrain")) == ["amun", "salun", "retrain"]
    ladder.demote(project, "amun", {"audit_id": "a-1", "metrics": ["mia.lira_offline.auc"]})
    logger = logging.getLogger("unlearn.pipeline")
    logger.addHandler(caplog.handler)  # `unlearn` CLI runs earlier in a session stop propagation to the root
    try:
        with caplog.at_level("WARNING", logger="unlearn.pipeline"):
            assert ladder.active_ladder(project, ("amun", "salun", "retrain")) == ["salun", "retrain"]
    finally:
        logger.removeHandler(caplog.handler)
    assert "skipping amun" in caplog.text and "mia.lira_offline.auc" in caplog.text
    ladder.demote(project, "salun", {"audit_id": "a-2", "metrics": ["forget_acc"]})
    assert ladder.active_ladder(project, ("amun", "salun")) == ["retrain"]  # a deletion is still honoured
    with pytest.raises(ValueError, match="cannot be demoted"):
        ladder.demote(project, "retrain", {})
    assert ladder.reinstate(project, "amun") and not ladder.reinstate(project, "amun")
    assert ladder.active_ladder(project, ("amun", "salun", "retrain")) == ["amun", "retrain"]


def test_a_corrupt_ladder_state_is_an_error_not_a_silent_readmission(project):
    from tasks import ladder

    project.state_dir.mkdir(parents=True, exist_ok=True)
    (project.state_dir / "ladder.json").write_text("{not json")
    with pytest.raises(PipelineError, match="ladder state .* is corrupt"):
        ladder.active_ladder(project, ("amun", "retrain"))


def test_status_shows_the_last_audit_per_method_and_the_deleted_fraction(project):
    from flows.status import collect_status, format_status
    from tasks import ladder

    record = {"method": "amun", "at": "2026-12-04T10:00:00Z", "verdict": "fail", "model_version": "2",
              "checks": [{"metric": "mia.lira_offline.auc", "estimate": 0.041, "ci": [0.02, 0.06], "margin": 0.02,
                          "verdict": "fail"}]}
    ladder.append_history(project, {**record, "method": "salun", "verdict": "pass"})
    ladder.append_history(project, record)
    ladder.demote(project, "amun", {"audit_id": "a-1", "metrics": ["mia.lira_offline.auc"]})
    report = collect_status(project.root)
    assert report["audits"]["amun"]["demoted"] and not report["audits"]["salun"]["demoted"]
    report["drift"] = {"last_exact_version": "1", "deleted_since_exact": 30, "train_size_at_exact": 1000,
                       "deleted_fraction": 0.03, "batches_since_exact": 2, "threshold": 0.05}
    text = format_status(report)
    assert "amun          verdict fail" in text and "DEMOTED" in text
    assert "audited gap +0.041 [+0.020, +0.060] (margin 0.020)" in text
    assert "30 of 1000 training samples (3.0%; consolidation at 5%)" in text


@pytest.mark.parametrize("audit_cron, every, consolidate_cron, expected", [
    ("0 3 * * 0", 10, None, ["audit", "audit-count", "consolidate-due"]),
    (None, 5, "0 4 1 * *", ["audit-count", "consolidate", "consolidate-due"]),
    ("0 3 * * 0", 0, None, ["audit", "consolidate-due"]),
])
def test_serve_adds_only_the_configured_maintenance_deployments(make_project, audit_cron, every, consolidate_cron,
                                                                expected):
    from flows.maintenance import build_deployments
    from flows.serve import project_key

    root = make_project({"gate": {"audit": {"cron": audit_cron, "every_batches": every, "retrains": 2},
                                  "consolidate": {"cron": consolidate_cron, "every_batches": 0,
                                                  "deleted_fraction": 0.05}}})
    key = project_key(root)
    deployments = build_deployments(root, key)
    assert [d.name for d in deployments] == [f"{name}-{key}" for name in expected]
    for deployment in deployments:
        scheduled = deployment.name.split(f"-{key}")[0] in ("audit", "consolidate")
        assert bool(deployment.schedules) == scheduled and bool(deployment.triggers) != scheduled
        assert deployment.parameters["root"] == str(root.resolve())
    forced = {d.name: d.parameters.get("force") for d in deployments if d.name.startswith("consolidate")}
    assert forced.get(f"consolidate-{key}", True) is True and forced[f"consolidate-due-{key}"] is None
    # only the triggered one answers "batches pending" before taking the lock (the command and the cron report in full)
    triggered = {d.name: d.parameters.get("triggered") for d in deployments if d.name.startswith("consolidate")}
    assert triggered.get(f"consolidate-{key}") is None and triggered[f"consolidate-due-{key}"] is True


def _attempt(method, verdict, action=None):
    from tasks.stage.state import Attempt

    return Attempt(method, f"run-{method}", f"{method}.pt", 1.0, "2026-12-05T00:00:00Z", verdict=verdict,
                   action=action, report=f"{method}.json")


def test_when_every_rung_fails_the_exact_retrain_is_next_and_after_it_nothing():
    """A batch whose every rung failed stayed pending for good (the next run reused the same verdicts), and every
    later request, data-only ones too, was unlearned together with it: the pipeline was wedged (review of
    2026-12-05). The deletion is now honoured by the exact retrain; if even that fails, the ladder ends."""
    from tasks.stage.state import DONE, UNLEARNING, Escalation

    state = Escalation(UNLEARNING, ladder=["amun", "salun"], attempts=[_attempt("amun", "fail", "next_rung")])
    assert state.next_rung().next_method == "salun" and not state.exhausted()
    state.attempts.append(_attempt("salun", "fail", "retrain"))
    assert state.exhausted() and state.next_rung().next_method == "retrain" and state.status == UNLEARNING
    assert state.ladder == ["amun", "salun", "retrain"]
    state.attempts.append(_attempt("retrain", "fail", "reject"))  # the exact retrain did not verify as exact
    assert not state.exhausted() and state.next_rung().next_method is None and state.status == DONE
    assert state.run_id == "run-retrain" and state.chosen is None
    # an inconclusive rung is the policy's business (hold/promote_low_power/retrain), not this bound's
    held = Escalation(UNLEARNING, ladder=["amun"], attempts=[_attempt("amun", "inconclusive", "hold")])
    assert not held.exhausted() and held.next_rung().held and held.next_method is None
    # a state written before this (every rung failed, action "reject") is unwedged by the next run
    old = Escalation(UNLEARNING, ladder=["finetune"], attempts=[_attempt("finetune", "fail", "reject")])
    assert old.next_rung().next_method == "retrain"


def test_a_resumed_escalation_keeps_its_tried_rungs_in_place_when_the_ladder_changes():
    """An audit demoted a method between two runs of one escalation: the ladder shrank under its attempts and the
    resumed run, reading rungs by position, skipped the next one (review of 2026-12-05: the exact retrain that
    active_ladder promises was never run)."""
    from tasks.stage.escalation import resumed_ladder
    from tasks.stage.state import UNLEARNING, Escalation

    tried = [_attempt("finetune", "fail", "reject")]
    assert resumed_ladder(tried, ["retrain"]) == ["finetune", "retrain"]  # finetune demoted: retrain alone left
    assert resumed_ladder(tried, ["salun"]) == ["finetune", "salun"]
    assert resumed_ladder(tried, ["finetune", "salun"]) == ["finetune", "salun"]
    state = Escalation(UNLEARNING, ladder=resumed_ladder(tried, ["salun"]), attempts=tried)
    assert state.next_rung().next_method == "salun"
    escalated = [_attempt("amun", "inconclusive", "retrain"), _attempt("retrain", "fail", "reject")]
    assert resumed_ladder(escalated, ["amun", "salun"]) == ["amun", "retrain"]  # nothing after the exact retrain


def test_an_attempt_report_counts_only_if_it_is_this_runs_readable_report(project):
    """A verdict is acted on only with its evidence: a missing, empty, garbled or another run's report is named as
    such (promote refuses it, the unlearn stage redoes the attempt; review of the missing-report fix)."""
    import json

    from tasks.stage.state import Attempt, attempt_report

    attempt = Attempt("amun", "run-1", "c.pt", 1.0, "2026-12-05T00:00:00Z", verdict="pass", report="run-1.json")
    path = project.reports_dir / "attempts" / "run-1.json"
    assert attempt_report(project, attempt) == (None, "missing")
    path.parent.mkdir(parents=True)
    for text in ("", "{trunc", "[1, 2]", json.dumps({"run_id": "run-1"})):
        path.write_text(text)
        assert attempt_report(project, attempt) == (None, "unreadable"), text
    path.write_text(json.dumps({"run_id": "run-2", "verdict": "pass"}))
    assert attempt_report(project, attempt) == (None, "of another run")
    path.write_text(json.dumps({"run_id": "run-1", "verdict": "pass"}))
    assert attempt_report(project, attempt) == ({"run_id": "run-1", "verdict": "pass"}, "")


def test_batch_norm_recalibration_is_part_of_an_escalations_identity(make_project):
    """A resumed escalation must not keep verdicts of candidates made under the other setting."""
    from tasks.stage.escalation import ladder_key

    on = Project(make_project({"unlearn": {"recalibrate_bn": True}}, name="on"))
    off = Project(make_project({"unlearn": {"recalibrate_bn": False}}, name="off"))
    assert ladder_key(on, "3", ["b1"]) != ladder_key(off, "3", ["b1"])


def test_the_utility_fraction_counts_in_an_escalations_identity_only_when_utility_is_gated(make_project):
    """An escalation recorded before gate.utility_loss_fraction existed (a project gating [forget_acc]) must keep its
    key after the upgrade, or a held batch restarts its attempts (review)."""
    from tasks.stage.escalation import ladder_key

    def key(name, checks, fraction):
        return ladder_key(Project(make_project({"gate": {"accuracy_checks": checks, "utility_loss_fraction": fraction}},
                                               name=name)), "3", ["b1"])

    assert key("a", ["forget_acc"], 0.1) == key("b", ["forget_acc"], 0.2)
    assert key("c", ["forget_acc", "utility"], 0.1) != key("d", ["forget_acc", "utility"], 0.2)

    def floor_key(name, checks, floor):  # gate.utility_loss_floor likewise
        return ladder_key(Project(make_project({"gate": {"accuracy_checks": checks, "utility_loss_floor": floor}},
                                               name=name)), "3", ["b1"])

    assert floor_key("e", ["forget_acc"], 0.02) == floor_key("f", ["forget_acc"], 0.05) == key("g", ["forget_acc"], 0.1)
    assert floor_key("h", ["forget_acc", "utility"], 0.02) != floor_key("i", ["forget_acc", "utility"], 0.05)


def test_a_recorded_demotion_cut_off_by_a_crash_is_applied_and_a_reinstatement_is_not_undone(project):
    """An audit wrote the demotion first and its records after: a crash between them left the method skipped for
    good with no audit on record (review of 2026-12-07). Now the records come first, and a recorded demotion that
    a crash cut off is applied by the next audit or escalation, unless a person reinstated the method since."""
    from tasks import ladder

    record = {"method": "finetune", "audit_id": "audit-1", "at": "2026-12-07T10:00:00Z", "model_version": "2",
              "run_id": "run-a", "verdict": "fail", "demoted": True, "offending": ["mia.lira_offline.auc"],
              "checks": []}
    ladder.append_history(project, {**record, "method": "amun", "audit_id": "audit-0", "demoted": False})
    ladder.append_history(project, record)  # the crash: recorded, not applied
    assert ladder.demoted(project) == {}
    assert ladder.recover_demotions(project) == ["finetune"]
    assert ladder.demoted(project)["finetune"]["audit_id"] == "audit-1"
    assert ladder.demoted(project)["finetune"]["metrics"] == ["mia.lira_offline.auc"]
    assert ladder.recover_demotions(project) == []  # applied once
    assert ladder.reinstate(project, "finetune")
    assert ladder.recover_demotions(project) == [] and "finetune" not in ladder.demoted(project)
    ladder.append_history(project, {**record, "audit_id": "audit-2"})  # a later audit demotes it again: applied
    assert ladder.recover_demotions(project) == ["finetune"]
    ladder.demote(project, "salun", {"audit_id": "a-9", "metrics": []})  # reinstatements survive other demotions
    assert ladder.reinstate(project, "finetune") and ladder.recover_demotions(project) == []


def test_a_resumed_escalation_keeps_why_it_escalated(project):
    """begin_unlearning reset the escalation's reason on resume: a crash between an inconclusive verdict and the
    exact retrain left the retrained version's `escalation_reason` empty (review of 2026-12-07). The reason is
    the latest kept attempt's policy reason that verify would have set (inconclusive, or escalated to retrain)."""
    import json

    from tasks.stage.escalation import kept_reason
    from tasks.stage.state import Attempt

    folder = project.reports_dir / "attempts"
    folder.mkdir(parents=True)

    def attempt(run_id, verdict, action, reason):
        (folder / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "verdict": verdict,
                                                           "policy_reason": reason}))
        return Attempt("amun", run_id, "c.pt", 1.0, "2026-12-07T00:00:00Z", verdict=verdict, action=action,
                       report=f"{run_id}.json")

    inconclusive = attempt("run-1", "inconclusive", "retrain", "inconclusive evidence: escalated to the exact retrain")
    failed = attempt("run-2", "fail", "next", "")
    assert kept_reason(project, []) == ""
    assert kept_reason(project, [inconclusive]) == "inconclusive evidence: escalated to the exact retrain"
    assert kept_reason(project, [inconclusive, failed]) == "inconclusive evidence: escalated to the exact retrain"
    assert kept_reason(project, [failed]) == ""


def test_batches_promoted_together_share_one_move_of_the_alias(project, monkeypatch):
    """Two batches promoted to one version: the second batch's `model.promoted` record said `recovered: true` with
    no previous version, a crash recovery that never happened (review of 2026-12-07). Held batches are promoted
    together like this in ordinary use. A re-run that finds the alias already moved still says recovered."""
    from types import SimpleNamespace

    from tasks import audit, tracking
    from tasks.stage.promote import finish_promotions
    from unlearn.requests import Ledger

    champion = {"version": "1"}
    monkeypatch.setattr(tracking, "registered_promotion", lambda *a, **k: object())
    monkeypatch.setattr(tracking, "champion_version", lambda *a, **k: SimpleNamespace(version=champion["version"]))
    monkeypatch.setattr(tracking, "move_champion", lambda _p, _c, version: champion.update(version=version))
    ledger = Ledger(project.ledger_path)
    for batch in ("batch-a", "batch-b"):
        ledger.add_batch(batch, [f"R-{batch}"], [f"s-{batch}"], "2026-12-07T10:00:00Z")
        ledger.set_status(batch, Ledger.PROMOTING, {"at": "2026-12-07T11:00:00Z", "model_version": "2",
                                                    "run_id": "run-2"})
    ledger.save()
    assert finish_promotions(project, None, ledger, recovering=False) == ["2", "2"] and champion["version"] == "2"
    records = audit.records(project, "model.promoted")
    assert [(r["batch_id"], r["previous_version"], r["recovered"]) for r in records] == [
        ("batch-a", "1", False), ("batch-b", "1", False)]
    ledger.add_batch("batch-c", ["R-c"], ["s-c"], "2026-12-07T10:00:00Z")  # a crash after the move: re-run
    ledger.set_status("batch-c", Ledger.PROMOTING, {"at": "2026-12-07T11:00:00Z", "model_version": "2",
                                                    "run_id": "run-2"})
    finish_promotions(project, None, ledger)
    assert audit.records(project, "model.promoted")[-1]["recovered"] is True


def test_a_reinstatement_outlives_a_later_cut_off_audit_and_a_damaged_history_blocks_nothing(project, caplog):
    """Second review (2026-12-07): reinstate remembered the audit the ladder named, while recovery looked at the
    newest audit in the history (one of the demoted method, cut off after its history): the method was demoted
    again at once. And a damaged audits.json stopped every escalation."""
    from tasks import ladder

    record = {"method": "finetune", "at": "2026-12-07T10:00:00Z", "model_version": "2", "run_id": "r",
              "verdict": "fail", "demoted": True, "offending": ["forget_acc"], "checks": []}
    ladder.append_history(project, {**record, "audit_id": "audit-A"})
    assert ladder.recover_demotions(project) == ["finetune"]
    ladder.append_history(project, {**record, "audit_id": "audit-B"})  # cut off after its history
    assert ladder.reinstate(project, "finetune")
    assert ladder.recover_demotions(project) == [] and "finetune" not in ladder.demoted(project)
    ladder.demote(project, "salun", {"audit_id": "audit-S", "metrics": []})
    (project.state_dir / "audits.json").write_text('{"audits": [{"at": "x"}]}')
    with caplog.at_level(logging.WARNING, logger="unlearn.pipeline"):
        assert ladder.recover_demotions(project) == []
    assert "corrupt" in caplog.text
    assert ladder.reinstate(project, "salun") and "salun" not in ladder.demoted(project)  # a person can still
