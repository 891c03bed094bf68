"""Exact unlearning: retrain from scratch on the retain set with the original recipe."""

from __future__ import annotations

from torch import nn

from unlearn.methods.base import UnlearningData, register_method
from unlearn.training import seed_everything, train_model


@register_method("retrain", needs={"retain"})
def retrain(model: nn.Module, data: UnlearningData, *, device: str, seed: int) -> nn.Module:
    """Train a fresh model of the same architecture on D_R only (the gold standard).

    The input model is ignored except for its device: the result never saw D_F.

    Args:
        model: The original model (unused; retraining starts from a fresh initialisation).
        data: Needs ``retain``; uses ``train_recipe`` and ``model_factory``.
        device: Where to compute.
        seed: Seed for initialisation and data order.

    Returns:
        The retrained model.
    """
    seed_everything(seed)
    fresh = data.model_factory()
    retain = data.retain
    return train_model(fresh, retain.images, retain.labels, data.train_recipe, device=device, seed=seed)
