"""Contract tests, run over every registered attack (a new attack is tested the moment it exists).

Synthetic evidence with a planted membership effect: each sample has its own difficulty mu_i;
a model that trained on it has phi ~ N(mu_i + 3, 0.5), one that did not has phi ~ N(mu_i, 0.5).
The target trained on the forget set (a model that failed to forget it). Every attack must
score the forget set above the test set, return one score per sample, and be deterministic.
"""

import numpy as np
import pytest
import torch

from unlearn.attacks import ATTACKS, AttackInput, ReferenceSignals, ShadowSignals, compute_signals, run_attack
from unlearn.metrics import roc_auc
from unlearn.verification import attack_suite, model_evidence

N_F, N_T, N_R, K, M = 60, 80, 120, 8, 8
EFFECT, NOISE = 3.0, 0.5


def _signals_from_phi(phi: np.ndarray):
    # two-class logits [phi, 0] with label 0 give p_y = sigmoid(phi)
    logits = torch.tensor(np.stack([phi, np.zeros_like(phi)], 1))
    return compute_signals(logits, torch.zeros(len(phi), dtype=torch.long))


def _evidence(seed: int = 0) -> AttackInput:
    rng = np.random.default_rng(seed)
    mu_f, mu_t, mu_r = rng.normal(0, 1, N_F), rng.normal(0, 1, N_T), rng.normal(0, 1, N_R)
    member = lambda mu: mu + EFFECT + rng.normal(0, NOISE, mu.shape)  # noqa: E731
    unseen = lambda mu: mu + rng.normal(0, NOISE, mu.shape)  # noqa: E731
    target_f, target_t, target_r = member(mu_f), unseen(mu_t), member(mu_r)
    forget_in = np.zeros((K, N_F), dtype=bool)
    forget_in[: K // 2] = True  # half the references trained on each forget sample
    test_in = np.zeros((K, N_T), dtype=bool)
    test_in[K // 2 :] = True
    ref_f = np.where(forget_in, member(np.tile(mu_f, (K, 1))), unseen(np.tile(mu_f, (K, 1))))
    ref_t = np.where(test_in, member(np.tile(mu_t, (K, 1))), unseen(np.tile(mu_t, (K, 1))))
    refs = ReferenceSignals(target_f[:, None], target_t[:, None], ref_f[..., None], ref_t[..., None],
                            forget_in, test_in)
    shadows = ShadowSignals(
        unlearned=member(np.tile(mu_f, (M, 1))), unlearned_mask=np.ones((M, N_F), dtype=bool),
        retrained=unseen(np.tile(mu_f, (M, 1))), retrained_mask=np.ones((M, N_F), dtype=bool),
        target_unlearned=target_f, target_retrained=unseen(mu_f),
    )
    return AttackInput(_signals_from_phi(target_f), _signals_from_phi(target_r), _signals_from_phi(target_t),
                       seed=seed, references=refs, shadows=shadows)


@pytest.fixture(scope="module")
def evidence():
    return _evidence()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_returns_one_finite_score_per_sample(name, evidence):
    result = run_attack(name, evidence)
    assert result.member_scores.shape == (N_F,)
    # D_T (or the half svc_confidence does not fit on), D_F for U-LiRA's matched pairs, none for epsilon
    assert result.nonmember_scores.shape in ((N_T,), (N_T - N_T // 2,), (N_F,), (0,))
    assert all(np.isfinite(v) for v in result.extra.values())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_scores_members_higher(name, evidence):
    result = run_attack(name, evidence)
    if len(result.nonmember_scores):
        assert roc_auc(result.member_scores, result.nonmember_scores) > 0.8
    else:  # the epsilon score: a clearly unforgotten forget set is clearly distinguishable
        assert result.extra["forgetting_quality"] < 0.2 and np.median(result.member_scores) > 3


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_is_deterministic_for_a_seed(name, evidence):
    first, second = run_attack(name, evidence), run_attack(name, _evidence())
    assert np.array_equal(first.member_scores, second.member_scores)
    assert np.array_equal(first.nonmember_scores, second.nonmember_scores)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_refuses_missing_evidence_by_name(name, evidence):
    spec = ATTACKS.get(name)
    bare = AttackInput(evidence.forget, evidence.retain, evidence.test, seed=0)
    if spec.requires:
        with pytest.raises(ValueError, match=name):
            run_attack(name, bare)
    else:
        run_attack(name, bare)


def test_online_attacks_refuse_references_that_never_trained_on_the_forget_set(evidence):
    refs = evidence.references
    out_only = ReferenceSignals(refs.target_forget, refs.target_test, refs.forget, refs.test,
                                np.zeros_like(refs.forget_in), refs.test_in)
    inputs = AttackInput(evidence.forget, evidence.retain, evidence.test, references=out_only)
    with pytest.raises(ValueError, match="audits, not at promotion time"):
        run_attack("lira_online", inputs)
    run_attack("lira_offline", inputs)  # offline attacks only need OUT models


def test_unknown_attack_lists_the_valid_ones(evidence):
    with pytest.raises(KeyError, match="loss_threshold"):
        run_attack("lira_onlien", evidence)
    with pytest.raises(ValueError, match="unexpected keyword"):
        run_attack("rmia_offline", evidence, gama=2.0)


def test_the_original_model_is_detected_clearly_above_the_retrained_one():
    """End to end on a real model: the original memorised its forget set, the retrain never saw it."""
    from conftest import quadrant_images

    from unlearn.methods import TensorSet
    from unlearn.models import build_model
    from unlearn.training import SGDRecipe, seed_everything, train_model
    from unlearn.verification import EvalSets

    images, labels = quadrant_images(noise=0.7, signal=0.15)  # weak signal: models memorise
    x, y = torch.tensor(images), torch.tensor(labels)
    rng = np.random.default_rng(0)
    order = rng.permutation(160)
    forget, retain, test = order[:30], order[30:100], order[100:]
    recipe = SGDRecipe(epochs=25, batch_size=32, lr=0.05)

    def train(index, seed):
        seed_everything(seed)
        return train_model(build_model("small_cnn", 1, 4), x[index], y[index], recipe, device="cpu", seed=seed)

    original = train(np.concatenate([forget, retain]), 0)
    retrained = train(retain, 0)
    # two reference models on complementary halves of D_R: OUT of every forget and test sample
    halves = np.array_split(rng.permutation(retain), 2)
    references = [train(h[:35], 10 + i) for i, h in enumerate(halves)]
    sets = EvalSets(*(TensorSet(x[i], y[i]) for i in (forget, retain, test)))
    refs = [model_evidence(m, sets, device="cpu", with_retain=False) for m in references]
    aucs = {}
    for role, model in (("original", original), ("retrain", retrained)):
        suite = attack_suite(model_evidence(model, sets, device="cpu"), refs,
                             attacks=("loss_threshold", "lira_offline", "rmia_offline"))
        aucs[role] = {a: suite.metrics[f"mia.{a}.auc"] for a in ("loss_threshold", "lira_offline", "rmia_offline")}
    for attack in aucs["original"]:
        assert aucs["original"][attack] > 0.7, aucs
        assert aucs["original"][attack] - aucs["retrain"][attack] > 0.15, aucs


def test_an_attack_refused_for_too_little_data_is_recorded():
    from unlearn.verification import ModelEvidence

    full = _evidence()
    tiny = ModelEvidence(
        forget=_signals_from_phi(full.references.target_forget[:3, 0]), retain=full.retain, test=full.test,
        forget_phi=full.references.target_forget[:3], test_phi=full.references.target_test, digest="x")
    suite = attack_suite(tiny, [], attacks=("loss_threshold", "loss_lr"))
    assert "mia.loss_threshold.auc" in suite.metrics  # one sample is enough for an AUC
    assert "mia.loss_lr.auc" not in suite.metrics and "needs at least 6" in suite.refused["mia.loss_lr.auc"]
