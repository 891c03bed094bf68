"""Random Labels (RL): fine-tune on the forget set with random labels (and on the retain set).

Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks", CVPR 2020 (as cited by SalUn and AMUN); implementation as in SalUn (Fan et al.,
"SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR 2024, code
``OPTML-Group/Unlearn-Saliency``, ``unlearn/RL.py``, CIFAR-10 branch).

Implemented (methods.md section 6, "Random Labels"): each epoch is
  1. one shuffled pass over D_F, minimising CE(f(x), y~) with y~ drawn uniformly from all C
     classes afresh for every batch (so y~ may equal y), then
  2. one shuffled pass over D_R minimising CE(f(x), y) (skipped with ``use_retain=False``,
     the "only D_F" setting of AMUN Table 2).
SGD with momentum 0.9, weight decay 5e-4, batch 256, constant learning rate (SalUn's
MultiStepLR milestones are beyond 10 epochs); lr 0.013 and 10 epochs from SalUn's README
example. ``exclude_true=True`` draws y~ from the C-1 wrong classes instead (AMUN's port).

:func:`random_label_epoch` is reused by SalUn (``salun.py``) with a masked optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward, to_device_async
from unlearn.methods._common import check_positive_int, fetch, on_device, sgd, shuffled_batches, uses_retain
from unlearn.methods.base import TensorSet, UnlearningData, register_method
from unlearn.training import StepFn, plain_step, seed_everything


def random_labels(
    y: torch.Tensor, num_classes: int, generator: torch.Generator, *, exclude_true: bool
) -> torch.Tensor:
    """Uniformly random labels for a batch.

    Args:
        y: True labels (B,), any device.
        num_classes: C.
        generator: CPU generator.
        exclude_true: Draw from the C-1 classes other than y (True) or from all C (False).

    Returns:
        Random labels (B,) on ``y``'s device.
    """
    if exclude_true:
        offset = to_device_async(torch.randint(1, num_classes, y.shape, generator=generator), y.device)
        return (y + offset) % num_classes
    return to_device_async(torch.randint(0, num_classes, y.shape, generator=generator), y.device)


def random_label_epoch(
    model: Callable[[torch.Tensor], torch.Tensor],
    step: StepFn,
    forget: TensorSet,
    retain: TensorSet | None,
    *,
    num_classes: int,
    batch_size: int,
    exclude_true: bool,
    augment: bool,
    device: str | torch.device,
    generator: torch.Generator,
) -> None:
    """One RL epoch (SalUn CIFAR-10 branch): a pass over D_F with random labels, then over D_R.

    Args:
        model: The model in train mode, or its :class:`~unlearn.accel.FastForward` (bf16 and
            channels_last on CUDA).
        step: Applies one update for a loss (e.g. :func:`plain_step`).
        forget: D_F.
        retain: D_R, or None to skip the retain pass.
        num_classes: C.
        batch_size: Batch size of both passes.
        exclude_true: See :func:`random_labels`.
        augment: Apply the training augmentation.
        device: Where to compute.
        generator: Source of data order, labels and augmentation.
    """
    for index in shuffled_batches(len(forget), batch_size, generator):
        x, y = fetch(forget, index, device=device, augment=augment, generator=generator)
        y_random = random_labels(y, num_classes, generator, exclude_true=exclude_true)
        step(F.cross_entropy(model(x), y_random))
    if retain is not None:
        for index in shuffled_batches(len(retain), batch_size, generator):
            x, y = fetch(retain, index, device=device, augment=augment, generator=generator)
            step(F.cross_entropy(model(x), y))


def random_label_epochs(
    model: nn.Module,
    step: StepFn,
    data: UnlearningData,
    *,
    epochs: int,
    use_retain: bool,
    batch_size: int,
    exclude_true: bool,
    device: str | torch.device,
    generator: torch.Generator,
) -> None:
    """``epochs`` of :func:`random_label_epoch` (RL and SalUn): the sets resident on CUDA when they fit and
    the model called through :class:`~unlearn.accel.FastForward` (bf16 + channels_last on CUDA only; the
    plain loop on the CPU). ``model`` is in train mode on ``device``; ``step`` applies one update."""
    forget = on_device(data.forget, device)
    retain = on_device(data.retain, device) if use_retain else None
    with FastForward(model, device, forget.images[:2]) as forward:
        for _ in range(epochs):
            random_label_epoch(forward, step, forget, retain, num_classes=data.num_classes,
                               batch_size=batch_size, exclude_true=exclude_true,
                               augment=data.train_recipe.augment, device=device, generator=generator)


@register_method("random_label", needs={"forget"}, needs_fn=uses_retain)
def random_label(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    use_retain: bool = True,
    exclude_true: bool = False,
    epochs: int = 10,
    lr: float = 0.013,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Random-label fine-tuning (Golatkar et al. 2020 as run by SalUn; methods.md section 6).

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``; also ``retain`` when ``use_retain``.
        device: Where to compute.
        seed: Seed for data order, random labels and augmentation.
        use_retain: Follow each random-label pass over D_F with a pass over D_R.
        exclude_true: Random labels avoid the true label (AMUN's port) instead of being
            uniform over all classes (SalUn).
        epochs: RL epochs (10).
        lr: Constant learning rate (SalUn README: 0.013).
        batch_size: Batch size (SalUn: 256).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, batch_size=batch_size)
    generator = seed_everything(seed)
    model.to(device).train()
    step = plain_step(sgd(model, lr, momentum, weight_decay))
    random_label_epochs(model, step, data, epochs=epochs, use_retain=use_retain, batch_size=batch_size,
                        exclude_true=exclude_true, device=device, generator=generator)
    return model.eval()
