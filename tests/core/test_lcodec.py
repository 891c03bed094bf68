"""Known-answer tests for L-CODEC: CODEC, FOCI, the Newton step, the block, the training trace."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.methods import codec_selection as C
from unlearn.methods import lcodec as L
from unlearn.methods import lcodec_block as B
from unlearn.models import build_model
from unlearn.training import SGDRecipe, TrainingTrace, train_model


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_codec_is_one_for_a_function_and_zero_for_independence():
    g = _gen()
    z = torch.rand(1500, generator=g)
    assert C.codec(torch.sin(6 * z), z, generator=_gen()) > 0.95
    assert abs(C.codec(torch.rand(1500, generator=g), z, generator=_gen())) < 0.08
    x, noise = torch.rand(1500, generator=g), torch.randn(1500, generator=g)
    # conditional: Y = f(X) + noise is independent of Z given X; Y = X + Z is a function of (X, Z)
    assert abs(C.codec(torch.cos(5 * x) + 0.3 * noise, z, x, generator=_gen())) < 0.08
    assert C.codec(x + z, z, x, generator=_gen()) > 0.8


def test_codec_breaks_ties_at_random_but_reproducibly():
    z = torch.arange(200).div(20, rounding_mode="floor").float()  # 10 tied values
    y = torch.rand(200, generator=_gen(1))
    assert C.codec(y, z, generator=_gen(3)) == C.codec(y, z, generator=_gen(3))


def test_foci_picks_the_informative_variables_and_stops():
    g = _gen()
    x = torch.randn(600, 8, generator=g)
    y = x[:, 2] + torch.tanh(2 * x[:, 5]) + 0.05 * torch.randn(600, generator=g)
    selected, scores = C.foci(y, x, max_features=8, generator=_gen())
    assert set(selected[:2]) == {2, 5}
    assert len(selected) < 8  # stopped on a non-positive conditional coefficient
    assert all(s > 0 for s in scores)
    assert C.foci(y, x, max_features=1, generator=_gen())[0] == selected[:1]


def test_newton_step_equals_a_direct_solve():
    h_old = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]], dtype=torch.float64)
    h_z = torch.tensor([[1.0, 0.1, 0.0], [0.1, 0.5, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64)
    grad = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    n, m, lam = 10, 2, 0.1
    hessian = (n * h_old - m * h_z) / (n - m)
    step = L.newton_step(grad, hessian, n=n, m=m, l2_reg=lam)
    expected = torch.linalg.inv(hessian + lam * torch.eye(3, dtype=torch.float64)) @ grad / (n - m)
    assert torch.allclose(step, expected, atol=1e-12)
    assert step @ grad > 0  # removal ascends the removed samples' loss


def test_newton_step_uses_the_psd_part_of_an_indefinite_hessian():
    hessian = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    step = L.newton_step(grad, hessian, n=5, m=1, l2_reg=0.5)
    assert torch.allclose(step, torch.tensor([1 / 2.5, 1 / 0.5], dtype=torch.float64) / 4)


def test_noise_std_is_sekharis_gaussian_mechanism():
    # CIFAR setting: n = 50000, m = 1, λ = 0.01, ε = 0.1, δ = 0.01
    gamma = 2 * 0.25 * 1 / (50000**2 * 0.01**3)
    assert math.isclose(L.noise_std(n=50000, m=1, l2_reg=0.01, epsilon=0.1, delta=0.01),
                        gamma / 0.1 * math.sqrt(2 * math.log(125)))


@pytest.fixture(scope="module")
def tiny():
    """The conftest ``tiny_images`` problem (160 images, 4 classes) and a model trained on it, with a trace."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(40)
    x = 0.3 * torch.rand(160, 1, 8, 8, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 0.6
    x = x.clamp(0, 1)
    trace = TrainingTrace()
    model = train_model(build_model("small_cnn", 1, 4), x, y, SGDRecipe(3, 32, 0.05), device="cpu", seed=0,
                        trace=trace)
    return model, x, y, trace


def _trained(tiny):
    model, x, y, _ = tiny
    return copy.deepcopy(model), x, y


def _changed_elements(before, after):
    return {k: (before[k] != after[k]).nonzero() for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("hessian", ["fd", "fisher"])
def test_only_the_selected_block_changes(tiny, hessian):
    model, x, y = _trained(tiny)
    trace = L.recompute_trace(model, x, y, lr=1e-3, batch_size=32, device="cpu", seed=0)
    before = copy.deepcopy(model.state_dict())
    report = L.scrub_request(model, x[:2], y[:2], n=160, hessian=hessian, trace=trace, generator=_gen(),
                             device="cpu", n_perturbations=32, max_slices=3, max_params=800,
                             noise=True, l2_reg=1.0)
    assert report.noise_std > 0 and 1 <= len(report.slices) <= 3 and report.block_size <= 800
    allowed = {(f"{s.layer}.{kind}", s.index) for s in report.slices for kind in ("weight", "bias")}
    changed = _changed_elements(before, model.state_dict())
    assert changed  # the block moved
    for key, where in changed.items():
        assert all((key, int(row[0])) in allowed for row in where), key  # only rows k of selected slices
    assert not any("running" in key or "bn" in key for key in changed)  # BatchNorm statistics untouched


def test_fisher_step_for_one_sample_is_sherman_morrison(tiny):
    model, x, y = _trained(tiny)
    original = copy.deepcopy(model)
    report = L.scrub_request(model, x[:1], y[:1], n=100, hessian="fisher", trace=None, generator=_gen(),
                             device="cpu", n_perturbations=32, max_slices=2, noise=False, l2_reg=0.1)
    pieces = B.slice_pieces(original, list(report.slices))
    g = L.block_gradient(original, x[:1], y[:1], pieces, reduction="sum")
    expected = g / ((100 - 1) * (0.1 + g @ g))  # (ggᵀ + λI)⁻¹g = g / (λ + |g|²)
    moved = (B.gather_block(dict(model.named_parameters()), pieces)
             - B.gather_block(dict(original.named_parameters()), pieces)).double()
    assert torch.allclose(moved, expected, atol=1e-6)


def test_both_finite_difference_gradients_are_taken_without_tf32(monkeypatch):
    """On CUDA the two gradients differ by about TF32's rounding: both must run inside exact_float32."""
    import contextlib

    inside = {"depth": 0, "gradients": []}

    @contextlib.contextmanager
    def recording(device):
        inside["depth"] += 1
        yield
        inside["depth"] -= 1

    real = B.block_gradient

    def block_gradient(*args, **kwargs):
        inside["gradients"].append(inside["depth"])
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "exact_float32", recording)
    monkeypatch.setattr(B, "block_gradient", block_gradient)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    pieces = B.slice_pieces(model, [C.Slice("1", 0)])
    B.sample_fd_hessian(model, torch.randn(1, 1, 2, 3), torch.tensor([1]), pieces, lr=1e-3)
    assert inside["gradients"] == [1, 1]


def test_sample_finite_difference_uses_the_stepped_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    x, y = torch.randn(1, 1, 2, 3), torch.tensor([1])
    pieces = B.slice_pieces(model, [C.Slice("1", 0), C.Slice("1", 2)])
    lr = 1e-3
    h_z = L.sample_fd_hessian(model, x, y, pieces, lr=lr)
    # Expected to first order: d_z = lr·H g, ||Δw||₁ = lr·||g||₁ -> H_z = lr (Hg)(Hg)ᵀ / ||g||₁
    w0 = B.gather_block(dict(model.named_parameters()), pieces).detach().double()

    def loss_of(w):
        weight = model[1].weight.detach().double().clone()
        bias = model[1].bias.detach().double().clone()
        weight[0], bias[0], weight[2], bias[2] = w[0:6], w[6], w[7:13], w[13]
        return F.cross_entropy(x.flatten(1).double() @ weight.T + bias, y)

    hess = torch.autograd.functional.hessian(loss_of, w0)
    grad = torch.autograd.functional.jacobian(loss_of, w0)
    hg = hess @ grad
    expected = lr * torch.outer(hg, hg) / grad.abs().sum()
    assert expected.abs().max() > 1e-6  # not the official code's degenerate (zero-distance) case
    assert torch.allclose(h_z, expected, rtol=2e-2, atol=1e-3 * expected.abs().max())


def _linear_problem():
    torch.manual_seed(0)
    x, y = torch.randn(50, 1, 2, 2), torch.randint(0, 3, (50,))
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), x, y


def _full_gradient(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_training_trace_average_gradient_is_the_full_batch_gradient():
    model, x, y = _linear_problem()
    full = _full_gradient(copy.deepcopy(model), x, y)
    trace = TrainingTrace()
    recipe = SGDRecipe(3, 16, 0.0, momentum=0.0, weight_decay=0.0, schedule="constant")  # unequal batches (13+13+12+12)
    train_model(model, x, y, recipe, device="cpu", seed=0, trace=trace)
    assert trace.complete and trace.n == 50 and len(trace.avg_grads) == 2
    for grads in trace.avg_grads:
        for name, value in full.items():
            assert torch.allclose(grads[name], value, atol=1e-6), name
    # with movement: full-batch SGD, the last epoch's average gradient is the gradient at the
    # parameters that ended epoch T-2; parameters are copies, not aliases
    model, x, y = _linear_problem()
    trace = TrainingTrace()
    recipe = SGDRecipe(4, 50, 0.5, momentum=0.0, weight_decay=0.0, schedule="constant")
    train_model(model, x, y, recipe, device="cpu", seed=0, trace=trace)
    at_t2 = copy.deepcopy(model)
    at_t2.load_state_dict(trace.params[0])
    for name, value in _full_gradient(at_t2, x, y).items():
        assert torch.allclose(trace.avg_grads[1][name], value, atol=1e-6), name
    for name, p in model.named_parameters():
        assert torch.equal(trace.params[1][name], p.detach())
        assert not torch.equal(trace.params[0][name], trace.params[1][name])


def test_post_hoc_trace_matches_the_full_batch_gradient_without_movement():
    model, x, y = _linear_problem()
    before = copy.deepcopy(model.state_dict())
    full = _full_gradient(copy.deepcopy(model), x, y)
    trace = L.recompute_trace(model, x, y, lr=0.0, batch_size=16, device="cpu", seed=0)
    assert trace.complete and trace.n == 50
    for grads in trace.avg_grads:
        for name, value in full.items():
            assert torch.allclose(grads[name], value, atol=1e-6), name
    for name, value in model.state_dict().items():  # the passes ran on a copy
        assert torch.equal(value, before[name])
        assert torch.equal(trace.params[1][name], value)


def test_lcodec_without_trace_or_retain_uses_fisher_and_needs_n(tiny):
    model, x, y = _trained(tiny)
    factory = lambda: build_model("small_cnn", 1, 4)  # noqa: E731
    data = UnlearningData(TensorSet(x[:4], y[:4]), None, 4, SGDRecipe(1, 32, 0.05), factory)
    kwargs = {"n_perturbations": 32, "scrub_batch_size": 4, "noise": False, "max_params": 600}
    with pytest.raises(ValueError, match="n_train"):
        run_method("lcodec", model, data, device="cpu", seed=0, kwargs=kwargs)
    out = run_method("lcodec", model, data, device="cpu", seed=0, kwargs={**kwargs, "n_train": 160})
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), model.state_dict().values(),
                                                      strict=True))


def test_lcodec_uses_a_recorded_trace_deterministically_with_noise(tiny):
    model, x, y, trace = tiny
    recipe = SGDRecipe(3, 32, 0.05)
    data = UnlearningData(TensorSet(x[:2], y[:2]), None, 4, recipe, lambda: build_model("small_cnn", 1, 4), trace)
    kwargs = {"n_perturbations": 32, "noise": True, "l2_reg": 1.0, "max_params": 600}
    first = run_method("lcodec", model, data, device="cpu", seed=3, kwargs=kwargs)
    second = run_method("lcodec", model, data, device="cpu", seed=3, kwargs=kwargs)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])


def test_newton_step_survives_a_non_finite_or_degenerate_hessian():
    import torch

    from unlearn.methods.lcodec import newton_step

    g = torch.tensor([1.0, -2.0])
    bad = torch.tensor([[float("inf"), 0.0], [0.0, 1.0]])
    step = newton_step(g, bad, n=10, m=1, l2_reg=0.5)
    assert torch.allclose(step, g.double() / 0.5 / 9)


def test_the_official_safety_check_reverts_a_request_that_damages_the_model(monkeypatch):
    """Without it a too small lambda ran away (Fashion-MNIST, lambda 0.2: the weights moved by 110% in one repetition
    of the benchmark table). A reverted request is counted and its step undone; the others are applied."""
    from types import SimpleNamespace

    from conftest import quadrant_images

    from unlearn.methods import method_info
    from unlearn.training import accuracy

    images, labels = quadrant_images()
    order = torch.randperm(160, generator=torch.Generator().manual_seed(1))
    x, y = torch.from_numpy(images)[order], torch.from_numpy(labels)[order]
    model = train_model(build_model("small_cnn", 1, 4), x, y, SGDRecipe(20, 32, 0.05), device="cpu", seed=0)
    data = UnlearningData(TensorSet(x[:12], y[:12]), TensorSet(x[12:], y[12:]), 4, SGDRecipe(20, 32, 0.05),
                          lambda: build_model("small_cnn", 1, 4))
    assert accuracy(model, x[12:], y[12:], device="cpu") == 1.0
    calls = []

    def step(model, x, y, **kwargs):  # request 2 wipes the classifier's head (a step that ran away); 1 and 3 nudge
        calls.append(kwargs["n"])
        with torch.no_grad():
            if len(calls) == 2:
                model.head.weight.zero_()
                model.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
            else:
                model.head.bias.add_(0.01)
        return SimpleNamespace(block_size=4, step_norm=0.01, noise_std=0.0)

    monkeypatch.setattr(L, "scrub_request", step)
    kwargs = {"scrub_batch_size": 4, "noise": False, "hessian": "fisher", "n_train": 160}
    checked = run_method("lcodec", model, data, device="cpu", seed=0, kwargs=kwargs)
    info = method_info(checked)
    assert info["safety_check"] and info["requests"] == 3 and info["reverted_requests"] == 1
    assert calls == [160, 156, 156]  # n is not decreased for the reverted request
    assert torch.allclose(checked.head.bias, model.head.bias + 0.02) and torch.equal(checked.head.weight,
                                                                                    model.head.weight)
    calls.clear()
    unchecked = run_method("lcodec", model, data, device="cpu", seed=0, kwargs={**kwargs, "val_gap_skip": None})
    assert method_info(unchecked)["reverted_requests"] == 0 and accuracy(unchecked, x[12:], y[12:], device="cpu") < 0.5
    assert calls == [160, 156, 152]
