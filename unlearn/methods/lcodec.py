"""L-CODEC: deep unlearning on a Markov blanket of parameter slices.

Mehta, Pal, Singh, Ravi, "Deep Unlearning via Randomized Conditionally Independent Hessians",
CVPR 2022 (arXiv 2204.07655); official code vsingh-group/LCODEC-deep-unlearning (methods.md
section 3). The removal step is Sekhari et al.'s Newton update ("Remember What You Want to
Forget", NeurIPS 2021), restricted to a small block of parameters chosen by a conditional
dependence coefficient, so that the Hessian to invert is |w_S| x |w_S| instead of |w| x |w|.

What is implemented, for each removal request (``scrub_batch_size`` forget samples, m of them,
processed in the order given; the official default is one sample per request):

1. Input-perturbation probe. Every ``Conv2d`` and ``Linear`` layer is hooked. For m' = 1..M
   the request's samples are fed as x + σ_p·N(0, I) (σ_p = ``perturbation_std`` = 0.1) and we
   record a_m' ∈ R^P, each entry one slice's output (a conv output channel or a linear output
   unit) averaged over the m samples and the spatial positions, and the loss ℓ_m' (mean CE
   over the m samples). P = Σ conv out-channels + Σ linear out-units. Perturbations are
   drawn from a seeded CPU generator and batched ``probe_batch`` images per forward pass.
2. FOCI on CODEC (Azadkia & Chatterjee, "A simple measure of conditional dependence", Ann.
   Statist. 2021). With R_i = #{j: Y_j ≤ Y_i}, L_i = #{j: Y_j ≥ Y_i}, N(i) the 1-NN of X_i
   and M(i) the 1-NN of (X_i, Z_i) (ties broken uniformly at random, seeded):

       T(Y; Z)     = Σ_i [n·min(R_i, R_M(i)) − L_i²] / Σ_i L_i (n − L_i)
       T(Y; Z | X) = Σ_i [min(R_i, R_M(i)) − min(R_i, R_N(i))] / Σ_i [R_i − min(R_i, R_N(i))]

   Y = (ℓ_m'), the candidates are the P columns of A = (a_m'), standardised (as R's FOCI
   does by default). Greedy forward selection: first argmax_j T(Y; A_j), then repeatedly
   argmax_j T(Y; A_j | A_S); stop when the best conditional value is ≤ 0, or at
   ``max_slices``. ``selection="cheap"`` keeps only the top unconditional slice.
3. The block w_S: weight[k, ...] and bias[k] of every selected slice (layer, k), in selection
   order, while the block stays within ``max_params`` (a slice that does not fit is skipped).
4. g_S = Σ_{z in request} ∇_{w_S} CE(f(x_z), y_z), with the model in train mode but every
   BatchNorm layer (selected by type) in eval mode, so batch statistics do not enter.
5. Hessian on the block (``hessian``):

   - "fd" (paper/code default), from the training-time artifacts (avg gradients ḡ and
     parameters w of the last two epochs T−2, T−1, see ``TrainingTrace``):

         H_old = d dᵀ / ||w_{T−2,S} − w_{T−1,S}||₁,   d = ḡ_{T−2,S} − ḡ_{T−1,S}

     and the request's own finite difference from one SGD step of lr ``fd_lr`` (1e-3) on the
     block of a COPY of the model, the second gradient taken from the stepped copy:

         H_z = d_z d_zᵀ / ||w'_S − w_S||₁,   d_z = ḡ_z(w) − ḡ_z(w'),   w'_S = w_S − fd_lr·ḡ_z(w)

     (ḡ_z the mean gradient over the request). Sekhari's combination for m removals,
     H = (n·H_old − m·H_z)/(n − m); for m = 1 this is the code's (n·H_old − H_z)/(n − 1).
   - "fisher": H = (1/m) Σ_z g_z g_zᵀ, the empirical Fisher of the request's samples.

6. Newton removal step (note the sign: removal ADDS the scaled inverse-Hessian gradient):

       w_S ← w_S + (1/(n − m)) (H + λI)⁻¹ g_S,   λ = ``l2_reg``

   solved with ``torch.linalg.solve`` in float64 on the CPU (the block is at most
   ``max_params`` wide, and the CPU solve is the official default and device-independent).
7. Gaussian noise for (ε, δ)-forgetting, on the block only (``noise=True``):

       σ = (γ/ε)·sqrt(2 ln(1.25/δ)),   γ = 2·M_c·L²·m² / (n²·λ³),   M_c = 0.25, L = 1.

8. n ← n − m, and the next request starts from the updated model.

Choices where the sources are silent, or where the official code is wrong (documented, tested):

- Training-time artifacts. The baseline training does not record them by default; pass a
  ``TrainingTrace`` from ``train_model(..., trace=TrainingTrace())`` as
  ``UnlearningData.training_trace``. Without one, and with the retain set present, they are
  recomputed post hoc (methods.md section 7): two passes of plain SGD (lr ``trace_lr``, no
  momentum or weight decay, BatchNorm frozen) over D = D_R ∪ D_F on a copy of the model,
  recording the batch-size-weighted average gradient and the parameters after each pass. We
  use D_R ∪ D_F rather than D_R alone because Sekhari's combination subtracts the forget
  samples' own Hessian from n·H_old, which is only right if H_old averages over all n
  training samples. With neither trace nor retain set, "fd" falls back to "fisher" on the
  forget samples, with a logged warning.
- The trace (recorded or recomputed) belongs to the original model and is reused for every
  request, as in the official multi-removal loop.
- n is ``n_train`` if given, else ``training_trace.n``, else |D_F| + |D_R|; it is decreased by
  m after each request (the model then stands for training on the remaining samples).
- The sample finite difference steps only the block (so d_z approximates H_SS·Δw_S, the block
  Hessian), on a deep copy; the official code's bug (second gradient read from the original
  model, making the distance collapse to PairwiseDistance's 1e-6) is not reproduced.
- The training-trace average gradient is the mean of per-sample gradients (batches weighted
  by size) and is copied, unlike the official code (sum of batch means / n; aliased .grad).
- If H + λI is not positive definite (possible: −m·H_z is subtracted), H is replaced by its
  positive semi-definite part (negative eigenvalues set to 0) before the solve; logged.
- The probe runs the model in eval mode, so BatchNorm uses running statistics and the batched
  perturbations are exactly independent forward passes.
- The official safety check (revert a request if validation accuracy drops by more than
  ``val_gap_skip`` below the last accepted model's, and leave its samples to a retrain) needs a
  validation set, which methods do not receive. It runs on a fixed random subset of D_R instead
  (``check_samples``): training accuracy falls with the same damage. A reverted request is
  counted (``unlearning_info``: ``reverted_requests``); n is not decreased for it, since the
  model still stands for training on its samples, and the verification gate then judges what
  is left of them. Without D_R there is nothing to check on and every request is applied.
  (Before this check existed, λ = 0.2, selected on validation subsets for Fashion-MNIST's small
  CNN, ran away in one repetition of the benchmark table: the weights moved by 110%.)
- The noise bound assumes a convex, L-Lipschitz loss with M_c-Lipschitz Hessian; for a deep
  network it is a heuristic, and on small data (n of a few thousand) its σ is large unless λ
  is large: σ ∝ m²/(n²·λ³·ε). With λ large the Newton step ≈ g_S/((n−m)·λ) is small.
- Without the revert check, a too small λ can run away: on the embedded digits (n = 1347,
  one sample per request) λ = 0.01 is stable, while λ ≤ 0.005 (the official default is 0.001)
  lets one large step damage the model, after which the gradients, and so the steps, grow until
  it predicts a single class. The check reverts such a step; params.yaml should still keep λ
  clear of that, or most requests are reverted and nothing is forgotten.
- Certified and uncertified mode (``noise``). Only with ``noise=True`` (the default) is the
  run the paper's (ε, δ)-forgetting procedure. ``noise=False`` keeps the Newton step alone:
  no guarantee of any kind, and on a well-trained network the step g_S/((n−m)λ) on a block of
  a few thousand weights is tiny (Fashion-MNIST/ResNet-18 with m = 32: the weights moved by
  about 0.05%, the model was unchanged for every metric; issue #13). The run records which mode
  ran and how far the weights moved (``unlearning_info``: ``certified``, ``relative_change``,
  ``noise_std``), and warns in the uncertified mode, so a no-op is never mistaken for an
  unlearned model. The certified mode's price: σ ∝ m²/(n²λ³ε) forces one sample per request
  (m = 1) unless λ is large, and each request costs M probe passes plus FOCI, so removing
  |D_F| samples costs |D_F| requests; benchmarks/methods.py measures it (time per request
  and the extrapolated total next to a retrain).
- Cost per request: M forward passes, then FOCI at O(steps · P · M²) (exact 1-NN by brute force
  over all M² pairs, as torch.cdist would), the block gradients and one |w_S|³ solve. On a CPU
  M ≈ 200 keeps FOCI cheap; the official M = 1000 is 25x the FOCI work.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.methods.base import UnlearningData, record_info, register_method
from unlearn.methods.codec_selection import Slice, foci, frozen_bn_train_mode, perturbation_probe
from unlearn.methods.lcodec_block import (
    add_to_block,
    block_gradient,
    newton_step,
    sample_fd_hessian,
    slice_pieces,
    slice_size,
    trace_hessian,
)
from unlearn.training import TrainingTrace, accuracy, seed_everything

log = logging.getLogger(__name__)

HESSIAN_LIPSCHITZ = 0.25  # M_c in Sekhari's noise bound (official code's value)
LOSS_LIPSCHITZ = 1.0  # L in Sekhari's noise bound (official code's value)


@dataclass(frozen=True)
class RequestReport:
    """What one removal request did (for logs and tests).

    Attributes:
        slices: The slices whose parameters formed the block, in block order.
        block_size: |w_S|.
        step_norm: ||Newton step||₂ (before noise).
        noise_std: σ of the Gaussian noise added (0 when disabled).
        n: Training-set size the request was removed from.
    """

    slices: tuple[Slice, ...]
    block_size: int
    step_norm: float
    noise_std: float
    n: int


def noise_std(*, n: int, m: int, l2_reg: float, epsilon: float, delta: float) -> float:
    """σ = (γ/ε)·sqrt(2 ln(1.25/δ)), γ = 2·M_c·L²·m²/(n²·λ³) (Sekhari et al.; official constants)."""
    gamma = 2.0 * HESSIAN_LIPSCHITZ * LOSS_LIPSCHITZ**2 * m**2 / (n**2 * l2_reg**3)
    return gamma / epsilon * math.sqrt(2.0 * math.log(1.25 / delta))


# --------------------------------------------------------------------------- training-time artifacts


def recompute_trace(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    device: str | torch.device,
    seed: int,
) -> TrainingTrace:
    """Post-hoc stand-in for the last-two-epoch artifacts (methods.md section 7).

    Two passes of plain SGD (lr ``lr``, no momentum or weight decay, BatchNorm frozen) over the
    given data on a deep copy of ``model``; after each pass it records the batch-size-weighted
    mean gradient, (1/n) Σ_b |b|·∇ mean_b CE, and a copy of the parameters.

    Args:
        model: The trained model (unchanged).
        images: The training data D (N, C, H, W).
        labels: Labels (N,).
        lr: Step size of the passes.
        batch_size: Batch size.
        device: Where to compute.
        seed: Seed for the data order.

    Returns:
        A complete ``TrainingTrace`` (two epochs) with n = N.
    """
    work = copy.deepcopy(model).to(device)
    named = [(name, p) for name, p in work.named_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    trace = TrainingTrace(n=n)
    with frozen_bn_train_mode(work):
        for _ in range(2):
            sums = {name: torch.zeros_like(p) for name, p in named}
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                loss = F.cross_entropy(work(images[index].to(device)), labels[index].to(device))
                grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
                with torch.no_grad():
                    for (name, p), g in zip(named, grads, strict=True):
                        if g is not None:
                            sums[name] += g * len(index)
                            p -= lr * g
            trace.avg_grads.append({name: (total / n).cpu() for name, total in sums.items()})
            trace.params.append({name: p.detach().to("cpu", copy=True) for name, p in named})
    return trace


# --------------------------------------------------------------------------- one request


def choose_block(model: nn.Module, slices: list[Slice], max_params: int) -> list[Slice]:
    """Selected slices, in order, while Σ slice sizes ≤ max_params (the first always stays)."""
    modules = dict(model.named_modules())
    chosen: list[Slice] = []
    total = 0
    for s in slices:
        size = slice_size(modules[s.layer])
        if total + size <= max_params or not chosen:
            if size > max_params:
                log.warning("lcodec: slice %s[%d] has %d parameters > max_params=%d; kept alone",
                            s.layer, s.index, size, max_params)
                return [s]
            chosen.append(s)
            total += size
    return chosen


def scrub_request(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n: int,
    hessian: str,
    trace: TrainingTrace | None,
    generator: torch.Generator,
    device: str | torch.device,
    n_perturbations: int = 1000,
    perturbation_std: float = 0.1,
    probe_batch: int = 2048,
    selection: str = "foci",
    max_slices: int = 20,
    max_params: int = 2000,
    fd_lr: float = 1e-3,
    l2_reg: float = 0.01,
    noise: bool = True,
    epsilon: float = 0.1,
    delta: float = 0.01,
) -> RequestReport:
    """Remove one request (m samples) from ``model`` in place: steps 1-7 of the module docstring.

    Args:
        model: The model, modified in place (only the block's parameters change).
        x: The request's images (m, C, H, W).
        y: Their labels (m,).
        n: Training-set size before this removal (n > m).
        hessian: "fd" (needs ``trace``) or "fisher".
        trace: Training-time artifacts for "fd".
        generator: Seeded CPU generator (probe noise, tie-breaking, Gaussian noise).
        device: Where to compute.
        n_perturbations: M.
        perturbation_std: σ_p.
        probe_batch: Images per probe forward pass.
        selection: "foci" (greedy CODEC) or "cheap" (top-1 unconditional slice only).
        max_slices: Cap on the number of selected slices.
        max_params: Cap on |w_S|.
        fd_lr: SGD step of the sample finite difference.
        l2_reg: λ.
        noise: Add the (ε, δ) Gaussian noise to the block.
        epsilon: ε.
        delta: δ.

    Returns:
        A ``RequestReport``.
    """
    m = len(y)
    if n <= m:
        raise ValueError(f"lcodec: training-set size n={n} must exceed the removed count m={m}")
    x, y = x.to(device), y.to(device)
    activations, losses, slices = perturbation_probe(
        model, x, y, n_perturbations=n_perturbations, std=perturbation_std, probe_batch=probe_batch,
        generator=generator, device=device,
    )
    cap = 1 if selection == "cheap" else max_slices
    picked, _ = foci(losses, activations, max_features=cap, generator=generator)
    block = choose_block(model, [slices[j] for j in picked], max_params)
    pieces = slice_pieces(model, block)
    grad_sum = block_gradient(model, x, y, pieces, reduction="sum")  # g_S (d,)
    if hessian == "fd":
        h_old = trace_hessian(trace, pieces)
        h_z = sample_fd_hessian(model, x, y, pieces, lr=fd_lr)
        h = (n * h_old - m * h_z) / (n - m)  # Sekhari: Hessian on the n − m remaining samples
    else:
        per_sample = torch.stack([block_gradient(model, x[i : i + 1], y[i : i + 1], pieces, reduction="sum")
                                  for i in range(m)])  # (m, d)
        h = per_sample.T @ per_sample / m  # empirical Fisher of the request
    step = newton_step(grad_sum, h, n=n, m=m, l2_reg=l2_reg)  # (d,)
    sigma = noise_std(n=n, m=m, l2_reg=l2_reg, epsilon=epsilon, delta=delta) if noise else 0.0
    update = step
    if noise:
        update = step + sigma * torch.randn(len(step), generator=generator, dtype=torch.float64)  # N(0, σ²I)
    add_to_block(model, pieces, update)
    return RequestReport(tuple(block), len(step), float(step.norm()), sigma, n)


# --------------------------------------------------------------------------- the method


@register_method("lcodec", needs={"forget"})
def lcodec(
    model: nn.Module,
    data: UnlearningData,
    *,
    device: str,
    seed: int,
    scrub_batch_size: int = 1,
    n_perturbations: int = 1000,
    perturbation_std: float = 0.1,
    probe_batch: int = 2048,
    selection: str = "foci",
    max_slices: int = 20,
    max_params: int = 2000,
    hessian: str = "fd",
    fd_lr: float = 1e-3,
    l2_reg: float = 0.01,
    noise: bool = True,
    epsilon: float = 0.1,
    delta: float = 0.01,
    n_train: int | None = None,
    trace_lr: float = 1e-3,
    trace_batch_size: int | None = None,
    val_gap_skip: float | None = 0.05,
    check_samples: int = 1000,
) -> nn.Module:
    """Remove D_F request by request with L-CODEC's block Newton step (see module docstring).

    Args:
        model: A copy of the original model (modified in place).
        data: Needs ``forget``. ``training_trace`` (recorded) or ``retain`` (post-hoc trace)
            is used by ``hessian="fd"``; with neither, "fd" falls back to "fisher".
        device: Where to compute.
        seed: Seed for the probe noise, tie-breaking, the Gaussian noise and the post-hoc passes.
        scrub_batch_size: Forget samples per removal request (m); official default 1.
        n_perturbations: M, probe forward passes per request (official 1000).
        perturbation_std: σ_p of the probe's input noise (official 0.1).
        probe_batch: Images per probe forward pass.
        selection: "foci" or "cheap" (top-1 slice).
        max_slices: Cap on the number of slices FOCI selects.
        max_params: Cap on the block size |w_S| (the Hessian is |w_S|²).
        hessian: "fd" (finite differences, official default) or "fisher".
        fd_lr: SGD step of the sample finite difference (official 1e-3).
        l2_reg: λ, Hessian damping and noise scale (official 0.001; CIFAR script 0.01).
        noise: Certified mode: add the (ε, δ) Gaussian noise to the block (True, the paper).
            False runs the Newton step alone, without any guarantee (see "Certified and
            uncertified mode" in the module docstring); recorded and warned about.
        epsilon: ε (official 0.1).
        delta: δ (official 0.01).
        n_train: Original training-set size n; default ``training_trace.n`` or |D_F| + |D_R|.
        trace_lr: Step size of the post-hoc passes that stand in for a missing trace.
        trace_batch_size: Their batch size; default the original training recipe's.
        val_gap_skip: The official safety check: a request that lowers accuracy on the check samples by more
            than this (a fraction: 0.05 is 5 points) below the last accepted model's is reverted (official
            0.05); None applies every request.
        check_samples: Size of the fixed random subset of D_R the check measures accuracy on.

    Returns:
        The unlearned model.

    Raises:
        ValueError: On a bad option, or when n cannot be determined.
    """
    if hessian not in ("fd", "fisher"):
        raise ValueError(f"lcodec: hessian must be 'fd' or 'fisher', got {hessian!r}")
    if selection not in ("foci", "cheap"):
        raise ValueError(f"lcodec: selection must be 'foci' or 'cheap', got {selection!r}")
    if scrub_batch_size < 1 or n_perturbations < 2 or max_slices < 1 or max_params < 1:
        raise ValueError("lcodec: scrub_batch_size, max_slices, max_params ≥ 1 and n_perturbations ≥ 2")
    if l2_reg <= 0 or epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("lcodec: need l2_reg > 0, epsilon > 0 and 0 < delta < 1")
    if (val_gap_skip is not None and not 0 <= val_gap_skip < 1) or check_samples < 1:
        raise ValueError("lcodec: need 0 <= val_gap_skip < 1 (or None) and check_samples >= 1")
    seed_everything(seed)
    forget, retain = data.forget, data.retain
    has_retain = retain is not None and len(retain) > 0
    trace = data.training_trace
    n = n_train or (trace.n if trace is not None and trace.n else None)
    if n is None and has_retain:
        n = len(forget) + len(retain)
    if n is None:
        raise ValueError("lcodec: the original training-set size is unknown; pass n_train, "
                         "a training_trace or the retain set")
    mode = hessian
    if hessian == "fd" and (trace is None or not trace.complete):
        if has_retain:
            log.info("lcodec: no training trace; recomputing it post hoc with two passes over D_R ∪ D_F")
            trace = recompute_trace(
                model, torch.cat([retain.images, forget.images]), torch.cat([retain.labels, forget.labels]),
                lr=trace_lr, batch_size=trace_batch_size or data.train_recipe.batch_size, device=device, seed=seed,
            )
        else:
            log.warning("lcodec: no training trace and no retain set; using the Fisher approximation")
            mode = "fisher"
    check = None
    if val_gap_skip is not None and has_retain:
        # its own generator: the probe noise and the Gaussian noise draw exactly as without the check
        order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed + 1))[:check_samples]
        check = (retain.images[order], retain.labels[order])
    accepted = None if check is None else accuracy(model, *check, device=device)
    generator = torch.Generator().manual_seed(seed)
    before = torch.cat([p.detach().flatten().double().cpu() for p in model.parameters()])
    reports, reverted = [], 0
    for start in range(0, len(forget), scrub_batch_size):
        x = forget.images[start : start + scrub_batch_size]
        y = forget.labels[start : start + scrub_batch_size]
        kept = None if check is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
        report = scrub_request(
            model, x, y, n=n, hessian=mode, trace=trace, generator=generator, device=device,
            n_perturbations=n_perturbations, perturbation_std=perturbation_std, probe_batch=probe_batch,
            selection=selection, max_slices=max_slices, max_params=max_params, fd_lr=fd_lr, l2_reg=l2_reg,
            noise=noise, epsilon=epsilon, delta=delta,
        )
        reports.append(report)
        if check is not None:
            now = accuracy(model, *check, device=device)
            if not now >= accepted - val_gap_skip:  # NaN too: a diverged step is reverted
                model.load_state_dict(kept)
                reverted += 1
                continue
            accepted = now
        n -= len(y)
    if reverted:
        log.warning("lcodec: %d of %d requests reverted by the safety check (accuracy on %d retain samples fell "
                    "more than %.3g below the last accepted model's); their samples are left to the gate",
                    reverted, len(reports), len(check[0]), val_gap_skip)
    if reports:
        log.info("lcodec: %d requests, mean block %.0f params, mean step norm %.3g, noise σ %.3g (first)",
                 len(reports), sum(r.block_size for r in reports) / len(reports),
                 sum(r.step_norm for r in reports) / len(reports), reports[0].noise_std)
    after = torch.cat([p.detach().flatten().double().cpu() for p in model.parameters()])
    change = float((after - before).norm() / before.norm().clamp_min(1e-12))
    # certified only if every request's step, noise included, was kept: a reverted request's samples were not removed
    record_info(model, certified=bool(noise) and not reverted, requests=len(reports), reverted_requests=reverted,
                safety_check=check is not None, relative_change=change,
                noise_std=reports[0].noise_std if reports else 0.0,
                mean_block_size=sum(r.block_size for r in reports) / max(len(reports), 1))
    if not noise:
        log.warning("lcodec: uncertified mode (noise=False): Newton step only, no (epsilon, delta) "
                    "guarantee; the weights moved by %.3g%%", 100.0 * change)
    return model
