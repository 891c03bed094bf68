"""AMUN: Adversarial Machine UNlearning.

Ebrahimpour-Boroojeny, Sundaram, Chandrasekaran, "Not All Wrong is Bad: Using Adversarial
Examples for Unlearning", ICML 2025 (PMLR 267:14950-14971; arXiv 2503.00917).

What is implemented (methods.md section 2):

1. Algorithm 1, the adversarial set D_A. For each forget sample (x, y): start at
   eps = eps_init and run untargeted L2 PGD (``pgd_steps`` = 50 steps, step size eps/10, no
   random start, gradient normalised by its L2 norm, projection onto the L2 ball, clamping to
   [0, 1]) maximising CE(f(x_adv), y); stop a sample as soon as its prediction flips. If it
   did not flip, double eps and retry from x. Add (x_adv, y_adv = argmax f(x_adv)). Samples
   the model already misclassifies keep x_adv = x with their predicted label.
2. eps_init (App. E.1): with ``eps_init="auto"``, run Algorithm 1 from a very small eps
   (``probe_eps``) on up to ``probe_size`` forget samples and take the smallest eps on the
   doubling grid within which at least 95% of them found an adversarial example.
3. Fine-tuning (section 4): minimise the mean CE over D_R + D_F + D_A shuffled together, D_F
   with its true labels and D_A with the adversarial labels; without D_R (``use_retain=False``)
   over D_F + D_A. SGD, momentum 0.9, weight decay 5e-4, lr decayed x0.1 every ``lr_step``
   epochs: the official code's ``LRsteps``, whose default in ``adversarial_unlearn.py`` is 40,
   so with its 10 epochs the learning rate is in effect constant. (The README's example
   command passes ``--LRsteps 1``, a decay after every epoch: about one effective epoch at
   lr 0.01. Neither is a tuned per-setting value; params.yaml's profiles hold those.)
   Adversarial examples are never augmented.

Choices where the sources are silent or the data differ (documented, tested):
- A sample that has not flipped after ``max_doublings`` doublings keeps its last x_adv with
  the model's prediction as label (which is then y itself; it adds nothing harmful).
- Defaults are the paper's (10 epochs, lr 0.01, batch 128); params.yaml sets the values used
  for the embedded 8x8 digits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearn import accel
from unlearn.methods._common import uses_retain
from unlearn.methods.base import TensorSet, UnlearningData, register_method
from unlearn.training import SGDRecipe, seed_everything, train_model


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) tensor over the image dimensions of ``like`` (B, C, H, W)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def pgd_l2(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted L2 PGD with per-sample radius and per-sample early exit.

    Each step attacks only the samples still classified as ``y`` (a gather of a shrinking
    subset): the CPU path. :func:`pgd_l2_masked` is the same attack without host synchronisation.

    Args:
        model: Attacked model (or its :class:`~unlearn.accel.FastForward`), in eval mode.
        x: Clean images in [0, 1], shape (B, C, H, W), on the model's device.
        y: True labels, shape (B,).
        eps: L2 radius per sample, shape (B,).
        steps: PGD iterations; step size is eps / 10.

    Returns:
        (x_adv (B, C, H, W), flipped (B,) bool: prediction differs from y).
    """
    alpha = _per_sample(eps / 10.0, x)
    radius = _per_sample(eps, x)
    x_adv = x.clone()
    active = torch.ones(len(y), dtype=torch.bool, device=x.device)  # not yet flipped
    # One forward per step serves both the early-exit check and the gradient; a final
    # forward checks the samples that used every step.
    for _ in range(steps):
        index = active.nonzero().flatten()
        if len(index) == 0:
            break
        x_step = x_adv[index].clone().requires_grad_(True)
        logits = model(x_step)
        with torch.no_grad():
            still = logits.argmax(1) == y[index]
        active[index[~still]] = False  # flipped: keep this x_adv, stop attacking it
        if not still.any():
            break
        loss = F.cross_entropy(logits[still], y[index][still], reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_step)
        with torch.no_grad():
            moving = index[still]
            grad = grad[still]
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            moved = x_adv[moving] + alpha[moving] * grad / _per_sample(norm, grad)
            delta = moved - x[moving]
            delta_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = torch.clamp(radius[moving].flatten() / delta_norm, max=1.0)
            x_adv[moving] = (x[moving] + delta * _per_sample(scale, delta)).clamp(0.0, 1.0)
    with torch.no_grad():
        flipped = model(x_adv).argmax(1) != y
    return x_adv.detach(), flipped


def pgd_l2_masked(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    active: torch.Tensor,
    *,
    check_every: int = 10,
    judge: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pgd_l2` on a fixed-shape batch with masks: the CUDA path.

    The index version gathers the still-unflipped samples every step, and each gather (and its
    ``any()``) waits for the device. Here every step runs on the whole batch; a sample that has
    flipped (or was never ``active``) gets no loss, no gradient and no move, so each active
    sample follows exactly the index version's trajectory. Whether anything is left to attack is
    read back once per ``check_every`` steps, so at most that many idle steps run at the end.

    The steps may run in bf16 (a FastForward on CUDA) while the caller decides in fp32 which
    samples are correctly classified and what their adversarial labels are. So that the two never
    disagree about the result: ``flipped`` is read with ``judge`` (the fp32 model), and the first
    step never stops a sample (the caller found every active sample correctly classified at x,
    in fp32; a bf16 pass that disagrees there would otherwise end the attack before it starts).
    With ``forward == judge`` and active samples correctly classified this is :func:`pgd_l2`.

    Args:
        forward: Attacked model (eval mode), typically a :class:`~unlearn.accel.FastForward`.
        x: Clean images in [0, 1] (B, C, H, W) on the device.
        y: True labels (B,).
        eps: L2 radius per sample (B,).
        steps: PGD iterations; step size eps / 10.
        active: (B,) bool, the samples to attack (correctly classified at x); the others come back
            as ``x``, not flipped.
        check_every: Steps between host reads of "is any sample still active".
        judge: What decides ``flipped`` at the end (default ``forward``).

    Returns:
        (x_adv (B, C, H, W), flipped (B,) bool: active and prediction differs from y).
    """
    alpha = _per_sample(eps / 10.0, x)
    radius = _per_sample(eps, x)
    x_adv = x.clone()
    attacking = active.clone()
    for step in range(steps):
        if step % check_every == 0 and not bool(attacking.any()):  # the only host read
            break
        x_step = x_adv.clone().requires_grad_(True)
        logits = forward(x_step)
        still = ((logits.detach().argmax(1) == y) | (step == 0)) & attacking
        attacking = still  # flipped samples keep this x_adv and stop
        loss = (F.cross_entropy(logits, y, reduction="none") * still).sum()
        (grad,) = torch.autograd.grad(loss, x_step)
        with torch.no_grad():
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            moved = x_adv + alpha * grad / _per_sample(norm, grad)
            delta = moved - x
            delta_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = torch.clamp(radius.flatten() / delta_norm, max=1.0)
            stepped = (x + delta * _per_sample(scale, delta)).clamp(0.0, 1.0)
            x_adv = torch.where(_per_sample(still, x), stepped, x_adv)
    with torch.no_grad():
        flipped = ((judge or forward)(x_adv).argmax(1) != y) & active
    return x_adv.detach(), flipped


def adversarial_set(
    model: nn.Module,
    forget: TensorSet,
    *,
    eps_init: float,
    pgd_steps: int,
    max_doublings: int,
    device: str | torch.device,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1: the closest-found adversarial example of every forget sample.

    Args:
        model: The original model (put in eval mode; weights unchanged).
        forget: D_F.
        eps_init: Starting L2 radius.
        pgd_steps: PGD iterations per radius.
        max_doublings: Give up doubling after this many attempts.
        device: Where to compute.
        batch_size: Samples attacked together.

    Returns:
        (x_adv (N, C, H, W) on the CPU, y_adv (N,), eps_used (N,)). eps_used is 0 for samples
        that were already misclassified.

    On CUDA the PGD steps run under bf16 autocast with channels_last (:class:`~unlearn.accel.
    FastForward`) and with masks instead of gathers (:func:`pgd_l2_masked`); which samples start
    misclassified, whether an attack flipped a sample, and the adversarial labels y_adv are read
    in fp32 either way, so every D_A entry that counts as flipped carries a label other than y. The
    CPU path is the plain loop.
    """
    model.eval()
    if len(forget) == 0:
        return forget.images.clone(), forget.labels.clone(), torch.zeros(0)
    cuda = accel.is_cuda(device)
    xs, ys, used = [], [], []
    with accel.FastForward(model, device, forget.images[:2]) as forward:
        for start in range(0, len(forget), batch_size):
            x = accel.to_device_async(forget.images[start : start + batch_size], device)
            y = accel.to_device_async(forget.labels[start : start + batch_size], device)
            x_adv = x.clone()
            eps_used = torch.zeros(len(y), device=device)
            with torch.no_grad():
                pending = model(x).argmax(1) == y  # misclassified samples are their own D_A entry
            eps = torch.full((len(y),), float(eps_init), device=device)
            for attempt in range(max_doublings + 1):
                if not pending.any():  # one host read per radius
                    break
                if cuda:
                    # bf16 steps, fp32 verdict: a sample bf16 calls flipped but fp32 does not stays
                    # pending and is attacked again at twice the radius; the last radius steps in fp32,
                    # so no sample is given up on because of bf16 rounding alone
                    steps_with = model if attempt == max_doublings else forward
                    found, flipped = pgd_l2_masked(steps_with, x, y, eps, pgd_steps, pending, judge=model)
                    x_adv = torch.where(_per_sample(pending, x), found, x_adv)
                    eps_used = torch.where(pending, eps, eps_used)
                    pending = pending & ~flipped
                else:
                    found, flipped = pgd_l2(forward, x[pending], y[pending], eps[pending], pgd_steps)
                    index = pending.nonzero().flatten()
                    x_adv[index] = found
                    eps_used[index] = eps[index]
                    pending[index[flipped]] = False
                eps = eps * 2.0
            with torch.no_grad():
                y_adv = model(x_adv).argmax(1)  # fp32: the label the fine-tuning set records
            xs.append(x_adv)
            ys.append(y_adv)
            used.append(eps_used)
    return torch.cat(xs).cpu(), torch.cat(ys).cpu(), torch.cat(used).cpu()


def choose_eps_init(
    model: nn.Module,
    forget: TensorSet,
    *,
    probe_eps: float,
    probe_size: int,
    coverage: float,
    pgd_steps: int,
    max_doublings: int,
    device: str | torch.device,
    seed: int,
) -> float:
    """App. E.1: the smallest eps on the doubling grid covering ``coverage`` of a probe sample.

    Args:
        model: The original model.
        forget: D_F; a seeded random subset of ``probe_size`` samples is probed.
        probe_eps: The very small starting radius.
        probe_size: Probe sample size (the paper uses about 100).
        coverage: Required share of probes with an adversarial example (paper: 0.95).
        pgd_steps: PGD iterations per radius.
        max_doublings: Largest number of doublings tried.
        device: Where to compute.
        seed: Seed for the probe subset.

    Returns:
        eps_init.
    """
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(forget), generator=generator)[:probe_size]
    probe = TensorSet(forget.images[pick], forget.labels[pick])
    _, _, eps_used = adversarial_set(
        model, probe, eps_init=probe_eps, pgd_steps=pgd_steps, max_doublings=max_doublings,
        device=device,
    )
    # Misclassified probes (eps 0) need no radius; they count as covered by any eps.
    grid = probe_eps * 2.0 ** np.arange(max_doublings + 1)
    values = eps_used.numpy()
    for eps in grid:
        if np.mean(values <= eps + 1e-12) >= coverage:
            return float(eps)
    return float(grid[-1])


def finetuning_set(
    model: nn.Module,
    data: UnlearningData,
    *,
    use_retain: bool,
    include_forget: bool,
    eps_init: float | str,
    probe_eps: float,
    probe_size: int,
    coverage: float,
    pgd_steps: int,
    max_doublings: int,
    device: str | torch.device,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AMUN's fine-tuning set D_A (+ D_F) (+ D_R), shared by ``amun`` and ``amun_salun``.

    Args: as :func:`amun` (``model`` is the original, put in eval mode for the attack).

    Returns:
        (images (N, C, H, W), labels (N,), no_augment (N,) bool: True for the D_A rows).
    """
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
        raise ValueError(f"amun: eps_init must be a positive number or 'auto', got {eps_init!r}")
    x_adv, y_adv, _ = adversarial_set(
        model, forget, eps_init=start_eps, pgd_steps=pgd_steps, max_doublings=max_doublings,
        device=device,
    )
    parts = [TensorSet(x_adv, y_adv)]
    if include_forget:
        parts.append(forget)
    if use_retain:
        parts.append(data.retain)
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    no_augment = torch.zeros(len(labels), dtype=torch.bool)
    no_augment[: len(y_adv)] = True  # D_A is used exactly as found
    return images, labels, no_augment


@register_method("amun", needs={"forget"}, needs_fn=uses_retain)
def amun(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
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
    """Unlearn D_F by fine-tuning on its nearest adversarial examples (see module docstring).

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``; also ``retain`` when ``use_retain``.
        device: Where to compute.
        seed: Seed for the eps probe and data order.
        use_retain: Fine-tune on D_R + D_F + D_A (True) or on D_F + D_A only (False).
        include_forget: Keep D_F (true labels) in the fine-tuning set; False gives the
            paper's "advonly" variant for very large forget sets.
        eps_init: Starting radius, or "auto" for the App. E.1 probe.
        probe_eps: Starting radius of the probe.
        probe_size: Forget samples probed.
        coverage: Share of probes that must succeed within eps_init.
        pgd_steps: PGD iterations per radius (PGD-50 in the paper).
        max_doublings: Cap on radius doublings per sample.
        epochs: Fine-tuning epochs.
        lr: Initial learning rate.
        lr_step: Decay the learning rate x0.1 every this many epochs (official default 40:
            constant over 10 epochs).
        batch_size: Fine-tuning batch size.
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
    recipe = SGDRecipe(epochs, batch_size, lr, momentum, weight_decay,
                       augment=data.train_recipe.augment, schedule="step", step_every=lr_step)
    return train_model(model, images, labels, recipe, device=device, seed=seed, no_augment=no_augment)
