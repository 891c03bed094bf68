"""l1-sparse unlearning: fine-tune on the retain set with a decaying l1 penalty.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023 (code ``OPTML-Group/Unlearn-Sparse``, ``FT_l1``).

Implemented (methods.md section 6, "l1-sparse"): in epoch e = 0, ..., E-1 minimise over
shuffled mini-batches of D_R

    L_e(theta) = CE(f_theta(x), y) + gamma_e * ||theta||_1,   gamma_e = gamma * (1 - e / E),

i.e. the linear decay of Unlearn-Sparse (NOT the compounding ``alpha *= 2 - 2e/E`` of AMUN's
port, methods.md section 2(f)). ||theta||_1 sums |.| over all parameters (BatchNorm affine
parameters included, as in Unlearn-Sparse's ``l1_regularization``).

Defaults: gamma 5e-4 (AMUN's default; the Unlearn-Sparse paper value was not found, methods.md
section 6), lr 0.01, 10 epochs (Unlearn-Sparse README), SGD momentum 0.9, weight decay 5e-4,
batch 256, constant learning rate (their MultiStepLR milestones are beyond 10 epochs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward
from unlearn.methods._common import check_positive_int, fetch, on_device, sgd, shuffled_batches
from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import seed_everything


def l1_norm(model: nn.Module) -> torch.Tensor:
    """||theta||_1 over all parameters (a scalar tensor with gradient)."""
    return sum(p.abs().sum() for p in model.parameters())


def l1_weight(gamma: float, epoch: int, epochs: int) -> float:
    """gamma_e = gamma * (1 - e / E) for 0-based epoch e (Unlearn-Sparse's linear decay)."""
    return gamma * (1.0 - epoch / epochs)


@register_method("l1_sparse", needs={"retain"})
def l1_sparse(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    gamma: float = 5e-4,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """l1-sparse fine-tuning on D_R (Jia et al., NeurIPS 2023; methods.md section 6).

    Minimises CE(D_R batch) + gamma * (1 - e/E) * ||theta||_1 in epoch e = 0..E-1.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``retain``.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        gamma: Initial l1 weight (decays linearly to gamma/E in the last epoch).
        epochs: Passes over D_R (10).
        lr: Constant learning rate (0.01).
        batch_size: Batch size (256).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, batch_size=batch_size)
    if gamma < 0:
        raise ValueError(f"l1_sparse: gamma must be >= 0, got {gamma}")
    generator = seed_everything(seed)
    retain = on_device(data.retain, device)  # resident on CUDA when it fits; the same set on the CPU
    augment = data.train_recipe.augment
    model.to(device).train()
    optimizer = sgd(model, lr, momentum, weight_decay)
    with FastForward(model, device, retain.images[:2]) as forward:  # bf16 + channels_last on CUDA only
        for epoch in range(epochs):
            gamma_e = l1_weight(gamma, epoch, epochs)
            for index in shuffled_batches(len(retain), batch_size, generator):
                x, y = fetch(retain, index, device=device, augment=augment, generator=generator)
                loss = F.cross_entropy(forward(x), y) + gamma_e * l1_norm(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()
