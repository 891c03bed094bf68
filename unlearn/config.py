"""Typed, frozen view of ``params.yaml``: the project's one configuration.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unlearn.cron import cron_problem
from unlearn.yaml_io import load_params_yaml


class ConfigError(ValueError):
    """A problem in ``params.yaml``; the message names the offending key."""


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how the sample store is laid out."""

    source: str = "digits"  # a name in unlearn.data.sources.SOURCES
    source_path: str | None = None  # on-disk location for cifar10 / imagefolder / fashion_mnist
    test_fraction: float = 0.25  # held-out share when the source has no split of its own
    split_seed: int = 0  # fixes which samples are held out; part of the data's identity
    image_size: int = 32  # imagefolder images are resized to image_size x image_size
    shard_size: int = 128  # samples per shard file; a deletion rewrites only its shards
    train_subset: int | None = None  # keep this many train samples (seeded by split_seed); None: all
    test_subset: int | None = None  # keep this many test samples (seeded by split_seed); None: all


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, by registry name."""

    name: str = "small_cnn"  # a name in unlearn.models.MODELS, torchvision:<builder> or package.module:factory


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for the baseline model (and for exact retraining)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False  # random crop + flip; for 32x32 images
    # Fewest training samples a model may be trained on. A deletion that leaves fewer withdraws the served
    # model (it holds the deleted data and no successor can be trained) instead of wedging the pipeline.
    min_samples: int = 100


@dataclass(frozen=True)
class RequestsConfig:
    """Limits on incoming deletion requests."""

    max_ids_per_request: int = 100_000
    # rows in one request file; a larger file is refused whole (too_many_rows): each accepted or acknowledged row
    # is a hash-chained audit record, appended under the pipeline's lock
    max_rows_per_file: int = 10_000
    max_clock_skew_seconds: float = 300.0  # a received_at further ahead of the pipeline's clock is refused
    reasons: tuple[str, ...] = ("gdpr_erasure", "ccpa_deletion", "consent_withdrawn", "other")


EXTENDS = "extends"  # reserved key of a method entry: start from another method's kwargs
PROFILE_SEPARATOR = "/"  # profile keys are "<data.source>/<model.name>"


@dataclass(frozen=True)
class UnlearnConfig:
    """Which methods run, in order, and every method's keyword arguments.

    ``method`` is tried first; when its model conclusively fails verification the pipeline
    escalates through ``escalation`` in order. ``retrain`` (exact) may only come last; by default
    it is not in the ladder: the exact retrain runs only when ``gate.on_inconclusive`` escalates
    to it, when every rung failed the gate conclusively (the deletion must still be honoured), or in
    strict mode, where a user may list it; the per-batch path that passes never retrains.

    Keyword arguments come in layers, because a learning rate sized for 8x8 digits destroys
    a ResNet-18 on Fashion-MNIST (issue #13):

    - ``methods``: defaults per method name, used for any dataset and model;
    - ``profiles``: per setting, keyed ``"<data.source>/<model.name>"`` (e.g.
      ``"digits/small_cnn"``), each a mapping of method name to keyword arguments.

    - ``overrides``: per method, over both, whatever the setting (empty as shipped): what a sweep sets,
      ``dvc exp run -S '++unlearn.overrides.amun.epochs=2'`` (a profile key's ``/`` is outside the
      override grammar DVC uses, so profiles cannot be addressed there).

    Precedence, key by key: the overrides, else the profile of the active data source and model, else the
    defaults, else the method's own signature default. A method entry may name another method
    under ``extends`` (e.g. ``amun_salun: {extends: amun, mask_ratio: 0.5}``) to start from that
    method's resolved arguments, so shared settings are written once.
    """

    method: str = "amun"
    escalation: tuple[str, ...] = ()
    # Recompute batch-norm running statistics on D_R after each method (methods.run_method): methods
    # that stop at a constant learning rate leave stale ones. False (the default when the key is
    # absent) leaves every method's output as its paper's.
    recalibrate_bn: bool = False
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ladder(self) -> tuple[str, ...]:
        """Every method to try, in order."""
        return (self.method, *self.escalation)

    @staticmethod
    def profile_key(source: str, model: str) -> str:
        """The profile key of a data source and model name."""
        return f"{source}{PROFILE_SEPARATOR}{model}"

    def kwargs_for(self, name: str, source: str, model: str) -> dict[str, Any]:
        """Resolved keyword arguments of method ``name`` for a data source and model.

        Args:
            name: Method registry name.
            source: ``data.source``.
            model: ``model.name``.

        Returns:
            A new dict (empty when nothing is configured); ``extends`` is resolved and removed.

        Raises:
            ConfigError: On an ``extends`` cycle or a non-string ``extends``.
        """
        profile = self.profiles.get(self.profile_key(source, model), {})
        return _resolve_method(name, self.methods, _over(profile, self.overrides), ())

    def shadowed_defaults(self, source: str, model: str) -> list[str]:
        """Keys of ``methods`` that the active profile replaces with another value.

        Why: a default under ``unlearn.methods`` is silently ignored where a profile sets the same key (the
        demo's "untouched" fine-tuning ran the digits profile's 5 epochs at lr 0.03 that way). Each entry
        names the key, both values and the way to make a value win (``unlearn.overrides``, which is meant to
        win and is not reported).
        """
        key = self.profile_key(source, model)
        profile = self.profiles.get(key, {})
        found = []
        for name, defaults in sorted(self.methods.items()):
            for arg, value in defaults.items():
                if arg in self.overrides.get(name, {}):
                    continue  # the override wins over both, on purpose
                if arg in profile.get(name, {}) and profile[name][arg] != value:
                    found.append(f"unlearn.methods.{name}.{arg} ({value!r}) is shadowed by the '{key}' profile "
                                 f"({profile[name][arg]!r}); set it in unlearn.overrides to win")
        return found


def _over(profile: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A profile with the overrides laid over it, method by method and key by key."""
    return {name: {**profile.get(name, {}), **overrides.get(name, {})} for name in {*profile, *overrides}}


def _resolve_method(name: str, defaults: dict[str, dict[str, Any]], profile: dict[str, dict[str, Any]],
                    chain: tuple[str, ...]) -> dict[str, Any]:
    if name in chain:
        raise ConfigError(f"unlearn: '{EXTENDS}' cycle {' -> '.join((*chain, name))}")
    own = {**defaults.get(name, {}), **profile.get(name, {})}
    base_name = own.pop(EXTENDS, None)
    if base_name is None:
        return own
    if not isinstance(base_name, str):
        raise ConfigError(f"unlearn: {name}.{EXTENDS} must be a method name, got {base_name!r}")
    return {**_resolve_method(base_name, defaults, profile, (*chain, name)), **own}


@dataclass(frozen=True)
class ReferencesConfig:
    """Reference models for the attacks that need them (LiRA, RMIA).

    Each is trained with the baseline recipe on a random half of the non-deleted training
    samples; they come in complementary pairs, are cached with their lineage under
    ``data/references/`` and reused until a deletion touches their training data.
    """

    count: int = 4  # live reference models kept (an even number: complementary pairs)
    pool_fraction: float = 0.2  # share of the training split held out as the reference pool (never trained on
                                # in production, so deleting a training sample never retires a reference)
    batched: str = "auto"  # train them as one vmapped model: "auto" (on CUDA), "always", "never"


@dataclass(frozen=True)
class VerifyConfig:
    """Membership-inference attacks run at promotion time, and how their metrics are computed."""

    attacks: tuple[str, ...] = ("loss_threshold", "svc_confidence")
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per attack keyword options
    bootstrap: int = 200  # resamples for the confidence intervals
    fprs: tuple[float, ...] = (0.01, 0.001)  # TPR is reported at these false-positive rates
    min_negatives: int = 10  # a TPR at FPR f is refused when f * |D_T| < this
    augmentations: str = "none"  # fixed test-time views for reference attacks: none | mirror | mirror_shift
    references: ReferencesConfig = field(default_factory=ReferencesConfig)


@dataclass(frozen=True)
class OrchestrationConfig:
    """How Prefect runs fan-out work (reference models, sweeps)."""

    task_runner: str = "sequential"  # sequential | threads | dask
    max_workers: int = 2  # threads, or local Dask workers
    dask_address: str | None = None  # an existing Dask scheduler (tcp://host:port); None starts a local cluster


@dataclass(frozen=True)
class AuditConfig:
    """Scheduled exact-retrain audits of the unlearning method (the gate's ground truth, off the request path)."""

    every_batches: int = 10  # audit after this many verified batches (0: only on the cron)
    cron: str | None = "0 3 * * 0"  # and/or on this schedule (None: only by count)
    retrains: int = 2  # exact retrains (seeds seed, seed+1, ...) as the audit's targets: seed noise enters the CI


@dataclass(frozen=True)
class ConsolidateConfig:
    """Scheduled exact retrains of the champion, so approximate residuals never accumulate unbounded."""

    deleted_fraction: float = 0.05  # retrain once this share of the training set was deleted since the last exact model
    every_batches: int = 0  # and/or after this many batches (0: off)
    cron: str | None = None  # and/or on this schedule (None: off)


@dataclass(frozen=True)
class GateConfig:
    """Promotion gate (unlearn/gate.py): equivalence to never-trained, with a positive control.

    The margin is ``margin_fraction`` of the parent's measured membership excess, never a
    fixed constant; ``inconclusive`` is a verdict and ``on_inconclusive`` says what follows.
    """

    mode: str = "equivalence"  # equivalence (retrain-free target) | strict (exact retrain target)
    attacks: tuple[str, ...] = ("lira_offline", "rmia_offline")  # gated AUCs, fixed in advance; always run
    # forget_acc (gap, equivalence) | utility (non-inferiority, margin: a fraction of the parent's skill)
    # | test_acc (non-inferiority with the forget_acc margin)
    accuracy_checks: tuple[str, ...] = ("forget_acc", "utility")
    # utility: the candidate may lose utility_loss_floor + the share of training data deleted, as a share of the
    # parent's skill (its accuracy above the best constant answer), at most utility_loss_fraction
    utility_loss_fraction: float = 0.1  # in (0, 1)
    utility_loss_floor: float = 0.03  # in (0, utility_loss_fraction]; = utility_loss_fraction: a flat allowance
    alpha: float = 0.05  # per one-sided test; intervals are (1 - 2 alpha)
    margin_fraction: float = 0.5  # delta = this x the parent's excess over the target, in (0, 1)
    resamples: int = 1000  # paired bootstrap resamples
    seed: int = 0
    min_samples: int = 20  # fewer forget or negative samples: inconclusive up front
    on_inconclusive: str = "hold"  # hold | retrain | promote_low_power
    max_hold_batches: int = 5  # hold escalates to exact retrain when the held evidence spans this many batches
    max_hold_hours: float = 72.0  # ... or when the oldest held request is this old
    audit: AuditConfig = field(default_factory=AuditConfig)
    consolidate: ConsolidateConfig = field(default_factory=ConsolidateConfig)


@dataclass(frozen=True)
class LifecycleConfig:
    """What happens around a deletion: retirement of old models, purge, concurrency, retries."""

    retirement_grace_hours: float = 0.0  # old model versions keep their artifacts this long (rollback window)
    lock_timeout_seconds: float = 3600.0  # a second pipeline run waits this long for the first
    io_retries: int = 3  # retries of DVC and registry I/O


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow experiment and registered model names."""

    experiment: str = "unlearn"
    model_name: str = "unlearn-classifier"


@dataclass(frozen=True)
class DvcConfig:
    """DVC remote used by default (a local directory, relative to the project root).

    ``remote_url`` may also be a cloud URL such as ``s3://bucket/path`` (needs ``dvc-s3``);
    ``endpoint_url`` points an S3 remote at an S3-compatible server (MinIO, Ceph, on-prem).
    Credentials never go here: the standard AWS environment variables or profiles are used.
    """

    remote_name: str = "local"
    remote_url: str = ".dvcstore"
    endpoint_url: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    """``unlearn serve``: the nightly schedule and the request-triggered run's batching window.

    A triggered run starts after ``trigger_after_requests`` requests or ``trigger_window_minutes``
    after the oldest unprocessed one, whichever comes first (design in flows/serve.py).
    """

    cron: str = "0 2 * * *"  # the nightly batch
    timezone: str = "UTC"  # IANA name the cron is read in
    trigger_after_requests: int = 10  # N: a run starts once this many requests arrived ...
    trigger_window_minutes: float = 15.0  # T: ... or this long after the oldest unprocessed one
    watch_interval_seconds: float = 1.0  # how often serve polls the inbox and Prefect for runs to start (latency)
    warm_start: bool = True  # fork each served run from a preloaded interpreter (flows/warm.py), not a cold spawn
    stop_grace_seconds: float = 120.0  # on Ctrl-C/SIGTERM, how long runs in flight may finish before they are stopped


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``."""

    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    dvc: DvcConfig = field(default_factory=DvcConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @property
    def method_profile(self) -> str | None:
        """Key of the ``unlearn.profiles`` entry the active data source and model select, or None."""
        key = UnlearnConfig.profile_key(self.data.source, self.model.name)
        return key if key in self.unlearn.profiles else None

    def method_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments of method ``name`` for the active data source and model.

        The profile ``unlearn.profiles["<data.source>/<model.name>"]`` over the defaults
        ``unlearn.methods``, key by key, with ``extends`` resolved (empty if nothing is set).
        """
        return self.unlearn.kwargs_for(name, self.data.source, self.model.name)


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
# What Dask's Client takes: an optional scheme, a host name, IPv4 or [IPv6] address, and an optional port.
_DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
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
    if runner.dask_address is not None and not _DASK_ADDRESS.fullmatch(runner.dask_address):
        raise ConfigError("orchestration.dask_address: expected a Dask scheduler address such as "
                          f"tcp://host:8786 (or null to start a local cluster), got {runner.dask_address!r}")
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
        profile = _over(profile, unlearn.overrides)
        for name in {*unlearn.methods, *profile}:
            try:
                _resolve_method(name, unlearn.methods, profile, ())
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
