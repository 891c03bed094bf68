import math

import numpy as np
import pytest
import torch

from unlearn.attacks import AttackInput, compute_signals, run_attack
from unlearn.metrics import bootstrap_auc_interval, roc_auc


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_auc_of_gaussian_scores_matches_the_closed_form():
    rng = np.random.default_rng(0)
    delta = 1.0
    members, others = rng.normal(delta, 1, 20000), rng.normal(0, 1, 20000)
    assert roc_auc(members, others) == pytest.approx(_phi(delta / math.sqrt(2)), abs=0.01)


def test_auc_extremes_and_interval():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    rng = np.random.default_rng(1)
    same_a, same_b = rng.normal(0, 1, 3000), rng.normal(0, 1, 3000)
    assert roc_auc(same_a, same_b) == pytest.approx(0.5, abs=0.03)
    low, high = bootstrap_auc_interval(same_a[:300], same_b[:300], resamples=200, seed=0)
    assert low < 0.5 < high
    with pytest.raises(ValueError):
        roc_auc(np.array([]), np.array([1.0]))


def _signals(loss):
    # logits for 2 classes whose true-class loss equals `loss` (label 0)
    p = np.exp(-loss)
    logits = torch.tensor(np.stack([np.log(p), np.log1p(-p + 1e-12)], 1))
    return compute_signals(logits, torch.zeros(len(loss), dtype=torch.long))


def test_signals_match_their_definitions():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    s = compute_signals(logits, torch.tensor([0]))
    p = torch.softmax(logits.double(), 1)[0].numpy()
    assert s.loss[0] == pytest.approx(-np.log(p[0]))
    assert s.confidence[0] == pytest.approx(p[0])
    assert s.logit_confidence[0] == pytest.approx(np.log(p[0] / (1 - p[0])))
    assert s.entropy[0] == pytest.approx(-(p * np.log(p)).sum())


@pytest.mark.parametrize("attack", ["loss_threshold", "svc_confidence"])
def test_sign_convention_members_score_higher(attack):
    rng = np.random.default_rng(0)
    member_loss = rng.uniform(0.001, 0.05, 200)   # trained on: low loss
    other_loss = rng.uniform(0.3, 2.0, 400)       # never seen: high loss
    inputs = AttackInput(_signals(member_loss), _signals(rng.uniform(0.001, 0.05, 400)),
                         _signals(other_loss), seed=0)
    result = run_attack(attack, inputs)
    assert roc_auc(result.member_scores, result.nonmember_scores) > 0.95


def test_svc_efficacy_is_about_the_test_tnr_when_forget_looks_like_test():
    rng = np.random.default_rng(0)
    inputs = AttackInput(_signals(rng.uniform(0.3, 2.0, 300)), _signals(rng.uniform(0.001, 0.05, 400)),
                         _signals(rng.uniform(0.3, 2.0, 400)), seed=0)
    result = run_attack("svc_confidence", inputs)
    assert result.extra["mia_efficacy"] > 0.9


def test_a_diverged_model_is_reported_not_scored():
    from torch import nn

    from unlearn.methods import TensorSet
    from unlearn.verification import DivergedModelError, EvalSets, evaluate_model

    class Broken(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    subset = TensorSet(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DivergedModelError, match="not finite"):
        evaluate_model(Broken(), EvalSets(subset, subset, subset), attacks=("loss_threshold",),
                       device="cpu", seed=0)
