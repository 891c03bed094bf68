"""Fine-tuning (FT; Warnecke et al.): continue training on the retain set only.

Forgetting comes from catastrophic forgetting. Defaults follow Unlearn-Sparse/SalUn's FT
(10 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256; methods.md section 6),
with their **constant** learning rate: their MultiStepLR milestones (91, 136) are never reached
in 10 epochs. (A cosine anneal, used here before, spends the last epochs at a learning rate
near 0 and so fine-tunes less than the baseline it is named after.)
"""

from __future__ import annotations

from torch import nn

from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import SGDRecipe, train_model


@register_method("finetune", needs={"retain"})
def finetune(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Fine-tune ``model`` on D_R.

    Args:
        model: A copy of the original model (trained in place).
        data: Needs ``retain``.
        device: Where to compute.
        seed: Seed for data order.
        epochs: Passes over D_R.
        lr: Constant learning rate.
        batch_size: Batch size.
        momentum: SGD momentum.
        weight_decay: L2 penalty.

    Returns:
        The fine-tuned model.
    """
    recipe = SGDRecipe(epochs, batch_size, lr, momentum, weight_decay,
                       augment=data.train_recipe.augment, schedule="constant")
    retain = data.retain
    return train_model(model, retain.images, retain.labels, recipe, device=device, seed=seed)
