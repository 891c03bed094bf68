"""SalUn: saliency-masked Random Labels.

Fan, Liu, Zhang, Wong, Wei, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation", ICLR 2024 (code
``OPTML-Group/Unlearn-Saliency``).

Implemented (methods.md section 6, "SalUn"; stated here as equations):
1. Weight saliency: g = sum over forget batches of grad_theta [ -CE(f_{theta_o}(x), y) ],
   evaluated at theta_o (eval mode). The mask is m_S = 1[|g| >= gamma] with gamma chosen
   so that the global top ``mask_ratio`` fraction of all parameter entries is kept (paper and
   code default 0.5).
2. Unlearning: Random Labels (``random_label.py``: per epoch a pass over D_F with
   uniformly random labels, then a pass over D_R) with the update restricted to the salient
   weights, theta <- theta - lr * (m_S ⊙ grad).
3. Fix of ``Unlearn-Saliency#32/#33``: multiplying the gradient alone does not freeze the
   non-salient weights, because SGD's weight decay and momentum still move them. After every
   step the non-salient entries are reset to theta_o and their momentum is zeroed, so they stay
   exactly at theta_o (``freeze_masked=False`` reproduces the pre-fix behaviour).

Defaults: mask ratio 0.5, lr 0.013, 10 epochs, batch 256, SGD momentum 0.9, weight decay 5e-4,
constant learning rate (SalUn README example for CIFAR-10 10% forgetting).

Choices where the sources are silent or disagree (documented):
- Some versions of SalUn's ``generate_mask.py`` sort ascending without negating, which keeps the
  *least* salient entries; we follow the paper (top |g|), as do the other versions.
- SalUn's mask script also takes an optimiser step after each accumulated batch, so later
  gradients are taken at drifting weights; we take every gradient at theta_o, as the paper's definition of g states.
- The mask covers every parameter (BatchNorm affine included); BatchNorm running statistics are
  buffers, not weights, and keep updating in train mode as in the original code.
- Ties at the threshold are broken by a stable sort (deterministic).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import to_device_async
from unlearn.methods._common import check_positive_int, sgd, uses_retain
from unlearn.methods.base import TensorSet, UnlearningData, register_method
from unlearn.methods.random_label import random_label_epochs
from unlearn.training import seed_everything

Mask = dict[str, torch.Tensor]


def saliency_mask(
    model: nn.Module,
    forget: TensorSet,
    ratio: float,
    device: str | torch.device,
    batch_size: int = 256,
) -> Mask:
    """SalUn's hard weight-saliency mask (Fan et al. 2024).

    m_S = 1[|g| among the top ``ratio`` of all entries], g = sum over batches of grad -CE(theta_o; D_F).

    Args:
        model: The original model theta_o; its weights and ``.grad`` are not changed and its
            train/eval mode is restored afterwards. Gradients are taken in eval mode.
        forget: D_F with its true labels.
        ratio: Fraction of all parameter entries kept (1 = salient), in [0, 1].
        device: Where to compute.
        batch_size: Forget samples per gradient evaluation; the gradient of the batch-mean loss
            is summed over batches, as in SalUn's code.

    Returns:
        {parameter name: float mask of the parameter's shape on its device}, for every
        parameter that requires grad. Exactly ``int(ratio * total entries)`` entries are 1.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"saliency_mask: ratio must lie in [0, 1], got {ratio}")
    check_positive_int(batch_size=batch_size)
    was_training = model.training
    model.to(device).eval()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for _, p in named]
    for start in range(0, len(forget), batch_size):
        x = to_device_async(forget.images[start : start + batch_size], device)  # no blocking copy on CUDA
        y = to_device_async(forget.labels[start : start + batch_size], device)
        loss = -F.cross_entropy(model(x), y)  # the GA unlearning loss whose gradient defines saliency
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for acc, grad in zip(total, grads, strict=True):
            if grad is not None:
                acc.add_(grad)
    model.train(was_training)
    scores = torch.cat([g.abs().flatten() for g in total])  # (P,)
    keep = int(len(scores) * ratio)
    flat = torch.zeros_like(scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    flat[order[:keep]] = 1.0
    mask, offset = {}, 0
    for name, p in named:
        mask[name] = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    return mask


class MaskedStep:
    """An optimiser step that only moves the salient weights.

    ``step(loss)`` zeroes the gradients, back-propagates, multiplies each gradient by its mask,
    steps the optimiser and, with ``freeze_masked``, resets the non-salient entries to their
    values at construction (theta_o) and zeroes their momentum (Unlearn-Saliency #32/#33 fix).

    Args:
        model: The model being unlearned, at theta_o.
        optimizer: Its optimiser.
        mask: From :func:`saliency_mask`; parameters without a mask entry are not masked.
        freeze_masked: Apply the restore-and-zero-momentum fix.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, mask: Mask, *,
                 freeze_masked: bool = True) -> None:
        self.optimizer = optimizer
        self.freeze_masked = freeze_masked
        self.masked = [(p, mask[name].to(p.device, p.dtype)) for name, p in model.named_parameters()
                       if name in mask]
        self.theta_0 = [p.detach().clone() for p, _ in self.masked]

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p, m in self.masked:
            if p.grad is not None:
                p.grad.mul_(m)
        self.optimizer.step()
        if self.freeze_masked:
            with torch.no_grad():
                for (p, m), p0 in zip(self.masked, self.theta_0, strict=True):
                    p.copy_(torch.where(m.bool(), p, p0))
                    buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                    if buffer is not None:
                        buffer.mul_(m)


@register_method("salun", needs={"forget"}, needs_fn=uses_retain)
def salun(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    mask_ratio: float = 0.5,
    use_retain: bool = True,
    freeze_masked: bool = True,
    epochs: int = 10,
    lr: float = 0.013,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """SalUn (Fan et al., ICLR 2024): Random Labels with theta <- theta - lr * m_S ⊙ grad.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``forget``; also ``retain`` when ``use_retain``.
        device: Where to compute.
        seed: Seed for data order, random labels and augmentation.
        mask_ratio: Fraction of weights updated (SalUn default 0.5).
        use_retain: Include the pass over D_R in each RL epoch (False: only D_F).
        freeze_masked: Keep non-salient weights exactly at theta_o (the #32/#33 fix).
        epochs: RL epochs (10).
        lr: Constant learning rate (0.013).
        batch_size: Batch size for the mask and for RL (256).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.

    Returns:
        The unlearned model.
    """
    check_positive_int(epochs=epochs, batch_size=batch_size)
    generator = seed_everything(seed)
    mask = saliency_mask(model, data.forget, mask_ratio, device, batch_size=batch_size)
    model.to(device).train()
    step = MaskedStep(model, sgd(model, lr, momentum, weight_decay), mask, freeze_masked=freeze_masked)
    random_label_epochs(model, step, data, epochs=epochs, use_retain=use_retain, batch_size=batch_size,
                        exclude_true=False, device=device, generator=generator)
    return model.eval()
