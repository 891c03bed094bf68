"""The training loop as landed before the GPU trainer (unlearn/training.py at 705f660), kept verbatim
but for one thing: it cuts epochs with today's ``unlearn.training.epoch_batches`` (balanced batches
since commit 0f892d9), so that the comparison isolates the loop the GPU work rewrote, not the batching.

Why it exists: ``benchmarks/device_check.py`` measures the new trainer's throughput against this
loop ("old vs new"), and ``tests/core/test_training_accel.py`` checks that on the CPU the new
trainer gives bit-identical weights and metrics to it. Only the plain path is kept (no
``trace`` and no custom ``make_step``; those are pinned by checksums in the test).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.training import EpochCallback, SGDRecipe, augment_batch, epoch_batches, make_optimizer, seed_everything


def legacy_train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: SGDRecipe,
    *,
    device: str | torch.device,
    seed: int,
    no_augment: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Today's loop: per-batch host->device copies, fp32, one ``.item()`` sync per step."""
    generator = seed_everything(seed)
    model.to(device).train()
    n = len(labels)
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    optimizer, scheduler = make_optimizer(model, recipe, steps)
    for epoch in range(recipe.epochs):
        batches = epoch_batches(n, recipe.batch_size, generator)
        total_loss, correct = 0.0, 0
        for index in batches:
            x = images[index].to(device)
            y = labels[index].to(device)
            if recipe.augment:
                augmented = augment_batch(x, generator)
                if no_augment is not None:
                    keep = no_augment[index].to(device)[:, None, None, None]
                    augmented = torch.where(keep, x, augmented)
                x = augmented
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
            correct += (logits.argmax(1) == y).sum().item()
        if on_epoch is not None:
            on_epoch(
                epoch,
                {"train_loss": total_loss / n, "train_acc": correct / n,
                 "lr": optimizer.param_groups[0]["lr"]},
            )
    return model.eval()
