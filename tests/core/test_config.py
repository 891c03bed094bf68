from pathlib import Path

import pytest

from unlearn.config import ConfigError, Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_parse_into_frozen_objects():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "digits"
    assert params.train.weight_decay == pytest.approx(5e-4)
    with pytest.raises(AttributeError):
        params.seed = 3  # frozen


def test_empty_document_gives_defaults():
    assert parse_params(None) == Params()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"sed": 1}, "unknown key(s): sed"),
        ({"train": {"epoch": 3}}, "unknown key(s) in train: epoch"),
        ({"train": {"epochs": "many"}}, "train.epochs: expected an integer"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
        ({"verify": {"attacks": "loss_threshold"}}, "verify.attacks: expected a list"),
        ({"data": {"test_fraction": 1.5}}, "data.test_fraction"),
        ({"gate": {"tolerances": {"test_acc": 0.05}}}, "gate.tolerances"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_params_name_the_problem(document, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(document)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
