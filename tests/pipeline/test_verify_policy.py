"""The verification policy in params.yaml is checked against the attack registry before any work."""

import re

import pytest
import yaml
from conftest import REPO

from tasks.stage.checks import check_params, promotion_attacks
from unlearn.config import ConfigError, parse_params


def _params(**verify_and_gate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in verify_and_gate.items():
        raw[section].update(values)
    return parse_params(raw)


def test_the_shipped_policy_is_valid():
    check_params(_params())


@pytest.mark.parametrize("attack", ["lira_online", "lira_online_global", "ulira", "epsilon_score"])
def test_audit_only_attacks_are_refused_at_promotion_time_with_the_alternatives(attack):
    with pytest.raises(ConfigError, match="cannot run at promotion time") as info:
        check_params(_params(verify={"attacks": ["loss_threshold", attack]}))
    assert "lira_offline" in str(info.value) and attack not in promotion_attacks()


def test_reference_attacks_need_reference_models():
    with pytest.raises(ConfigError, match="verify.references.count >= 2"):
        check_params(_params(verify={"references": {"count": 0}}))


@pytest.mark.parametrize("value, message", [
    ({"count": 3}, "even number"), ({"batched": "sometimes"}, "auto, always or never")])
def test_reference_settings_are_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        _params(verify={"references": value})


@pytest.mark.parametrize("attacks, message", [
    (["lira_offline", "no_such_attack"], "gate.attacks: unknown attack"),
    (["lira_online"], "gate.attacks: 'lira_online' cannot run at promotion time"),
    (["lira_offline", "loss_threshold"], "loss_threshold cannot be gated in equivalence mode"),
    (["svc_confidence"], "svc_confidence cannot be gated in equivalence mode"),
])
def test_gated_attacks_are_validated_at_project_load(attacks, message):
    with pytest.raises(ConfigError, match=message):
        check_params(_params(gate={"attacks": attacks}))


def test_a_population_attack_is_gated_only_against_exact_retrains():
    """Equivalence mode's target AUC 0.5 needs a forget set drawn like the negatives; against exact retrains on the
    same sets (strict mode) a group effect cancels. verify.attacks still reports population attacks."""
    check_params(_params(gate={"mode": "strict", "attacks": ["loss_threshold", "lira_offline"]}))
    check_params(_params(verify={"attacks": ["loss_threshold", "lira_offline"]}))


def test_a_gated_attack_outside_verify_attacks_still_needs_references():
    params = _params(verify={"attacks": ["loss_threshold"], "references": {"count": 0}},
                     gate={"attacks": ["rmia_offline"]})
    with pytest.raises(ConfigError, match="gate.attacks: 'rmia_offline' needs reference models"):
        check_params(params)


def test_the_retired_fixed_tolerances_are_refused():
    with pytest.raises(ConfigError, match="tolerances"):
        _params(gate={"tolerances": {"test_acc": 0.03}})


def test_attack_options_must_belong_to_a_configured_attack():
    with pytest.raises(ConfigError, match="verify.attack_options.lira_online"):
        check_params(_params(verify={"attack_options": {"lira_online": {}}}))


def test_a_class_verified_with_other_samples_is_compared_with_test_samples_in_the_same_proportions(make_project):
    """A whole-class request verified together with a held batch's random samples: the test set was restricted
    to the class, the parent's LiRA 'excess' came out -0.26 and the exact retrain was 'detected' at +0.31, and
    those numbers went into certificates (review of 2026-12-05)."""
    import numpy as np
    from conftest import run_stages

    from tasks.project import load_project
    from tasks.stage.evaluation import evaluation_sets
    from unlearn.data import SampleStore

    project = load_project(make_project())
    run_stages(project, "ingest", "prepare")
    store = SampleStore(project.store_dir)
    train = store.load_split("train")
    sevens = np.flatnonzero(train.labels == 7)
    others = np.flatnonzero(train.labels != 7)[:20]
    pure = store.load(train.ids[sevens])
    whole = evaluation_sets(project, store, pure, [7])
    assert set(whole.test.labels.tolist()) == {7}  # as before
    # the utility checks measure every unseen sample of the other classes (review: on the class's samples alone
    # utility was never measurable, so a batch of whole classes could never pass)
    test_split = store.load_split("test")
    assert sorted(whole.ids["others"].tolist()) == sorted(test_split.ids[test_split.labels != 7].tolist())
    assert 7 not in set(whole.others.labels.tolist()) and len(whole.others.labels) == (test_split.labels != 7).sum()
    assert evaluation_sets(project, store, store.load(train.ids[others]), []).others is None  # sample-wise
    mixed = store.load(train.ids[np.concatenate([sevens, others])])
    sets = evaluation_sets(project, store, mixed, [7])
    forget_share = np.bincount(sets.forget.labels.numpy(), minlength=10) / len(sets.forget.labels)
    test_share = np.bincount(sets.test.labels.numpy(), minlength=10) / len(sets.test.labels)
    assert np.abs(forget_share - test_share).max() < 0.05 and len(sets.test.labels) >= 20
    assert 7 not in set(sets.others.labels.tolist())
    assert len(set(sets.ids["test"].tolist())) == len(sets.test.labels)  # real test samples, each once
    assert set(sets.ids["test"].tolist()) <= set(store.split_ids("test").tolist())


def test_a_sample_wise_request_that_empties_a_class_is_verified_as_a_forgotten_class(make_project):
    """Every training sample of one class named by id (one person is one class in a face-recognition model): the
    exact retrain never saw the class, and only class_acc tells a model that still recognises it from one that does
    not (forget_acc compares with the class's own unseen samples). Verified sample-wise, a model keeping 90% on the
    class passed (review of 2026-12-06). A request leaving one sample of the class is still sample-wise."""
    from conftest import drop_request, run_stages

    from tasks.method_audit import rebuild
    from tasks.project import load_project
    from tasks.stage.context import load_forget
    from tasks.stage.evaluation import evaluation_sets
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    project = load_project(make_project())
    run_stages(project, "ingest", "prepare")
    train = SampleStore(project.store_dir).load_split("train")
    sevens = train.ids[train.labels == 7].tolist()
    threes = train.ids[train.labels == 3].tolist()
    drop_request(project, "ALL-SEVENS", sevens)
    drop_request(project, "ALL-BUT-ONE-THREE", threes[1:])
    run_stages(project, "ingest", "prepare")
    store = SampleStore(project.store_dir)
    assert 7 not in set(store.load_split("train").labels.tolist())
    ledger = Ledger(project.ledger_path)
    batches = ledger.pending()
    assert ledger.forget_classes(batches) == []  # nobody declared a class
    sets = evaluation_sets(project, store, load_forget(project, batches), [])
    assert sets.forgotten_classes == (7,)  # not 3: one of its samples is still trained on
    mask = sets.class_negatives()
    assert mask is not None and mask.any()  # the gate adds class_acc on these
    test_labels = sets.test.labels.numpy()
    assert set(test_labels[mask].tolist()) == {7} and 3 in set(test_labels.tolist())  # matched on the forget mix
    assert 7 not in set(sets.others.labels.tolist())
    # a method audit rebuilds the same situation
    assert rebuild(project, ledger, batches).classes == (7,)


def test_verification_gates_utility_with_the_allowance_of_the_deletions_share():
    """gate_decision_for (verify and method audits) passes the deleted share: a 20-sample deletion from 2,000
    training samples may lose floor + 1% of the parent's skill, not the whole cap."""
    import numpy as np
    import torch

    from tasks.stage.evaluation import gate_decision_for
    from unlearn.gate import ScoredModel, utility_allowance
    from unlearn.methods import TensorSet
    from unlearn.verification import EvalSets

    rng = np.random.default_rng(0)
    gate = _params().gate

    def tensor_set(labels):
        return TensorSet(torch.zeros(len(labels), 1, 2, 2), torch.as_tensor(labels))

    test_labels = rng.integers(0, 10, 400)
    sets = EvalSets(tensor_set(rng.integers(0, 10, 20)), tensor_set(rng.integers(0, 10, 1980)), tensor_set(test_labels))
    assert sets.deleted_share() == pytest.approx(0.01)
    parent = ScoredModel({a: rng.normal(1, 1, 20) for a in gate.attacks},
                         {a: rng.normal(0, 1, 400) for a in gate.attacks}, np.ones(20),
                         (rng.random(400) < 0.9).astype(float))
    decision = gate_decision_for(gate, parent, parent, (), sets)
    (utility,) = [c for c in decision.checks if c.metric == "utility"]
    allowed, _ = utility_allowance(gate.utility_loss_fraction, gate.utility_loss_floor, 0.01)
    assert allowed < gate.utility_loss_fraction and utility.margin == pytest.approx(allowed * utility.parent_excess)


def test_the_report_says_what_the_intervals_cover_and_leave_out():
    """Reference attacks depend on which reference models were trained. The gate covers it with a leave-one-out
    jackknife when it has enough references (benchmarks/results/reference_variance*.md); the report, and so the
    certificate, says which attacks it covered, from the decision, and says plainly where nothing covered it."""
    from tasks.stage.verify import interval_scope

    covered = interval_scope(("lira_offline", "rmia_offline"), {"lira_offline": 4, "rmia_offline": 4})
    assert "and which reference models were trained" in covered and "jackknife over the 4 reference" in covered
    assert "lira_offline, rmia_offline" in covered and "optimistic" not in covered
    uncovered = interval_scope(("lira_offline", "rmia_offline"))  # e.g. two references: nothing to leave out
    assert "not which reference models were trained" in uncovered and "optimistic" in uncovered
    assert "lira_offline, rmia_offline" in uncovered and "jackknife" not in uncovered
    mixed = interval_scope(("lira_offline", "rmia_offline"), {"lira_offline": 4})
    assert "on which lira_offline also depend: a leave-one-out" in mixed
    assert "not which reference models were trained, on which rmia_offline" in mixed
    assert "reference" not in interval_scope(("loss_threshold",)) and "paired bootstrap" in interval_scope(())
    # nothing scored (too few samples, a refusal, a diverged model): no interval, and no false reason for it
    # (a review: it blamed 'fewer than 3 reference models' on a report listing four)
    unscored = interval_scope(("lira_offline", "rmia_offline"), {}, set())
    assert "no interval was computed for lira_offline, rmia_offline" in unscored and "fewer than" not in unscored
    partly = interval_scope(("lira_offline", "rmia_offline"), {"lira_offline": 4}, {"lira_offline"})
    assert "jackknife over the 4" in partly and "no interval was computed for rmia_offline" in partly


def _profiles_changed(change):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    change(raw["unlearn"]["profiles"])
    return parse_params(raw)


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.__setitem__("digit/small_cnn", p.pop("digits/small_cnn")),
     "unlearn.profiles.digit/small_cnn: no data source is named 'digit'"),
    (lambda p: p.__setitem__("fashion_mnist/resnet_18", p.pop("fashion_mnist/resnet18")),
     "unlearn.profiles.fashion_mnist/resnet_18: no model is named 'resnet_18'"),
    (lambda p: p["digits/small_cnn"].__setitem__("amnu", p["digits/small_cnn"].pop("amun")),
     "unlearn.profiles.digits/small_cnn: unknown unlearning method 'amnu'"),
    (lambda p: p["fashion_mnist/small_cnn"]["dlfd"].__setitem__("lrr", 0.1),  # a profile that is not active
     "unlearn.profiles.fashion_mnist/small_cnn.dlfd: "),
    (lambda p: p["digits/small_cnn"]["salun"].__setitem__("mask_ration", 0.5),  # was blamed on unlearn.methods
     "unlearn.profiles.digits/small_cnn.salun: "),
    (lambda p: p["digits/small_cnn"]["amun"].__setitem__("epochs", 10**20),  # ran on for ever
     "unlearn.profiles.digits/small_cnn.amun: method 'amun': epochs must be between 1 and 10000"),
])
def test_every_profile_is_checked_not_only_the_active_one(change, message):
    """A mistyped profile key or method name was ignored, and the tuned values with it (the method ran on its paper
    defaults); a bad keyword outside the ladder passed (review of 2026-12-07)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_params(_profiles_changed(change))
    check_params(_profiles_changed(lambda p: p.__setitem__("imagefolder/torchvision:resnet50", {"amun": {"lr": 0.01}})))
