"""L-CODEC's parameter block and its Newton step (split from :mod:`unlearn.methods.lcodec`, which re-exports them).

The block w_S is a set of output slices (rows of Conv2d/Linear weights, with their biases) chosen per request; here
is how it is read, written and differentiated, the finite-difference Hessians the paper's code uses on it, and
Sekhari's removal step. Pure PyTorch: no registry, no training loop.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.accel import exact_float32
from unlearn.methods.codec_selection import Slice, frozen_bn_train_mode
from unlearn.training import TrainingTrace

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the parameter block


def slice_pieces(model: nn.Module, slices: list[Slice]) -> list[tuple[str, int]]:
    """(parameter name, row k) for every block piece: weight[k] then bias[k] of each slice."""
    modules = dict(model.named_modules())
    pieces = []
    for s in slices:
        pieces.append((f"{s.layer}.weight", s.index))
        if getattr(modules[s.layer], "bias", None) is not None:
            pieces.append((f"{s.layer}.bias", s.index))
    return pieces


def slice_size(module: nn.Module) -> int:
    """Parameters in one output slice of a Conv2d/Linear: weight[k].numel() (+1 with a bias)."""
    return module.weight[0].numel() + (1 if module.bias is not None else 0)


def gather_block(tensors: dict[str, torch.Tensor], pieces: list[tuple[str, int]]) -> torch.Tensor:
    """Concatenate tensors[name][k].flatten() over the block pieces -> (|w_S|,)."""
    return torch.cat([tensors[name][k].reshape(-1) for name, k in pieces])


def add_to_block(model: nn.Module, pieces: list[tuple[str, int]], delta: torch.Tensor) -> None:
    """w_S += delta, in place. delta has shape (|w_S|,)."""
    params = dict(model.named_parameters())
    offset = 0
    with torch.no_grad():
        for name, k in pieces:
            row = params[name][k]
            size = row.numel()
            row += delta[offset : offset + size].reshape(row.shape).to(row.device, row.dtype)
            offset += size


def block_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pieces: list[tuple[str, int]], *, reduction: str
) -> torch.Tensor:
    """∇_{w_S} CE(f(x), y), train mode with BatchNorm frozen (step 4).

    Args:
        model: The model.
        x: Images (m, C, H, W) on the model's device.
        y: Labels (m,).
        pieces: The block (see ``slice_pieces``).
        reduction: "sum" (g_S = Σ_z g_z) or "mean" (ḡ_z).

    Returns:
        The block gradient (|w_S|,), float64 on the CPU.
    """
    params = dict(model.named_parameters())
    names = sorted({name for name, _ in pieces})
    with frozen_bn_train_mode(model):
        loss = F.cross_entropy(model(x), y, reduction=reduction)
        grads = torch.autograd.grad(loss, [params[name] for name in names])
    by_name = dict(zip(names, grads, strict=True))
    return gather_block(by_name, pieces).detach().double().cpu()


# --------------------------------------------------------------------------- Hessians and the step


def finite_difference_hessian(grad_a: torch.Tensor, grad_b: torch.Tensor, w_a: torch.Tensor,
                              w_b: torch.Tensor) -> torch.Tensor:
    """The rank-one FD Hessian (g_a − g_b)(g_a − g_b)ᵀ / ||w_a − w_b||₁, shape (d, d).

    This is L-CODEC's heuristic (methods.md section 3(f), issue #2): not a secant estimate, but
    what the paper's code computes. Returns zeros when the parameters did not move.
    """
    diff = (grad_a - grad_b).double()
    distance = float((w_a.double() - w_b.double()).abs().sum())
    if distance == 0.0:
        return torch.zeros((len(diff), len(diff)), dtype=torch.float64)
    return torch.outer(diff, diff) / distance


def sample_fd_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pieces: list[tuple[str, int]],
                      *, lr: float) -> torch.Tensor:
    """H_z from one SGD step of the block on a copy of the model (step 5).

    w'_S = w_S − lr·ḡ_z(w); H_z = (ḡ_z(w) − ḡ_z(w'))(…)ᵀ / ||w'_S − w_S||₁, where both the
    second gradient and w'_S are read from the stepped copy.

    Args:
        model: The model (unchanged).
        x: The request's images (m, C, H, W) on the model's device.
        y: Their labels (m,).
        pieces: The block.
        lr: Finite-difference step size (official: 1e-3).

    Returns:
        H_z, shape (|w_S|, |w_S|), float64 on the CPU.
    """
    stepped = copy.deepcopy(model)
    with exact_float32(x.device):  # the two gradients differ by about TF32's rounding (exact_float32)
        grad_before = block_gradient(model, x, y, pieces, reduction="mean")
        add_to_block(stepped, pieces, -lr * grad_before)
        grad_after = block_gradient(stepped, x, y, pieces, reduction="mean")
    w_before = gather_block(dict(model.named_parameters()), pieces).detach().cpu()
    w_after = gather_block(dict(stepped.named_parameters()), pieces).detach().cpu()
    return finite_difference_hessian(grad_before, grad_after, w_before, w_after)


def trace_hessian(trace: TrainingTrace, pieces: list[tuple[str, int]]) -> torch.Tensor:
    """H_old = (ḡ_{T−2} − ḡ_{T−1})(…)ᵀ / ||w_{T−2} − w_{T−1}||₁ on the block, float64 (d, d)."""
    grad_a, grad_b = (gather_block(g, pieces) for g in trace.avg_grads[-2:])
    w_a, w_b = (gather_block(w, pieces) for w in trace.params[-2:])
    return finite_difference_hessian(grad_a, grad_b, w_a, w_b)


def newton_step(
    grad_sum: torch.Tensor,
    hessian: torch.Tensor,
    *,
    n: int,
    m: int,
    l2_reg: float,
) -> torch.Tensor:
    """Sekhari's removal step Δw_S = (1/(n − m)) (H + λI)⁻¹ g_S (to be ADDED to w_S).

    Args:
        grad_sum: g_S = Σ_z ∇_{w_S} ℓ(w; z), shape (d,).
        hessian: H on the block, shape (d, d) (made symmetric here).
        n: Training-set size before this removal.
        m: Samples removed.
        l2_reg: λ > 0.

    Returns:
        Δw_S, shape (d,), float64 on the CPU.
    """
    h = hessian.double().cpu()
    h = 0.5 * (h + h.T)
    eye = torch.eye(len(h), dtype=torch.float64)
    if not torch.isfinite(h).all():
        # A finite difference over a vanishing parameter step overflows; keep only the damping.
        log.warning("lcodec: non-finite block Hessian; using (λI)⁻¹ for this step")
        h = torch.zeros_like(h)
    system = h + l2_reg * eye
    if torch.linalg.cholesky_ex(system).info != 0:
        try:
            values, vectors = torch.linalg.eigh(h)
            log.info("lcodec: H + λI not positive definite (min eigenvalue %.3g); using its PSD part",
                     float(values.min()) + l2_reg)
            system = (vectors * values.clamp_min(0.0)) @ vectors.T + l2_reg * eye
        except torch.linalg.LinAlgError:
            # eigh does not converge on extremely ill-conditioned H (seen on digits at 50% forget).
            log.warning("lcodec: eigendecomposition of the block Hessian failed; using (λI)⁻¹ for this step")
            system = l2_reg * eye
    return torch.linalg.solve(system, grad_sum.double().cpu()) / (n - m)
