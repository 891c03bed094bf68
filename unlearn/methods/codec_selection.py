"""Which parameter slices a removal request depends on: L-CODEC's probe and FOCI selection (steps 1-2).

Split out of ``unlearn.methods.lcodec`` (the Newton removal step lives there). The probe perturbs a
request's inputs and records each slice's mean activation and the loss; FOCI, built on Azadkia and
Chatterjee's conditional dependence coefficient CODEC, greedily picks the slices whose activations
the loss depends on given those already picked. ``lcodec``'s module docstring gives the formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

_PROBED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Slice:
    """One output channel (conv) or output unit (linear) of a layer.

    Attributes:
        layer: Module name in ``model.named_modules()``.
        index: Output channel / unit k; its parameters are weight[k, ...] and bias[k].
    """

    layer: str
    index: int


# --------------------------------------------------------------------------- modes


@contextmanager
def frozen_bn_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode for every module except BatchNorm layers (eval: running statistics).

    BatchNorm layers are found by type (``_BatchNorm`` covers 1d/2d/3d/Sync/Lazy), not by
    name as in the official code. Every module's mode is restored on exit.
    """
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


# --------------------------------------------------------------------------- probe


def probed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every trainable Conv2d / Linear layer, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, _PROBED) and module.weight.requires_grad]


def perturbation_probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_perturbations: int,
    std: float,
    probe_batch: int,
    generator: torch.Generator,
    device: str | torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[Slice]]:
    """Slice activations and losses under Gaussian input perturbations (step 1).

    Args:
        model: The model (run in eval mode; weights unchanged).
        x: The request's images, shape (m, C, H, W).
        y: Their labels, shape (m,).
        n_perturbations: M.
        std: σ_p of the input noise.
        probe_batch: Images per forward pass (perturbations are batched ⌊probe_batch/m⌋ at a time).
        generator: Seeded CPU generator for the noise.
        device: Where to compute.

    Returns:
        (activations (M, P) float32 on ``device``, losses (M,), slices: the P slices in column order).
    """
    layers = probed_layers(model)
    if not layers:
        raise ValueError("lcodec: the model has no trainable Conv2d or Linear layer to probe")
    slices = [Slice(name, k) for name, module in layers
              for k in range(module.out_channels if isinstance(module, nn.Conv2d) else module.out_features)]
    m = len(y)
    per_pass = max(1, probe_batch // m)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str, conv: bool) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            k = output.shape[0] // m
            if conv:  # (k·m, C, H, W) -> (k, C): mean over samples and positions
                captured[name] = output.detach().reshape(k, m, output.shape[1], -1).mean(dim=(1, 3))
            else:  # (k·m, ..., U) -> (k, U): mean over samples and any middle dimensions
                captured[name] = output.detach().reshape(k, m, -1, output.shape[-1]).mean(dim=(1, 2))
        return hook

    handles = [module.register_forward_hook(hook_for(name, isinstance(module, nn.Conv2d)))
               for name, module in layers]
    was_training = model.training
    model.eval()
    x, y = x.to(device), y.to(device)
    activations, losses = [], []
    try:
        with torch.no_grad():
            for start in range(0, n_perturbations, per_pass):
                k = min(per_pass, n_perturbations - start)
                noise = torch.randn((k, *x.shape), generator=generator).to(device)  # (k, m, C, H, W)
                batch = (x.unsqueeze(0) + std * noise).reshape(k * m, *x.shape[1:])
                logits = model(batch)  # (k·m, K)
                loss = F.cross_entropy(logits, y.repeat(k), reduction="none").reshape(k, m).mean(1)
                activations.append(torch.cat([captured[name] for name, _ in layers], dim=1).float())  # (k, P)
                losses.append(loss.float())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cat(activations), torch.cat(losses), slices


# --------------------------------------------------------------------------- CODEC / FOCI


def _ranks(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R_i = #{j: y_j ≤ y_i} and L_i = #{j: y_j ≥ y_i}, int64, shape (n,)."""
    ordered = torch.sort(y).values
    rank_le = torch.searchsorted(ordered, y, right=True)
    rank_ge = len(y) - torch.searchsorted(ordered, y, right=False)
    return rank_le, rank_ge


def _random_order(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A seeded random permutation of the n points.

    CODEC and FOCI are sums over points, so they do not depend on the order of the points except
    through nearest-neighbour ties. ``argmin`` returns the first of tied minima; after a uniformly
    random reordering, that is a uniformly random member of the tied set: random tie-breaking at
    the cost of one permutation.
    """
    return torch.randperm(n, generator=generator).to(device)


def _pairwise(points: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (n, n) via torch.cdist, +inf on the diagonal."""
    dist = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.fill_diagonal_(float("inf"))


def codec(
    y: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> float:
    """Azadkia & Chatterjee's CODEC coefficient T(Y; Z) or T(Y; Z | X).

    With R_i = #{j: Y_j ≤ Y_i}, L_i = #{j: Y_j ≥ Y_i}, N(i) the 1-NN of X_i among the X_j, and
    M(i) the 1-NN of Z_i (unconditional) or of (X_i, Z_i) (conditional), ties at random:

        T(Y; Z)     = Σ_i [n·min(R_i, R_M(i)) − L_i²] / Σ_i L_i (n − L_i)
        T(Y; Z | X) = Σ_i [min(R_i, R_M(i)) − min(R_i, R_N(i))] / Σ_i [R_i − min(R_i, R_N(i))]

    T → 1 when Y is a measurable function of Z (given X) and → 0 when Y ⊥ Z (given X).

    Args:
        y: Response, shape (n,).
        z: Predictors, shape (n,) or (n, d_z).
        x: Conditioning predictors, shape (n,) or (n, d_x), or None.
        generator: Seeded CPU generator for tie-breaking (seed 0 when None).

    Returns:
        The coefficient (NaN when the denominator is 0, e.g. Y constant).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = y.numel()
    order = _random_order(n, generator, y.device)
    y = y.flatten()[order].double()
    z = z.reshape(n, -1)[order].double()
    rank_le, rank_ge = _ranks(y)
    if x is None:
        near = _pairwise(z).argmin(dim=1)  # M(i), first of ties = random of ties
        numerator = (n * torch.minimum(rank_le, rank_le[near]) - rank_ge**2).sum()
        denominator = (rank_ge * (n - rank_ge)).sum()
    else:
        x = x.reshape(n, -1)[order].double()
        near_x = _pairwise(x).argmin(dim=1)  # N(i)
        near_xz = _pairwise(torch.cat([x, z], dim=1)).argmin(dim=1)  # M(i)
        base = torch.minimum(rank_le, rank_le[near_x])
        numerator = (torch.minimum(rank_le, rank_le[near_xz]) - base).sum()
        denominator = (rank_le - base).sum()
    return float(numerator) / float(denominator) if denominator != 0 else float("nan")


def foci(
    y: torch.Tensor,
    x: torch.Tensor,
    *,
    max_features: int,
    generator: torch.Generator,
    chunk_elements: int = 2**22,
) -> tuple[list[int], list[float]]:
    """FOCI: greedy forward selection of columns of ``x`` by CODEC (step 2).

    Columns are standardised (zero mean, unit variance; constant columns become 0). The first
    pick maximises T(Y; X_j); each next pick maximises T(Y; X_j | X_S). Selection stops when the
    best conditional value is ≤ 0, when no column is left, or at ``max_features``. For a fixed
    S the conditional numerators differ only in Σ_i min(R_i, R_M(i)), so candidates are ranked
    by that sum, computed from the squared distances of X_S plus the candidate's own term.

    Args:
        y: Response, shape (n,).
        x: Candidates, shape (n, p).
        max_features: Cap on |S| (≥ 1).
        generator: Seeded CPU generator for nearest-neighbour tie-breaking.
        chunk_elements: Candidates are scored ⌊chunk_elements/n²⌋ at a time (memory bound).

    Returns:
        (selected column indices in selection order, their CODEC values: T(Y; X_j) for the
        first, T(Y; X_j | X_S) for the others).
    """
    n, p = x.shape
    order = _random_order(n, generator, x.device)  # random tie-breaking (see _random_order)
    y = y.flatten()[order]
    xs = x[order].float()
    spread = xs.std(dim=0, unbiased=False)
    xs = torch.where(spread > 0, (xs - xs.mean(dim=0)) / spread.clamp_min(1e-30), torch.zeros_like(xs))
    rank_le, rank_ge = _ranks(y)
    base = torch.zeros((n, n), device=x.device).fill_diagonal_(float("inf"))  # squared distances in X_S
    per_chunk = max(1, chunk_elements // (n * n))
    remaining = list(range(p))
    selected: list[int] = []
    scores: list[float] = []
    current = 0  # Σ_i min(R_i, R_N(i)) for the current S
    uncond_denominator = int((rank_ge * (n - rank_ge)).sum())
    if uncond_denominator == 0:  # Y constant: nothing is informative; keep the first column
        return [0], [float("nan")]
    while remaining and len(selected) < max(1, max_features):
        sums = []
        for start in range(0, len(remaining), per_chunk):
            columns = xs[:, remaining[start : start + per_chunk]].T  # (J, n)
            dist = columns[:, :, None] - columns[:, None, :]  # (J, n, n)
            near = dist.square_().add_(base).argmin(dim=2)  # (J, n): 1-NN in (X_S, X_j)
            sums.append(torch.minimum(rank_le, rank_le[near]).sum(dim=1))
        totals = torch.cat(sums)  # (len(remaining),)
        best = int(totals.argmax())
        best_sum = int(totals[best])
        if not selected:
            score = (n * best_sum - int((rank_ge**2).sum())) / uncond_denominator
        else:
            denominator = int(rank_le.sum()) - current
            if denominator <= 0:  # X_S already orders Y perfectly
                break
            score = (best_sum - current) / denominator
            if score <= 0:
                break
        column = remaining.pop(best)
        selected.append(column)
        scores.append(score)
        current = best_sum
        base = base + (xs[:, column][:, None] - xs[:, column][None, :]) ** 2
    return selected, scores
