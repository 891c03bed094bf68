"""``utility``'s allowance and the references' learning curve (unlearn/gate_utility.py, unlearn/gate.py)."""

import math

import numpy as np
import pytest

from unlearn.gate import DELETION_COST, FAIL, ScoredModel, gate_decision
from unlearn.gate_utility import LearningCurve, deletion_cost, expected_retrain_loss


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


def test_the_deletion_cost_is_the_floor_plus_the_estimated_loss_and_never_above_the_floor_plus_the_share():
    cost, words = deletion_cost(0.03, 0.6, (0.2, "how"))
    assert cost == pytest.approx(0.23) and "the floor 0.03 plus 0.2 estimated for 60%" in words and "how" in words
    assert deletion_cost(0.03, 0.15, (0.5, "how"))[0] == pytest.approx(0.18)


def _world(rng, n=1200, parent_acc=0.75, reference_acc=0.45, lost=0.12):
    """A parent, four references on fewer samples, and a candidate that lost ``lost`` of accuracy (points)."""
    labels = rng.integers(0, 10, n)  # the best constant answer is right about 10% of the time
    parent = (rng.random(n) < parent_acc).astype(float)
    candidate = parent.copy()
    candidate[rng.choice(np.flatnonzero(parent), size=round(lost * n), replace=False)] = 0.0
    refs = (rng.random((4, n)) < reference_acc).astype(float)
    forget = np.ones(200)  # the parent knows every forget sample; the candidate as well as unseen ones
    unseen_like = (rng.random(200) < candidate.mean()).astype(float)
    return (ScoredModel({}, {}, forget, parent), ScoredModel({}, {}, unseen_like, candidate), refs, labels)


def _decide(candidate, parent, labels, **kw):
    return gate_decision(candidate, parent, attacks=(), accuracy_checks=("forget_acc", "utility"),
                         utility_labels=labels, resamples=300, utility_loss_fraction=0.1, utility_loss_floor=0.03, **kw)


def _utility(candidate, parent, labels, **kw):
    return [c for c in _decide(candidate, parent, labels, **kw).checks if c.metric == "utility"][0]


def test_an_exact_retrain_after_most_of_the_data_is_deleted_still_fails_and_the_fail_says_why():
    """Fashion-MNIST, 1,000 of 1,600 samples deleted: exact retrains lost 10-13 points of ~62 skill and failed the
    cap's 6.2. References on 200 samples that keep ~55% of the parent's skill put the deletion's estimated cost near
    25%: the fail stands, and says the loss is not shown beyond that cost."""
    rng = np.random.default_rng(0)
    parent, retrain_like, refs, labels = _world(rng)
    curve = LearningCurve(refs, (200,) * 4, 1600)
    fixed = _utility(retrain_like, parent, labels, deleted_share=0.625)
    explained = _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=curve)
    assert fixed.verdict == explained.verdict == FAIL and DELETION_COST not in fixed.reason
    assert explained.margin == fixed.margin == pytest.approx(0.1 * fixed.parent_excess)
    assert DELETION_COST in explained.reason and "references on 200 samples keep 0.5" in explained.reason
    decision = _decide(retrain_like, parent, labels, deleted_share=0.625, learning_curve=curve)
    assert decision.verdict == FAIL and "estimated to cost an exact retrain: utility" in decision.reason
    # after a small deletion the curve expects almost nothing: a plain fail
    assert DELETION_COST not in _utility(retrain_like, parent, labels, deleted_share=0.02, learning_curve=curve).reason
    # references as good as the parent: the deletion costs nothing
    flat = LearningCurve((rng.random((4, len(labels))) < 0.75).astype(float), (200,) * 4, 1600)
    assert DELETION_COST not in _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=flat).reason
    # a loss shown beyond the estimated cost, and a one-class model: plain fails
    _, wrecked, _, _ = _world(np.random.default_rng(0), lost=0.35)
    assert DELETION_COST not in _utility(wrecked, parent, labels, deleted_share=0.625, learning_curve=curve).reason
    destroyed = ScoredModel({}, {}, parent.forget_correct * 0.9, (labels == 3).astype(float))
    assert DELETION_COST not in _utility(destroyed, parent, labels, deleted_share=0.9, learning_curve=curve).reason
    # strict mode: the retrains already carry the deletion's loss
    strict = _utility(retrain_like, parent, labels, deleted_share=0.625, learning_curve=curve, targets=[parent])
    assert strict.verdict == FAIL and DELETION_COST not in strict.reason


def test_the_curve_changes_no_verdict():
    """Every candidate, deletion size and reference strength: the same verdicts with and without the curve (a first
    version raised the allowance, and a valid configuration then passed a one-class model; a second made these
    fails inconclusive, which promote_low_power promoted)."""
    rng = np.random.default_rng(3)
    parent, _, _, labels = _world(rng)
    explained = 0
    for reference_acc in (0.12, 0.2, 0.45, 0.7):
        curve = LearningCurve((rng.random((4, len(labels))) < reference_acc).astype(float), (200,) * 4, 1600)
        for lost in (0.0, 0.03, 0.08, 0.15, 0.3, 0.6):
            _, candidate, _, _ = _world(np.random.default_rng(0), lost=lost)
            for share in (0.01, 0.3, 0.625, 0.95):
                without = _decide(candidate, parent, labels, deleted_share=share)
                with_curve = _decide(candidate, parent, labels, deleted_share=share, learning_curve=curve)
                assert with_curve.verdict == without.verdict
                assert [c.verdict for c in with_curve.checks] == [c.verdict for c in without.checks]
                explained += any(DELETION_COST in c.reason for c in with_curve.checks)
    assert explained  # the grid reaches the explained fails it is about


def test_the_curve_must_be_scored_on_the_negatives():
    rng = np.random.default_rng(2)
    parent, candidate, refs, labels = _world(rng)
    with pytest.raises(ValueError, match="learning curve"):
        _utility(candidate, parent, labels, deleted_share=0.5,
                 learning_curve=LearningCurve(refs[:, :10], (200,) * 4, 1600))
    with pytest.raises(ValueError, match="learning curve"):
        LearningCurve(refs, (200,) * 3, 1600)
    with pytest.raises(ValueError, match="positive"):
        LearningCurve(refs, (0,) * 4, 1600)
    assert LearningCurve(refs, (100, 400, 100, 400), 1600).reference_size == pytest.approx(200)
