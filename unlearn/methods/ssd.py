"""SSD: Selective Synaptic Dampening (retraining-free).

Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening", AAAI 2024 (code ``if-loops/selective-synaptic-dampening``, ``ssd.py``).

Implemented (methods.md section 6, "SSD"; stated here as equations):
1. Importances (diagonal Fisher information): for X in {D_F, D}, with D = D_R ∪ D_F,
       []_X = (1 / #batches) * sum over batches of X of (grad_theta CE(batch))^2   (entry-wise),
   computed in eval mode, in a fixed order (D_R then D_F for D, as the code concatenates them).
2. Selection: the entries with []_{D_F} > alpha * []_D.
3. Dampening: on the selected entries theta <- theta * beta with
       beta = min( (lambda * []_D / []_{D_F})^exponent, lower_bound ),
   so weights are only ever shrunk (lower_bound = 1, exponent = 1 in the code).
No training; only D_F and D_R (for D) are used.

Defaults: lambda (``dampening_constant``) = 1, alpha (``selection_weighting``) = 10 (ResNet-18 on
CIFAR; the paper uses the same for random, full-class and sub-class forgetting), batch 128 (the
code's loaders). The batch size matters: the importance is the mean of squared *batch-mean*
gradients, which shrinks with larger batches; keep it fixed when comparing. Only parameters are
dampened; BatchNorm running statistics are left as they are.

Batch sizes (a deviation from the code, for small forget sets). []_X is a mean of squared
*batch-mean* gradients, so a batch of b samples contributes about |E grad|^2 + sigma^2 / b: the
smaller the batch, the larger its importance, for every weight whose gradient is mostly noise.
The official loop keeps a trailing partial batch. With the paper's forget sets (thousands of
samples) that batch is one of ~80 and does not matter; with |D_F| = 135 and batch 128 it is a
batch of 7 carrying half of []_{D_F}, which then reads about 9x []_D for every noise-dominated
weight. With alpha = 5 that dampened 27% of the weights in one digits repetition and left test
accuracy near chance (benchmarks/results/methods_digits.md before this fix). Here both importances
use the same batch size, min(``batch_size``, |D_F|), and drop a trailing partial batch, so []_{D_F}
and []_D have the same noise level; with large forget sets this is the official estimator.

Random (not class-wise) forgetting: D_F is then a random sample of D, so []_{D_F} matches []_D
up to sampling noise and alpha = 10 can select nothing at all: the model comes back unchanged
(seen on Fashion-MNIST/ResNet-18, issue #13). That is the method, not a bug in it; the paper
tunes alpha per setting (ViT: 5 or 25) and so do params.yaml's profiles (selected on a
validation split by ``benchmarks/select_hparams.py``). The run records how many entries were
dampened (``unlearning_info["dampened"]``) and warns when none was.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import to_device_async
from unlearn.methods._common import check_positive_int
from unlearn.methods.base import TensorSet, UnlearningData, record_info, register_method
from unlearn.training import seed_everything

log = logging.getLogger(__name__)

Importance = dict[str, torch.Tensor]


def fisher_importance(
    model: nn.Module, subsets: list[TensorSet], *, batch_size: int, device: str | torch.device,
    drop_last: bool = False,
) -> Importance:
    """Diagonal Fisher importance (Foster et al. 2024): mean over batches of grad^2.

    Args:
        model: The model (eval mode is used; its mode is restored; ``.grad`` is untouched).
        subsets: Sets concatenated in this order and read as one sequence in fixed batches
            (e.g. [D_R, D_F] for D, so a batch may straddle the two).
        batch_size: Samples per gradient.
        device: Where to compute.
        drop_last: Skip a trailing batch smaller than ``batch_size`` when there is a full one.

    Returns:
        {parameter name: importance of the parameter's shape}.
    """
    images = torch.cat([s.images for s in subsets])
    labels = torch.cat([s.labels for s in subsets])
    was_training = model.training
    model.eval()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    importance = {name: torch.zeros_like(p) for name, p in named}
    batches = 0
    stop = len(labels) - len(labels) % batch_size if drop_last and len(labels) >= batch_size else len(labels)
    for start in range(0, stop, batch_size):
        x = to_device_async(images[start : start + batch_size], device)  # no blocking copy on CUDA
        y = to_device_async(labels[start : start + batch_size], device)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), [p for _, p in named], allow_unused=True)
        for (name, _), grad in zip(named, grads, strict=True):
            if grad is not None:
                importance[name].add_(grad.pow(2))
        batches += 1
    model.train(was_training)
    for value in importance.values():
        value.div_(max(batches, 1))
    return importance


@torch.no_grad()
def dampen(
    model: nn.Module,
    importance_full: Importance,
    importance_forget: Importance,
    *,
    selection_weighting: float,
    dampening_constant: float,
    exponent: float = 1.0,
    lower_bound: float = 1.0,
) -> int:
    """Selective dampening (Foster et al. 2024), in place.

    theta_i <- theta_i * min(lambda * []_D,i / []_{D_F},i, 1) wherever []_{D_F},i > alpha * []_D,i.

    Args:
        model: The model to modify.
        importance_full: []_D.
        importance_forget: []_{D_F}.
        selection_weighting: alpha; entries with []_{D_F} > alpha * []_D are selected.
        dampening_constant: lambda in beta = (lambda * []_D / []_{D_F})^exponent.
        exponent: Exponent of the ratio (1).
        lower_bound: Upper cap on beta (1: never grow a weight).

    Returns:
        The number of parameter entries dampened.
    """
    changed = 0
    for name, p in model.named_parameters():
        if name not in importance_full:
            continue
        full, forget = importance_full[name], importance_forget[name]
        selected = forget > selection_weighting * full  # implies forget > 0 when alpha * full >= 0
        if not selected.any():
            continue
        beta = (dampening_constant * full[selected] / forget[selected]).pow(exponent).clamp(max=lower_bound)
        p[selected] = p[selected] * beta
        changed += int(selected.sum())
    return changed


@register_method("ssd", needs={"forget", "retain"})
def ssd(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    selection_weighting: float = 10.0,
    dampening_constant: float = 1.0,
    exponent: float = 1.0,
    lower_bound: float = 1.0,
    batch_size: int = 128,
) -> nn.Module:
    """Selective Synaptic Dampening (Foster et al., AAAI 2024): Fisher importances, selection, dampening.

    Args:
        model: A copy of the original model (modified in place).
        data: Needs ``forget`` and ``retain`` (D = D_R ∪ D_F for the full importance).
        device: Where to compute.
        seed: Unused by the algorithm (deterministic); seeds global state for uniformity.
        selection_weighting: alpha (10).
        dampening_constant: lambda (1).
        exponent: Exponent of the dampening ratio (1).
        lower_bound: Cap of the dampening factor (1).
        batch_size: Batch size of the importance estimates (128).

    Returns:
        The dampened model.
    """
    check_positive_int(batch_size=batch_size)
    if selection_weighting < 0 or dampening_constant < 0:
        raise ValueError("ssd: selection_weighting and dampening_constant must be >= 0")
    seed_everything(seed)
    model.to(device)
    # One batch size for both estimates, no trailing partial batch (see "Batch sizes" above).
    size = min(batch_size, len(data.forget))
    importance_forget = fisher_importance(model, [data.forget], batch_size=size, device=device, drop_last=True)
    importance_full = fisher_importance(model, [data.retain, data.forget], batch_size=size, device=device,
                                        drop_last=True)
    changed = dampen(model, importance_full, importance_forget, selection_weighting=selection_weighting,
                     dampening_constant=dampening_constant, exponent=exponent, lower_bound=lower_bound)
    total = sum(p.numel() for p in model.parameters())
    record_info(model, dampened=changed, dampened_fraction=changed / max(total, 1))
    if changed == 0:
        # Random forgetting: D_F is a random sample of D, so []_{D_F} ~ []_D up to noise and
        # alpha = 10 (the paper's value for class and sub-class forgetting) selects nothing.
        log.warning("ssd: no parameter has []_{D_F} > %.3g * []_D; the model is returned unchanged "
                    "(lower selection_weighting for random forgetting)", selection_weighting)
    return model.eval()
