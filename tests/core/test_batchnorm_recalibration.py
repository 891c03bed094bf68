"""Batch-norm recalibration on D_R (``training.recalibrate_batchnorm``, ``run_method(recalibrate_bn=...)``).

Why it exists: methods that stop at a constant learning rate leave running statistics that lag the
weights; the eval-mode model then loses accuracy its weights still have. These tests pin what the
step may and may not change.
"""

import copy

import pytest
import torch
from torch import nn

from unlearn.config import ConfigError, parse_params
from unlearn.methods import TensorSet, UnlearningData, method_info, run_method
from unlearn.models import build_model
from unlearn.training import SGDRecipe, recalibrate_batchnorm


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_statistics_are_those_of_the_given_images_only_and_weights_are_untouched():
    model = _conv_bn()
    bn = model[1]
    bn.running_mean.fill_(7.0)  # stale statistics, e.g. averaged over batches that held D_F
    bn.running_var.fill_(9.0)
    bn.num_batches_tracked.fill_(123)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    images = _images(96)
    model.eval()
    assert recalibrate_batchnorm(model, images, device="cpu", batch_size=32, seed=5) == 1
    with torch.no_grad():
        conv = model[0](images)  # (N, 4, 8, 8): what the layer normalises
    # 96 images in 3 chunks of 32: the cumulative average of the chunk means is the mean of all
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(5))  # the visiting order
    chunk_vars = torch.stack([conv[c].var(dim=(0, 2, 3), unbiased=True) for c in order.split(32)])
    assert torch.allclose(bn.running_var, chunk_vars.mean(0), atol=1e-5)
    assert not model.training and not bn.training and bn.momentum == 0.1  # modes and momentum restored
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())


def test_other_modules_stay_in_eval_mode_and_no_global_random_state_is_used():
    # A dropout before a batch norm: in train mode it would scale what the layer sees and draw from
    # the global generator (so the audit's re-run could differ from the attempt).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.BatchNorm1d(16))
    images = _images(128)
    state = torch.get_rng_state()
    recalibrate_batchnorm(model, images, device="cpu", batch_size=128)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        features = model[1](images.flatten(1))  # eval-mode dropout is the identity
    assert torch.allclose(model[3].running_var, features.var(0, unbiased=True), atol=1e-5)


def test_a_class_sorted_set_keeps_its_between_class_variance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4))
    low, high = 0.2 * _images(256, seed=1), 0.8 + 0.2 * _images(256, seed=2)
    images = torch.cat([low, high])  # sorted by "class", as an ImageFolder source keeps it
    recalibrate_batchnorm(model, images, device="cpu", batch_size=256)
    with torch.no_grad():
        full = model[1](images.flatten(1)).var(0, unbiased=True)
    assert torch.allclose(model[2].running_var, full, rtol=0.15)  # sorted chunks gave about a tenth of it


def test_per_module_modes_are_restored():
    model = _conv_bn().train()
    model[1].eval()  # a frozen batch norm inside a model in training
    recalibrate_batchnorm(model, _images(8), device="cpu")
    assert model.training and model[0].training and not model[1].training


class _FailsOnSecondCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("out of memory")
        return x


def test_a_failure_midway_puts_the_old_statistics_back():
    model = nn.Sequential(*_conv_bn(), _FailsOnSecondCall())
    model[1].running_mean.fill_(3.0)
    before = copy.deepcopy(model.state_dict())
    model.eval()
    with pytest.raises(RuntimeError, match="out of memory"):
        recalibrate_batchnorm(model, _images(64), device="cpu", batch_size=16)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.values(), strict=True))
    assert model[1].momentum == 0.1 and not model.training and not model[1].training


def test_no_chunk_is_a_lone_sample():
    # 257 images at batch 256 (or 3 at batch 2) would leave a batch of one, which BatchNorm1d refuses in train mode.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.BatchNorm1d(5))
    assert recalibrate_batchnorm(model, _images(257), device="cpu", batch_size=256) == 1
    assert recalibrate_batchnorm(model, _images(3), device="cpu", batch_size=2) == 1
    stats = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, _images(1), device="cpu") == 0  # one image: no variance to average
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stats.values(), strict=True))


def test_deterministic_and_independent_of_the_old_statistics():
    first, second = _conv_bn(), _conv_bn()
    second[1].running_mean.uniform_(-5, 5)
    images = _images(64)
    recalibrate_batchnorm(first, images, device="cpu")
    recalibrate_batchnorm(second, images, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))


def test_nothing_to_do_changes_nothing():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    before = copy.deepcopy(plain.state_dict())
    assert recalibrate_batchnorm(plain, _images(10), device="cpu") == 0
    model = _conv_bn()
    stats = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, torch.empty(0, 1, 8, 8), device="cpu") == 0
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), before.values(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stats.values(), strict=True))
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(model, _images(4), device="cpu", batch_size=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stats.values(), strict=True))


def _data(n_forget: int = 16, n_retain: int = 96) -> UnlearningData:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (n_forget + n_retain,), generator=g)
    images = torch.rand(n_forget + n_retain, 1, 8, 8, generator=g)
    recipe = SGDRecipe(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0)
    return UnlearningData(TensorSet(images[:n_forget], labels[:n_forget]),
                          TensorSet(images[n_forget:], labels[n_forget:]), 3, recipe,
                          lambda: build_model("small_cnn", 1, 3))


def test_run_method_recalibrates_on_the_retain_set_when_asked_and_says_so():
    data = _data()
    torch.manual_seed(0)
    original = build_model("small_cnn", 1, 3)
    kwargs = {"epochs": 1, "lr": 0.01, "batch_size": 32}
    plain = run_method("finetune", original, data, device="cpu", seed=0, kwargs=kwargs)
    fixed = run_method("finetune", original, data, device="cpu", seed=0, kwargs=kwargs, recalibrate_bn=True)
    assert "bn_recalibrated" not in method_info(plain)
    assert method_info(fixed)["bn_recalibrated"] == 3  # small_cnn's three conv blocks
    # the same weights (the method's), statistics recomputed from D_R alone
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), fixed.parameters(), strict=True))
    expected = copy.deepcopy(plain)
    recalibrate_batchnorm(expected, data.retain.images, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), fixed.state_dict().values(),
                                                 strict=True))
    assert not torch.equal(plain.features[0][1].running_mean, fixed.features[0][1].running_mean)
    assert not fixed.training
    # the exact retrain's statistics already come from D_R alone: left as trained
    retrained = run_method("retrain", original, data, device="cpu", seed=0, recalibrate_bn=True)
    assert "bn_recalibrated" not in method_info(retrained)


def test_a_method_given_no_retain_set_is_recorded_as_not_recalibrated():
    data = _data()
    data = UnlearningData(data.forget, None, 3, data.train_recipe, data.model_factory)
    torch.manual_seed(0)
    model = run_method("grad_ascent", build_model("small_cnn", 1, 3), data, device="cpu", seed=0,
                       kwargs={"epochs": 1, "lr": 1e-4}, recalibrate_bn=True)
    assert method_info(model)["bn_recalibrated"] == 0


def test_params_key_is_a_strict_bool():
    assert parse_params({}).unlearn.recalibrate_bn is False  # absent: each method's output as its paper's
    assert parse_params({"unlearn": {"recalibrate_bn": True}}).unlearn.recalibrate_bn is True
    with pytest.raises(ConfigError, match="recalibrate_bn"):
        parse_params({"unlearn": {"recalibrate_bn": "yes"}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_cuda_matches_cpu():
    cpu, gpu = _conv_bn(), _conv_bn().cuda()
    images = _images(64)
    recalibrate_batchnorm(cpu, images, device="cpu")
    recalibrate_batchnorm(gpu, images, device="cuda")
    assert torch.allclose(cpu[1].running_mean, gpu[1].running_mean.cpu(), atol=1e-5)
    assert torch.allclose(cpu[1].running_var, gpu[1].running_var.cpu(), atol=1e-4)
