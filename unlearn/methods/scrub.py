"""SCRUB: teacher-student min-max unlearning.

Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (code ``meghdadk/SCRUB``: ``small_scale_unlearning.ipynb``,
``large_scale_unlearning.ipynb``, ``thirdparty/repdistiller/helper/loops.py::train_distill``).

Implemented (methods.md section 6, "SCRUB"; the paper's min-max objective and its alternating algorithm): the teacher is
theta_o, frozen and in eval mode; the student starts from theta_o and is trained in train mode.
For epoch e = 1, ..., E (learning rate lr * rate^{#{d in lr_decay_epochs : e > d}}):
  1. if e <= msteps, a "max-step": one pass over D_F minimising  -KL_T(teacher || student);
  2. a "min-step": one pass over D_R minimising  gamma * CE(student) + alpha * KL_T(teacher || student),
where KL_T(p_t || p_s) = T^2 / B * sum_batch KL(softmax(z_t / T) || softmax(z_s / T))
(``DistillKL`` in the code). One optimiser serves both steps, as in the code.

Defaults: the **small-scale** setting of the SCRUB code (``small_scale_unlearning.ipynb``),
chosen because this project's default data (8x8 digits, ~1.3k training samples) is small:
Adam lr 5e-4 with (coupled) weight decay 0.1, gamma 1, alpha 0.5, T 2, msteps 3, E 10, lr x0.1
after epochs 5, 8 and 9, retain batch 32, forget batch 64.
The **large-scale** setting (CIFAR-10 ResNet; methods.md section 6) is reached with
``optimizer="sgd", lr=5e-4, momentum=0.9, weight_decay=5e-4, temperature=4, gamma=0.99,
alpha=0.001, msteps=2, epochs=3, lr_decay_epochs=[3, 5, 9], retain_batch_size=128,
forget_batch_size=32``.
The code's extra distillation term (beta * loss_kd, beta = 0) and SWA smoothing are not used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import FastForward
from unlearn.methods._common import check_positive_int, fetch, on_device, shuffled_batches
from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import seed_everything


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL_T(teacher || student) x T^2, averaged over the batch (SCRUB's ``DistillKL``).

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K), no gradient needed.
        temperature: T > 0.

    Returns:
        A scalar tensor.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


def scrub_lr(lr: float, epoch: int, decay_epochs: Sequence[int], rate: float) -> float:
    """SCRUB's step schedule for 1-based ``epoch``: lr * rate^(number of decay epochs < epoch)."""
    return lr * rate ** sum(epoch > d for d in decay_epochs)


@register_method("scrub", needs={"forget", "retain"})
def scrub(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    epochs: int = 10,
    msteps: int = 3,
    optimizer: str = "adam",
    lr: float = 5e-4,
    momentum: float = 0.9,
    weight_decay: float = 0.1,
    lr_decay_epochs: Sequence[int] = (5, 8, 9),
    lr_decay_rate: float = 0.1,
    temperature: float = 2.0,
    gamma: float = 1.0,
    alpha: float = 0.5,
    retain_batch_size: int = 32,
    forget_batch_size: int = 64,
) -> nn.Module:
    """SCRUB (Kurmanji et al., NeurIPS 2023), small-scale defaults.

    Max-step on D_F: min -KL_T(teacher || student); min-step on D_R: min gamma*CE + alpha*KL_T.

    Args:
        model: A copy of the original model; becomes the student (trained in place).
        data: Needs ``forget`` and ``retain``.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        epochs: Total epochs E (min-steps run every epoch).
        msteps: Max-steps run in epochs 1..msteps.
        optimizer: "adam" (small-scale) or "sgd" (large-scale).
        lr: Initial learning rate (5e-4 in both settings).
        momentum: SGD momentum (ignored by Adam).
        weight_decay: Coupled L2 penalty of the optimiser (small: 0.1; large: 5e-4).
        lr_decay_epochs: Epochs after which lr is multiplied by ``lr_decay_rate``.
        lr_decay_rate: Decay factor (0.1).
        temperature: Distillation temperature T (small: 2; large: 4).
        gamma: Weight of CE on D_R in the min-step (small: 1; large: 0.99).
        alpha: Weight of KL on D_R in the min-step (small: 0.5; large: 0.001).
        retain_batch_size: Min-step batch size (small: 32; large: 128).
        forget_batch_size: Max-step batch size (small: 64; large: 32).

    Returns:
        The unlearned student.
    """
    check_positive_int(epochs=epochs, retain_batch_size=retain_batch_size, forget_batch_size=forget_batch_size)
    if msteps < 0 or temperature <= 0 or lr <= 0:
        raise ValueError(f"scrub: need msteps >= 0, temperature > 0, lr > 0; got {msteps}, {temperature}, {lr}")
    generator = seed_everything(seed)
    forget, retain = on_device(data.forget, device), on_device(data.retain, device)  # CUDA: resident if it fits
    augment = data.train_recipe.augment
    model.to(device)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = model.train()
    if optimizer == "adam":
        opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"scrub: optimizer must be 'adam' or 'sgd', got {optimizer!r}")

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # bf16 + channels_last on CUDA only (logits and the KL in fp32); plain calls on the CPU
    with FastForward(student, device, retain.images[:2]) as student_fwd, \
            FastForward(teacher, device, retain.images[:2]) as teacher_fwd:
        for epoch in range(1, epochs + 1):
            for group in opt.param_groups:
                group["lr"] = scrub_lr(lr, epoch, lr_decay_epochs, lr_decay_rate)
            if epoch <= msteps:  # max-step: push the student away from the teacher on D_F
                for index in shuffled_batches(len(forget), forget_batch_size, generator):
                    x, _ = fetch(forget, index, device=device, augment=augment, generator=generator)
                    with torch.no_grad():
                        teacher_logits = teacher_fwd(x)
                    update(-distill_kl(student_fwd(x), teacher_logits, temperature))
            for index in shuffled_batches(len(retain), retain_batch_size, generator):  # min-step on D_R
                x, y = fetch(retain, index, device=device, augment=augment, generator=generator)
                with torch.no_grad():
                    teacher_logits = teacher_fwd(x)
                logits = student_fwd(x)
                update(gamma * F.cross_entropy(logits, y) + alpha * distill_kl(logits, teacher_logits, temperature))
    return student.eval()
