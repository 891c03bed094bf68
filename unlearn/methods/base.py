"""The method contract and registry.

A method is a function ``fn(model, data, *, device, seed, **kwargs) -> nn.Module`` registered
with :func:`register_method`, which also declares the data it needs. :func:`run_method` is the
one way methods are called: it checks the data and keyword arguments, works on a deep copy so
the input model is never modified, and returns the unlearned model in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unlearn.registry import Registry
from unlearn.training import SGDRecipe, TrainingTrace, recalibrate_batchnorm

DATA_KINDS = ("forget", "retain")


class MissingDataError(ValueError):
    """A method was called without data it needs (e.g. the retain set)."""


class MethodArgumentError(TypeError):
    """params.yaml gives a method a keyword argument it does not take, or a bad value."""


@dataclass(frozen=True)
class TensorSet:
    """Images and labels held as tensors on the CPU.

    Attributes:
        images: Float images in [0, 1], shape (N, C, H, W).
        labels: int64 labels, shape (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class UnlearningData:
    """What a method may use. Absent sets are ``None``.

    Attributes:
        forget: D_F, the samples to forget (with their true labels).
        retain: D_R, the remaining training samples.
        num_classes: Number of classes.
        train_recipe: The recipe the original model was trained with (retrain reuses it).
        model_factory: Builds a freshly initialised model of the same architecture.
        training_trace: Optional training-time artifacts of the original model (average
            gradients and parameters of its last two epochs; see ``train_model(trace=...)``).
            Only L-CODEC's finite-difference Hessian uses them; absent by default.
    """

    forget: TensorSet | None
    retain: TensorSet | None
    num_classes: int
    train_recipe: SGDRecipe
    model_factory: Callable[[], nn.Module]
    training_trace: TrainingTrace | None = None


MethodFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: Registry name.
        fn: The implementation.
        needs: Data kinds always required ("forget", "retain").
        needs_fn: Optional refinement: given the bound kwargs, the data kinds required.
    """

    name: str
    fn: MethodFn
    needs: frozenset[str]
    needs_fn: Callable[[dict[str, Any]], frozenset[str]] | None = None

    def required_data(self, kwargs: dict[str, Any]) -> frozenset[str]:
        """Data kinds this method needs with these keyword arguments."""
        return self.needs_fn(self.bind(kwargs)) if self.needs_fn else self.needs

    def bind(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Check ``kwargs`` against the signature and fill in defaults.

        Raises:
            MethodArgumentError: On an unknown or missing keyword argument.
        """
        signature = inspect.signature(self.fn)
        tunable = {
            name: p for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("device", "seed")
        }
        unknown = sorted(set(kwargs) - set(tunable))
        if unknown:
            raise MethodArgumentError(
                f"method {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(tunable)) or '(none)'}"
            )
        hints = _hints(self.fn)
        for name, value in kwargs.items():
            problem = _type_problem(value, hints.get(name)) or _range_problem(name, value)
            if problem:
                raise MethodArgumentError(f"method {self.name!r}: {name} {problem}, got {value!r}")
        bound = {name: p.default for name, p in tunable.items()}
        bound.update(kwargs)
        return bound


@functools.cache
def _hints(fn: MethodFn) -> dict[str, Any]:
    """The evaluated annotations of a method's signature (empty where they cannot be evaluated)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation naming something unimportable: nothing is checked
        return {}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit a plain annotation (bool, int, float, str, or a union of them with None), or
    None. Other annotations are not checked.

    Why: method keywords come from params.yaml unchecked; a string learning rate (``lr: "1e-3"``), a NaN or a
    float epoch count failed the run after the model was trained, or ran without end (review of 2026-12-07).
    """
    if hint is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if any(o not in (bool, int, float, str, type(None)) for o in options):
        return None
    if value is None:
        return None if type(None) in options else "must not be null"
    if isinstance(value, bool):
        return None if bool in options else f"expects {_names(options)}, not a boolean"
    if isinstance(value, int) and (int in options or float in options):
        return None
    if isinstance(value, float) and float in options:
        return None if math.isfinite(value) else "must be a finite number"
    if isinstance(value, str) and str in options:
        return None
    return f"expects {_names(options)}"


# Iteration counts: a loop this long never ends in practice (``epochs: 10**20`` ran on for ever; review of
# 2026-12-07). Bounds far above any published setting, so no real configuration meets them.
_MAX_EPOCHS = 10_000
_MAX_ITERATIONS = 1_000_000
# Iteration counts by the end of their name, and the least each may be: a loop of steps may be empty, a check
# every 0 batches divides by zero, a variance from one perturbation is undefined (L-CODEC's needs two).
_COUNT_MINIMUMS = {"steps": 0, "iters": 0, "doublings": 0, "perturbations": 2, "draws": 1, "inverted": 1,
                   "every": 1, "_step": 1}


def _range_problem(name: str, value: Any) -> str | None:
    """Why a keyword's value is out of range by the convention its name follows, or None.

    Why: each method checks its own arguments, but only when it runs, after the baseline and reference models
    were trained, and nothing bounded the loop counts. The shared names mean the same in every method, so they
    are checked here, when a keyword is bound (the stages bind every profile's before any training): epochs and
    iteration counts (a learning-rate step, ``lr_step``, included), learning rates, batch sizes, momentum and
    weight decay. A method's own checks (a ratio in
    [0, 1], a known optimiser name) still apply.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if name == "epochs":
        return None if 1 <= value <= _MAX_EPOCHS else f"must be between 1 and {_MAX_EPOCHS}"
    least = next((n for suffix, n in _COUNT_MINIMUMS.items() if name.endswith(suffix)), None)
    if least is not None and isinstance(value, int):
        return None if least <= value <= _MAX_ITERATIONS else f"must be between {least} and {_MAX_ITERATIONS}"
    if name == "lr" or name.endswith("_lr"):
        return None if value > 0 else "must be > 0"
    if name == "batch_size" or name.endswith(("_batch_size", "_batch")):
        return None if value >= 1 else "must be >= 1"
    if name == "momentum":
        return None if 0 <= value < 1 else "must be in [0, 1)"
    if name in ("weight_decay", "wd"):
        return None if value >= 0 else "must be >= 0"
    return None


def _names(options: tuple[Any, ...]) -> str:
    return " or ".join("null" if o is type(None) else o.__name__ for o in options)


INFO_ATTR = "unlearning_info"


def record_info(model: nn.Module, **info: Any) -> None:
    """Attach run diagnostics to an unlearned model (``model.unlearning_info``, a plain dict).

    Why: a method that silently does nothing (SSD selecting no weight, DLFD stopping its
    synthesis at the first check, L-CODEC without certified noise) looks like a method that
    worked; benchmarks and logs read these numbers to say what a run actually did. The dict
    is not part of the state dict and never holds sample data or identifiers.
    """
    current = dict(getattr(model, INFO_ATTR, None) or {})
    current.update(info)
    setattr(model, INFO_ATTR, current)


def method_info(model: nn.Module) -> dict[str, Any]:
    """The diagnostics a method recorded with :func:`record_info` (empty if none)."""
    return dict(getattr(model, INFO_ATTR, None) or {})


def on_host(data: UnlearningData) -> UnlearningData:
    """``data`` with its sets on the CPU, where methods expect them (the same object when they are).

    Why: methods decide themselves what to place on the device (``unlearn.accel.resident``) and
    index host sets with host indices; a caller holding D_F or D_R on a GPU would otherwise hit a
    device mismatch deep inside a method (AMUN's adversarial search did). One copy back, up front.
    """
    moved = {}
    for kind in DATA_KINDS:
        subset = getattr(data, kind)
        if subset is not None and (subset.images.device.type != "cpu" or subset.labels.device.type != "cpu"):
            moved[kind] = TensorSet(subset.images.cpu(), subset.labels.cpu())
    return dataclasses.replace(data, **moved) if moved else data


# Every module in unlearn/methods/ is imported on first lookup: a method registers by existing.
METHODS: Registry[MethodSpec] = Registry("unlearning method", package="unlearn.methods")


def register_method(
    name: str,
    needs: set[str] | frozenset[str],
    needs_fn: Callable[[dict[str, Any]], frozenset[str]] | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register an unlearning method under ``name``.

    Args:
        name: The name used in params.yaml.
        needs: Data kinds the method always requires.
        needs_fn: Optional function of the bound kwargs giving the data kinds required.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    bad = set(needs) - set(DATA_KINDS)
    if bad:
        raise ValueError(f"unknown data kind(s) {sorted(bad)}; valid: {DATA_KINDS}")

    def decorate(fn: MethodFn) -> MethodFn:
        METHODS.register(name)(MethodSpec(name, fn, frozenset(needs), needs_fn))
        return fn

    return decorate


def recalibrates_bn(name: str, enabled: bool) -> bool:
    """Whether :func:`run_method` recomputes method ``name``'s batch-norm statistics when ``enabled``: never
    for ``retrain``, whose statistics already come from D_R alone."""
    return enabled and name != "retrain"


def run_method(
    name: str,
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str | torch.device,
    seed: int,
    kwargs: dict[str, Any] | None = None,
    recalibrate_bn: bool = False,
) -> nn.Module:
    """Run a registered method on a copy of ``model``.

    Args:
        name: Registry name of the method.
        model: The model to unlearn from; it is not modified.
        data: The data the method may use.
        device: Where to compute.
        seed: Seed for every random choice the method makes.
        kwargs: Method keyword arguments from params.yaml.
        recalibrate_bn: Afterwards, recompute the batch-norm running statistics on D_R
            (``training.recalibrate_batchnorm``; params.yaml ``unlearn.recalibrate_bn``). Off by
            default so a method's output is its paper's; never for ``retrain``, whose statistics
            already come from D_R alone. The model's info records ``bn_recalibrated`` (layers
            recomputed; 0 when D_R was not given or the model has no batch norm).

    Returns:
        The unlearned model, a new object, in eval mode.

    Raises:
        UnknownNameError: If no method has this name.
        MethodArgumentError: If a keyword argument is unknown.
        MissingDataError: If data the method needs is absent or empty.
    """
    spec = METHODS.get(name)
    bound = spec.bind(dict(kwargs or {}))
    for kind in sorted(spec.required_data(bound)):
        subset = getattr(data, kind)
        if subset is None or len(subset) == 0:
            raise MissingDataError(f"method {name!r} needs the {kind} set, which was not provided")
    data = on_host(data)
    working = copy.deepcopy(model).to(device)
    setattr(working, INFO_ATTR, {})  # diagnostics of this run only, not of the input's history
    result = spec.fn(working, data, device=device, seed=seed, **bound)
    if recalibrates_bn(name, recalibrate_bn):
        retain = data.retain
        images = retain.images if retain is not None else torch.empty(0)
        record_info(result, bn_recalibrated=recalibrate_batchnorm(result, images, device=device))
    return result.eval()
