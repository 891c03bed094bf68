import re
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


def test_an_empty_file_is_refused_and_left_out_keys_take_their_defaults(tmp_path):
    """An empty params.yaml loaded as defaults unlike the shipped file (no ladder, other attacks, no profile)."""
    (tmp_path / "params.yaml").write_text("")
    with pytest.raises(ConfigError, match="params.yaml is empty"):
        load_params(tmp_path / "params.yaml")
    assert parse_params({}) == Params()


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
        # Accepted before a review: each trained a broken model or rejected every request without an error.
        ({"train": {"lr": float("nan")}}, "train.lr: expected a finite number"),
        ({"train": {"lr": -1}}, "train.lr: must be a finite number > 0"),
        ({"train": {"momentum": 5}}, "train.momentum: must be in [0, 1)"),
        ({"train": {"weight_decay": -1}}, "train.weight_decay"),
        ({"data": {"image_size": 0}}, "data.image_size"),
        ({"seed": -1}, "seed and data.split_seed"),
        ({"requests": {"max_ids_per_request": 0}}, "requests.max_ids_per_request"),
        ({"requests": {"reasons": []}}, "requests.reasons"),
        ({"registry": {"model_name": " "}}, "registry.model_name: must not be empty"),
        ({"dvc": {"remote_url": ""}}, "dvc.remote_name and dvc.remote_url"),
        ({"gate": {"attacks": [], "accuracy_checks": ["test_acc"]}}, "test_acc check utility, not forgetting"),
        ({"gate": {"attacks": [], "accuracy_checks": ["utility"]}}, "test_acc check utility, not forgetting"),
        ({"gate": {"accuracy_checks": ["forget_acc", "utility", "utility"]}}, "a check appears twice"),
        ({"gate": {"accuracy_checks": ["forget_acc", "usefulness"]}}, "unknown usefulness"),
        ({"gate": {"utility_loss_fraction": 0.0}}, "gate.utility_loss_fraction: must be in (0, 1)"),
        ({"gate": {"utility_loss_fraction": 1.0}}, "gate.utility_loss_fraction: must be in (0, 1)"),
        ({"gate": {"utility_loss_floor": 0.0}}, "gate.utility_loss_floor: must be in (0, gate.utility_loss_fraction"),
        ({"gate": {"utility_loss_floor": 0.2}}, "gate.utility_loss_floor: must be in (0, gate.utility_loss_fraction"),
        # Accepted before the review of 2026-12-07: each stalled or crashed a run long after loading.
        ({"gate": {"max_hold_hours": float("inf")}}, "gate.max_hold_hours: expected a finite number"),
        ({"gate": {"max_hold_hours": 1e12}}, "gate.max_hold_hours > 0 and at most 87600"),
        ({"lifecycle": {"retirement_grace_hours": float("nan")}}, "lifecycle.retirement_grace_hours: expected a fin"),
        ({"lifecycle": {"retirement_grace_hours": 1e12}}, "lifecycle.retirement_grace_hours: at most 87600"),
        ({"lifecycle": {"lock_timeout_seconds": float("nan")}}, "lifecycle.lock_timeout_seconds: expected a finite"),
        ({"serve": {"watch_interval_seconds": float("inf")}}, "serve.watch_interval_seconds: expected a finite"),
        ({"serve": {"watch_interval_seconds": 1e9}}, "serve.watch_interval_seconds: must be between 0.1 and 3600"),
        # Accepted before the second review of 2026-12-07: a busy loop, a run without end, a crash at start-up.
        ({"serve": {"watch_interval_seconds": 0.001}}, "serve.watch_interval_seconds: must be between 0.1 and 3600"),
        ({"train": {"epochs": 10**9}}, "train.epochs: at most 10000"),
        ({"data": {"image_size": 32000}}, "data.image_size: must be between 1 and 4096"),
        ({"orchestration": {"max_workers": 10**6}}, "orchestration.max_workers: must be between 1 and 1024"),
        ({"orchestration": {"dask_address": "tcp://sched"}}, "orchestration.dask_address: expected a Dask"),  # no port
        ({"orchestration": {"dask_address": "sched:99999"}}, "orchestration.dask_address: expected a Dask"),
        ({"orchestration": {"dask_address": ""}}, "orchestration.dask_address: expected a Dask"),
        ({"serve": {"trigger_window_minutes": 1e12}}, "serve.trigger_window_minutes: must be > 0 and at most"),
        ({"seed": 2**70}, "seed: expected an integer below 2**63"),
        ({"train": {"lr": "1_0"}}, "train.lr: expected a number (a number, not a quoted string)"),
        ({"gate": {True: "hold"}}, "key True in gate is not a string"),
        ({"unlearn": {"methods": {"amun": {3: 1}}}}, "key 3 in unlearn.methods.amun is not a string"),
        ({"serve": {"cron": "61 3 * * 0"}}, "serve.cron: '61' is not a valid minute (0-59)"),
        ({"gate": {"audit": {"cron": "0 3 * * 8"}}}, "gate.audit.cron: '8' is not a valid day of week (0-7)"),
        ({"gate": {"consolidate": {"cron": "0 3 0 * *"}}}, "gate.consolidate.cron: '0' is not a valid day of month"),
        ({"serve": {"cron": "0 \u00b2 * * *"}}, "serve.cron: '\u00b2' is not a valid hour"),  # a digit to isdigit()
        ({"train": {"lr": 10**400}}, "train.lr: expected a finite number, got an integer of 401 digits"),
        ({"device": "cudafoo"}, "device: expected 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cuda:"}, "device: expected 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cuda:-1"}, "device: expected 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_bad_params_name_the_problem(document, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params(document)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_bytes(b"seed: 1\n# caf\xe9\n")  # a traceback before
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").unlink()
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_params(tmp_path / "params.yaml")


def test_a_key_given_twice_is_refused_and_numbers_read_as_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1: the last of two equal keys silently won, and `lr: 1e-3` reached a method as the string
    '1e-3', failing the run after training (review of 2026-12-07)."""
    shipped = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    for twice in (shipped + "\nseed: 5\n", shipped.replace("  epochs: 30\n", "  epochs: 30\n  epochs: 1\n", 1)):
        path.write_text(twice)
        with pytest.raises(ConfigError, match="appears twice in one mapping"):
            load_params(path)
    import yaml

    path.write_text(shipped.replace("  overrides: {}", "  overrides: {finetune: {lr: 1e-3}}", 1))
    params = load_params(path)
    assert params.method_kwargs("finetune")["lr"] == 0.001
    assert isinstance(params.method_kwargs("finetune")["lr"], float)
    assert load_params(REPO / "params.yaml") == parse_params(yaml.safe_load(shipped))  # the shipped file as before


def _unlearn(methods=None, profiles=None, source="digits", model="small_cnn"):
    return parse_params({"data": {"source": source}, "model": {"name": model},
                         "unlearn": {"methods": methods or {}, "profiles": profiles or {}}})


def test_the_active_profile_wins_over_the_defaults_key_by_key():
    methods = {"amun": {"lr": 0.01, "epochs": 3}}
    profiles = {"digits/small_cnn": {"amun": {"lr": 0.5}}, "cifar10/resnet18": {"amun": {"lr": 0.9}}}
    assert _unlearn(methods, profiles).method_kwargs("amun") == {"lr": 0.5, "epochs": 3}
    assert _unlearn(methods, profiles).method_profile == "digits/small_cnn"
    other = _unlearn(methods, profiles, source="imagefolder", model="resnet18")
    assert other.method_kwargs("amun") == {"lr": 0.01, "epochs": 3} and other.method_profile is None
    assert other.method_kwargs("finetune") == {}


def test_a_default_the_active_profile_replaces_is_named_so_it_is_not_silently_ignored():
    methods = {"finetune": {"lr": 1e-7, "epochs": 1, "batch_size": 64}}
    profiles = {"digits/small_cnn": {"finetune": {"lr": 0.03, "epochs": 5, "batch_size": 64}}}
    params = _unlearn(methods, profiles)
    found = params.unlearn.shadowed_defaults("digits", "small_cnn")
    assert len(found) == 2 and all("set it in unlearn.overrides to win" in m for m in found)  # batch_size agrees
    assert any(m.startswith("unlearn.methods.finetune.epochs (1) is shadowed by the 'digits/small_cnn' profile (5)")
               for m in found)
    assert params.unlearn.shadowed_defaults("cifar10", "resnet18") == []  # no profile there: the defaults run
    overridden = parse_params({"unlearn": {"methods": methods, "profiles": profiles,
                                           "overrides": {"finetune": {"lr": 0.5}}}})
    assert overridden.unlearn.shadowed_defaults("digits", "small_cnn") == [  # an override wins on purpose: not named
        "unlearn.methods.finetune.epochs (1) is shadowed by the 'digits/small_cnn' profile (5); set it in "
        "unlearn.overrides to win"]


def test_extends_starts_from_the_other_methods_resolved_kwargs():
    methods = {"amun": {"lr": 0.01}, "amun_salun": {"extends": "amun", "mask_ratio": 0.5}}
    params = _unlearn(methods, {"digits/small_cnn": {"amun": {"epochs": 10}}})
    assert params.method_kwargs("amun_salun") == {"lr": 0.01, "epochs": 10, "mask_ratio": 0.5}


@pytest.mark.parametrize(
    ("methods", "profiles", "message"),
    [
        ({}, {"digits": {}}, "must be '<data source>/<model name>'"),
        ({"a": {"extends": "b"}, "b": {"extends": "a"}}, {}, "extends' cycle"),
        ({"a": {"extends": 3}}, {}, "must be a method name"),
        ({"amun": 3}, {}, "expected a mapping"),
    ],
)
def test_bad_profiles_name_the_problem(methods, profiles, message):
    with pytest.raises(ConfigError, match=message):
        _unlearn(methods, profiles)


def test_utc_needs_no_time_zone_database_and_other_names_still_do():
    """The GPU machine runs the core without the `tzdata` package: a missing database made the shipped params.yaml's
    `serve.timezone: UTC` a ConfigError there, which would have stopped the device check before any work."""
    import subprocess
    import sys

    script = f"""
import sys, zoneinfo
sys.modules["tzdata"] = None  # no tzdata package
zoneinfo.reset_tzpath(to=[])  # and no system database
assert not zoneinfo.available_timezones()
from unlearn.config import ConfigError, load_params, parse_params
assert load_params({str(REPO / "params.yaml")!r}).serve.timezone == "UTC"
try:
    parse_params({{"serve": {{"timezone": "Europe/Paris"}}}})
except ConfigError as exc:
    print("refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: serve.timezone" in out.stdout and "Europe/Paris" in out.stdout
    with pytest.raises(ConfigError, match="serve.timezone"):  # with a database, an unknown name is still refused
        parse_params({"serve": {"timezone": "Mars/Olympus_Mons"}})


@pytest.mark.parametrize("cron", ["0 2 * * sat-sun", "0 2 * dec-jan *", "5-0 * * * *", "0 2 ? * *", "0 2 L * *",
                                  "0 2 * * mon#1", "*/15 * * * *", "0 3 1 jan,jul *", "0 0 1-31/2 * 7"])
def test_cron_forms_prefect_accepts_are_accepted(cron):
    """Wrap-around ranges (weekends as sat-sun) and Prefect's extensions were refused (second review, 2026-12-07)."""
    assert parse_params({"serve": {"cron": cron}}).serve.cron == cron


def test_chained_merge_keys_are_not_duplicates(tmp_path):
    """PyYAML rewrites a merged mapping in place: a check while constructing saw a chained merge's keys twice."""
    from unlearn.yaml_io import load_params_yaml

    text = "x: [&base {lr: 0.1, epochs: 5}, &fast {<<: *base, epochs: 1}]\ny: {<<: *fast}\nz: .5e3\n"
    assert load_params_yaml(text) == {"x": [{"lr": 0.1, "epochs": 5}, {"lr": 0.1, "epochs": 1}],
                                      "y": {"lr": 0.1, "epochs": 1}, "z": 500.0}
