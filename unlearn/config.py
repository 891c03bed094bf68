"""Typed, frozen view of ``params.yaml``: the project's one configuration (its sections: :mod:`unlearn.params_schema`).

Every section is a frozen dataclass. Parsing is strict: an unknown key, a key given twice, a
key that is not a string or a value of the wrong type (a number that is not finite, a quoted
number) raises :class:`ConfigError` naming the key path, so a typo fails before any work
starts. A key left out takes the dataclass default; an empty file is refused. A number in
exponent form without a dot (``1e-3``) is read as a float, as YAML 1.2 reads it, not as the
string PyYAML's YAML 1.1 makes of it, in the typed sections and in method keyword arguments
alike; otherwise numbers are read as PyYAML reads them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from unlearn.cron import cron_problem
from unlearn.params_schema import (
    EXTENDS,
    PROFILE_SEPARATOR,
    AuditConfig,
    ConfigError,
    ConsolidateConfig,
    DataConfig,
    DvcConfig,
    GateConfig,
    LifecycleConfig,
    ModelConfig,
    OrchestrationConfig,
    Params,
    ReferencesConfig,
    RegistryConfig,
    RequestsConfig,
    ServeConfig,
    TrainConfig,
    UnlearnConfig,
    VerifyConfig,
    overlay,
    resolve_method,
)
from unlearn.yaml_io import load_params_yaml

__all__ = [
    "AuditConfig",
    "ConfigError",
    "ConsolidateConfig",
    "DataConfig",
    "DvcConfig",
    "EXTENDS",
    "GateConfig",
    "LifecycleConfig",
    "ModelConfig",
    "OrchestrationConfig",
    "PROFILE_SEPARATOR",
    "Params",
    "ReferencesConfig",
    "RegistryConfig",
    "RequestsConfig",
    "ServeConfig",
    "TrainConfig",
    "UnlearnConfig",
    "VerifyConfig",
    "check_cron",
    "load_params",
    "overlay",
    "parse_params",
    "resolve_method",
]


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a field annotation and convert containers; raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(annotation, value, path)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        key_type, value_type = args
        if key_type is str:
            _string_keys(value, path)
        return {
            _coerce(k, key_type, path): _coerce(v, value_type, f"{path}.{k}")
            for k, v in value.items()
        }
    if annotation is Any:
        return value
    if annotation is float:
        # A quoted number is refused (`train.lr: "1_0"` read as 10.0), and so are NaN and infinities: every float
        # here is a rate, a fraction or a duration, and a non-finite one stalled or crashed runs much later
        # (`lifecycle.lock_timeout_seconds: .nan` never timed out; review of 2026-12-07).
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (a number, not a quoted string)" if isinstance(value, str) else ""
            raise ConfigError(f"{path}: expected a number{hint}, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{path}: expected a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if abs(value) >= 2**63:  # torch and numpy seeds, sizes and counts are 64-bit
            raise ConfigError(f"{path}: expected an integer below 2**63, got {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {annotation!r}")  # a bug, not user input


def _string_keys(mapping: dict[Any, Any], path: str) -> None:
    """Refuse a key that is not a string: YAML 1.1 reads unquoted on/off/yes/no as booleans and digits as numbers,
    and such a key cannot name anything here."""
    for key in mapping:
        if not isinstance(key, str):
            where = f" in {path}" if path else ""
            raise ConfigError(f"key {key!r}{where} is not a string (YAML reads an unquoted on, off, yes, no or a "
                              f"number as one): quote it")


def _build(cls: type, mapping: dict[str, Any], path: str) -> Any:
    _string_keys(mapping, path)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{path}.{name}" if path else name)
        for name, value in mapping.items()
    }
    return cls(**kwargs)


def parse_params(mapping: dict[str, Any] | None) -> Params:
    """Build :class:`Params` from a parsed YAML mapping.

    Args:
        mapping: The YAML document (``None`` for an empty file).

    Returns:
        The frozen parameters.

    Raises:
        ConfigError: On unknown keys, wrong types or invalid values.
    """
    if mapping is None:
        raise ConfigError("params.yaml is empty: it must hold the project's configuration (the shipped "
                          "params.yaml is the template)")
    if not isinstance(mapping, dict):
        raise ConfigError("params.yaml must be a mapping at the top level")
    if isinstance(mapping.get("gate"), dict) and "tolerances" in mapping["gate"]:
        raise ConfigError("gate.tolerances: fixed tolerances were retired (they passed the untouched model, "
                          "issue #12); the margin is now gate.margin_fraction x the parent's measured excess: "
                          "remove gate.tolerances (README: How the gate decides)")
    params = _build(Params, mapping, "")
    _check_values(params)
    return params


_YEAR_SECONDS = 365 * 24 * 3600
_TEN_YEARS_HOURS = 10 * 365 * 24
def check_cron(where: str, expression: str) -> None:
    """Refuse a cron expression that cannot fire as meant (:func:`unlearn.cron.cron_problem`), naming the key."""
    problem = cron_problem(expression)
    if problem:
        raise ConfigError(f"{where}: {problem}")


# A registered name, or "module.path:attribute" (torchvision:<builder> is one of these).
_MAX_EPOCHS = 10_000
_MAX_IMAGE_SIZE = 4096
_MAX_WORKERS = 1024
_MIN_WATCH_SECONDS = 0.1
# What Dask's Client connects to: an optional scheme (any case), a host name, IPv4 or [IPv6] address (a zone
# id allowed), and a port, which Dask's TCP connector requires (it has no default).
_DASK_ADDRESS = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\])"
                           r":(?P<port>\d{1,5})")
_MODEL_NAME = re.compile(r"[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _check_values(params: Params) -> None:
    if params.data.shard_size < 1:
        raise ConfigError("data.shard_size: must be >= 1")
    for key in ("train_subset", "test_subset"):
        if getattr(params.data, key) is not None and getattr(params.data, key) < 1:
            raise ConfigError(f"data.{key}: must be >= 1 or null (all samples)")
    if not 0.0 < params.data.test_fraction < 1.0:
        raise ConfigError("data.test_fraction: must be in (0, 1)")
    if not _MODEL_NAME.fullmatch(params.model.name):
        raise ConfigError(f"model.name: expected a registered name, torchvision:<builder> or "
                          f"package.module:factory, got {params.model.name!r}")
    if params.train.epochs < 1 or params.train.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size: must be >= 1")
    # Upper bounds far past any real setting: a typo there ran on for ever or allocated without end.
    if params.train.epochs > _MAX_EPOCHS:
        raise ConfigError(f"train.epochs: at most {_MAX_EPOCHS}, got {params.train.epochs}")
    if params.train.min_samples < 1:
        raise ConfigError("train.min_samples: must be >= 1")
    # Values that train a broken model without any error (a NaN learning rate registered a chance-level
    # champion) or that reject every request are refused here, by name.
    train = params.train
    if not (math.isfinite(train.lr) and train.lr > 0):
        raise ConfigError(f"train.lr: must be a finite number > 0, got {train.lr}")
    if not (math.isfinite(train.momentum) and 0 <= train.momentum < 1):
        raise ConfigError(f"train.momentum: must be in [0, 1), got {train.momentum}")
    if not (math.isfinite(train.weight_decay) and train.weight_decay >= 0):
        raise ConfigError(f"train.weight_decay: must be a finite number >= 0, got {train.weight_decay}")
    if not 1 <= params.data.image_size <= _MAX_IMAGE_SIZE:  # 32000 wanted 12 GB per image before any check
        raise ConfigError(f"data.image_size: must be between 1 and {_MAX_IMAGE_SIZE}, got {params.data.image_size}")
    if params.seed < 0 or params.data.split_seed < 0:
        raise ConfigError("seed and data.split_seed: must be >= 0")
    if params.requests.max_ids_per_request < 1:
        raise ConfigError("requests.max_ids_per_request: must be >= 1 (0 would reject every request)")
    if params.requests.max_rows_per_file < 1:
        raise ConfigError("requests.max_rows_per_file: must be >= 1 (0 would reject every request file)")
    if not params.requests.reasons or any(not str(r).strip() for r in params.requests.reasons):
        raise ConfigError("requests.reasons: must list at least one non-empty reason (none would reject every "
                          "request)")
    if not 0 <= params.requests.max_clock_skew_seconds <= _YEAR_SECONDS:
        raise ConfigError(f"requests.max_clock_skew_seconds: must be between 0 and {_YEAR_SECONDS} (a year)")
    for key in ("experiment", "model_name"):
        if not str(getattr(params.registry, key)).strip():
            raise ConfigError(f"registry.{key}: must not be empty")
    name = str(params.registry.model_name)
    if name != name.strip() or name.splitlines() != [name] or any(c in name for c in "'\"/:\\"):
        # MLflow refuses '/' and ':' in a registered model's name; the name goes into MLflow search filters
        # (name='...', where a backslash escapes the closing quote) and the registry pin (one line).
        raise ConfigError(f"registry.model_name: no quotes, '/', ':', backslashes, line breaks or surrounding "
                          f"spaces, got {name!r}")
    if not params.dvc.remote_url.strip() or not params.dvc.remote_name.strip():
        raise ConfigError("dvc.remote_name and dvc.remote_url: must not be empty")
    _check_gate(params)
    refs = params.verify.references
    if refs.count < 0 or refs.count % 2:
        raise ConfigError("verify.references.count: must be an even number >= 0 (complementary pairs)")
    if refs.batched not in ("auto", "always", "never"):
        raise ConfigError(f"verify.references.batched: expected auto, always or never, got {refs.batched!r}")
    if params.verify.augmentations not in ("none", "mirror", "mirror_shift"):
        raise ConfigError("verify.augmentations: expected none, mirror or mirror_shift, "
                          f"got {params.verify.augmentations!r}")
    if any(not 0.0 < f < 1.0 for f in params.verify.fprs):
        raise ConfigError("verify.fprs: every false-positive rate must be in (0, 1)")
    if params.verify.min_negatives < 1 or params.verify.bootstrap < 0:
        raise ConfigError("verify.min_negatives must be >= 1 and verify.bootstrap >= 0")
    _check_method_kwargs(params.unlearn)
    ladder = params.unlearn.ladder
    if len(set(ladder)) != len(ladder):
        raise ConfigError(f"unlearn.escalation: a method appears twice in the ladder {list(ladder)}")
    if "retrain" in ladder[:-1]:
        raise ConfigError(f"unlearn.escalation: 'retrain' is exact and must come last; got {list(ladder)}")
    life = params.lifecycle
    if life.retirement_grace_hours < 0 or life.lock_timeout_seconds <= 0 or life.io_retries < 0:
        raise ConfigError("lifecycle: retirement_grace_hours and io_retries must be >= 0, "
                          "lock_timeout_seconds > 0")
    if life.retirement_grace_hours > _TEN_YEARS_HOURS:  # a timedelta that large overflows: every purge failed
        raise ConfigError(f"lifecycle.retirement_grace_hours: at most {_TEN_YEARS_HOURS} (ten years), "
                          f"got {life.retirement_grace_hours}")
    runner = params.orchestration
    if runner.task_runner not in ("sequential", "threads", "dask"):
        raise ConfigError("orchestration.task_runner: expected sequential, threads or dask, "
                          f"got {runner.task_runner!r}")
    if not 1 <= runner.max_workers <= _MAX_WORKERS:
        raise ConfigError(f"orchestration.max_workers: must be between 1 and {_MAX_WORKERS}, got {runner.max_workers}")
    address = None if runner.dask_address is None else _DASK_ADDRESS.fullmatch(runner.dask_address)
    if runner.dask_address is not None and not (address and 1 <= int(address["port"]) <= 65535):
        raise ConfigError("orchestration.dask_address: expected a Dask scheduler address such as tcp://host:8786, "
                          f"with a port (or null to start a local cluster), got {runner.dask_address!r}")
    serve = params.serve
    check_cron("serve.cron", serve.cron)
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(serve.timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        # UTC needs no database: a machine without one (a bare GPU image, where the core runs without the `tzdata`
        # package) must still load the shipped params.yaml, whose serve section it never uses.
        if serve.timezone not in ("UTC", "Etc/UTC") or zoneinfo.available_timezones():
            raise ConfigError(f"serve.timezone: expected an IANA time zone name such as UTC, "
                              f"got {serve.timezone!r}") from None
    if serve.trigger_after_requests < 1:
        raise ConfigError("serve.trigger_after_requests: must be >= 1")
    if not 0 < serve.trigger_window_minutes <= _YEAR_SECONDS / 60:
        raise ConfigError(f"serve.trigger_window_minutes: must be > 0 and at most {_YEAR_SECONDS // 60} (a year), "
                          f"got {serve.trigger_window_minutes}")
    # The watcher's wait: an hour is already no watching, and below a tenth of a second it polls the inbox and the
    # Prefect API in a busy loop (a thousand times a second at 0.001) for no gain in latency.
    if not _MIN_WATCH_SECONDS <= serve.watch_interval_seconds <= 3600:
        raise ConfigError(f"serve.watch_interval_seconds: must be between {_MIN_WATCH_SECONDS} and 3600, "
                          f"got {serve.watch_interval_seconds}")
    if not 0 <= serve.stop_grace_seconds <= 86_400:  # NaN and infinity too: the stop must stay bounded
        raise ConfigError(f"serve.stop_grace_seconds: must be between 0 and 86400, got {serve.stop_grace_seconds!r}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", params.device):  # what torch.device accepts of these
        raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {params.device!r}")


def _check_gate(params: Params) -> None:
    gate = params.gate
    if gate.mode not in ("equivalence", "strict"):
        raise ConfigError(f"gate.mode: expected equivalence or strict, got {gate.mode!r}")
    if not gate.attacks and "forget_acc" not in gate.accuracy_checks:
        raise ConfigError("gate: gate at least one attack (gate.attacks) or forget_acc (gate.accuracy_checks): "
                          "utility and test_acc check utility, not forgetting, and the parent itself would pass")
    if len(set(gate.attacks)) != len(gate.attacks):
        raise ConfigError("gate.attacks: an attack appears twice")
    bad = sorted(set(gate.accuracy_checks) - {"forget_acc", "utility", "test_acc"})
    if bad:
        raise ConfigError(f"gate.accuracy_checks: unknown {', '.join(bad)}; valid: forget_acc, utility, test_acc")
    if len(set(gate.accuracy_checks)) != len(gate.accuracy_checks):
        raise ConfigError("gate.accuracy_checks: a check appears twice")
    if not 0.0 < gate.utility_loss_fraction < 1.0:
        raise ConfigError(f"gate.utility_loss_fraction: must be in (0, 1) (the share of the parent's skill the "
                          f"candidate may lose; at 1 a model answering one class could never fail), "
                          f"got {gate.utility_loss_fraction}")
    if not 0.0 < gate.utility_loss_floor <= gate.utility_loss_fraction:
        raise ConfigError(f"gate.utility_loss_floor: must be in (0, gate.utility_loss_fraction="
                          f"{gate.utility_loss_fraction}] (the share of the parent's skill allowed for the smallest "
                          f"deletion; equal to the fraction: the same allowance for every deletion), "
                          f"got {gate.utility_loss_floor} (default {GateConfig.utility_loss_floor}: a fraction below "
                          f"it needs the floor set too)")
    # Measured with a parent and a candidate that carry no membership signal at all (benchmarks/gate_null.py:
    # 400 trials per cell, 200 negatives): at alpha 0.45 the positive control "detected" the parent in 45-51% of
    # trials and 10-15% of candidates passed; at 0.25, 1.5-3% passed; at 0.1, up to 1 in 400; at 0.05 (the
    # default), none of 1,600 trials with 5 to 50 forget samples. With 2 samples the intervals under-cover
    # (22.5% "detected" against a nominal 5%, 4 passes); with 10, 6.2% and none.
    if not 0.0 < gate.alpha <= 0.05:
        raise ConfigError(f"gate.alpha: must be in (0, 0.05] (a larger alpha lets a parent without any "
                          f"membership signal count as detected, and a candidate pass), got {gate.alpha}")
    if not 0.0 < gate.margin_fraction < 1.0:
        raise ConfigError(f"gate.margin_fraction: must be in (0, 1) so the parent can never pass, "
                          f"got {gate.margin_fraction}")
    if gate.resamples < 100:
        raise ConfigError(f"gate.resamples: must be >= 100, got {gate.resamples}")
    if gate.min_samples < 10:
        raise ConfigError(f"gate.min_samples: must be >= 10 (fewer samples give intervals that under-cover, and "
                          f"a parent without any membership signal counts as detected), got {gate.min_samples}")
    if gate.on_inconclusive not in ("hold", "retrain", "promote_low_power"):
        raise ConfigError(f"gate.on_inconclusive: expected hold, retrain or promote_low_power, "
                          f"got {gate.on_inconclusive!r}")
    if gate.max_hold_batches < 1 or not 0 < gate.max_hold_hours <= _TEN_YEARS_HOURS:
        raise ConfigError(f"gate.max_hold_batches must be >= 1 and gate.max_hold_hours > 0 and at most "
                          f"{_TEN_YEARS_HOURS} (a request is never parked forever)")
    if gate.audit.retrains < 1:
        raise ConfigError("gate.audit.retrains: must be >= 1 (the exact retrains are the audit's targets)")
    if gate.audit.every_batches < 0 or gate.consolidate.every_batches < 0:
        raise ConfigError("gate.audit.every_batches and gate.consolidate.every_batches: must be >= 0")
    if gate.audit.every_batches == 0 and gate.audit.cron is None:
        raise ConfigError("gate.audit: set every_batches > 0 or a cron (audits are how the method's true gap "
                          "is measured)")
    if not 0.0 < gate.consolidate.deleted_fraction <= 1.0:
        raise ConfigError("gate.consolidate.deleted_fraction: must be in (0, 1]")
    for where, cron in (("gate.audit.cron", gate.audit.cron), ("gate.consolidate.cron", gate.consolidate.cron)):
        if cron is not None:
            check_cron(where, cron)
    if not 0.0 <= params.verify.references.pool_fraction < 1.0:
        raise ConfigError("verify.references.pool_fraction: must be in [0, 1)")


def _check_method_kwargs(unlearn: UnlearnConfig) -> None:
    """Profile keys name a source and a model; every ``extends`` resolves without a cycle.

    Whether each keyword is a parameter of its method is checked against the method registry
    (which the config does not import) by the stages and by tests/core/test_method_profiles.py.
    """
    for key in unlearn.profiles:
        parts = key.split(PROFILE_SEPARATOR)
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"unlearn.profiles: key {key!r} must be '<data source>/<model name>', "
                              "e.g. 'digits/small_cnn'")
    for key, profile in [("", {}), *unlearn.profiles.items()]:
        profile = overlay(profile, unlearn.overrides)
        for name in {*unlearn.methods, *profile}:
            try:
                resolve_method(name, unlearn.methods, profile, ())
            except ConfigError as exc:
                where = f"unlearn.profiles.{key}" if key else "unlearn.methods (or unlearn.overrides)"
                raise ConfigError(f"{where}: {exc}") from None


def load_params(path: str | Path) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: Path to the YAML file.

    Returns:
        The frozen parameters.

    Raises:
        ConfigError: If the file is missing, is not valid YAML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        mapping = load_params_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(mapping)
