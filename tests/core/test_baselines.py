"""Unit checks of the standard baselines beyond the shared method contract."""

import copy

import pytest
import torch

from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.methods.boundary_shrink import nearest_wrong_labels
from unlearn.methods.l1_sparse import l1_weight
from unlearn.methods.random_label import random_labels
from unlearn.methods.salun import saliency_mask
from unlearn.methods.scrub import distill_kl, scrub_lr
from unlearn.methods.ssd import dampen, fisher_importance
from unlearn.models import build_model
from unlearn.training import SGDRecipe, train_model


@pytest.fixture(scope="module")
def problem(tiny_images_module):
    images, labels = tiny_images_module
    x, y = torch.tensor(images), torch.tensor(labels)
    recipe = SGDRecipe(4, 32, 0.05)
    model = train_model(build_model("small_cnn", 1, 4), x, y, recipe, device="cpu", seed=0)
    forget = torch.zeros(len(y), dtype=torch.bool)
    forget[::8] = True
    data = UnlearningData(TensorSet(x[forget], y[forget]), TensorSet(x[~forget], y[~forget]), 4, recipe,
                          lambda: build_model("small_cnn", 1, 4))
    return model, data


@pytest.fixture(scope="module")
def tiny_images_module():
    from conftest import quadrant_images

    return quadrant_images()


def test_saliency_mask_keeps_the_top_fraction_by_gradient_magnitude(problem):
    model, data = problem
    before = copy.deepcopy(model.state_dict())
    mask = saliency_mask(model, data.forget, 0.3, "cpu", batch_size=256)  # one batch
    total = sum(m.numel() for m in mask.values())
    kept = int(sum(m.sum().item() for m in mask.values()))
    assert kept == int(total * 0.3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # theta_o untouched
    # recompute |g| at theta_o: every kept entry is at least as salient as every dropped one
    model.eval()
    loss = -torch.nn.functional.cross_entropy(model(data.forget.images), data.forget.labels)
    grads = dict(zip([n for n, _ in model.named_parameters()],
                     torch.autograd.grad(loss, list(model.parameters())), strict=True))
    scores = torch.cat([grads[n].abs().flatten() for n in mask])
    flags = torch.cat([mask[n].flatten() for n in mask]).bool()
    assert scores[flags].min() >= scores[~flags].max()


@pytest.mark.parametrize("freeze", [True, False])
def test_salun_freezes_non_salient_weights_only_with_the_fix(problem, freeze):
    model, data = problem
    mask = saliency_mask(model, data.forget, 0.5, "cpu", batch_size=256)
    result = run_method("salun", model, data, device="cpu", seed=0,
                        kwargs={"epochs": 2, "freeze_masked": freeze})
    original = dict(model.named_parameters())
    moved_frozen = moved_salient = False
    for name, p in result.named_parameters():
        off = mask[name] == 0
        moved_frozen |= not torch.equal(p[off], original[name][off])
        moved_salient |= not torch.equal(p[~off], original[name][~off])
    assert moved_salient
    assert moved_frozen is (not freeze)  # weight decay + momentum move them without the #32/#33 fix


def test_amun_salun_with_a_full_mask_is_amun(problem):
    model, data = problem
    kwargs = {"eps_init": 0.5, "pgd_steps": 5, "max_doublings": 3, "epochs": 2, "lr_step": 2}
    plain = run_method("amun", model, data, device="cpu", seed=3, kwargs=kwargs)
    masked = run_method("amun_salun", model, data, device="cpu", seed=3, kwargs={**kwargs, "mask_ratio": 1.0})
    for key, value in plain.state_dict().items():
        assert torch.equal(value, masked.state_dict()[key]), key


def test_l1_weight_decays_linearly():
    assert [l1_weight(1.0, e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_random_labels_can_avoid_the_true_label():
    y = torch.arange(4).repeat(250)
    g = torch.Generator().manual_seed(0)
    wrong = random_labels(y, 4, g, exclude_true=True)
    assert (wrong != y).all() and set(wrong.tolist()) == {0, 1, 2, 3}
    uniform = random_labels(y, 4, g, exclude_true=False)
    assert (uniform == y).any()


def test_random_label_runs_without_the_retain_set(problem):
    model, data = problem
    forget_only = UnlearningData(**{**data.__dict__, "retain": None})
    run_method("random_label", model, forget_only, device="cpu", seed=0, kwargs={"use_retain": False, "epochs": 1})


def test_boundary_shrink_labels_come_from_the_frozen_model(problem):
    model, data = problem
    model.eval()
    x, y = data.forget.images, data.forget.labels
    same = nearest_wrong_labels(model, x, y, bound=0.0, quantize=False)
    assert torch.equal(same, model(x).argmax(1))
    far = nearest_wrong_labels(model, x, y, bound=0.5, quantize=True)
    assert (far != y).any()
    # on CUDA the gradient comes from the bf16 forward and the label from the fp32 model (judge)
    def judge(images):
        return torch.nn.functional.one_hot(torch.full((len(images),), 3), 10).float()

    assert (nearest_wrong_labels(model, x, y, bound=0.5, quantize=True, judge=judge) == 3).all()


def test_boundary_shrink_labels_with_the_plain_frozen_model_not_its_fast_forward(problem, monkeypatch):
    """On CUDA the fast forward is bf16: the FGSM labels must be judged by the frozen model itself."""
    from unlearn.methods import boundary_shrink as bs

    judges = []
    real = bs.nearest_wrong_labels

    def recording(frozen, x, y, **kwargs):
        judges.append((frozen, kwargs.get("judge")))
        return real(frozen, x, y, **kwargs)

    monkeypatch.setattr(bs, "nearest_wrong_labels", recording)
    model, data = problem
    run_method("boundary_shrink", copy.deepcopy(model), data, device="cpu", seed=0, kwargs={"epochs": 1})
    assert judges and all(isinstance(judge, torch.nn.Module) and judge is not fast for fast, judge in judges)
    assert all(not any(p.requires_grad for p in judge.parameters()) for _, judge in judges)  # the frozen copy


def test_scrub_pieces():
    z = torch.randn(5, 4)
    assert distill_kl(z, z, 2.0).abs() < 1e-6
    assert distill_kl(z, z.flip(1), 2.0) > 0
    assert [scrub_lr(1.0, e, (5, 8, 9), 0.1) for e in (1, 5, 6, 9, 10)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])


def test_ssd_only_shrinks_selected_weights(problem):
    model, data = problem
    full = fisher_importance(model, [data.retain, data.forget], batch_size=32, device="cpu")
    forget = fisher_importance(model, [data.forget], batch_size=32, device="cpu")
    untouched = copy.deepcopy(model)
    assert dampen(untouched, full, forget, selection_weighting=1e12, dampening_constant=1.0) == 0
    assert all(torch.equal(a, b) for a, b in zip(untouched.parameters(), model.parameters(), strict=True))
    damped = copy.deepcopy(model)
    changed = dampen(damped, full, forget, selection_weighting=1.0, dampening_constant=1.0)
    assert changed > 0
    for a, b in zip(damped.parameters(), model.parameters(), strict=True):
        assert (a.abs() <= b.abs() + 1e-12).all()


def test_ssd_and_boundary_shrink_record_what_they_did(problem, caplog):
    from unlearn.methods.base import method_info

    model, data = problem
    nothing = run_method("ssd", model, data, device="cpu", seed=0, kwargs={"selection_weighting": 1e12})
    assert method_info(nothing) == {"dampened": 0, "dampened_fraction": 0.0}
    assert "returned unchanged" in caplog.text  # a silent no-op is what issue #13 found on ResNet-18
    some = run_method("ssd", model, data, device="cpu", seed=0, kwargs={"selection_weighting": 1.0})
    assert method_info(some)["dampened"] > 0
    shrunk = run_method("boundary_shrink", model, data, device="cpu", seed=0, kwargs={"epochs": 1})
    assert 0.0 <= method_info(shrunk)["relabelled_fraction"] <= 1.0
    # the diagnostics belong to one run: a second run on the result starts empty
    again = run_method("finetune", nothing, data, device="cpu", seed=0, kwargs={"epochs": 1})
    assert method_info(again) == {}


def test_finetune_runs_at_a_constant_learning_rate(problem, monkeypatch):
    import unlearn.methods.finetune as ft

    seen = {}
    real = ft.train_model

    def spy(model, images, labels, recipe, **kw):
        seen["schedule"] = recipe.schedule
        return real(model, images, labels, recipe, **kw)

    monkeypatch.setattr(ft, "train_model", spy)
    model, data = problem
    run_method("finetune", model, data, device="cpu", seed=0, kwargs={"epochs": 1})
    assert seen["schedule"] == "constant"


def test_ssd_importance_drops_a_trailing_partial_batch(problem):
    # A 7-sample tail batch would carry half of a 135-sample forget importance at ~18x the noise
    # of a full batch (issue #13 follow-up: it dampened 27% of the weights on digits).
    model, data = problem
    n = 2 * 8 + 3
    x, y = data.retain.images[:n], data.retain.labels[:n]
    with_tail = fisher_importance(model, [TensorSet(x, y)], batch_size=8, device="cpu", drop_last=True)
    full_only = fisher_importance(model, [TensorSet(x[:16], y[:16])], batch_size=8, device="cpu")
    assert all(torch.allclose(with_tail[k], full_only[k]) for k in full_only)
    kept = fisher_importance(model, [TensorSet(x, y)], batch_size=8, device="cpu")
    assert any(not torch.allclose(kept[k], full_only[k]) for k in full_only)
