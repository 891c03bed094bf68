"""NegGrad+: descent on the retain set and ascent on the forget set, jointly.

Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (the SCRUB paper, where NegGrad+ is a baseline; code ``meghdadk/SCRUB``).

Implemented (methods.md section 6, "NegGrad+"): one epoch is one shuffled pass over D_R; each
retain batch B_R is paired with the next forget batch B_F from a cycled pass over D_F (the
forget order is reshuffled each epoch and then replayed, like ``itertools.cycle`` over a
shuffled loader), and SGD minimises

    L(theta) = alpha * ( CE(B_R) + (wd / 2) * ||theta - theta_0||_2^2 ) - (1 - alpha) * CE(B_F),

where theta_0 are the original weights (all parameters). The optimiser itself has no weight
decay; the proximal term replaces it.

Defaults: alpha = 0.95, SGD lr 0.01, 10 epochs (SCRUB small-scale notebook; methods.md
section 6). Choices where the sources are silent (documented):
- ``wd`` (the proximal coefficient) = 5e-4, the paper's weight decay;
- plain SGD without momentum, as SCRUB's own NegGrad+ baseline runs it (issue #13's review of
  ``meghdadk/SCRUB``; the ``sgda_momentum`` of its notebooks belongs to SCRUB's optimiser);
- retain batch 128 and forget batch 32 (the SCRUB large-scale loaders); the learning rate is
  constant, train mode throughout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward
from unlearn.methods._common import check_positive_int, cycled_batches, fetch, on_device, sgd, shuffled_batches
from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import seed_everything


def proximal_penalty(model: nn.Module, reference: list[torch.Tensor]) -> torch.Tensor:
    """||theta - theta_0||_2^2 over all parameters (a scalar tensor with gradient).

    Args:
        model: The model being unlearned.
        reference: theta_0, detached tensors in ``model.parameters()`` order.
    """
    return sum((p - p0).pow(2).sum() for p, p0 in zip(model.parameters(), reference, strict=True))


@register_method("neggrad_plus", needs={"forget", "retain"})
def neggrad_plus(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    alpha: float = 0.95,
    epochs: int = 10,
    lr: float = 0.01,
    momentum: float = 0.0,
    wd: float = 5e-4,
    retain_batch_size: int = 128,
    forget_batch_size: int = 32,
) -> nn.Module:
    """NegGrad+ (Kurmanji et al. 2023; methods.md section 6).

    Per step: loss = alpha * (CE(B_R) + wd/2 * ||theta - theta_0||^2) - (1 - alpha) * CE(B_F).

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget`` and ``retain``.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        alpha: Weight of the retain term, in [0, 1] (SCRUB notebook: 0.95).
        epochs: Passes over D_R (10).
        lr: Constant SGD learning rate (0.01).
        momentum: SGD momentum (SCRUB's NegGrad+: none).
        wd: Coefficient of the proximal term (wd/2)||theta - theta_0||^2.
        retain_batch_size: Retain batch size.
        forget_batch_size: Forget batch size.

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, retain_batch_size=retain_batch_size, forget_batch_size=forget_batch_size)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"neggrad_plus: alpha must lie in [0, 1], got {alpha}")
    generator = seed_everything(seed)
    forget, retain = on_device(data.forget, device), on_device(data.retain, device)
    augment = data.train_recipe.augment
    model.to(device).train()
    theta_0 = [p.detach().clone() for p in model.parameters()]
    optimizer = sgd(model, lr, momentum, weight_decay=0.0)
    with FastForward(model, device, retain.images[:2]) as forward:  # bf16 + channels_last on CUDA only
        for _ in range(epochs):
            forget_batches = cycled_batches(len(forget), forget_batch_size, generator)
            for index_r in shuffled_batches(len(retain), retain_batch_size, generator):
                x_r, y_r = fetch(retain, index_r, device=device, augment=augment, generator=generator)
                x_f, y_f = fetch(forget, next(forget_batches), device=device, augment=augment, generator=generator)
                retain_term = F.cross_entropy(forward(x_r), y_r) + 0.5 * wd * proximal_penalty(model, theta_0)
                loss = alpha * retain_term - (1.0 - alpha) * F.cross_entropy(forward(x_f), y_f)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()
