"""The sections of ``params.yaml`` as frozen dataclasses, with their defaults and what each key means.

:mod:`unlearn.config` reads the file into them and checks every value; this module only declares them (and how
method keyword arguments are layered: methods, profiles, overrides, ``extends``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
        return resolve_method(name, self.methods, overlay(profile, self.overrides), ())

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


def overlay(profile: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A profile with the overrides laid over it, method by method and key by key."""
    return {name: {**profile.get(name, {}), **overrides.get(name, {})} for name in {*profile, *overrides}}


def resolve_method(name: str, defaults: dict[str, dict[str, Any]], profile: dict[str, dict[str, Any]],
                    chain: tuple[str, ...]) -> dict[str, Any]:
    if name in chain:
        raise ConfigError(f"unlearn: '{EXTENDS}' cycle {' -> '.join((*chain, name))}")
    own = {**defaults.get(name, {}), **profile.get(name, {})}
    base_name = own.pop(EXTENDS, None)
    if base_name is None:
        return own
    if not isinstance(base_name, str):
        raise ConfigError(f"unlearn: {name}.{EXTENDS} must be a method name, got {base_name!r}")
    return {**resolve_method(base_name, defaults, profile, (*chain, name)), **own}


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
