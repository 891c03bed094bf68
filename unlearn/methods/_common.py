"""Small helpers shared by the baseline methods (grad_ascent, neggrad_plus, random_label, ...).

Not a method: the registry skips modules whose name starts with "_". Everything here is
seeded through an explicit CPU ``torch.Generator`` so that a method gives the same result for
the same seed on every run (no DataLoader workers, no global random state in data order).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from unlearn import accel
from unlearn.methods.base import TensorSet
from unlearn.training import apply_augmentation, draw_augmentation, epoch_batches


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of mini-batch indices in a seeded random order.

    Args:
        n: Number of samples.
        batch_size: Largest batch: ``ceil(n / batch_size)`` batches of nearly equal size, so no epoch ends
            on a step over a handful of samples (``unlearn.training.balanced_split``).
        generator: CPU generator that fixes the order.

    Returns:
        A list of int64 index tensors, each of shape (<= batch_size,).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return epoch_batches(n, batch_size, generator)  # the trainer's own cut, so methods and training agree


def cycled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches: one shuffled pass, then the same batches again in the same order.

    This mirrors ``zip(retain_loader, itertools.cycle(forget_loader))`` in the SCRUB code,
    where ``cycle`` replays the first pass of the (shuffled) forget loader. The order is drawn
    now, not lazily.

    Args:
        n: Number of samples.
        batch_size: Largest batch (balanced batches, as in shuffled_batches).
        generator: CPU generator that fixes the order of the one pass.

    Returns:
        An endless iterator of int64 index tensors of shape (<= batch_size,).
    """
    return itertools.cycle(shuffled_batches(n, batch_size, generator))


def fetch(
    subset: TensorSet,
    index: torch.Tensor,
    *,
    device: str | torch.device,
    augment: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``index`` on ``device``, optionally augmented (crop + flip).

    On CUDA nothing here blocks the host: a resident ``subset`` (:func:`on_device`) is indexed on
    the device, and the index and augmentation draws go over through pinned memory in one copy.
    The draws come from ``generator`` on the host in the same order either way, so the data a
    method sees does not depend on the device; on the CPU this is the plain gather and
    ``training.augment_batch``, bit for bit.

    Args:
        subset: Where to read from.
        index: Sample indices, shape (B,).
        device: Target device.
        augment: Apply the training augmentation (``training.augment_batch``).
        generator: Source of randomness for the augmentation.

    Returns:
        (x (B, C, H, W), y (B,)).
    """
    draws = draw_augmentation(len(index), generator) if augment else ()
    # One pinned, non-blocking copy of the index and the draws on CUDA; the parts themselves on the CPU.
    moved, *moved_draws = accel.split_to_device([index.to(torch.int64), *(d.to(torch.int64) for d in draws)], device)
    x = accel.take(subset.images, moved if accel.on(subset.images, device) else index, device)
    y = accel.take(subset.labels, moved if accel.on(subset.labels, device) else index, device)
    if augment:
        dy, dx, flip = moved_draws
        x = apply_augmentation(x, dy, dx, flip.bool())
    return x, y


def on_device(subset: TensorSet | None, device: str | torch.device) -> TensorSet | None:
    """``subset`` resident on a CUDA ``device`` when it fits (see :func:`accel.resident`), else itself.

    On the CPU (or when it does not fit) the same object comes back; :func:`fetch` then gathers
    on the host as before.
    """
    if subset is None or not accel.is_cuda(device):
        return subset
    images = accel.resident(subset.images, device)
    if images is subset.images:  # did not fit: stays on the host
        return subset
    return TensorSet(images, subset.labels.to(device))


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Plain SGD over all parameters with a constant learning rate.

    Args:
        model: The model whose parameters are optimised.
        lr: Learning rate (must be positive).
        momentum: Momentum.
        weight_decay: Coupled L2 penalty.

    Returns:
        The optimiser.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def uses_retain(kwargs: dict) -> frozenset[str]:
    """Data needs of methods with a ``use_retain`` switch (RL, SalUn, AMUN, AMUN+SalUn).

    D_F always; D_R too when ``kwargs["use_retain"]`` (their "only D_F" setting drops it).
    """
    return frozenset({"forget", "retain"}) if kwargs["use_retain"] else frozenset({"forget"})


def check_positive_int(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
