"""The start-up model check: failing factories and modules, and models that fail only in training mode."""

import sys
import warnings

import pytest
import torch

from unlearn.config import ConfigError
from unlearn.models import MODELS, build_model, check_forward, check_model
from unlearn.training import SGDRecipe, train_model

BYO = "tests.core.byo_models"


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Modules on sys.path that fail on import in ways other than ImportError."""
    (tmp_path / "syntax_broken_mod.py").write_text("def f(in_channels, num_classes)\n    return None\n")
    (tmp_path / "boom_at_import.py").write_text("raise RuntimeError('no GPU driver')\n\ndef f(a, b): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("syntax_broken_mod", "boom_at_import"):
        sys.modules.pop(name, None)


def test_a_factory_that_raises_is_a_config_error_naming_it_and_the_cause():
    with pytest.raises(ConfigError, match=rf"factory '{BYO}:raises_value' failed.*ValueError: bad width") as info:
        check_model(f"{BYO}:raises_value", (1, 8, 8), 4)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ConfigError, match="ValueError: bad width"):
        build_model(f"{BYO}:raises_value", 1, 4)


@pytest.mark.parametrize("name, error", [
    ("syntax_broken_mod:f", "SyntaxError"),
    ("boom_at_import:f", r"RuntimeError: no GPU driver"),
])
def test_a_module_failing_on_import_is_a_config_error_and_not_in_models(user_modules, name, error):
    module = name.partition(":")[0]
    with pytest.raises(ConfigError, match=rf"importing module '{module}' for '{name}' failed: {error}") as info:
        MODELS.get(name)
    assert info.value.__cause__ is not None and type(info.value.__cause__).__name__ == error.split(":")[0]
    assert name not in MODELS
    with pytest.raises(ConfigError, match=error):
        check_model(name, (1, 8, 8), 4)


@pytest.mark.parametrize("name, match", [
    (f"{BYO}:tuple_in_training", "returned tuple from forward in training mode, not a logits tensor"),
    (f"{BYO}:frozen", "has no trainable parameters"),
    (f"{BYO}:integer_logits", r"returned torch.int64 logits in eval mode.*floating-point"),
])
def test_models_training_cannot_use_fail_the_check(name, match):
    with pytest.raises(ConfigError, match=match):
        check_model(name, (1, 8, 8), 4)


def test_tuple_in_training_model_really_breaks_training_without_the_check():
    """The failure the check prevents: a model passing the eval-mode check crashes in train_model."""
    model = build_model(f"{BYO}:tuple_in_training", 1, 4)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 4, (8,))
    with pytest.raises(TypeError, match="must be Tensor, not tuple"):  # the loss gets (logits, features)
        train_model(model, x, y, SGDRecipe(1, 4, 0.01), device="cpu", seed=0)


@pytest.mark.parametrize("builder, shape", [("googlenet", (3, 32, 32)), ("inception_v3", (3, 75, 75))])
def test_torchvision_models_with_auxiliary_heads_give_logits_in_training_mode(builder, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # init_weights left unset warns
        check_model(f"torchvision:{builder}", shape, 10)
        model = build_model(f"torchvision:{builder}", shape[0], 10)
    with torch.no_grad():
        out = model.train()(torch.rand(2, *shape))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_check_leaves_modes_buffers_and_random_state_exactly_as_they_were():
    model = build_model(f"{BYO}:with_dropout", 1, 4)
    model.train()
    model.features[1].eval()  # a per-module mode (frozen BatchNorm) must survive the check
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    check_forward(model, "with_dropout", (1, 8, 8), 4)
    after_check = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_check, torch.rand(3))  # dropout's draws came from a forked RNG
    assert model.training and model.drop.training and not model.features[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats, num_batches_tracked


def test_seeded_model_built_with_the_check_trains_identically_to_one_without():
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,))
    trained = []
    for image_shape in ((1, 8, 8), None):
        torch.manual_seed(11)
        build_model(f"{BYO}:with_dropout", 1, 4, image_shape=image_shape)
        model = build_model(f"{BYO}:with_dropout", 1, 4, image_shape=image_shape)  # drawn after a check
        trained.append(train_model(model, x, y, SGDRecipe(2, 8, 0.05), device="cpu", seed=0).state_dict())
    checked, unchecked = trained
    assert checked.keys() == unchecked.keys()
    assert all(torch.equal(checked[k], unchecked[k]) for k in checked)


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_registered_architecture_exports_for_any_batch_size(name, shape):
    """Every version is registered in MLflow's pt2 format (torch.export, batch dimension left to the exporter,
    a two-image example); the train stage checks only torchvision builders and users' factories before training,
    so a registered architecture that stopped exporting would fail after a whole baseline: it is checked here."""
    from torch.export import Dim

    torch.manual_seed(0)
    model = build_model(name, shape[0], 10, image_shape=shape).eval()
    exported = torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=[{0: Dim.AUTO}]).module()
    with torch.no_grad():
        for batch in (1, 3):
            images = torch.rand(batch, *shape)
            assert torch.allclose(exported(images), model(images), atol=1e-5)
