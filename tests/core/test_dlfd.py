"""Empirical checks of DLFD's parts: Sinkhorn OT, the perturbation search, the criterion."""

import itertools
import math

import pytest
import torch

from unlearn.methods.dlfd import cosine_cost, forgetting_score, ot_distance, sinkhorn_plan, synthesize
from unlearn.models import build_model
from unlearn.training import SGDRecipe, train_model

SINKHORN = {"eps": 0.01, "max_iter": 50, "tol": 1e-3}


def _exact_ot(cost: torch.Tensor) -> float:
    """Exact OT between uniform n-point measures: the best permutation (Birkhoff)."""
    n = cost.shape[0]
    return min(sum(cost[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n))) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_plan_has_uniform_marginals(seed):
    g = torch.Generator().manual_seed(seed)
    cost = cosine_cost(torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g))  # (7, 4)
    plan = sinkhorn_plan(cost, eps=0.05, max_iter=2000, tol=1e-9)
    assert (plan >= 0).all()
    assert torch.allclose(plan.sum(1), torch.full((7,), 1 / 7), atol=1e-5)
    assert torch.allclose(plan.sum(0), torch.full((4,), 1 / 4), atol=1e-5)
    # at the paper's eps = 0.01: the column marginal is exact at once, the row error shrinks
    errors = []
    for rounds in (10, 50, 200, 2000):
        plan = sinkhorn_plan(cost, eps=0.01, max_iter=rounds, tol=1e-9)
        assert torch.allclose(plan.sum(0), torch.full((4,), 1 / 4), atol=1e-5)
        errors.append((plan.sum(1) - 1 / 7).abs().sum().item())
    assert errors[-1] < 1e-4 and errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_entropic_ot_matches_brute_force_ot(seed):
    g = torch.Generator().manual_seed(seed)
    cost = cosine_cost(torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g))  # (6, 6)
    plan = sinkhorn_plan(cost, eps=0.01, max_iter=5000, tol=1e-10)
    exact = _exact_ot(cost)
    # <T_eps, C> - OT <= eps * log(n m) for the entropic optimum; and never below OT (up to
    # the marginal error of the iterate)
    value = (plan * cost).sum().item()
    assert exact - 1e-4 <= value <= exact + 0.01 * torch.log(torch.tensor(36.0)).item() + 1e-4
    # a default, early-stopped solve is close as well
    assert abs(ot_distance(*_features(seed), **SINKHORN).item() - _exact_ot(cosine_cost(*_features(seed)))) < 0.05


def _features(seed):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)


def test_ot_is_zero_between_identical_batches_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    assert ot_distance(z, z[torch.randperm(8, generator=g)], **SINKHORN).item() < 1e-3
    assert ot_distance(z, z + 1.0, **SINKHORN).item() > 1e-2
    assert abs(ot_distance(z[:1], -z[:1], **SINKHORN).item() - 2.0) < 1e-5  # cos = -1: the largest cost


_TRAINED: dict = {}


@pytest.fixture
def trained(tiny_images):
    """A model trained on the tiny 4-class problem (once per module); retain: classes 0-2, forget: class 3."""
    if not _TRAINED:
        images, labels = tiny_images
        x, y = torch.tensor(images), torch.tensor(labels)
        model = train_model(build_model("small_cnn", 1, 4), x, y, SGDRecipe(4, 32, 0.05), device="cpu", seed=0)
        retain = torch.cat([torch.arange(c * 40, c * 40 + 8) for c in range(3)])  # (24,)
        forget = torch.arange(120, 128)  # (8,)
        _TRAINED["value"] = (model.eval(), x[retain], y[retain], x[forget])
    return _TRAINED["value"]


def test_ot_term_has_a_nonzero_gradient_with_respect_to_the_perturbation(trained):
    model, x_r, _, x_f = trained
    z_f = model(x_f).detach()
    delta = torch.zeros_like(x_r, requires_grad=True)
    ot = ot_distance(model(x_r + delta), z_f, **SINKHORN)
    (grad,) = torch.autograd.grad(ot, delta)
    assert grad.abs().sum().item() > 0
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every retain sample gets a direction
    # it is the true derivative: a small step along the gradient raises OT by about |grad|^2 h
    h = 1e-3 / grad.norm().item()
    with torch.no_grad():
        up = ot_distance(model(x_r + h * grad), z_f, **SINKHORN).item()
    assert up > ot.item()


@pytest.mark.parametrize("epsilon", [4 / 255, 16 / 255, 0.25])
def test_perturbations_respect_epsilon_and_the_pixel_range(trained, epsilon):
    model, x_r, y_r, x_f = trained
    x_star = synthesize(model, x_r, y_r, model(x_f).detach(), forget_weight=3.0, retain_weight=0.5,
                        steps=6, alpha=epsilon / 2, epsilon=epsilon, sinkhorn=SINKHORN)
    assert (x_star - x_r).abs().max().item() <= epsilon + 1e-6
    assert x_star.min().item() >= 0.0 and x_star.max().item() <= 1.0
    assert (x_star - x_r).abs().max().item() > epsilon / 2  # it does move


def test_synthesis_increases_ot_distance_to_the_forget_features(trained):
    model, x_r, y_r, x_f = trained
    z_f = model(x_f).detach()
    with torch.no_grad():
        before = ot_distance(model(x_r), z_f, **SINKHORN).item()
    x_star = synthesize(model, x_r, y_r, z_f, forget_weight=3.0, retain_weight=0.0, steps=10,
                        alpha=0.1 / 4, epsilon=0.1, sinkhorn=SINKHORN)
    with torch.no_grad():
        after = ot_distance(model(x_star), z_f, **SINKHORN).item()
    assert after > before + 0.01
    # with a classification weight, the search keeps most retain labels predictable
    x_kept = synthesize(model, x_r, y_r, z_f, forget_weight=3.0, retain_weight=1.0, steps=10,
                        alpha=0.1 / 4, epsilon=0.1, sinkhorn=SINKHORN)
    with torch.no_grad():
        assert ot_distance(model(x_kept), z_f, **SINKHORN).item() > before
        assert (model(x_kept).argmax(1) == y_r).float().mean().item() >= 0.75


def test_forgetting_score_is_near_zero_for_one_distribution_and_one_for_separated_losses():
    g = torch.Generator().manual_seed(0)
    same = [forgetting_score(torch.rand(100, generator=g), torch.rand(100, generator=g)) for _ in range(20)]
    assert sum(same) / len(same) < 0.08
    low, high = torch.rand(50, generator=g), 2 + torch.rand(50, generator=g)
    assert forgetting_score(high, low) == 1.0  # forget losses all above: forgotten
    assert forgetting_score(low, high) == 0.0  # forget losses below members: not forgotten


def test_noise_floor_is_what_exchangeable_sets_reach_and_separation_clears_it():
    from unlearn.methods.dlfd import noise_floor

    g = torch.Generator().manual_seed(0)
    same_f, same_r = torch.rand(30, generator=g), torch.rand(30, generator=g)
    floor = noise_floor(same_f, same_r, draws=40, quantile=0.95, generator=g)
    # issue #13: two samples of one distribution reached FS ~0.1 by chance; the floor says so
    assert 0.05 < floor < 0.6
    separated = forgetting_score(same_f + 2.0, same_r)
    assert separated > floor


def test_dlfd_records_how_many_batches_it_perturbed(trained, tiny_images):
    from unlearn.methods import TensorSet, UnlearningData, run_method
    from unlearn.methods.base import method_info

    model = trained[0]
    x, y = torch.tensor(tiny_images[0]), torch.tensor(tiny_images[1])
    data = UnlearningData(TensorSet(x[::10], y[::10]), TensorSet(x[1::2], y[1::2]), 4,
                          SGDRecipe(1, 32, 0.05), lambda: build_model("small_cnn", 1, 4))
    info = method_info(run_method("dlfd", model, data, device="cpu", seed=0,
                                  kwargs={"perturbation_steps": 2, "check_every": 1, "forget_target": 0.0}))
    assert 0 <= info["perturbed_batches"] <= info["batches"] and info["noise_floor"] is not None
    never = method_info(run_method("dlfd", model, data, device="cpu", seed=0,
                                   kwargs={"perturbation_steps": 2, "forget_target": None}))
    assert never["perturbed_batches"] == never["batches"] and never["noise_floor"] is None


def _per_round_sinkhorn(cost, eps, max_iter, tol):
    """The plain loop: the stopping test read after every round."""
    n, m = cost.shape
    log_a, log_b = torch.full((n,), -math.log(n), dtype=cost.dtype), torch.full((m,), -math.log(m), dtype=cost.dtype)
    f, g = torch.zeros(n, dtype=cost.dtype), torch.zeros(m, dtype=cost.dtype)
    for _ in range(max_iter):
        f_old = f
        f = eps * log_a - eps * torch.logsumexp((g[None, :] - cost) / eps, dim=1)
        g = eps * log_b - eps * torch.logsumexp((f[:, None] - cost) / eps, dim=0)
        if (f - f_old).abs().max().item() < tol * eps:
            break
    return torch.exp((f[:, None] + g[None, :] - cost) / eps)


@pytest.mark.parametrize("max_iter", [0, 1, 9, 10, 11, 57])
@pytest.mark.parametrize("tol", [0.0, 1e-3, 10.0])
def test_sinkhorn_reads_its_stopping_test_once_per_chunk_with_the_same_plan(max_iter, tol):
    """Checking convergence every CHECK_ROUNDS rounds (one host read on CUDA) returns the very plan of a per-round
    check: the first converged round's potentials are kept (tol 10: round 1; tol 0: never)."""
    cost = torch.rand(9, 14, generator=torch.Generator().manual_seed(max_iter), dtype=torch.float64) * 2
    expected = _per_round_sinkhorn(cost, 0.05, max_iter, tol)
    assert torch.equal(sinkhorn_plan(cost, eps=0.05, max_iter=max_iter, tol=tol), expected)


def test_device_side_stopping_gives_the_same_plan_as_host_checks():
    """On CUDA the stopping test never leaves the device (potentials freeze at the first converged round):
    the plan is bit-identical to the host-checked loop's, converged or not."""
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n, m = int(torch.randint(2, 40, (1,), generator=g)), int(torch.randint(2, 40, (1,), generator=g))
        cost = torch.rand(n, m, generator=g, dtype=torch.float64 if trial % 2 else torch.float32) * 2
        eps = [0.01, 0.05, 0.2][trial % 3]
        max_iter = [3, 10, 25, 50][trial % 4]
        kwargs = {"eps": eps, "max_iter": max_iter, "tol": [1e-3, 1e-1][trial % 2]}
        assert torch.equal(sinkhorn_plan(cost, host_checks=False, **kwargs),
                           sinkhorn_plan(cost, host_checks=True, **kwargs)), trial
