"""Train many small models of one architecture at once, as a single batched model.

Membership-inference verification needs K reference models (K = 4..64) trained with the same
recipe as the deployed model, each on a different, equally sized subset of the data. Trained
one by one, such small models leave a GPU mostly idle. Here the K models' parameters and
buffers are stacked along a leading model axis (``torch.func.stack_module_state``), one
functional forward (``torch.func.functional_call``) is vmapped over that axis with every model
given its own mini-batch, and one ``torch.optim.SGD`` updates the stacked tensors. So each step
is a few large kernels rather than K rounds of small ones.

Equivalence with :func:`unlearn.training.train_model`. Model k is trained as
``seed_everything(seeds[k]); model = model_factory(); train_model(model, images[member_indices[k]],
labels[member_indices[k]], recipe, device=device, seed=seeds[k])`` would train it (this is how
``unlearn/methods/retrain.py`` and ``tasks/stage/train.py`` seed before they build a model):

* initial weights: the factory is called right after ``seed_everything(seeds[k])``;
* data order and augmentation: model k has its own generator, seeded as ``train_model`` seeds
  it, and draws from it in the same order through the helpers ``train_model`` itself uses
  (``epoch_batches``, ``draw_augmentation``, ``apply_augmentation``);
* loss: the sum over models of each model's mean cross-entropy, so the gradient of model k's
  slice is exactly its own mini-batch gradient;
* update: SGD with momentum and weight decay is elementwise, so one optimiser over the stacked
  tensors does what K optimisers would, and the learning-rate schedule is built by the same
  ``make_lr_scheduler``;
* BatchNorm: in train mode each model normalises with its own batch statistics and updates its
  own running statistics. torch's vmap rule for batch norm folds the model axis into the channel
  axis and updates the stacked running-mean/var buffers in place (checked in
  ``tests/core/test_batched.py``); ``num_batches_tracked`` is incremented in place likewise.

Batch order, augmentation draws, initial weights and learning rates are bitwise identical to
the sequential path. The arithmetic is the same but not always bitwise: a vmapped convolution
becomes a grouped convolution that may sum in another order, so parameters agree with
sequential training to float32 rounding, not bit for bit (about 1e-6 after two epochs on tiny
data; SGD compounds rounding, so the gap grows slowly with longer training). Models that draw
random numbers in their forward pass (dropout) are rejected by vmap rather than trained with
randomness that differs from the sequential path.

Precision. By default the batched model trains in float32 on every device, while ``train_model``
runs its forward pass under bf16 autocast on CUDA. Autocast cannot be relied on under vmap: with
torch 2.14 on the CPU, the convolutions, batch norms and linear layers of a vmapped
``functional_call`` stay float32 inside ``torch.autocast("cpu", torch.bfloat16)``, and on CUDA it
is unchecked here (no GPU was available) whether it applies and whether vmap's batch-norm rule
accepts bf16 activations with float32 statistics. So reference models trained here and a target
trained by ``train_model`` on CUDA share recipe, seeds and data and differ in rounding only.
``mixed_precision=True`` wraps the vmapped loss in the same autocast as ``train_model`` (CUDA only;
a no-op on the CPU); it stays off until a GPU run shows it applies and pays:
``benchmarks/device_check.py`` part 2 probes which dtype the vmapped forward computes in under
autocast and times the batched model both ways, against both one-by-one precisions.

This pays off on a GPU, where many small models together saturate the device. On a CPU with a
couple of cores the work is the same and so is the time: batched is about as fast as
sequential there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from unlearn import accel
from unlearn.training import (
    GLOBAL_RNG_LOCK,
    SGDRecipe,
    apply_augmentation,
    draw_augmentation,
    epoch_batches,
    make_lr_scheduler,
    seed_everything,
)


def train_models_batched(
    model_factory: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    member_indices: Sequence[np.ndarray | torch.Tensor | Sequence[int]],
    recipe: SGDRecipe,
    *,
    seeds: Sequence[int],
    device: str | torch.device,
    chunk_size: int | None = None,
    mixed_precision: bool = False,
) -> list[nn.Module]:
    """Train K models of one architecture, each on its own subset, as one batched model.

    Model k ends up as ``train_model`` would leave a model built by ``model_factory()`` right
    after ``seed_everything(seeds[k])`` and trained on ``images[member_indices[k]]`` with
    ``seed=seeds[k]`` (see the module docstring for what is equal and to which precision).

    Args:
        model_factory: Builds a freshly initialised model (on the CPU), drawing from torch's
            global RNG; called once per model.
        images: Float images (N, C, H, W).
        labels: int64 targets (N,).
        member_indices: K integer arrays of equal length n; entry k indexes model k's training
            subset in ``images`` (order matters as it does for ``images[member_indices[k]]``).
        recipe: Hyperparameters shared by all models (``augment`` and every schedule supported).
        seeds: K seeds, one per model, for initialisation, data order and augmentation.
        device: Where to compute.
        chunk_size: Train at most this many models at once (bounds device memory); ``None``
            trains all K together.
        mixed_precision: bf16 autocast around the vmapped forward on CUDA (ignored on the CPU);
            off by default (see "Precision" in the module docstring).

    Returns:
        K trained models, ordinary ``nn.Module`` objects of the factory's architecture, on the
        CPU, in eval mode, sharing no tensors.

    Raises:
        ValueError: No subsets, subsets of unequal length or empty, indices out of range,
            ``len(seeds) != K``, mismatched images/labels, or ``chunk_size < 1``.
    """
    members = [_as_index(index) for index in member_indices]
    k = len(members)
    if k == 0:
        raise ValueError("train_models_batched: member_indices is empty")
    if len(seeds) != k:
        raise ValueError(f"train_models_batched: {len(seeds)} seeds for {k} models")
    lengths = sorted({len(index) for index in members})
    if len(lengths) != 1:
        raise ValueError(f"train_models_batched: subsets must have equal length, got lengths {lengths}")
    if lengths[0] == 0:
        raise ValueError("train_models_batched: subsets are empty")
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(
            f"train_models_batched: images (N, C, H, W) and labels (N,) expected, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    stacked_members = torch.stack(members)  # (K, n)
    if stacked_members.min() < 0 or stacked_members.max() >= len(images):
        raise ValueError(f"train_models_batched: member indices must lie in [0, {len(images)})")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"train_models_batched: chunk_size must be >= 1, got {chunk_size}")

    # The whole (small) data set goes to the device once; batches are gathered there.
    images_device = images.to(device)
    labels_device = labels.to(device)
    step = k if chunk_size is None else chunk_size
    models: list[nn.Module] = []
    for start in range(0, k, step):
        models += _train_chunk(
            model_factory, images_device, labels_device, stacked_members[start : start + step],
            recipe, [int(seed) for seed in seeds[start : start + step]], device, mixed_precision,
        )
    return models


def _as_index(index: np.ndarray | torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Any integer array -> int64 CPU tensor (n,)."""
    if isinstance(index, torch.Tensor):
        return index.detach().to("cpu", torch.int64).reshape(-1)
    return torch.as_tensor(np.asarray(index, dtype=np.int64)).reshape(-1)


def _train_chunk(
    model_factory: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    members: torch.Tensor,
    recipe: SGDRecipe,
    seeds: list[int],
    device: str | torch.device,
    mixed_precision: bool,
) -> list[nn.Module]:
    """Train len(seeds) models together; ``members`` is (K, n), ``images``/``labels`` are on ``device``."""
    models, generators = [], []
    for seed in seeds:
        # Mirrors the callers of train_model: seed, then build; train_model re-seeds its generator
        # from the same seed, which is exactly what seed_everything returns.
        with GLOBAL_RNG_LOCK:  # atomic: another thread must not reseed between seeding and building
            generators.append(seed_everything(seed))
            models.append(model_factory().train())
    params, buffers = stack_module_state(models)  # name -> (K, ...) on the CPU
    # Move after stacking and re-mark as leaves, so the optimiser owns device tensors.
    params = {name: tensor.detach().to(device).requires_grad_() for name, tensor in params.items()}
    buffers = {name: tensor.to(device) for name, tensor in buffers.items()}
    # A weightless copy supplies only the forward code; functional_call swaps in each model's slice.
    skeleton = copy.deepcopy(models[0]).to("meta").train()

    def model_loss(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:  # x (B, C, H, W), y (B,) -> scalar mean cross-entropy of one model
        return F.cross_entropy(functional_call(skeleton, (p, b), (x,)), y)

    batched_loss = vmap(model_loss)  # (K, ...) params/buffers, (K, B, C, H, W), (K, B) -> (K,)

    n = members.shape[1]
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    optimizer = torch.optim.SGD(
        list(params.values()), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = make_lr_scheduler(optimizer, recipe, steps)
    for _ in range(recipe.epochs):
        # Each generator is drawn from in train_model's order: permutation first, then per-batch draws.
        per_model = [epoch_batches(n, recipe.batch_size, generator) for generator in generators]
        # The epoch's rows and augmentation draws are made on the host up front (each generator in the
        # same order as batch by batch) and sent to the device in one copy: no step waits for the host.
        shapes, parts = [], []
        for batch in range(steps):
            local = torch.stack([batches[batch] for batches in per_model])  # (K, B) positions in each subset
            shapes.append(local.shape)
            parts.append(torch.gather(members, 1, local).flatten())  # (K*B,) rows of images
            if recipe.augment:
                draws = [draw_augmentation(local.shape[1], generator) for generator in generators]
                parts += [torch.cat(p).to(torch.int64) for p in zip(*draws, strict=True)]  # dy, dx, flip (K*B,)
        parts = accel.split_to_device(parts, device)
        per_step = 4 if recipe.augment else 1
        for batch in range(steps):
            index = parts[per_step * batch].view(shapes[batch])  # (K, B)
            x = images[index]  # (K, B, C, H, W)
            y = labels[index]  # (K, B)
            if recipe.augment:
                dy, dx, flip = parts[per_step * batch + 1 : per_step * batch + 4]
                x = apply_augmentation(x.flatten(0, 1), dy, dx, flip.bool()).view_as(x)
            with accel.autocast(device, mixed_precision):  # off by default; a no-op on the CPU
                losses = batched_loss(params, buffers, x, y)  # (K,)
            optimizer.zero_grad(set_to_none=True)
            # d(sum)/d(loss_k) = 1, so model k's slice gets exactly its own gradient.
            losses.sum().backward()
            optimizer.step()
            scheduler.step()

    with torch.no_grad():
        for k, model in enumerate(models):
            for name, tensor in model.named_parameters():
                tensor.copy_(params[name][k])
            for name, tensor in model.named_buffers():
                tensor.copy_(buffers[name][k])
            model.eval()
    return models


def vmapped_forward_dtype(model_factory: Callable[[], nn.Module], example: torch.Tensor,
                          device: str | torch.device) -> torch.dtype:
    """The dtype two stacked models' vmapped forward returns under ``train_model``'s autocast on ``device``.

    bf16 means autocast reaches the operations inside vmap there (so ``mixed_precision=True`` does
    what it says); float32 means it does not (the case on the CPU, where autocast is off anyway).
    Builds two throwaway models (the global RNG is restored afterwards) and runs them in eval mode
    without gradients.
    """
    with torch.random.fork_rng():  # the factory draws initial weights; callers' random streams stay as they were
        models = [model_factory().to(device).eval() for _ in range(2)]
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")
    x = example[:2].to(device).unsqueeze(0).expand(2, *example[:2].shape)  # (2, B, C, H, W)
    with torch.no_grad(), accel.autocast(device, True):
        out = vmap(lambda p, b, xb: functional_call(skeleton, (p, b), (xb,)))(params, buffers, x)
    return out.dtype

