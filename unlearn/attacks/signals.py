"""Per-sample signals every attack is built from, computed once from eval-mode logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Signals:
    """Per-sample membership signals of one model on one sample set, each shape (N,).

    Attributes:
        loss: Cross-entropy -log p_y.
        confidence: p_y, the softmax probability of the true class.
        logit_confidence: log(p_y / (1 - p_y)), computed stably (LiRA's scaling).
        entropy: Entropy of the softmax.
        modified_entropy: Song & Mittal's modified entropy.
        correct: 1.0 where the prediction is the true label.
    """

    loss: np.ndarray
    confidence: np.ndarray
    logit_confidence: np.ndarray
    entropy: np.ndarray
    modified_entropy: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)


def compute_signals(logits: torch.Tensor, labels: torch.Tensor) -> Signals:
    """Signals from logits, in float64 after subtracting the max logit.

    Args:
        logits: Eval-mode logits, shape (N, K).
        labels: True labels, shape (N,).

    Returns:
        The signals, as numpy arrays of shape (N,).
    """
    z = logits.double()
    z = z - z.max(dim=1, keepdim=True).values
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)  # (N, K)
    p = log_p.exp()
    y = labels.long().view(-1, 1)
    log_py = log_p.gather(1, y).squeeze(1)
    p_y = p.gather(1, y).squeeze(1)
    # log sum_{j != y} p_j, without cancellation: mask the true class out of the logsumexp.
    others = log_p.scatter(1, y, float("-inf"))
    log_rest = torch.logsumexp(others, dim=1)
    tiny = 1e-45
    entropy = -(p * log_p).sum(1)
    log_one_minus = torch.log((1.0 - p).clamp_min(tiny))
    wrong = torch.ones_like(p).scatter(1, y, 0.0)
    modified = -(1.0 - p_y) * log_py - (wrong * p * log_one_minus).sum(1)
    return Signals(
        loss=(-log_py).numpy(),
        confidence=p_y.numpy(),
        logit_confidence=(log_py - log_rest).numpy(),
        entropy=entropy.numpy(),
        modified_entropy=modified.numpy(),
        correct=(logits.argmax(1) == labels).double().numpy(),
    )
