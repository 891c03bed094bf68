"""Whole-class requests and malformed score arrays at the gate (break-it review of the gate, 2026-12-06).

Every check was relative, forget samples against unseen samples of the same class, so a model that lost its
per-sample memory but still classified the forgotten class passed, in strict mode too; and a member array
shorter than the forget set broadcast into a pass recorded with the full sample count.
"""

import numpy as np
import pytest

from unlearn.gate import FAIL, PASS, ScoredModel, gate_decision

NF, NT = 400, 300


def _bits(rng, p, n):
    return (rng.random(n) < p).astype(float)


def _world(seed=0):
    """Parent (memorises D_F, knows the class), exact retrain (never saw the class), and two candidates whose
    membership scores look like the retrain's: one that also lost the class, one that still classifies it."""
    rng = np.random.default_rng(seed)

    def model(member_shift, forget_p, test_p):
        return ScoredModel({"a": rng.normal(member_shift, 1, NF)}, {"a": rng.normal(0, 1, NT)},
                           _bits(rng, forget_p, NF), _bits(rng, test_p, NT))

    return dict(parent=model(1.0, 1.0, 0.7), retrain=model(0.0, 0.0, 0.0), forgot=model(0.0, 0.0, 0.0),
                still_knows=model(0.0, 0.7, 0.7))


@pytest.mark.parametrize("strict", [False, True])
def test_a_model_that_still_classifies_a_forgotten_class_fails(strict):
    w = _world()
    targets = [w["retrain"]] if strict else []
    whole_class = np.ones(NT, dtype=bool)
    kwargs = dict(attacks=["a"], accuracy_checks=("forget_acc",), targets=targets)
    # without the class mask (what every whole-class request got before): relative checks only, a false pass
    assert gate_decision(w["still_knows"], w["parent"], **kwargs).verdict == PASS
    decision = gate_decision(w["still_knows"], w["parent"], class_negatives=whole_class, **kwargs)
    assert decision.verdict == FAIL
    (check,) = [c for c in decision.checks if c.metric == "class_acc"]
    assert check.verdict == FAIL and check.parent_detected and check.candidate > 0.6 and check.target < 0.05
    assert gate_decision(w["forgot"], w["parent"], class_negatives=whole_class, **kwargs).verdict == PASS
    assert gate_decision(w["parent"], w["parent"], class_negatives=whole_class, **kwargs).verdict != PASS


@pytest.mark.parametrize("check", ["test_acc", "utility"])
def test_utility_checks_measure_the_other_classes_when_a_class_is_forgotten(check):
    rng = np.random.default_rng(1)
    labels = np.where(np.arange(NT) < 100, 0, rng.integers(1, 10, NT))  # class 0 forgotten
    mask = np.arange(NT) < 100  # 100 negatives of the forgotten class, 200 of others
    test_parent = np.where(mask, _bits(rng, 0.9, NT), _bits(rng, 0.9, NT))
    test_forgot = np.where(mask, 0.0, test_parent)  # lost the class, kept the others

    def model(member_shift, fc, tc):
        return ScoredModel({"a": rng.normal(member_shift, 1, NF)}, {"a": rng.normal(0, 1, NT)}, fc, tc)

    parent = model(1.0, np.ones(NF), test_parent)
    candidate = model(0.0, np.zeros(NF), test_forgot)
    decision = gate_decision(candidate, parent, attacks=["a"], accuracy_checks=(check,), class_negatives=mask,
                             utility_labels=labels)
    (utility,) = [c for c in decision.checks if c.metric == check]
    assert utility.verdict == PASS and utility.n_negative == 200  # on the class it would be "utility lost"
    if check == "utility":  # the skill is measured on the other classes too: their most frequent label's share
        others = labels[100:]
        base = ((others == np.bincount(others).argmax()).sum() + 1) / 202
        assert utility.parent_excess == pytest.approx((test_parent[100:].sum() + 1) / 202 - base)
    few = np.arange(NT) >= 10  # only 10 negatives of other classes: utility cannot be measured, and says so
    decision = gate_decision(candidate, parent, attacks=["a"], accuracy_checks=(check,), class_negatives=few,
                             utility_labels=labels)
    (utility,) = [c for c in decision.checks if c.metric == check]
    assert utility.verdict == "inconclusive" and "utility not measurable" in utility.reason


def test_too_few_unseen_samples_of_the_class_is_inconclusive_up_front_not_a_failed_control():
    w = _world()
    decision = gate_decision(w["forgot"], w["parent"], attacks=["a"], class_negatives=np.arange(NT) < 5)
    assert decision.verdict == "inconclusive" and decision.checks == ()
    assert "too few unseen samples of the forgotten classes" in decision.reason


def test_class_negatives_must_mark_every_negative_and_class_acc_needs_them():
    w = _world()
    with pytest.raises(ValueError, match="class_negatives must mark each of the 300 negatives"):
        gate_decision(w["forgot"], w["parent"], attacks=["a"], class_negatives=np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="class_acc needs class_negatives"):
        gate_decision(w["forgot"], w["parent"], attacks=["a"], accuracy_checks=("forget_acc", "class_acc"))


@pytest.mark.parametrize("member_len, nonmember_len", [(1, NT), (NF - 1, NT), (NF, NT - 50)])
def test_score_arrays_must_hold_one_score_per_sample(member_len, nonmember_len):
    w = _world()
    rng = np.random.default_rng(2)
    short = ScoredModel({"a": rng.normal(0, 1, member_len)}, {"a": rng.normal(0, 1, nonmember_len)},
                        w["forgot"].forget_correct, w["forgot"].test_correct)
    with pytest.raises(ValueError, match=r"attack 'a' scored \d+ member and \d+ nonmember sample\(s\)"):
        gate_decision(short, w["parent"], attacks=["a"])
    with pytest.raises(ValueError, match="attack 'a' scored"):
        gate_decision(w["forgot"], short, attacks=["a"])


def test_a_whole_class_batch_measures_utility_on_the_other_classes_unseen_samples():
    """A batch of only whole classes has negatives of those classes alone: utility measured there was 'not
    measurable' forever, so such a batch could never pass, and the reason blamed the positive control (review)."""
    w = _world()
    rng = np.random.default_rng(3)
    whole_class = np.ones(NT, dtype=bool)
    labels = rng.integers(1, 10, 500)  # the other classes' unseen samples

    def with_utility(model, accuracy):
        return ScoredModel(model.member, model.nonmember, model.forget_correct, model.test_correct,
                           _bits(rng, accuracy, 500))

    parent, good, wrecked = with_utility(w["parent"], 0.9), with_utility(w["forgot"], 0.9), \
        with_utility(w["forgot"], 0.15)
    kwargs = dict(attacks=["a"], accuracy_checks=("forget_acc", "utility"), class_negatives=whole_class,
                  utility_labels=labels)
    decision = gate_decision(good, parent, **kwargs)
    (utility,) = [c for c in decision.checks if c.metric == "utility"]
    assert decision.verdict == PASS and utility.n_negative == 500 and utility.parent_detected
    decision = gate_decision(wrecked, parent, **kwargs)
    assert decision.verdict == FAIL and "lost more accuracy" in decision.reason
    # without a utility set: not measurable, and the reason says so instead of blaming the control
    plain = gate_decision(w["forgot"], w["parent"], **{**kwargs, "utility_labels": np.zeros(NT, dtype=int)})
    assert plain.verdict == "inconclusive" and "too few samples to measure utility" in plain.reason
    assert "positive control" not in plain.reason
    with pytest.raises(ValueError, match="utility_labels must be the 500 integer labels of the utility set"):
        gate_decision(good, parent, **{**kwargs, "utility_labels": labels[:10]})


def test_the_deleted_share_counts_the_classes_utility_is_measured_on():
    """A class deleted as a whole is ~10% of the data, but utility is measured on the other classes: the share
    that sizes utility's allowance is taken over them (review of 2026-12-06)."""
    import torch

    from unlearn.methods import TensorSet
    from unlearn.verification import EvalSets

    def tensor_set(labels):
        return TensorSet(torch.zeros(len(labels), 1, 2, 2), torch.as_tensor(labels))

    forget = tensor_set([3] * 100 + [1] * 9)  # the whole of class 3, and 9 samples of class 1
    retain = tensor_set([0] * 450 + [1] * 441)
    assert EvalSets(forget, retain, tensor_set([0, 1])).deleted_share() == pytest.approx(109 / 1000)
    assert EvalSets(forget, retain, tensor_set([0, 1]), forgotten_classes=(3,)).deleted_share() == pytest.approx(0.01)
    empty = tensor_set([])
    assert EvalSets(empty, empty, tensor_set([0])).deleted_share() == 0.0
