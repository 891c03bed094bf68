"""Bring your own model: import paths and torchvision builders in model.name, checked at start-up."""

import pytest
import torch
from torch import nn

from unlearn.config import ConfigError, parse_params
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.models import MODELS, build_model, check_model
from unlearn.training import SGDRecipe, accuracy, train_model

USER = "tests.core.byo_models:tiny_net"


def _data(n=64, hw=8):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, hw, hw, generator=g) * 0.3
    x[torch.arange(n), 0, y, y] = 1.0  # class = a bright pixel's position: learnable in a few epochs
    return x, y


def test_user_factory_trains_and_unlearns_like_a_registered_model():
    assert USER in MODELS and "tests.core.byo_models:missing" not in MODELS
    x, y = _data()
    check_model(USER, (1, 8, 8), 4)
    factory = lambda: build_model(USER, 1, 4, image_shape=(1, 8, 8))  # noqa: E731
    model = factory()
    assert type(model).__name__ == "TinyNet"
    recipe = SGDRecipe(8, 16, 0.05)
    model = train_model(model, x, y, recipe, device="cpu", seed=0)
    assert accuracy(model, x, y, device="cpu") > 0.9
    data = UnlearningData(TensorSet(x[:8], y[:8]), TensorSet(x[8:], y[8:]), 4, recipe, factory)
    retrained = run_method("retrain", model, data, device="cpu", seed=1)
    assert type(retrained).__name__ == "TinyNet"


def test_torchvision_builder_gets_classes_and_channels():
    check_model("torchvision:resnet18", (1, 28, 28), 10)
    model = build_model("torchvision:resnet18", 1, 10, image_shape=(1, 32, 32))
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64 and model.conv1.stride == (2, 2)
    assert model.fc.out_features == 10
    with pytest.raises(ConfigError, match="not a torchvision classification model.*resnet18"):
        build_model("torchvision:no_such_net", 3, 10)


@pytest.mark.parametrize("name, shape, match", [
    (USER, (1, 28, 28), r"cannot take images of shape \(1, 28, 28\)"),  # sized for 8x8
    ("tests.core.byo_models:ten_classes_always", (1, 8, 8), r"outputs of shape \(10,\).*expected \(4,\)"),
    ("tests.core.byo_models:no_arguments", (1, 8, 8), r"must accept \(in_channels, num_classes\)"),
    ("tests.core.byo_models:not_a_module", (1, 8, 8), "returned str, not a torch.nn.Module"),
    ("tests.core.byo_models:NOT_CALLABLE", (1, 8, 8), "is not callable"),
    ("tests.core.byo_models:missing", (1, 8, 8), "has no attribute 'missing'"),
    ("no_such_package.models:net", (1, 8, 8), "cannot import module 'no_such_package.models'.*PYTHONPATH"),
    ("no_such_model", (1, 8, 8), "unknown model architecture 'no_such_model'"),
])
def test_mismatches_are_config_errors_naming_the_problem(name, shape, match):
    with pytest.raises(ConfigError, match=match):
        check_model(name, shape, 4)


def test_channel_mismatch_between_model_and_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"cannot take images of shape \(3, 8, 8\).*RuntimeError"):
        build_model(USER, 1, 4, image_shape=(3, 8, 8))


def test_registered_models_pass_the_check_and_the_check_draws_no_random_numbers():
    torch.manual_seed(5)
    check_model("small_cnn", (1, 8, 8), 10)
    check_model("resnet18", (3, 32, 32), 10)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    model = build_model("small_cnn", 1, 4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from unlearn.models import check_forward

    check_forward(model, "small_cnn", (1, 8, 8), 4)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_model_name_syntax_is_checked_in_params():
    assert parse_params({"model": {"name": "torchvision:resnet18"}}).model.name == "torchvision:resnet18"
    assert parse_params({"model": {"name": USER}}).model.name == USER
    for bad in ("my model", "pkg.mod:", ":factory", "pkg/mod:f"):
        with pytest.raises(ConfigError, match="model.name"):
            parse_params({"model": {"name": bad}})
    assert isinstance(MODELS.get("torchvision:resnet18")(3, 5), nn.Module)
