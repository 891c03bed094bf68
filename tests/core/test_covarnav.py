"""Empirical checks of the choices made in unlearn/methods/covarnav.py."""

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.methods.covarnav import (
    _BNStatLoss,
    inversion_targets,
    invert_model,
    most_probable_wrong_labels,
    project_gradients,
    projectable_layers,
    representation_bases,
)
from unlearn.models import build_model
from unlearn.training import SGDRecipe, accuracy, predict_logits, train_model

INVERSION = {"beta_ce": 1.0, "beta_tv": 0.05, "beta_l2": 0.01, "beta_bn": 1.0}  # the method's defaults
FAST = {"n_inverted": 32, "inversion_steps": 60}


def _quadrants(seed: int, per_class: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 8x8 images: noise plus a brighter class-specific quadrant."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    images = rng.uniform(0, 0.5, size=(4 * per_class, 1, 8, 8))
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 0.4
    return torch.tensor(images.clip(0, 1), dtype=torch.float32), torch.tensor(labels)


@pytest.fixture(scope="module")
def problem():
    x, y = _quadrants(0)
    x_test, y_test = _quadrants(1)
    torch.manual_seed(0)  # the initialisation
    model = train_model(build_model("small_cnn", 1, 4), x, y, SGDRecipe(8, 32, 0.05), device="cpu", seed=0)
    return model, x, y, x_test, y_test


def _invert(model, n=32, steps=60, seed=0):
    targets = inversion_targets([0, 1, 2, 3], n)
    images, history = invert_model(model, targets, (1, 8, 8), steps=steps, lr=0.1, device="cpu", seed=seed,
                                   **INVERSION)
    return images, targets, history


def _bn_term(model, images):
    hooks = _BNStatLoss(model)
    with torch.no_grad():
        model(images)
    term = hooks.pop().item()
    hooks.remove()
    return term


def test_inversion_fits_the_targets_and_the_batchnorm_statistics(problem):
    model = problem[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets, history = _invert(model)
    assert images.shape == (32, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert history[-1] < 0.2 * history[0]
    assert (predict_logits(model, images, device="cpu").argmax(1) == targets).float().mean() >= 0.95
    start = torch.rand((32, 1, 8, 8), generator=torch.Generator().manual_seed(0))  # the initialisation
    assert _bn_term(model, images) < 0.5 * _bn_term(model, start)
    again, _, _ = _invert(model, steps=60)
    assert torch.equal(images, again)  # seeded
    assert not torch.equal(images, _invert(model, steps=60, seed=1)[0])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights and BN stats


def test_inversion_targets_are_balanced_over_the_given_classes():
    targets = inversion_targets([1, 2, 3], 10)
    counts = torch.bincount(targets, minlength=4)
    assert counts[0] == 0 and counts[1:].max() - counts[1:].min() <= 1 and counts.sum() == 10


def test_models_without_batchnorm_skip_the_bn_term_and_still_unlearn():
    torch.manual_seed(0)
    x, y = _quadrants(0, per_class=20)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    mlp = train_model(mlp, x, y, SGDRecipe(20, 16, 0.05), device="cpu", seed=0)
    hooks = _BNStatLoss(mlp)
    assert hooks.pop() is None
    hooks.remove()
    forget = y == 0
    data = UnlearningData(TensorSet(x[forget], y[forget]), None, 4, SGDRecipe(1, 1, 0.1), lambda: None)
    out = run_method("covarnav", mlp, data, device="cpu", seed=0,
                     kwargs={**FAST, "lr": 0.05, "epochs": 20, "batch_size": 8})
    assert accuracy(out, x[forget], y[forget], device="cpu") < accuracy(mlp, x[forget], y[forget], device="cpu")


def test_relabelling_gives_the_most_probable_wrong_class(problem):
    model, x, y, _, _ = problem
    labels = y.clone()
    labels[::7] = (labels[::7] + 1) % 4  # some "true" labels the model disagrees with
    new = most_probable_wrong_labels(model, x, labels, device="cpu")
    assert (new != labels).all()
    probs = predict_logits(model, x, device="cpu").softmax(1)
    probs[torch.arange(len(labels)), labels] = -1
    assert torch.equal(new, probs.argmax(1))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_projected_step_leaves_outputs_on_the_protected_inputs_unchanged(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer = nn.Linear(6, 3)
        inputs = torch.randn(4, 2) @ torch.randn(2, 6)  # rank 2 in R^6 (+ the bias column)
    else:
        layer = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        inputs = torch.randn(1, 2, 4, 4)  # 4 patches in R^18 (+ the bias column)
    bases = representation_bases(layer, inputs, threshold=1.0, device="cpu")
    basis = bases[""]  # (d, k)
    assert 0 < basis.shape[1] < basis.shape[0]  # room is left to learn
    before = layer(inputs).detach()
    probe = 3 * torch.randn_like(inputs)
    probe_before = layer(probe).detach()
    layer(probe).pow(2).sum().backward()
    project_gradients(projectable_layers(layer), bases)
    joint = torch.cat([layer.weight.grad.reshape(3, -1), layer.bias.grad[:, None]], dim=1)  # (out, d)
    assert (joint @ basis).abs().max() < 1e-4
    with torch.no_grad():
        for p in layer.parameters():
            p -= 0.1 * p.grad
    assert torch.allclose(layer(inputs), before, atol=1e-4)  # protected: unchanged
    assert not torch.allclose(layer(probe), probe_before, atol=1e-2)  # elsewhere: learning happened


def test_basis_size_is_the_smallest_capturing_the_energy_threshold():
    layer = nn.Linear(3, 2, bias=False)
    inputs = torch.diag(torch.tensor([3.0, 2.0, 1.0]))  # energies 9, 4, 1 of 14
    for threshold, k in ((0.0, 0), (0.6, 1), (0.9, 2), (0.95, 3), (1.0, 3)):
        assert representation_bases(layer, inputs, threshold=threshold, device="cpu")[""].shape == (3, k)
    with pytest.raises(ValueError, match="threshold"):
        representation_bases(layer, inputs, threshold=1.5, device="cpu")


@pytest.fixture(scope="module")
def class_forgetting(problem):
    """Forget class 0 with and without the projection (same everything else)."""
    model, x, y, _, _ = problem
    forget = y == 0
    data = UnlearningData(TensorSet(x[forget], y[forget]), None, 4, SGDRecipe(1, 1, 0.1), lambda: None)
    kwargs = {**FAST, "lr": 0.05}
    projected = run_method("covarnav", model, data, device="cpu", seed=0, kwargs=kwargs)
    plain = run_method("covarnav", model, data, device="cpu", seed=0, kwargs={**kwargs, "threshold": 0.0})
    return projected, plain


def test_covarnav_forgets_a_class_and_keeps_the_others_better_than_unprojected(problem, class_forgetting):
    model, x, y, x_test, y_test = problem
    projected, plain = class_forgetting
    forget, others = y == 0, y_test != 0
    assert accuracy(model, x[forget], y[forget], device="cpu") == 1.0
    for unlearned in (projected, plain):
        assert accuracy(unlearned, x[forget], y[forget], device="cpu") <= 0.05
        assert accuracy(unlearned, x_test[~others], y_test[~others], device="cpu") <= 0.05
    kept = accuracy(projected, x_test[others], y_test[others], device="cpu")
    assert kept >= accuracy(model, x_test[others], y_test[others], device="cpu") - 0.03
    assert kept > accuracy(plain, x_test[others], y_test[others], device="cpu") + 0.3


def test_projection_preserves_the_outputs_on_the_inverted_samples(problem, class_forgetting):
    model = problem[0]
    projected, plain = class_forgetting
    inverted, _, _ = _invert(model)  # the same samples the method inverted (same seed and settings)
    reference = predict_logits(model, inverted, device="cpu")

    def change(m):
        return ((predict_logits(m, inverted, device="cpu") - reference).norm() / reference.norm()).item()

    assert change(projected) < 0.5 * change(plain)  # 0.26 vs 2.28 with this seed; <= 0.4 over 6 inits


def test_batchnorm_is_frozen_and_parameters_stay_trainable(problem, class_forgetting):
    model = problem[0]
    projected, _ = class_forgetting
    after = projected.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            for key, value in module.state_dict().items():
                assert torch.equal(value, after[f"{name}.{key}"]), f"{name}.{key} changed"
    assert all(p.requires_grad for p in projected.parameters())
    assert not torch.equal(after["head.weight"], model.state_dict()["head.weight"])


def test_target_forget_accuracy_stops_after_the_first_epoch_reaching_it(problem):
    model, x, y, _, _ = problem
    forget = torch.zeros(len(y), dtype=torch.bool)
    forget[::8] = True
    data = UnlearningData(TensorSet(x[forget], y[forget]), None, 4, SGDRecipe(1, 1, 0.1), lambda: None)
    kwargs = {"n_inverted": 8, "inversion_steps": 5, "batch_size": 8}
    early = run_method("covarnav", model, data, device="cpu", seed=0,
                       kwargs={**kwargs, "epochs": 5, "target_forget_acc": 1.0})
    one = run_method("covarnav", model, data, device="cpu", seed=0, kwargs={**kwargs, "epochs": 1})
    for key, value in early.state_dict().items():
        assert torch.equal(value, one.state_dict()[key])


def test_bad_arguments_are_refused(problem):
    model, x, y, _, _ = problem
    data = UnlearningData(TensorSet(x, y), None, 4, SGDRecipe(1, 1, 0.1), lambda: None)
    with pytest.raises(ValueError, match="others"):
        run_method("covarnav", model, data, device="cpu", seed=0, kwargs={"inverted_classes": "others"})
    with pytest.raises(ValueError, match="inverted_classes"):
        run_method("covarnav", model, data, device="cpu", seed=0, kwargs={"inverted_classes": "some"})
