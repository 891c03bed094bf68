"""AMUN + SalUn: AMUN's fine-tuning restricted to SalUn's salient weights.

Ebrahimpour-Boroojeny, Sundaram, Chandrasekaran, "Not All Wrong is Bad: Using Adversarial
Examples for Unlearning", ICML 2025, App. D ("AMUN+SalUn"); saliency mask from Fan et al.,
"SalUn", ICLR 2024.

Implemented (methods.md section 2(a) step 3):
1. D_A exactly as in ``amun.py`` (Algorithm 1 with eps_init from the App. E.1 probe), on theta_o.
2. The SalUn mask m_S from |sum grad_theta -CE(theta_o; D_F)|, keeping the top ``mask_ratio``
   of entries (``salun.saliency_mask``; AMUN's code default 0.5, searched in [0.1, 0.9]).
3. AMUN's fine-tuning (mean CE over D_R + D_F + D_A shuffled together, or D_F + D_A without
   D_R; SGD momentum 0.9, weight decay 5e-4, lr x0.1 every ``lr_step`` epochs, official
   default 40 = constant over 10 epochs; D_A never
   augmented) with every gradient multiplied by m_S.

Choice (documented): AMUN's code only multiplies the gradients, which lets weight decay and
momentum still move the non-salient weights (the bug fixed in Unlearn-Saliency #32/#33). By
default (``freeze_masked=True``) the non-salient weights are reset to theta_o after every step
and their momentum zeroed, as in ``salun.py``; ``freeze_masked=False`` reproduces AMUN's code.
With ``mask_ratio=1`` the method reduces exactly to ``amun`` (same seed, same batches).
"""

from __future__ import annotations

from torch import nn

from unlearn.methods._common import uses_retain
from unlearn.methods.amun import finetuning_set
from unlearn.methods.base import UnlearningData, register_method
from unlearn.methods.salun import MaskedStep, saliency_mask
from unlearn.training import SGDRecipe, seed_everything, train_model


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
    lr_step: int = 40,
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
        lr_step: Decay the learning rate x0.1 every this many epochs (official default 40).
        batch_size: Fine-tuning batch size (128); also the mask's batch size.
        momentum: SGD momentum.
        weight_decay: L2 penalty.

    Returns:
        The unlearned model.
    """
    seed_everything(seed)
    images, labels, no_augment = finetuning_set(
        model, data, use_retain=use_retain, include_forget=include_forget, eps_init=eps_init,
        probe_eps=probe_eps, probe_size=probe_size, coverage=coverage, pgd_steps=pgd_steps,
        max_doublings=max_doublings, device=device, seed=seed,
    )
    mask = saliency_mask(model, data.forget, mask_ratio, device, batch_size=batch_size)  # on theta_o
    recipe = SGDRecipe(epochs, batch_size, lr, momentum, weight_decay,
                       augment=data.train_recipe.augment, schedule="step", step_every=lr_step)
    # MaskedStep records theta_o when train_model builds it, before the first update.
    return train_model(
        model, images, labels, recipe, device=device, seed=seed, no_augment=no_augment,
        make_step=lambda optimizer: MaskedStep(model, optimizer, mask, freeze_masked=freeze_masked),
    )
