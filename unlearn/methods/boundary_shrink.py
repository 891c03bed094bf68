"""Boundary Shrink (BS): relabel each forget sample with its nearest wrong class.

Chen, Gao, Liu, Peng, Wang, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Space", CVPR 2023.

Implemented (methods.md section 6, "Boundary Shrink"): keep a frozen copy f_0 of the original
model (eval mode). For each forget batch (x, y):
  1. x_adv = clip_[0,1](x + bound * sign(grad_x CE(f_0(x), y))), one FGSM step of L_inf size
     ``bound`` = 0.1 on the frozen model, then quantised to multiples of 1/255 (both the
     original code and the SalUn/AMUN port discretise);
  2. y_nb = argmax f_0(x_adv), the "nearest but incorrect" label;
  3. one SGD step on CE(f(x), y_nb) for the model being unlearned (train mode).
Only D_F is used. If FGSM fails to change the prediction, y_nb = y and the step reinforces
the true label (as in the original code).

Defaults follow the original code: SGD lr 1e-5, momentum 0.9, no weight decay, 10 epochs over
D_F. SalUn/AMUN re-tune lr (``lr`` is exposed). Choices where the sources are silent: forget
batch 128 (AMUN's batch size), constant learning rate, no augmentation of x_adv beyond that
of x (x is augmented first if the recipe augments, and the attack is run on the augmented x).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward, exact_float32
from unlearn.methods._common import check_positive_int, fetch, on_device, sgd, shuffled_batches
from unlearn.methods.base import UnlearningData, record_info, register_method
from unlearn.training import seed_everything


def nearest_wrong_labels(
    frozen: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, bound: float,
    quantize: bool, judge: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Labels of one-step FGSM examples on the frozen model: argmax f_0(x + bound * sign(grad)).

    Args:
        frozen: f_0 in eval mode (its parameters receive no gradient update).
        x: Images in [0, 1], shape (B, C, H, W).
        y: True labels (B,).
        bound: L_inf size of the FGSM step.
        quantize: Round x_adv to multiples of 1/255.
        judge: What labels x_adv (default ``frozen``). On CUDA the gradient comes from the bf16 forward and
            the label from the plain model in float32 without TF32 (:func:`unlearn.accel.exact_float32`),
            so near-tied logits are ranked at full precision.

    Returns:
        y_nb (B,), the prediction of f_0 (``judge``) on x_adv.
    """
    x_adv = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(frozen(x_adv), y), x_adv)
    with torch.no_grad():
        x_adv = (x + bound * grad.sign()).clamp(0.0, 1.0)
        if quantize:
            x_adv = torch.round(x_adv * 255.0) / 255.0
        with exact_float32(x_adv.device):
            return (judge or frozen)(x_adv).argmax(1)


@register_method("boundary_shrink", needs={"forget"})
def boundary_shrink(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    bound: float = 0.1,
    quantize: bool = True,
    epochs: int = 10,
    lr: float = 1e-5,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Boundary Shrink (Chen et al., CVPR 2023; methods.md section 6).

    Minimises CE(f(x), y_nb) over D_F, with y_nb the frozen model's label on the FGSM example.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        bound: FGSM L_inf step (paper: 0.1, on [0, 1] pixels).
        quantize: Discretise x_adv to 1/255 steps (original code).
        epochs: Passes over D_F (10).
        lr: Constant learning rate (original: 1e-5).
        batch_size: Forget batch size.
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (original: none).

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, batch_size=batch_size)
    generator = seed_everything(seed)
    forget = on_device(data.forget, device)  # resident on CUDA when it fits; the same set on the CPU
    augment = data.train_recipe.augment
    model.to(device)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.train()
    optimizer = sgd(model, lr, momentum, weight_decay)
    moved = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    # bf16 + channels_last on CUDA only: the FGSM gradient uses the fast forward, the labels the fp32 model
    with FastForward(model, device, forget.images[:2]) as forward, \
            FastForward(frozen, device, forget.images[:2]) as frozen_forward:
        for _ in range(epochs):
            for index in shuffled_batches(len(forget), batch_size, generator):
                x, y = fetch(forget, index, device=device, augment=augment, generator=generator)
                y_nb = nearest_wrong_labels(frozen_forward, x, y, bound=bound, quantize=quantize, judge=frozen)
                moved += (y_nb != y).sum()  # stays on the device: no per-step host synchronisation
                seen += len(y)
                loss = F.cross_entropy(forward(x), y_nb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    # Share of forget samples the FGSM step moved to another class; the rest reinforce y.
    record_info(model, relabelled_fraction=float(moved) / max(seen, 1))
    return model.eval()
