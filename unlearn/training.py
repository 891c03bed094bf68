"""Seeded, device-agnostic training and inference on in-memory tensors.

Data is small enough to keep as tensors, so batching is done with seeded index permutations
rather than DataLoader workers: the same seed gives the same batches on every machine.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearn import accel
from unlearn.config import TrainConfig

EpochCallback = Callable[[int, dict[str, float]], None]
StepFn = Callable[[torch.Tensor], None]  # applies one update for a mini-batch loss


def plain_step(optimizer: torch.optim.Optimizer) -> StepFn:
    """A step function: zero the gradients, back-propagate ``loss`` and take an optimiser step."""

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@dataclass(frozen=True)
class SGDRecipe:
    """Hyperparameters of one SGD training run (baseline, retrain or fine-tuning).

    Attributes:
        epochs: Passes over the data.
        batch_size: Largest batch per step (epochs are cut into balanced batches: ``balanced_split``).
        lr: Initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        augment: Random crop (pad 4) and horizontal flip; meant for 32x32 images.
        schedule: "cosine" (anneal to 0), "step" (x0.1 after every ``step_every`` epochs) or
            "constant".
        step_every: Epochs between decays for the "step" schedule.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    schedule: str = "cosine"
    step_every: int = 1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> SGDRecipe:
        """The baseline recipe from params.yaml's ``train`` section."""
        return cls(cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.augment)


@dataclass
class TrainingTrace:
    """Training-time artifacts of the last two epochs, for L-CODEC's finite-difference Hessian.

    Filled in place by :func:`train_model` when passed as ``trace`` (off by default). For each of
    the last two epochs (oldest first) it holds the average gradient of the mini-batch loss over
    that epoch's batches, weighted by batch size, i.e. the mean of the per-sample gradients,

        g_e = (1/n) Σ_b |b| · ∇_w mean_{i∈b} CE(f(x_i; w_b), y_i),

    taken at the parameters w_b current at each step (as in the official L-CODEC training loop,
    but with the batch-size weighting right), and a copy of the parameters at the end of the
    epoch. Gradients are of the cross-entropy only (weight decay is applied inside the optimiser
    and is not included). All tensors are detached CPU copies keyed by ``named_parameters`` names.

    Attributes:
        n: Training-set size.
        avg_grads: Average gradients of the recorded epochs, oldest first (at most two).
        params: Parameters at the end of the recorded epochs, oldest first (at most two).
    """

    n: int = 0
    avg_grads: list[dict[str, torch.Tensor]] = field(default_factory=list)
    params: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when two epochs were recorded (epochs T-2 and T-1)."""
        return len(self.avg_grads) >= 2 and len(self.params) >= 2


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch, and return a CPU generator for data order.

    Args:
        seed: The seed.

    Returns:
        A ``torch.Generator`` seeded with ``seed`` for shuffling and augmentation.
    """
    with GLOBAL_RNG_LOCK:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# Held while the process-wide RNGs are seeded and consumed together: models trained in parallel
# threads (the Prefect thread runner) would otherwise draw each other's initial weights.
GLOBAL_RNG_LOCK = threading.RLock()


def seeded_model(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model from ``factory`` right after seeding, atomically with respect to other threads.

    Equal to ``seed_everything(seed); factory()`` in a single thread.

    Args:
        factory: Builds a freshly initialised model.
        seed: The seed.

    Returns:
        The model.
    """
    with GLOBAL_RNG_LOCK:
        seed_everything(seed)
        return factory()


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in [0, 1] (N, C, H, W), on the CPU."""
    tensor = torch.as_tensor(images)
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


def draw_augmentation(
    batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of :func:`augment_batch` for one batch, in the order it consumes them.

    Args:
        batch_size: Images in the batch (B).
        generator: Source of randomness (CPU); advanced by exactly what one augmentation uses.

    Returns:
        (dy, dx, flip): crop offsets in [0, 8], each (B,) int64, and the flip mask (B,) bool, on the CPU.
    """
    dy = torch.randint(0, 9, (batch_size,), generator=generator)
    dx = torch.randint(0, 9, (batch_size,), generator=generator)
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return dy, dx, flip


def apply_augmentation(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop (zero padding 4) at offsets (dy, dx) and flip where ``flip``; deterministic given the draws.

    Args:
        x: Images (B, C, H, W).
        dy: Row offsets (B,).
        dx: Column offsets (B,).
        flip: Horizontal-flip mask (B,).

    Returns:
        Augmented images (B, C, H, W).
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))  # (B, C, H+8, W+8)
    # The offsets' own device builds the index grids: no extra host->device copy when the draws
    # already live on the GPU (the trainer sends an epoch's draws over in one copy).
    rows = (dy[:, None] + torch.arange(h, device=dy.device)[None]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=dx.device)[None]).to(x.device)  # (B, W)
    batch_index = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)  # (B, C, H, W), NCHW strides
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip.

    Args:
        x: Images (B, C, H, W).
        generator: Source of randomness (CPU).

    Returns:
        Augmented images (B, C, H, W).
    """
    return apply_augmentation(x, *draw_augmentation(len(x), generator))


# Bumped whenever the same recipe and seed train a different model, so that caches keyed on the recipe (the
# pipeline's exact retrains and reference models) do not serve models from before. 2: balanced batches.
TRAINER_VERSION = 2


def balanced_split(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Cut ``order`` into ``ceil(n / batch_size)`` batches whose sizes differ by at most one.

    Why not full batches and a remainder: the remainder can be a handful of samples (1,800 images in
    batches of 128 leave 8, as do 64, 256 and 32), and every epoch then takes one full-size learning-rate
    step on a gradient (and batch-norm batch statistics) of those few samples. On Fashion-MNIST a small
    CNN retrained on 1,800 images fitted its own training set to 89.6% that way and to 93.4% with 15
    batches of 120 (same seed, same steps); recomputing batch-norm statistics did not recover it, so it
    is the steps, not the running statistics. Every sample is still seen once per epoch, with as many
    steps as before, and no batch is larger than ``batch_size`` or (when n >= batch_size) smaller than
    about half of it. The papers' official code cuts full batches plus a remainder (DataLoader,
    drop_last=False); every method here trains on balanced batches instead.
    """
    n = len(order)
    if n == 0:
        return []
    return list(torch.tensor_split(order, (n + batch_size - 1) // batch_size))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's mini-batches: a fresh permutation of ``range(n)`` from ``generator``, cut into
    ``ceil(n / batch_size)`` batches of nearly equal size (:func:`balanced_split`).

    Args:
        n: Training-set size.
        batch_size: Largest batch (batch sizes differ by at most one).
        generator: Source of the permutation (CPU).

    Returns:
        Index tensors (int64), ``ceil(n / batch_size)`` of them.
    """
    order = torch.randperm(n, generator=generator)
    return balanced_split(order, batch_size)


def make_optimizer(
    model: nn.Module, recipe: SGDRecipe, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with the recipe's momentum/weight decay and a per-step learning-rate schedule."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    return optimizer, make_lr_scheduler(optimizer, recipe, steps_per_epoch)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, recipe: SGDRecipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's per-step learning-rate schedule (stepped once after every optimiser step).

    Args:
        optimizer: The optimiser whose learning rate is scheduled.
        recipe: Supplies ``schedule``, ``epochs`` and ``step_every``.
        steps_per_epoch: Optimiser steps per epoch.

    Returns:
        A ``LambdaLR`` scheduler.
    """
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, total) / total))
        )
    if recipe.schedule == "step":
        period = max(1, recipe.step_every * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 ** (step // period))
    if recipe.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {recipe.schedule!r}; valid: cosine, step, constant")


def _accumulate_gradients(model: nn.Module, grad_sum: dict[str, torch.Tensor], batch_size: int) -> None:
    """grad_sum[name] += batch_size · param.grad, into tensors owned by grad_sum (never aliases a .grad)."""
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        weighted = param.grad.detach() * batch_size  # a new tensor, not param.grad itself
        if name in grad_sum:
            grad_sum[name] += weighted
        else:
            grad_sum[name] = weighted


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: SGDRecipe,
    *,
    device: str | torch.device,
    seed: int,
    no_augment: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    trace: TrainingTrace | None = None,
    make_step: Callable[[torch.optim.Optimizer], StepFn] | None = None,
    mixed_precision: bool = True,
) -> nn.Module:
    """Minimise cross-entropy with SGD, in place.

    On CUDA the loop keeps the GPU busy (see :mod:`unlearn.accel`): the data lives on the device
    when it fits (pinned, non-blocking copies when it does not), an epoch's batch indices and
    augmentation draws go over in one copy, the forward pass runs under bf16 autocast with
    channels_last images, and the running loss and accuracy stay on the device until the end of
    the epoch, so no step waits for the host. On the CPU every one of these is a no-op and the
    arithmetic is the plain loop's, bit for bit (``tests/core/test_training_accel.py``).

    Args:
        model: The model to train (moved to ``device``).
        images: Float images in [0, 1], shape (N, C, H, W).
        labels: int64 targets, shape (N,).
        recipe: Hyperparameters.
        device: Where to compute.
        seed: Seed for data order and augmentation.
        no_augment: Optional bool mask (N,) of samples never augmented (AMUN's adversarial
            examples are used as found).
        on_epoch: Called after each epoch with (epoch, {"train_loss", "train_acc", "lr"}).
        trace: Optional :class:`TrainingTrace` filled in place with the average gradient and the
            parameters of the last two epochs (L-CODEC's training-time artifacts). Recording
            copies every gradient once per step, so it is off unless asked for.
        make_step: Optional ``optimizer -> step(loss)`` replacing the plain update (e.g. SalUn's
            masked step); cannot be combined with ``trace``.
        mixed_precision: bf16 autocast on CUDA (ignored on the CPU); False keeps fp32 there too.

    Returns:
        The trained model (the same object), in eval mode.

    Raises:
        ValueError: If there is nothing to train on (no samples, or images and labels differ in
            length), or a custom step is combined with a trace.
    """
    n = len(labels)
    if n == 0:
        raise ValueError("train_model: the training set is empty (0 samples); nothing to train on")
    if len(images) != n:
        raise ValueError(f"train_model: {len(images)} images but {n} labels")
    if recipe.batch_size < 1 or recipe.epochs < 0:
        raise ValueError(f"train_model: batch_size must be >= 1 and epochs >= 0, got {recipe.batch_size}, "
                         f"{recipe.epochs}")
    if make_step is not None and trace is not None:
        raise ValueError("train_model: a custom step cannot record a training trace")
    generator = seed_everything(seed)
    model.to(device)
    channels_last = accel.use_channels_last(device, images, model)  # CPU: always False, nothing runs
    accel.model_layout(model, channels_last).train()
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    optimizer, scheduler = make_optimizer(model, recipe, steps)
    custom_step = make_step(optimizer) if make_step is not None else None
    if trace is not None:
        trace.n, trace.avg_grads, trace.params = n, [], []
    x_source = accel.BatchSource(images, device)
    y_source = accel.BatchSource(labels, device, resident=x_source.resident)
    keep_source = (accel.BatchSource(no_augment, device, resident=x_source.resident)
                   if recipe.augment and no_augment is not None else None)
    for epoch in range(recipe.epochs):
        batches = epoch_batches(n, recipe.batch_size, generator)
        # Draw the epoch's augmentations up front, batch by batch: the generator is consumed in
        # exactly the order the per-step draws used, so the draws are the same.
        draws = [draw_augmentation(len(index), generator) for index in batches] if recipe.augment else []
        if x_source.resident:
            batches = accel.split_to_device(batches, device)
        if draws:
            dys, dxs, flips = (accel.split_to_device([d[i] for d in draws], device) for i in range(3))
        total_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed in float64, as before
        correct = torch.zeros((), dtype=torch.int64, device=device)
        recording = trace is not None and epoch >= recipe.epochs - 2
        grad_sum: dict[str, torch.Tensor] = {}
        for step, index in enumerate(batches):
            x = x_source.take(index)
            y = y_source.take(index)
            if recipe.augment:
                augmented = apply_augmentation(x, dys[step], dxs[step], flips[step])
                if keep_source is not None:
                    augmented = torch.where(keep_source.take(index)[:, None, None, None], x, augmented)
                x = augmented
            with accel.autocast(device, mixed_precision):
                logits = model(accel.to_layout(x, channels_last))
                loss = F.cross_entropy(logits, y)
            if custom_step is not None:
                custom_step(loss)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recording:
                    _accumulate_gradients(model, grad_sum, len(index))
                optimizer.step()
            scheduler.step()
            total_loss += loss.detach().double() * len(index)
            correct += (logits.argmax(1) == y).sum()
        if recording:
            trace.avg_grads.append({name: total.div(n).cpu() for name, total in grad_sum.items()})
            trace.params.append({name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()})
        if on_epoch is not None:
            on_epoch(
                epoch,
                {"train_loss": total_loss.item() / n, "train_acc": correct.item() / n,
                 "lr": optimizer.param_groups[0]["lr"]},
            )
    return accel.restore_layout(model, channels_last).eval()


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or infinity (a diverged run).

    Why: a diverged model still predicts (one class for everything); the stages that register or
    cache a trained model refuse it by this check instead of serving chance-level predictions.
    """
    return [name for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, *, device: str | torch.device, batch_size: int = 256, seed: int = 0
) -> int:
    """Recompute every batch-norm layer's running statistics from ``images`` (weights untouched).

    Why: a method that ends training at a constant learning rate (fine-tuning, RL, SalUn, AMUN,
    l1-sparse, NegGrad+) leaves running statistics that are an exponential average of the last few
    batches, taken while the weights were still moving; SSD dampens weights and keeps the original's
    statistics, which no longer match them either. In eval mode they no longer match the weights: on
    Fashion-MNIST/small_cnn the same NegGrad+ weights scored 66.9% test accuracy with the statistics
    they were left with and 78.7% with them recomputed on D_R, l1-sparse's 66.6% and 80.4%
    (benchmarks/results/bn_recalibration_fashion_mnist.md evaluates every method both ways). The
    original model's statistics were also averaged over batches holding D_F; recomputed on D_R they
    hold no forgotten sample.

    Only the batch-norm layers run in train mode; every other module stays in eval mode (a dropout
    before a batch norm would otherwise skew its statistics and draw from the global generator).
    The average is cumulative (every chunk counts the same) over chunks of ``batch_size`` to
    ``2 * batch_size - 1`` images (one chunk of all of them when there are fewer) visited in an order
    drawn from ``seed``, so no chunk is a lone sample and a class-sorted set does not lose its
    between-class variance. Each module's mode and each layer's momentum are restored; if a forward
    pass fails, the old statistics are put back.
    No gradient and no global random state: deterministic on the CPU.

    Args:
        model: The model, changed in place (its batch-norm buffers only); already on ``device``.
        images: Float images (N, C, H, W), e.g. D_R.
        device: Where to compute.
        batch_size: Smallest chunk (at least 2).
        seed: Seed of the visiting order.

    Returns:
        How many batch-norm layers were recomputed (0: none, or fewer than 2 images; nothing changed).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers or len(images) < 2:
        return 0
    modes = {module: module.training for module in model.modules()}
    saved = [(layer.momentum, {k: v.clone() for k, v in layer.named_buffers(recurse=False)}) for layer in layers]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chunks = torch.tensor_split(order, max(1, len(images) // batch_size))
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average
        layer.train()
    try:
        for index in chunks:
            model(accel.to_device_async(images[index], device))
    except BaseException:
        for layer, (_, buffers) in zip(layers, saved, strict=True):
            for name, value in buffers.items():
                getattr(layer, name).copy_(value)
        raise
    finally:
        for layer, (momentum, _) in zip(layers, saved, strict=True):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return len(layers)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, device: str | torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """Logits in eval mode, shape (N, K), on the CPU.

    Args:
        model: The model (its train/eval mode is restored afterwards).
        images: Float images (N, C, H, W).
        device: Where to compute.
        batch_size: Inference batch size.
    """
    was_training = model.training
    model.eval()
    # Outputs stay on the device and come back in one copy: no host sync per batch. Inference
    # stays fp32 (no autocast): attacks read small differences between confident logits.
    outputs = [model(accel.to_device_async(images[i : i + batch_size], device)).float()
               for i in range(0, len(images), batch_size)]
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs).cpu()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: str) -> float:
    """Top-1 accuracy in [0, 1] (NaN for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    logits = predict_logits(model, images, device=device)
    return (logits.argmax(1) == labels.cpu()).float().mean().item()
