"""params.yaml's method profiles: every configured keyword binds to its method, for every setting."""

from pathlib import Path

import pytest

from unlearn.config import EXTENDS, load_params
from unlearn.methods import METHODS
from unlearn.models import MODELS

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
SETTINGS = [tuple(key.split("/")) for key in PARAMS.unlearn.profiles]


def test_the_issue_13_settings_have_profiles():
    assert {"digits/small_cnn", "fashion_mnist/resnet18", "cifar10/resnet18"} <= set(PARAMS.unlearn.profiles)


@pytest.mark.parametrize(("source", "model"), SETTINGS)
def test_every_profile_names_registered_methods_and_models(source, model):
    assert model in MODELS.names(), f"profile {source}/{model}: unknown model"
    profile = PARAMS.unlearn.profiles[f"{source}/{model}"]
    for name, entry in {**PARAMS.unlearn.methods, **profile}.items():
        assert name in METHODS.names(), f"profile {source}/{model}: unknown method {name!r}"
        if EXTENDS in entry:
            assert entry[EXTENDS] in METHODS.names(), f"{name}.{EXTENDS}: unknown method {entry[EXTENDS]!r}"


@pytest.mark.parametrize(("source", "model"), SETTINGS)
def test_every_resolved_kwarg_binds_to_its_method(source, model):
    # strict: a typo in any profile fails here, not when that setting first runs
    for name in METHODS.names():
        METHODS.get(name).bind(PARAMS.unlearn.kwargs_for(name, source, model))


def test_amun_salun_is_amun_plus_a_mask_in_every_setting():
    """AMUN's App. D variant: AMUN's settings plus the mask. Only the learning rate may be selected apart (a
    masked update moves half the weights, so the Fashion-MNIST sweep chose a larger one); nothing else."""
    for source, model in [*SETTINGS, ("other", "net")]:
        amun = PARAMS.unlearn.kwargs_for("amun", source, model)
        both = PARAMS.unlearn.kwargs_for("amun_salun", source, model)
        assert {k: v for k, v in both.items() if k not in ("mask_ratio", "lr")} == \
            {k: v for k, v in amun.items() if k != "lr"}
        assert "mask_ratio" in both


@pytest.fixture(scope="module")
def digits_setting():
    import numpy as np
    import torch

    from unlearn.config import DataConfig
    from unlearn.data import load_source
    from unlearn.methods import TensorSet, UnlearningData
    from unlearn.models import build_model
    from unlearn.training import SGDRecipe, to_float, train_model

    source = load_source(DataConfig(source="digits"))
    train, test = source.splits == "train", source.splits == "test"
    x, y = to_float(source.images[train]), torch.as_tensor(source.labels[train])
    forget = np.zeros(len(y), dtype=bool)
    forget[np.random.default_rng(0).choice(len(y), len(y) // 10, replace=False)] = True
    recipe = SGDRecipe(epochs=8, batch_size=128, lr=0.05)
    factory = lambda: build_model("small_cnn", 1, 10)  # noqa: E731
    torch.manual_seed(0)
    original = train_model(factory(), x, y, recipe, device="cpu", seed=0)
    keep = torch.as_tensor(~forget)
    data = UnlearningData(TensorSet(x[~keep], y[~keep]), TensorSet(x[keep], y[keep]), 10, recipe, factory)
    return original, data, TensorSet(to_float(source.images[test]), torch.as_tensor(source.labels[test]))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in METHODS.names() if n != "retrain"])
def test_the_digits_profile_moves_every_method_and_keeps_half_the_test_accuracy(name, digits_setting):
    # The committed profile, on the real setting it was selected for (8-epoch original).
    from unlearn.methods import run_method
    from unlearn.training import predict_logits

    original, data, test = digits_setting
    result = run_method(name, original, data, device="cpu", seed=0,
                        kwargs=PARAMS.unlearn.kwargs_for(name, "digits", "small_cnn"))
    before = dict(original.named_parameters())
    assert any(not p.detach().equal(before[k].detach()) for k, p in result.named_parameters()), name

    def accuracy(model):
        return (predict_logits(model, test.images, device="cpu").argmax(1) == test.labels).float().mean().item()

    assert accuracy(result) >= 0.5 * accuracy(original), name
