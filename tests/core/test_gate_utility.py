"""``utility``'s allowance and the references' learning curve (unlearn/gate_utility.py, unlearn/gate.py)."""

import math

import numpy as np
import pytest

from unlearn.gate import FAIL, PASS, ScoredModel, gate_decision
from unlearn.gate_utility import LearningCurve, expected_retrain_loss, utility_allowance


def test_the_chord_in_log_size_gives_the_references_loss_at_their_size_and_nothing_at_the_parents():
    kw = dict(parent_size=1600, reference_size=200)
    # references keep 60% of the skill: a retrain on 200 of 1,600 samples loses 40%, on 1,600 nothing
    assert expected_retrain_loss(0.6, 0.36, deleted_share=1 - 200 / 1600, **kw)[0] == pytest.approx(0.4)
    assert expected_retrain_loss(0.6, 0.36, deleted_share=0.0, **kw)[0] == pytest.approx(0.0)
    # halfway in log size (sqrt(200 x 1600) = 566 samples left): half the loss
    share = 1 - math.sqrt(200 * 1600) / 1600
    loss, words = expected_retrain_loss(0.6, 0.36, deleted_share=share, **kw)
    assert loss == pytest.approx(0.2)
    assert "references on 200 samples keep 0.60 of the skill of the parent's 1,600" in words
    # fewer samples left than the references had: their own loss, not an extrapolation (less than the truth)
    loss, words = expected_retrain_loss(0.6, 0.36, deleted_share=0.95, **kw)
    assert loss == pytest.approx(0.4) and "no extrapolation" in words
    # references as good as the parent, or better: no loss expected
    assert expected_retrain_loss(0.6, 0.7, deleted_share=0.5, **kw)[0] == 0.0


@pytest.mark.parametrize("case", [
    dict(parent_skill=0.0, reference_skill=0.0, reference_size=200),  # no skill to lose a share of
    dict(parent_skill=0.6, reference_skill=0.05, reference_size=200),  # references keep < 10%: no slope
    dict(parent_skill=0.6, reference_skill=0.3, reference_size=1600),  # references no smaller than the parent
    dict(parent_skill=0.6, reference_skill=0.3, reference_size=3200),
])
def test_the_curve_says_nothing_where_it_cannot_be_measured(case):
    assert expected_retrain_loss(parent_size=1600, deleted_share=0.5, **case) is None


def test_the_curve_only_raises_the_cap_and_never_above_the_floor_plus_the_deleted_share():
    measured = "how"
    # the fixed cap (0.1) stands where the curve expects less
    assert utility_allowance(0.1, 0.03, 0.6, expected_loss=(0.05, measured))[0] == pytest.approx(0.1)
    # raised to floor + loss where the curve expects more, and the reason says so
    allowed, words = utility_allowance(0.1, 0.03, 0.6, expected_loss=(0.2, measured))
    assert allowed == pytest.approx(0.23) and "raised by the references' learning curve" in words and "how" in words
    # below the cap the deleted share decides as before: a small deletion gets no more from the curve
    assert utility_allowance(0.1, 0.03, 0.01, expected_loss=(0.2, measured))[0] == pytest.approx(0.04)
    # and the raised cap never passes floor + share
    assert utility_allowance(0.1, 0.03, 0.15, expected_loss=(0.5, measured))[0] == pytest.approx(0.18)
    # without a floor or a share (the flat allowance) the curve is not read
    assert utility_allowance(0.1, None, None, expected_loss=(0.5, measured))[0] == 0.1
    with pytest.raises(ValueError, match="expected_loss"):
        utility_allowance(0.1, 0.03, 0.6, expected_loss=(1.0, measured))


def _world(rng, n=1200, parent_acc=0.75, reference_acc=0.45, lost=0.12):
    """A parent, four references on fewer samples, and a candidate that lost ``lost`` of accuracy (points)."""
    labels = rng.integers(0, 10, n)  # the best constant answer is right about 10% of the time
    parent = (rng.random(n) < parent_acc).astype(float)
    candidate = parent.copy()
    candidate[rng.choice(np.flatnonzero(parent), size=round(lost * n), replace=False)] = 0.0
    refs = (rng.random((4, n)) < reference_acc).astype(float)
    forget = np.ones(60)
    return (ScoredModel({}, {}, forget, parent), ScoredModel({}, {}, forget * 0.9, candidate), refs, labels)


def _utility(candidate, parent, labels, **kw):
    decision = gate_decision(candidate, parent, attacks=(), accuracy_checks=("forget_acc", "utility"),
                             utility_labels=labels, resamples=300, utility_loss_fraction=0.1,
                             utility_loss_floor=0.03, **kw)
    return [c for c in decision.checks if c.metric == "utility"][0]


def test_an_exact_retrain_after_most_of_the_data_is_deleted_fails_the_fixed_cap_and_passes_the_measured_one():
    """Fashion-MNIST, 1,000 of 1,600 samples deleted: exact retrains lost 10-13 points of ~62 skill, the fixed cap
    allowed 6.2. References on 200 samples that keep ~55% of the parent's skill put the expected loss near 20%."""
    rng = np.random.default_rng(0)
    parent, retrain_like, refs, labels = _world(rng)
    curve = LearningCurve(refs, (200,) * 4, 1600)
    fixed = _utility(retrain_like, parent, labels, deleted_share=0.625)
    measured = _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=curve)
    assert fixed.verdict == FAIL and fixed.margin == pytest.approx(0.1 * fixed.parent_excess)
    assert measured.verdict == PASS and measured.margin > 0.2 * measured.parent_excess
    assert "learning curve" in measured.reason
    # the same loss after a small deletion still fails: the curve expects almost nothing there
    assert _utility(retrain_like, parent, labels, deleted_share=0.02, learning_curve=curve).verdict == FAIL
    # references as good as the parent give nothing to raise the cap with
    flat = LearningCurve((rng.random((4, len(labels))) < 0.75).astype(float), (200,) * 4, 1600)
    assert _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=flat).verdict == FAIL


def test_a_destroyed_model_still_fails_with_the_curve_and_strict_mode_does_not_read_it():
    rng = np.random.default_rng(1)
    parent, _, refs, labels = _world(rng)
    curve = LearningCurve(refs, (200,) * 4, 1600)
    destroyed = ScoredModel({}, {}, parent.forget_correct * 0.9, (labels == 3).astype(float))
    assert _utility(destroyed, parent, labels, deleted_share=0.9, learning_curve=curve).verdict == FAIL
    # strict mode: the retrains already carry the deletion's loss, so the cap stays the configured one
    _, retrain_like, _, _ = _world(np.random.default_rng(0))
    strict = _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=curve, targets=[parent])
    assert "learning curve" not in strict.reason and strict.margin == pytest.approx(0.1 * strict.parent_excess)


def test_the_curve_must_be_scored_on_the_negatives():
    rng = np.random.default_rng(2)
    parent, candidate, refs, labels = _world(rng)
    with pytest.raises(ValueError, match="learning curve"):
        _utility(candidate, parent, labels, deleted_share=0.5, learning_curve=LearningCurve(refs[:, :10], (200,) * 4,
                                                                                            1600))
    with pytest.raises(ValueError, match="learning curve"):
        LearningCurve(refs, (200,) * 3, 1600)
    with pytest.raises(ValueError, match="positive"):
        LearningCurve(refs, (0,) * 4, 1600)
    assert LearningCurve(refs, (100, 400, 100, 400), 1600).reference_size == pytest.approx(200)
