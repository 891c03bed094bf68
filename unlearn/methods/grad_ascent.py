"""Gradient Ascent (GA, "NegGrad"): maximise the loss on the forget set.

Thudi, Deza, Chandrasekaran, Papernot, "Unrolling SGD: Understanding Factors Influencing
Machine Unlearning", EuroS&P 2022; used as the GA baseline by Unlearn-Sparse (Jia et al.,
NeurIPS 2023), SalUn (Fan et al., ICLR 2024) and AMUN (methods.md section 6).

Implemented (methods.md section 6, "Gradient Ascent / NegGrad"): SGD on D_F minimising
    L(theta) = -CE(f_theta(x), y),   (x, y) ~ D_F,
i.e. gradient *ascent* on the forget-set cross-entropy. Only D_F is used.

Defaults follow Unlearn-Sparse/SalUn: lr 1e-4 and 5 epochs (Unlearn-Sparse README, methods.md
section 6); SGD with momentum 0.9, weight decay 5e-4 and batch 256 (their ``arg_parser.py``
defaults); their MultiStepLR milestones (91, 136) are never reached in 5 epochs, so the
learning rate is constant. The model is in train mode, as in their loop (BatchNorm statistics follow D_F).

GA is unstable (AMUN Table 2: test accuracy 5% without D_R): too large ``lr``/``epochs``
collapse the model. Tune on a separate forget subset.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward
from unlearn.methods._common import check_positive_int, fetch, on_device, sgd, shuffled_batches
from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import seed_everything


@register_method("grad_ascent", needs={"forget"})
def grad_ascent(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    epochs: int = 5,
    lr: float = 1e-4,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Gradient ascent on the forget-set cross-entropy (Thudi et al. 2022; methods.md section 6).

    Minimises -CE(f(x), y) over shuffled mini-batches of D_F with constant-lr SGD.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        epochs: Passes over D_F (Unlearn-Sparse: 5).
        lr: Constant learning rate (Unlearn-Sparse: 1e-4).
        batch_size: Forget batch size (Unlearn-Sparse default 256).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (5e-4).

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, batch_size=batch_size)
    generator = seed_everything(seed)
    forget = on_device(data.forget, device)  # resident on CUDA when it fits; the same set on the CPU
    augment = data.train_recipe.augment
    model.to(device).train()
    optimizer = sgd(model, lr, momentum, weight_decay)
    with FastForward(model, device, forget.images[:2]) as forward:  # bf16 + channels_last on CUDA only
        for _ in range(epochs):
            for index in shuffled_batches(len(forget), batch_size, generator):
                x, y = fetch(forget, index, device=device, augment=augment, generator=generator)
                loss = -F.cross_entropy(forward(x), y)  # ascent on CE(D_F)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()
