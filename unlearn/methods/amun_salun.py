"""AMUN + SalUn: AMUN's fine-tuning restricted to SalUn's salient weights.

Ebrahimpour-Boroojeny, Sundaram, Chandrasekaran, "Not All Wrong is Bad: Using Adversarial
Examples for Unlearning", ICML 2025, App. D ("AMUN+SalUn"); saliency mask from Fan et al.,
"SalUn", ICLR 2024.

Implemented (methods.md section 2(a) step 3):
1. D_A exactly as in ``amun.py`` (Algorithm 1 with eps_init from the App. E.1 probe), on theta_o.
2. The SalUn mask m_S from |sum grad_theta -CE(theta_o; D_F)|, keeping the top ``mask_ratio``
   of entries (``salun.saliency_mask``; AMUN's code default 0.5, searched in [0.1, 0.9]).
3. AMUN's fine-tuning (mean CE over D_R + D_F + D_A shuffled together, or D_F + D_A without
   D_R; SGD momentum 0.9, weight decay 5e-4, lr x0.1 every ``lr_step`` epochs; D_A never
   augmented) with every gradient multiplied by m_S.

Choice (documented): AMUN's code only multiplies the gradients, which lets weight decay and
momentum still move the non-salient weights (the bug fixed in Unlearn-Saliency #32/#33). By
default (``freeze_masked=True``) the non-salient weights are reset to theta_o after every step
and their momentum zeroed, as in ``salun.py``; ``freeze_masked=False`` reproduces AMUN's code.
With ``mask_ratio=1`` the method reduces exactly to ``amun`` (same seed, same batches).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.methods.amun import adversarial_set, choose_eps_init
from unlearn.methods.base import TensorSet, UnlearningData, register_method
from unlearn.methods.random_label import StepFn, uses_retain
from unlearn.methods.salun import MaskedStep, saliency_mask
from unlearn.training import SGDRecipe, augment_batch, make_optimizer, seed_everything


def masked_finetune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: SGDRecipe,
    step_fn_factory: Callable[[torch.optim.Optimizer], StepFn],
    *,
    device: str | torch.device,
    seed: int,
    no_augment: torch.Tensor,
) -> nn.Module:
    """``training.train_model`` with a custom update: minimise mean CE with SGD, in place.

    Data order, augmentation and the learning-rate schedule are drawn exactly as in
    ``train_model`` (so the two agree when the update is the plain one).

    Args:
        model: The model to train.
        images: Float images (N, C, H, W).
        labels: int64 targets (N,).
        recipe: Hyperparameters (schedule, lr, momentum, weight decay, batch, augment).
        step_fn_factory: ``optimizer -> step(loss)``; e.g. a :class:`salun.MaskedStep`.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        no_augment: Bool mask (N,) of samples never augmented (D_A).

    Returns:
        The trained model, in eval mode.
    """
    generator = seed_everything(seed)
    model.to(device).train()
    n = len(labels)
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    optimizer, scheduler = make_optimizer(model, recipe, steps)
    step = step_fn_factory(optimizer)
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            x = images[index].to(device)
            y = labels[index].to(device)
            if recipe.augment:
                keep = no_augment[index].to(device)[:, None, None, None]
                x = torch.where(keep, x, augment_batch(x, generator))
            step(F.cross_entropy(model(x), y))
            scheduler.step()
    return model.eval()


@register_method("amun_salun", needs={"forget"}, needs_fn=uses_retain)
def amun_salun(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    mask_ratio: float = 0.5,
    freeze_masked: bool = True,
    use_retain: bool = True,
    include_forget: bool = True,
    eps_init: float | str = "auto",
    probe_eps: float = 0.01,
    probe_size: int = 100,
    coverage: float = 0.95,
    pgd_steps: int = 50,
    max_doublings: int = 12,
    epochs: int = 10,
    lr: float = 0.01,
    lr_step: int = 1,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """AMUN+SalUn (AMUN paper App. D): AMUN fine-tuning with SalUn-masked gradients.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``; also ``retain`` when ``use_retain``.
        device: Where to compute.
        seed: Seed for the eps probe, data order and augmentation.
        mask_ratio: Fraction of weights updated (AMUN code default 0.5).
        freeze_masked: Keep non-salient weights exactly at theta_o (Unlearn-Saliency #32/#33).
        use_retain: Fine-tune on D_R + D_F + D_A (True) or D_F + D_A (False).
        include_forget: Keep D_F (true labels) in the fine-tuning set.
        eps_init: Starting radius, or "auto" for the App. E.1 probe.
        probe_eps: Starting radius of the probe.
        probe_size: Forget samples probed.
        coverage: Share of probes that must succeed within eps_init.
        pgd_steps: PGD iterations per radius.
        max_doublings: Cap on radius doublings per sample.
        epochs: Fine-tuning epochs (10).
        lr: Initial learning rate (0.01).
        lr_step: Decay the learning rate x0.1 every this many epochs (1).
        batch_size: Fine-tuning batch size (128); also the mask's batch size.
        momentum: SGD momentum.
        weight_decay: L2 penalty.

    Returns:
        The unlearned model.
    """
    seed_everything(seed)
    forget = data.forget
    model.to(device).eval()
    if eps_init == "auto":
        start_eps = choose_eps_init(
            model, forget, probe_eps=probe_eps, probe_size=probe_size, coverage=coverage,
            pgd_steps=pgd_steps, max_doublings=max_doublings, device=device, seed=seed,
        )
    elif isinstance(eps_init, int | float) and not isinstance(eps_init, bool) and eps_init > 0:
        start_eps = float(eps_init)
    else:
        raise ValueError(f"amun_salun: eps_init must be a positive number or 'auto', got {eps_init!r}")
    x_adv, y_adv, _ = adversarial_set(
        model, forget, eps_init=start_eps, pgd_steps=pgd_steps, max_doublings=max_doublings, device=device,
    )
    mask = saliency_mask(model, forget, mask_ratio, device, batch_size=batch_size)  # on theta_o
    parts = [TensorSet(x_adv, y_adv)]
    if include_forget:
        parts.append(forget)
    if use_retain:
        parts.append(data.retain)
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    no_augment = torch.zeros(len(labels), dtype=torch.bool)
    no_augment[: len(y_adv)] = True  # D_A is used exactly as found
    recipe = SGDRecipe(epochs, batch_size, lr, momentum, weight_decay,
                       augment=data.train_recipe.augment, schedule="step", step_every=lr_step)
    model.to(device)  # MaskedStep records theta_o on the compute device
    return masked_finetune(
        model, images, labels, recipe,
        lambda optimizer: MaskedStep(model, optimizer, mask, freeze_masked=freeze_masked),
        device=device, seed=seed, no_augment=no_augment,
    )
