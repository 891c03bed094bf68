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
    for source, model in [*SETTINGS, ("other", "net")]:
        amun = PARAMS.unlearn.kwargs_for("amun", source, model)
        both = PARAMS.unlearn.kwargs_for("amun_salun", source, model)
        assert {k: v for k, v in both.items() if k != "mask_ratio"} == amun
        assert "mask_ratio" in both
