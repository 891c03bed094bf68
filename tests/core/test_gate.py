"""The equivalence gate (unlearn/gate.py): known answers on a real overfit model, and its rules."""

import functools
import inspect

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from unlearn.attacks import compute_signals, run_attack
from unlearn.attacks.base import AttackInput
from unlearn.config import ConfigError, GateConfig, parse_params
from unlearn.gate import FAIL, INCONCLUSIVE, PASS, ScoredModel, gate_decision
from unlearn.gate_bootstrap import weighted_auc
from unlearn.gate_policy import audit_demotes, consolidate_due, next_action
from unlearn.metrics import roc_auc
from unlearn.training import predict_logits

# ---------------------------------------------------------------- a world where membership is detectable


@functools.cache
def _canary_world():
    """A world where membership is detectable by construction (LiRA-style canaries).

    Canaries are uniform-noise 8x8 images with random labels: nothing about one predicts
    another, so a model can only classify a canary it trained on. The forget set is 150
    canaries, the negatives 450 other canaries; everyone also trains on 300 real digits. The
    parent fits digits + forget canaries (it memorises them); the "never" model fits the digits
    only (the exact retrain). Its forget-vs-negative AUC is 0.5 by exchangeability, and its
    accuracy on both canary sets is chance. Full-batch Adam on a tiny MLP, one thread: about a
    second even on a shared CPU.
    """
    rng = np.random.default_rng(0)
    digits = load_digits()
    real = torch.tensor(digits.images[:300, None] / 16.0, dtype=torch.float32)
    real_y = torch.tensor(digits.target[:300], dtype=torch.long)
    canaries = torch.tensor(rng.random((600, 1, 8, 8)), dtype=torch.float32)
    canary_y = torch.tensor(rng.integers(0, 10, 600), dtype=torch.long)
    images, labels = torch.cat([canaries, real]), torch.cat([canary_y, real_y])
    forget, test, retain = np.arange(150), np.arange(150, 600), np.arange(600, 900)

    def train(idx, seed):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                        torch.nn.Linear(256, 10))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            x, y = images[idx], labels[idx]
            for _ in range(300):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
        return model.eval()

    parent = train(np.concatenate([forget, retain]), 1)
    never = train(retain, 2)
    return images, labels, forget, retain, test, parent, never


def _scored(model, world):
    images, labels, forget, retain, test, *_ = world
    signals = {name: compute_signals(predict_logits(model, images[idx], device="cpu"), labels[idx])
               for name, idx in (("forget", forget), ("retain", retain), ("test", test))}
    result = run_attack("loss_threshold", AttackInput(signals["forget"], signals["retain"], signals["test"]))
    return ScoredModel({"loss_threshold": result.member_scores}, {"loss_threshold": result.nonmember_scores},
                       signals["forget"].correct, signals["test"].correct)


def test_parent_fails_and_a_model_that_never_saw_the_forget_set_passes():
    world = _canary_world()
    parent, never = _scored(world[5], world), _scored(world[6], world)
    assert roc_auc(parent.member["loss_threshold"], parent.nonmember["loss_threshold"]) > 0.7  # detectable
    as_candidate = gate_decision(parent, parent, attacks=["loss_threshold"], resamples=500)
    assert as_candidate.verdict == FAIL
    assert as_candidate.parent_detected
    check = as_candidate.checks[0]
    assert check.ci_low >= check.margin > 0  # conclusively above the margin, not just "not shown equivalent"
    retrained = gate_decision(never, parent, attacks=["loss_threshold"], resamples=500)
    assert retrained.verdict == PASS, retrained.summary()
    assert -check.margin < retrained.checks[0].ci_low < retrained.checks[0].ci_high < check.margin
    # strict mode: the exact retrain as the target, the parent still fails
    strict = gate_decision(parent, parent, attacks=["loss_threshold"], targets=[never], resamples=500)
    assert strict.mode == "strict" and strict.verdict == FAIL


def test_no_positive_control_is_inconclusive_never_pass():
    world = _canary_world()
    never = _scored(world[6], world)
    # "parent" that never memorised D_F (a well-generalising model): the control cannot see membership
    decision = gate_decision(never, never, attacks=["loss_threshold"], resamples=500)
    assert decision.verdict == INCONCLUSIVE and not decision.passed
    assert "positive control" in decision.reason and "NOT a pass" in decision.reason
    assert not decision.checks[0].parent_detected and np.isnan(decision.checks[0].margin)


def test_tiny_forget_set_is_inconclusive():
    world = _canary_world()
    parent, never = _scored(world[5], world), _scored(world[6], world)

    def first(model, n):
        return ScoredModel({"loss_threshold": model.member["loss_threshold"][:n]}, model.nonmember,
                           model.forget_correct[:n], model.test_correct)

    for n in (1, 10):
        decision = gate_decision(first(never, n), first(parent, n), attacks=["loss_threshold"], resamples=200)
        assert decision.verdict == INCONCLUSIVE and not decision.passed
        assert "too few samples" in decision.reason and decision.checks == ()


def _synthetic(shift, rng, n_forget=400, n_test=800, forget_acc=0.97):
    return ScoredModel({"a": rng.normal(shift, 1.0, n_forget)}, {"a": rng.normal(0.0, 1.0, n_test)},
                       (rng.random(n_forget) < forget_acc).astype(float), (rng.random(n_test) < 0.9).astype(float))


def test_over_forgetting_fails():
    rng = np.random.default_rng(1)
    parent = _synthetic(1.0, rng)
    decision = gate_decision(_synthetic(-1.0, rng), parent, attacks=["a"], resamples=300)
    assert decision.verdict == FAIL
    assert "over-forgets" in decision.checks[0].reason
    # the accuracy gap too: forget accuracy far below the negatives' accuracy
    low_acc = _synthetic(0.0, rng, forget_acc=0.5)
    decision = gate_decision(low_acc, parent, attacks=[], accuracy_checks=["forget_acc"], resamples=300)
    assert decision.verdict == FAIL and "over-forgets" in decision.checks[0].reason


def test_the_parent_never_passes_whatever_the_margin():
    rng = np.random.default_rng(2)
    for shift in (0.05, 0.2, 1.0):
        parent = _synthetic(shift, rng)
        for fraction in (0.1, 0.5, 0.99):
            decision = gate_decision(parent, parent, attacks=["a"], margin_fraction=fraction, resamples=200)
            assert decision.verdict != PASS


def test_test_accuracy_is_non_inferiority_against_the_parent():
    rng = np.random.default_rng(3)
    parent = _synthetic(1.0, rng, forget_acc=1.0)  # forget-acc excess about 0.1: margin about 0.05
    broken = ScoredModel(parent.member, parent.nonmember, parent.forget_correct * 0 + 0.9,
                         (rng.random(800) < 0.6).astype(float))
    decision = gate_decision(broken, parent, attacks=["a"], accuracy_checks=["test_acc"], resamples=300)
    assert decision.verdict == FAIL and decision.checks[-1].metric == "test_acc"
    assert decision.checks[-1].verdict == FAIL
    same = gate_decision(parent, parent, attacks=["a"], accuracy_checks=["test_acc"], resamples=300)
    assert same.checks[-1].verdict == PASS  # the parent keeps its own utility...
    assert same.verdict != PASS  # ...but forgot nothing, which the forgetting check sees


def test_test_accuracy_alone_is_refused_it_would_pass_the_parent():
    """test_acc checks utility, not forgetting: a gate of test_acc alone passed the parent itself (review)."""
    rng = np.random.default_rng(3)
    parent = _synthetic(1.0, rng, forget_acc=1.0)
    with pytest.raises(ValueError, match="at least one forgetting check"):
        gate_decision(parent, parent, attacks=[], accuracy_checks=["test_acc"], resamples=300)
    assert gate_decision(parent, parent, attacks=[], accuracy_checks=["forget_acc", "test_acc"],
                         resamples=300).verdict != PASS


def _labelled(rng, n_forget=400, n_test=800, accuracy=0.9, classes=10):
    """A parent whose membership and forget-accuracy gap are detectable, with real-looking labels."""
    labels = rng.integers(0, classes, n_test)
    model = ScoredModel({"a": rng.normal(1.0, 1.0, n_forget)}, {"a": rng.normal(0.0, 1.0, n_test)},
                        np.ones(n_forget), (rng.random(n_test) < accuracy).astype(float))
    return model, labels


def test_a_destroyed_model_forgets_perfectly_and_fails_on_utility():
    """A model answering one class for everything looks never-trained to every forgetting check; the default
    gate (forget_acc + utility) must not promote it (review: it passed lira, rmia and forget_acc)."""
    rng = np.random.default_rng(5)
    parent, labels = _labelled(rng)
    destroyed_member, destroyed_nonmember = rng.normal(0.0, 1.0, 400), rng.normal(0.0, 1.0, 800)
    destroyed = ScoredModel({"a": destroyed_member}, {"a": destroyed_nonmember},
                            (rng.integers(0, 10, 400) == 3).astype(float), (labels == 3).astype(float))
    forgetting_only = gate_decision(destroyed, parent, attacks=["a"], accuracy_checks=["forget_acc"], resamples=300,
                                    utility_labels=labels)
    assert forgetting_only.verdict == PASS  # the hazard this check exists for
    decision = gate_decision(destroyed, parent, attacks=["a"], accuracy_checks=["forget_acc", "utility"],
                             resamples=300, utility_labels=labels)
    assert decision.verdict == FAIL, decision.summary()
    (utility,) = [c for c in decision.checks if c.metric == "utility"]
    assert utility.verdict == FAIL and utility.parent_detected and "utility lost" in utility.reason
    assert "lost more accuracy" in decision.reason and "not equivalent" not in decision.reason
    # the margin is measured: the default fraction (benchmarks/utility_margin.py) of the parent's skill over the
    # most frequent class's share
    majority_share = np.bincount(labels).max() / len(labels)
    assert utility.parent_excess == pytest.approx((parent.test_correct.sum() + 1) / 802
                                                  - ((labels == np.bincount(labels).argmax()).sum() + 1) / 802)
    default = inspect.signature(gate_decision).parameters["utility_loss_fraction"].default
    assert default == GateConfig().utility_loss_fraction  # the core's default is the configuration's
    assert utility.margin == pytest.approx(default * utility.parent_excess)
    assert 0.9 - majority_share - 0.05 < utility.parent_excess < 0.9 - majority_share + 0.05
    # the positive control of forgetting is not the utility check's: parent_detected is about membership
    assert decision.parent_detected


def test_utility_is_one_sided_and_its_margin_scales_with_the_parents_skill():
    rng = np.random.default_rng(6)
    parent, labels = _labelled(rng)
    n_test = len(labels)

    def with_accuracy(acc):
        return ScoredModel(parent.member, parent.nonmember, parent.forget_correct,
                           (rng.random(n_test) < acc).astype(float))

    kw = dict(attacks=["a"], accuracy_checks=["utility"], resamples=300, utility_labels=labels)
    checks = {acc: [c for c in gate_decision(with_accuracy(acc), parent, **kw).checks if c.metric == "utility"][0]
              for acc in (0.95, 0.89, 0.5)}
    assert checks[0.95].verdict == PASS  # better than the parent is never a loss
    assert checks[0.89].verdict == PASS  # about one point lost of ~0.8 skill: well inside 10% of it
    assert checks[0.5].verdict == FAIL
    # a looser fraction lets the half-accuracy model through; the margin is the parent's skill times it
    loose = [c for c in gate_decision(with_accuracy(0.5), parent, **kw, utility_loss_fraction=0.9).checks
             if c.metric == "utility"][0]
    assert loose.verdict == PASS and loose.margin == pytest.approx(0.9 * loose.parent_excess)


def test_the_utility_allowance_grows_with_the_share_of_data_deleted():
    """A flat 10% of the skill let a model lose ~8 points after a 20-sample deletion, where an exact retrain loses
    nothing measurable: scaled, the allowance is the floor plus the deleted share, capped by the fraction."""
    from unlearn.gate import utility_allowance

    rng = np.random.default_rng(6)
    parent, labels = _labelled(rng)
    lost = ScoredModel(parent.member, parent.nonmember, parent.forget_correct, parent.test_correct.copy())
    right = np.flatnonzero(lost.test_correct)
    lost.test_correct[rng.choice(right, size=40, replace=False)] = 0.0  # 5 points of ~0.8 skill lost
    kw = dict(attacks=["a"], accuracy_checks=["utility"], resamples=300, utility_labels=labels)

    def utility(**extra):
        return [c for c in gate_decision(lost, parent, **kw, **extra).checks if c.metric == "utility"][0]

    assert utility().verdict == PASS  # the flat 0.1: 5 points are inside ~8
    small = utility(utility_loss_floor=0.02, deleted_share=0.001)
    assert small.verdict == FAIL and small.margin == pytest.approx(0.021 * small.parent_excess)
    assert "0.021 of the parent's skill: 0.02 + 0.1% of the training data deleted" in small.reason
    large = utility(utility_loss_floor=0.02, deleted_share=0.4)
    assert large.verdict == PASS and large.margin == pytest.approx(0.1 * large.parent_excess)
    assert "the cap" in large.reason
    assert utility_allowance(0.1, 0.1, 0.0)[0] == 0.1  # floor = fraction: the flat allowance
    for bad in (dict(floor=0.0, deleted_share=0.1), dict(floor=0.2, deleted_share=0.1),
                dict(floor=0.02, deleted_share=1.5), dict(floor=0.02, deleted_share=-0.1)):
        with pytest.raises(ValueError, match="utility_loss_floor|deleted_share"):
            utility_allowance(0.1, **bad)
    default = inspect.signature(gate_decision).parameters["utility_loss_floor"].default
    assert default is None and GateConfig().utility_loss_floor <= GateConfig().utility_loss_fraction


def test_utility_without_skill_is_inconclusive_never_pass():
    """Negatives the parent cannot classify (random labels) cannot show a loss: no control, no pass."""
    rng = np.random.default_rng(7)
    parent, labels = _labelled(rng, accuracy=0.1)
    decision = gate_decision(parent, parent, attacks=["a"], accuracy_checks=["utility"], resamples=300,
                             utility_labels=labels)
    (utility,) = [c for c in decision.checks if c.metric == "utility"]
    assert utility.verdict == INCONCLUSIVE and not utility.parent_detected and np.isnan(utility.margin)
    assert "not measurable" in utility.reason
    # a class-imbalanced negative set: the baseline is the most frequent class, not 1 / classes
    skewed = np.where(rng.random(len(labels)) < 0.9, 0, labels)
    always_zero = ScoredModel(parent.member, parent.nonmember, parent.forget_correct, (skewed == 0).astype(float))
    decision = gate_decision(always_zero, always_zero, attacks=["a"], accuracy_checks=["utility"], resamples=300,
                             utility_labels=skewed)
    assert [c for c in decision.checks if c.metric == "utility"][0].verdict == INCONCLUSIVE


def test_utility_needs_valid_labels():
    rng = np.random.default_rng(8)
    parent, labels = _labelled(rng)
    kw = dict(attacks=["a"], accuracy_checks=["utility"], resamples=300)
    with pytest.raises(ValueError, match="utility_labels"):
        gate_decision(parent, parent, **kw)
    with pytest.raises(ValueError, match="utility_labels"):
        gate_decision(parent, parent, **kw, utility_labels=labels[:-1])
    with pytest.raises(ValueError, match="utility_labels"):
        gate_decision(parent, parent, **kw, utility_labels=labels.astype(float))
    assert gate_decision(parent, parent, **kw, utility_labels=labels - 3).checks  # any integer labels
    for fraction in (0.0, 1.0):  # at 1 a model answering the most frequent class could never fail (review)
        with pytest.raises(ValueError, match="utility_loss_fraction"):
            gate_decision(parent, parent, **kw, utility_labels=labels, utility_loss_fraction=fraction)
    with pytest.raises(ValueError, match="every model or none carries a utility set"):
        gate_decision(ScoredModel(parent.member, parent.nonmember, parent.forget_correct, parent.test_correct,
                                  parent.test_correct), parent, **kw, utility_labels=labels)
    with pytest.raises(ValueError, match="at least one forgetting check"):
        gate_decision(parent, parent, attacks=[], accuracy_checks=["utility"], resamples=300, utility_labels=labels)


def test_a_strict_audit_does_not_demote_a_method_for_being_more_accurate():
    rng = np.random.default_rng(9)
    parent, labels = _labelled(rng, accuracy=0.85)
    retrain = ScoredModel(parent.member, parent.nonmember, parent.forget_correct,
                          (rng.random(len(labels)) < 0.7).astype(float))
    decision = gate_decision(parent, parent, attacks=["a"], accuracy_checks=["utility"], targets=[retrain],
                             resamples=300, utility_labels=labels)
    (utility,) = [c for c in decision.checks if c.metric == "utility"]
    assert utility.estimate > utility.margin > 0 and utility.verdict == PASS
    assert "utility" not in audit_demotes(decision)
    worse = gate_decision(retrain, parent, attacks=["a"], accuracy_checks=["utility"], targets=[parent],
                          resamples=300, utility_labels=labels)
    assert "utility" in audit_demotes(worse)


def test_replicates_and_retrain_seeds_widen_the_interval():
    rng = np.random.default_rng(4)
    parent = _synthetic(1.0, rng)
    cand = _synthetic(0.0, rng)
    noisy = ScoredModel({"a": np.stack([cand.member["a"]] + [cand.member["a"] + rng.normal(0, 0.5, 400)
                                                             for _ in range(4)])},
                        {"a": np.stack([cand.nonmember["a"]] * 5)}, cand.forget_correct, cand.test_correct)
    par5 = ScoredModel({"a": np.stack([parent.member["a"]] * 5)}, {"a": np.stack([parent.nonmember["a"]] * 5)},
                       parent.forget_correct, parent.test_correct)
    one = gate_decision(cand, parent, attacks=["a"], resamples=400).checks[0]
    many = gate_decision(noisy, par5, attacks=["a"], resamples=400)
    assert many.checks[0].ci_high - many.checks[0].ci_low > one.ci_high - one.ci_low
    assert many.checks[0].candidate == pytest.approx(one.candidate)  # the point is row 0's: all references
    assert many.reference_jackknife == {"a": 4}
    retrains = [_synthetic(0.0, rng) for _ in range(3)]
    strict = gate_decision(cand, parent, attacks=["a"], targets=retrains, resamples=400)
    assert strict.n_targets == 3 and strict.verdict in (PASS, INCONCLUSIVE)


def test_weighted_auc_matches_roc_auc_and_bad_input_is_refused():
    rng = np.random.default_rng(5)
    member, nonmember = rng.integers(0, 5, 50).astype(float), rng.integers(0, 5, 70).astype(float)  # many ties
    assert weighted_auc(member, nonmember, np.ones((1, 50)), np.ones((1, 70)))[0] == pytest.approx(
        roc_auc(member, nonmember))
    parent = _synthetic(1.0, rng)
    with pytest.raises(ValueError, match="margin_fraction"):
        gate_decision(parent, parent, attacks=["a"], margin_fraction=1.0)
    with pytest.raises(ValueError, match="same forget"):
        gate_decision(_synthetic(0.0, rng, n_forget=30), parent, attacks=["a"])
    with pytest.raises(ValueError, match="no scores"):
        gate_decision(parent, parent, attacks=["b"])


def test_decision_record_has_every_number():
    rng = np.random.default_rng(6)
    decision = gate_decision(_synthetic(0.0, rng), _synthetic(1.0, rng), attacks=["a"], resamples=200)
    record = decision.to_dict()
    check = record["checks"][0]
    for key in ("estimate", "ci_low", "ci_high", "margin", "parent_excess", "parent_ci_low", "parent_detected",
                "n_forget", "n_negative", "reason"):
        assert key in check
    assert record["alpha"] == 0.05 and record["resamples"] == 200 and "verdict" in decision.summary()


# ---------------------------------------------------------------- what follows a verdict


def test_next_action_holds_within_bounds_then_retrains():
    kwargs = {"max_hold_batches": 3, "max_hold_hours": 24.0}
    assert next_action(PASS, on_inconclusive="hold", **kwargs) == "promote"
    assert next_action(FAIL, on_inconclusive="promote_low_power", **kwargs) == "retrain"
    assert next_action(INCONCLUSIVE, on_inconclusive="hold", held_batches=1, held_hours=1, **kwargs) == "hold"
    assert next_action(INCONCLUSIVE, on_inconclusive="hold", held_batches=3, held_hours=1, **kwargs) == "retrain"
    assert next_action(INCONCLUSIVE, on_inconclusive="hold", held_batches=1, held_hours=24, **kwargs) == "retrain"
    assert next_action(INCONCLUSIVE, on_inconclusive="promote_low_power") == "promote_low_power"
    assert next_action(INCONCLUSIVE, on_inconclusive="retrain") == "retrain"
    with pytest.raises(ValueError):
        next_action(INCONCLUSIVE, on_inconclusive="wait")


def test_consolidation_and_audit_rules():
    assert consolidate_due(50, 1000, 1, deleted_fraction=0.05, every_batches=0)
    assert not consolidate_due(49, 1000, 100, deleted_fraction=0.05, every_batches=0)
    assert consolidate_due(0, 1000, 10, deleted_fraction=0.05, every_batches=10)
    rng = np.random.default_rng(7)
    parent = _synthetic(1.0, rng)
    audit = gate_decision(parent, parent, attacks=["a"], targets=[_synthetic(0.0, rng)], resamples=200)
    assert audit_demotes(audit) == ["mia.a.auc"]
    good = gate_decision(_synthetic(0.0, rng), parent, attacks=["a"], targets=[_synthetic(0.0, rng)], resamples=200)
    assert audit_demotes(good) == []
    with pytest.raises(ValueError, match="strict"):
        audit_demotes(gate_decision(parent, parent, attacks=["a"], resamples=200))


def test_gate_config_is_strict():
    params = parse_params({})
    assert params.gate.mode == "equivalence" and params.gate.on_inconclusive == "hold"
    for bad in ({"margin_fraction": 1.0}, {"alpha": 0.5}, {"alpha": 0.1}, {"min_samples": 5},
                {"on_inconclusive": "wait"}, {"mode": "loose"},
                {"accuracy_checks": ["retain_acc"]}, {"max_hold_hours": 0}, {"resamples": 10},
                {"audit": {"every_batches": 0, "cron": None}}, {"consolidate": {"deleted_fraction": 0}},
                {"bogus": 1}):
        with pytest.raises(ConfigError):
            parse_params({"gate": bad})


def test_all_correct_forget_set_does_not_make_a_retrain_fail():
    # 98.9 % accurate model that happens to get all 100 forget samples right (p = 0.33): a plain
    # percentile bootstrap gives the forget accuracy zero width and "conclusively" fails it.
    rng = np.random.default_rng(8)
    test_correct = (np.arange(450) >= 5).astype(float)  # 445 / 450
    parent = ScoredModel({}, {}, np.ones(100), test_correct)
    retrain = ScoredModel({}, {}, np.ones(100), test_correct[rng.permutation(450)])
    decision = gate_decision(retrain, parent, attacks=[], accuracy_checks=["forget_acc"], resamples=500)
    assert decision.verdict == INCONCLUSIVE  # the gap of 1 % is not detectable with 100 samples
    assert not decision.checks[0].parent_detected


def test_gate_scores_pairs_models_and_replicates_over_references():
    from unlearn.attacks.signals import logit_scaled_confidence
    from unlearn.verification import ModelEvidence, gate_scores

    rng = np.random.default_rng(9)

    def evidence(shift):
        logits = {name: torch.tensor(rng.normal(0, 1, (n, 3)) + np.eye(3)[rng.integers(0, 3, n)] * shift)
                  for name, n in (("forget", 60), ("test", 90))}
        targets = {name: torch.zeros(len(v), dtype=torch.long) for name, v in logits.items()}
        sig = {k: compute_signals(v, targets[k]) for k, v in logits.items()}
        phi = {k: logit_scaled_confidence(v[:, None], targets[k]) for k, v in logits.items()}
        return ModelEvidence(sig["forget"], None, sig["test"], phi["forget"], phi["test"], digest=str(shift))

    refs = [evidence(0.0) for _ in range(4)]
    target = evidence(1.0)
    once = gate_scores(target, refs, attacks=["lira_offline", "rmia_offline", "loss_threshold"], seed=3,
                       jackknife=False)
    assert once.member["lira_offline"].shape == (60,) and once.nonmember["rmia_offline"].shape == (45,)
    again = gate_scores(target, refs, attacks=["rmia_offline"], seed=3, jackknife=False)
    np.testing.assert_array_equal(again.nonmember["rmia_offline"], once.nonmember["rmia_offline"])  # same split
    # by default each reference attack is also scored without each reference (leave-one-out replicates)
    replicated = gate_scores(target, refs, attacks=["lira_offline", "rmia_offline", "loss_threshold"], seed=3)
    assert replicated.member["lira_offline"].shape == (5, 60) and replicated.nonmember["rmia_offline"].shape == (5, 45)
    np.testing.assert_array_equal(replicated.member["lira_offline"][0], once.member["lira_offline"])  # row 0: all
    without_second = gate_scores(target, [refs[0], *refs[2:]], attacks=["lira_offline"], seed=3, jackknife=False)
    np.testing.assert_array_equal(replicated.member["lira_offline"][2], without_second.member["lira_offline"])
    assert replicated.member["loss_threshold"].shape == (60,)  # no references: nothing to replicate
    # two references: leaving one out leaves LiRA a single observation per sample, so no replicates
    assert gate_scores(target, refs[:2], attacks=["lira_offline"], seed=3).member["lira_offline"].shape == (60,)
    with pytest.raises(ValueError, match="svc_confidence needs both"):  # no retain signals given
        gate_scores(target, refs, attacks=["svc_confidence"], seed=3)


def test_forget_acc_compares_a_one_class_forget_set_with_negatives_of_its_class():
    """One person's samples of one class (a face-recognition identity): forget_acc compared class 0 with every
    class, so a model that never saw them 'over-forgot' conclusively on a hard class (left open in an earlier
    session's note). With the labels, the negatives are weighed to the forget set's label mix."""
    rng = np.random.default_rng(10)
    n_forget, per_class = 400, 300
    negative_labels = np.repeat(np.arange(10), per_class)
    forget_labels = np.zeros(n_forget, dtype=int)
    hard = np.where(negative_labels == 0, 0.8, 0.98)  # class 0 is hard for every model
    test_correct = (rng.random(len(negative_labels)) < hard).astype(float)
    parent = ScoredModel({"a": rng.normal(1.0, 1.0, n_forget)}, {"a": rng.normal(0, 1, len(negative_labels))},
                         np.ones(n_forget), test_correct)  # memorised D_F
    never = ScoredModel({"a": rng.normal(0.0, 1.0, n_forget)}, parent.nonmember,
                        (rng.random(n_forget) < 0.8).astype(float), test_correct)  # as accurate as on class 0
    kw = dict(attacks=[], accuracy_checks=["forget_acc"], resamples=300)
    unmatched = gate_decision(never, parent, **kw)
    assert unmatched.verdict == FAIL and "over-forgets" in unmatched.checks[0].reason  # the bias
    matched = gate_decision(never, parent, **kw, labels=(forget_labels, negative_labels))
    assert matched.verdict == PASS, matched.summary()
    check = matched.checks[0]
    assert check.parent_excess == pytest.approx(1.0 - test_correct[negative_labels == 0].mean(), abs=0.01)
    assert gate_decision(parent, parent, **kw, labels=(forget_labels, negative_labels)).verdict == FAIL
    # negatives already in the forget set's mix: the weighting changes nothing
    mixed = rng.integers(0, 10, n_forget)
    balanced = gate_decision(never, parent, **kw, labels=(np.repeat(np.arange(10), 40), negative_labels))
    assert balanced.checks[0].estimate == gate_decision(never, parent, **kw).checks[0].estimate
    with pytest.raises(ValueError, match="labels must be"):
        gate_decision(never, parent, **kw, labels=(mixed[:-1], negative_labels))


def test_label_matched_forget_acc_with_few_negatives_of_the_class_is_too_few_not_nan():
    """3 negatives of the forget set's class behind a check recorded with 1,000: some resamples drew none of them,
    the interval came out NaN and the reason blamed the positive control (review)."""
    rng = np.random.default_rng(11)
    negative_labels = np.concatenate([np.full(3, 7), rng.integers(0, 7, 997)])
    parent = ScoredModel({}, {}, np.ones(40), (rng.random(1000) < 0.9).astype(float))
    never = ScoredModel({}, {}, (rng.random(40) < 0.9).astype(float), parent.test_correct)
    decision = gate_decision(never, parent, attacks=[], accuracy_checks=["forget_acc"], resamples=300,
                             labels=(np.full(40, 7), negative_labels))
    (check,) = decision.checks
    assert check.verdict == INCONCLUSIVE and check.n_negative == 3 and "too few samples" in check.reason
    assert "too few samples to measure forget_acc" in decision.reason and "positive control" not in decision.reason


def test_test_acc_keeps_the_unweighted_margin_when_forget_acc_is_label_matched():
    """On a hard class the label-matched memory effect is large; test_acc borrowed it and passed a model that lost
    12.6 points of accuracy (review). Its margin is the unweighted gap's, as before the matching."""
    rng = np.random.default_rng(12)
    negative_labels = np.repeat(np.arange(10), 500)
    hard = np.where(negative_labels == 3, 0.6, 0.94)
    parent_test = (rng.random(5000) < hard).astype(float)
    parent = ScoredModel({}, {}, np.ones(200), parent_test)
    worse = np.where(rng.random(5000) < 0.14, 0.0, parent_test)  # loses about 12.6 points everywhere
    candidate = ScoredModel({}, {}, (rng.random(200) < 0.5).astype(float), worse)
    decision = gate_decision(candidate, parent, attacks=[], accuracy_checks=["forget_acc", "test_acc"],
                             resamples=300, labels=(np.full(200, 3), negative_labels))
    checks = {c.metric: c for c in decision.checks}
    assert checks["test_acc"].verdict == FAIL and checks["test_acc"].margin < 0.06 < checks["forget_acc"].margin


def test_the_reference_jackknife_adds_its_variance_and_keeps_models_paired():
    """Which reference models were trained moves a reference attack's AUC; the sample bootstrap alone left that
    out (benchmarks/results/reference_variance.md). Leave-one-out replicates add a Gaussian term with the
    jackknife variance, weighing each model's deviations with multipliers shared by every model of a decision,
    so a candidate scored exactly like its parent differs from it by nothing."""
    from unlearn.gate_bootstrap import auc_draws, bootstrap_weights, weighted_auc

    rng = np.random.default_rng(12)
    base = _synthetic(0.6, rng, n_forget=300)
    shifts = np.array([0.0, 0.25, -0.2, 0.1, -0.3, 0.05])  # the score each left-out reference moves D_F by
    member = np.stack([base.member["a"]] + [base.member["a"] + d for d in shifts])
    nonmember = np.stack([base.nonmember["a"]] * (1 + len(shifts)))
    model = ScoredModel({"a": member}, {"a": nonmember}, base.forget_correct, base.test_correct)
    k, resamples = len(shifts), 4000
    w_rng = np.random.default_rng(0)
    wf, wn = bootstrap_weights(300, resamples, w_rng), bootstrap_weights(len(nonmember[0]), resamples, w_rng)
    multipliers = w_rng.standard_normal((resamples, k))
    point, draws = auc_draws(model, "a", wf, wn, multipliers)
    assert point == pytest.approx(weighted_auc(member[0], nonmember[0], np.ones((1, 300)),
                                               np.ones((1, len(nonmember[0]))))[0])
    _, plain = auc_draws(base, "a", wf, wn)
    left_out = np.array([weighted_auc(m, n, np.ones((1, 300)), np.ones((1, len(n))))[0]
                         for m, n in zip(member[1:], nonmember[1:], strict=True)])
    expected = (k - 1) / k * np.sum((left_out - left_out.mean()) ** 2)
    assert draws.var() == pytest.approx(plain.var() + expected, rel=0.1)  # independent of the sample resampling
    assert draws.var() > 1.5 * plain.var()  # and not negligible here, so the check above has teeth
    _, twin = auc_draws(model, "a", wf, wn, multipliers)
    np.testing.assert_array_equal(draws - twin, 0.0)  # deterministic given the multipliers
    with pytest.raises(ValueError, match="disagree"):  # one model scored without the references' replicates
        auc_draws(base, "a", wf, wn, multipliers)
    with pytest.raises(ValueError, match="disagree"):
        auc_draws(model, "a", wf, wn, multipliers[:, :3])


def test_one_unusual_reference_among_many_widens_the_interval_and_never_moves_an_end_inward():
    """A review (2026-12-06) broke the first version, which drew one left-out reference per resample: with K
    references above 1 / alpha, one unusual reference fell outside the percentiles and the interval shifted
    (an inconclusive candidate passed, an undetected parent read as detected). With symmetric, continuous
    multipliers each end only moves outward."""
    from unlearn.gate_bootstrap import auc_draws, bootstrap_weights

    rng = np.random.default_rng(21)
    inward = 0
    for trial in range(12):
        base = _synthetic(0.3, rng, n_forget=200)
        shifts = np.concatenate([[0.8], rng.normal(0, 0.02, 29)])  # K = 30, one reference far from the rest
        member = np.stack([base.member["a"]] + [base.member["a"] + d for d in shifts])
        nonmember = np.stack([base.nonmember["a"]] * 31)
        model = ScoredModel({"a": member}, {"a": nonmember}, base.forget_correct, base.test_correct)
        w_rng = np.random.default_rng(trial)
        wf, wn = bootstrap_weights(200, 2000, w_rng), bootstrap_weights(len(nonmember[0]), 2000, w_rng)
        _, plain = auc_draws(base, "a", wf, wn)
        _, covered = auc_draws(model, "a", wf, wn, w_rng.standard_normal((2000, 30)))
        low, high = np.quantile(plain, [0.05, 0.95])
        low_jk, high_jk = np.quantile(covered, [0.05, 0.95])
        inward += int(low_jk > low + 1e-3 or high_jk < high - 1e-3)
        assert high_jk - low_jk > high - low
    # and where the reference term is about the size of the sample bootstrap's spread (the case that matters)
    for trial in range(12):
        base = _synthetic(0.3, rng, n_forget=200)
        shifts = np.concatenate([[0.15], rng.normal(0, 0.01, 29)])
        member = np.stack([base.member["a"]] + [base.member["a"] + d for d in shifts])
        nonmember = np.stack([base.nonmember["a"]] * 31)
        model = ScoredModel({"a": member}, {"a": nonmember}, base.forget_correct, base.test_correct)
        w_rng = np.random.default_rng(100 + trial)
        wf, wn = bootstrap_weights(200, 4000, w_rng), bootstrap_weights(len(nonmember[0]), 4000, w_rng)
        _, plain = auc_draws(base, "a", wf, wn)
        _, covered = auc_draws(model, "a", wf, wn, w_rng.standard_normal((4000, 30)))
        low, high = np.quantile(plain, [0.05, 0.95])
        low_jk, high_jk = np.quantile(covered, [0.05, 0.95])
        assert 0.5 < covered.std() / plain.std() - 1 < 2  # the regime asked for: comparable spreads
        inward += int(low_jk > low + 1e-3 or high_jk < high - 1e-3)
    assert inward == 0


def test_models_of_one_decision_share_the_reference_term_so_their_difference_is_paired():
    """Strict mode compares the candidate with exact retrains scored against the same references: the reference
    term must be drawn once per resample for all of them (a term drawn per model would add the reference spread
    twice to every difference and widen equivalent models' intervals for nothing). A second review asked for this
    through gate_decision, with different models."""
    rng = np.random.default_rng(31)
    n_f, n_t, k = 200, 300, 5
    shifts = rng.normal(0, 0.15, k)

    def replicated(member, nonmember):
        return np.stack([member] + [member + d for d in shifts]), np.stack([nonmember] * (1 + k))

    retrain = _synthetic(0.2, rng, n_forget=n_f, n_test=n_t)
    parent = _synthetic(1.0, rng, n_forget=n_f, n_test=n_t)
    models = {}
    for name, base in (("retrain", retrain), ("parent", parent)):
        member, nonmember = replicated(base.member["a"], base.nonmember["a"])
        models[name] = ScoredModel({"a": member}, {"a": nonmember}, base.forget_correct, base.test_correct)
    # a candidate that is another model object with the retrain's scores: every resample's difference is 0
    twin = ScoredModel({"a": models["retrain"].member["a"].copy()}, {"a": models["retrain"].nonmember["a"].copy()},
                       retrain.forget_correct, retrain.test_correct)
    decision = gate_decision(twin, models["parent"], attacks=["a"], accuracy_checks=(),
                             targets=[models["retrain"]], resamples=500)
    (check,) = decision.checks
    assert decision.reference_jackknife == {"a": k}
    assert check.ci_low == pytest.approx(0.0, abs=1e-12) and check.ci_high == pytest.approx(0.0, abs=1e-12)
    # while the same candidate against the constant never-trained target carries the whole reference spread
    alone = gate_decision(twin, models["parent"], attacks=["a"], accuracy_checks=(), resamples=500).checks[0]
    assert alone.ci_high - alone.ci_low > 0.05
    with pytest.raises(ValueError, match="one leave-one-out replicate"):
        one = ScoredModel({"a": twin.member["a"][:2]}, {"a": twin.nonmember["a"][:2]}, retrain.forget_correct,
                          retrain.test_correct)
        gate_decision(one, one, attacks=["a"], accuracy_checks=(), resamples=200)
