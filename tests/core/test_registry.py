import pytest

from unlearn.attacks import ATTACKS
from unlearn.methods import METHODS
from unlearn.models import MODELS
from unlearn.registry import Registry, UnknownNameError


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("forgetful")
    message = str(info.value)
    assert "unknown unlearning method 'forgetful'" in message
    for name in ("amun", "finetune", "retrain"):
        assert name in message


def test_builtins_are_registered_where_defined():
    assert {"amun", "finetune", "retrain"} <= set(METHODS.names())
    assert {"loss_threshold", "svc_confidence"} <= set(ATTACKS.names())
    assert {"small_cnn", "resnet18"} <= set(MODELS.names())


def test_registering_a_name_twice_is_an_error():
    registry = Registry("thing")
    registry.register("a")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())
