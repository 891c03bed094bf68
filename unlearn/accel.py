"""Small helpers that let the core's loops use a GPU well and leave CPU runs exactly as they were.

Why one module: the trainer, inference and the methods' inner loops all need the same few
decisions (is this CUDA, does the data fit on the device, autocast or not, which memory format),
and each must be a no-op on the CPU so that CPU runs stay deterministic and bit-identical to the
plain loops they replace (``tests/core/test_training_accel.py`` pins that).

On CUDA:

* data that fits is copied to the device once and mini-batches are gathered there, so a step
  does no host->device copy; otherwise each batch is gathered on the host into pinned memory and
  copied with ``non_blocking=True`` (the copy overlaps the previous step's kernels);
* matmuls and convolutions run under bf16 autocast (no loss scaling needed, unlike fp16);
* 4-D inputs and conv weights use channels_last, the layout cuDNN's tensor-core kernels want (only for
  conv nets whose forward accepts it: a model that ``.view``s an activation keeps the plain layout).

Nothing here synchronises the host with the device; callers keep running sums on the device and
read them once per epoch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import nn

# Share of the device's free memory that resident training data may take: the rest is left for
# the model, its activations and the optimiser state.
RESIDENT_FRACTION = 0.4

logger = logging.getLogger(__name__)
_CHANNELS_LAST_REFUSALS: set[str] = set()  # reasons already logged (accepts_channels_last)
_TF32_LOCK = threading.Lock()  # exact_float32's process-wide flags: nesting depth and what to restore
_TF32_STATE: dict = {"depth": 0}


def is_cuda(device: str | torch.device) -> bool:
    """True when ``device`` names a CUDA device ("cuda", "cuda:1", torch.device("cuda"))."""
    return torch.device(device).type == "cuda"


def fits_on_device(nbytes: int, device: str | torch.device, fraction: float = RESIDENT_FRACTION) -> bool:
    """Whether ``nbytes`` of data may live on ``device`` (always true on the CPU).

    Args:
        nbytes: Bytes to place.
        device: Target device.
        fraction: Largest share of the device's currently free memory to use.
    """
    if not is_cuda(device):
        return True
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return nbytes <= fraction * free


@contextlib.contextmanager
def autocast(device: str | torch.device, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast on CUDA; nothing at all on the CPU (so CPU arithmetic is unchanged)."""
    if enabled and is_cuda(device):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def exact_float32(device: str | torch.device) -> Iterator[None]:
    """Float32 convolutions and matmuls without TF32 on CUDA; nothing at all elsewhere.

    PyTorch runs CUDA convolutions in TF32 by default (a 10-bit mantissa: about 5e-4 relative error).
    L-CODEC's per-sample finite-difference Hessian subtracts two gradients taken one 1e-3 step apart,
    a difference of about that size, which TF32 would turn mostly into rounding.

    The flags are process-wide: the first of nested or concurrent (threads) sections turns TF32 off, the
    last restores what it found. PyTorch's newer ``fp32_precision`` settings are used where they exist
    (once one has been set, reading the legacy ``allow_tf32`` raises), the legacy flags elsewhere.
    """
    if not is_cuda(device):
        yield
        return
    with _TF32_LOCK:
        if _TF32_STATE["depth"] == 0:
            _TF32_STATE["saved"] = _tf32_settings()
            _set_tf32_settings(None)
        _TF32_STATE["depth"] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_STATE["depth"] -= 1
            if _TF32_STATE["depth"] == 0:
                _set_tf32_settings(_TF32_STATE.pop("saved"))


def _tf32_settings() -> tuple[str, object, object]:
    """The current convolution and matmul float32 settings, tagged with the API they came from."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(torch.backends.cuda.matmul,
                                                                         "fp32_precision"):
        return "precision", conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return "legacy", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set_tf32_settings(saved: tuple[str, object, object] | None) -> None:
    """Restore ``saved`` (from :func:`_tf32_settings`), or with None turn TF32 off in whichever API exists."""
    api = saved[0] if saved is not None else _tf32_settings()[0]
    if api == "precision":
        conv, matmul = ("ieee", "ieee") if saved is None else saved[1:]
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cuda.matmul.fp32_precision = matmul
    else:
        conv, matmul = (False, False) if saved is None else saved[1:]
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = matmul


def use_channels_last(device: str | torch.device, example: torch.Tensor, model: nn.Module) -> bool:
    """channels_last pays off for 4-D (image) inputs of convolutional models, on CUDA only.

    Args:
        device: Where the model runs.
        example: Input images (N, C, H, W) (at least one); other shapes never use channels_last.
        model: The model, already on ``device``. channels_last also needs a 2-D convolution in it
            and a forward pass that accepts it (:func:`accepts_channels_last`): a user's model may
            ``.view`` its input or a conv activation (``h.view(len(h), -1)``), which raises on a
            channels_last tensor, so such a model keeps the plain layout.
    """
    if not (is_cuda(device) and example.dim() == 4):
        return False
    if not any(isinstance(module, nn.Conv2d) for module in model.modules()):
        return False  # an MLP on images gains nothing and may .view its input
    return accepts_channels_last(model, example, device)


def accepts_channels_last(model: nn.Module, example: torch.Tensor, device: str | torch.device) -> bool:
    """Whether ``model`` runs a forward pass on channels_last inputs and weights (one dry pass on two samples).

    The pass runs in eval mode without gradients and inside a forked RNG, so BatchNorm statistics,
    gradients and random streams are untouched; the model's mode and contiguous layout are restored.
    """
    target = torch.device(device)
    was_training = model.training
    model_layout(model, True)
    try:
        with torch.random.fork_rng(devices=[target] if target.type == "cuda" else [],
                                   device_type=target.type), torch.no_grad():
            model.eval()
            model(to_layout(example[:2].to(target), True))
        return True
    except Exception as exc:  # e.g. RuntimeError "view size is not compatible with input tensor's size and stride"
        # whatever the reason, the plain layout is the one the model was checked with; said once per reason, so
        # that an out-of-memory or cuDNN error is seen rather than silently costing the faster layout
        reason = f"{type(model).__name__}: {type(exc).__name__}: {exc}"[:300]
        if reason not in _CHANNELS_LAST_REFUSALS:
            _CHANNELS_LAST_REFUSALS.add(reason)
            logger.warning("channels_last not used (the model keeps the plain layout): %s", reason)
        return False
    finally:
        restore_layout(model, True)
        model.train(was_training)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels_last memory format when asked (values unchanged), else ``x`` itself."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def model_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Convert the model's 4-D parameters and buffers to channels_last (in place) when asked."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def restore_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Undo :func:`model_layout`, so callers get the usual contiguous tensors back."""
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return model


def to_device_async(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Copy a host tensor to a CUDA device through pinned memory without blocking the host.

    On the CPU (or when the tensor is already there) the tensor itself is returned.
    """
    target = torch.device(device)
    if tensor.device == target or not is_cuda(target):
        return tensor.to(target)
    if tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(target, non_blocking=True)


def split_to_device(parts: Sequence[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Move several small 1-D tensors to ``device`` with one copy (then split them again there).

    On the CPU the parts are returned unchanged. Used for an epoch's batch indices and
    augmentation draws: one transfer per epoch instead of one or more per step.
    """
    if not is_cuda(device) or not parts:
        return list(parts)
    sizes = [len(p) for p in parts]
    return list(to_device_async(torch.cat(list(parts)), device).split(sizes))


class BatchSource:
    """Rows of a tensor served as device mini-batches: resident on the device when it fits.

    Args:
        data: The full tensor (N, ...), on the host or already on ``device``.
        device: Where batches are wanted.
        resident: Force (True) or forbid (False) the on-device copy; None decides with
            :func:`fits_on_device`.
    """

    def __init__(self, data: torch.Tensor, device: str | torch.device, resident: bool | None = None) -> None:
        self.device = torch.device(device)
        if resident is None:
            resident = on(data, device) or fits_on_device(data.numel() * data.element_size(), device)
        self.resident = resident
        self.data = data.to(self.device) if resident else data

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """``data[index]`` on the device. ``index`` may live on the host or on the device."""
        if self.resident:
            return self.data[index] if on(index, self.data.device) else self.data[to_device_async(index, self.device)]
        return to_device_async(self.data[index.to(self.data.device)], self.device)


def on(tensor: torch.Tensor, device: str | torch.device) -> bool:
    """Whether ``tensor`` already lives on ``device`` ("cuda" means the current CUDA device)."""
    target = torch.device(device)
    if tensor.device.type != target.type:
        return False
    if target.type == "cuda" and target.index is None:
        return tensor.device.index == torch.cuda.current_device()
    return tensor.device.index == target.index or target.type == "cpu"


def resident(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` on a CUDA ``device`` when it fits there (one copy, up front), else ``tensor`` itself.

    The methods' inner loops gather mini-batches from their sets many times per epoch; a resident
    copy turns each gather into a device-side index. On the CPU nothing is copied.
    """
    if not is_cuda(device) or on(tensor, device):
        return tensor
    if fits_on_device(tensor.numel() * tensor.element_size(), device):
        return tensor.to(device)
    return tensor


def take(data: torch.Tensor, index: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``data[index]`` on ``device`` without a blocking copy on CUDA.

    Resident data is indexed on the device (the index goes over through pinned memory); host data
    is gathered on the host and sent with :func:`to_device_async`. On the CPU this is
    ``data[index].to(device)``, exactly what the plain loops did.
    """
    if not is_cuda(device):
        return data[index].to(device)
    if on(data, device):
        return data[to_device_async(index, device)]
    return to_device_async(data[index.to(data.device)], device)


class FastForward:
    """Call a model as the trainer does: bf16 autocast and channels_last on CUDA, a plain call elsewhere.

    The methods' inner loops (AMUN's PGD, SCRUB's distillation, DLFD's feature synthesis,
    CovarNav's inversion, the baselines' steps) run many forward and backward passes outside
    :func:`unlearn.training.train_model`; this gives them the same GPU treatment. Logits come back
    in fp32 so losses, argmaxes and optimal-transport costs are computed at full precision. On the
    CPU ``forward(x)`` is ``model(x)``: same tensors, same arithmetic, bit for bit.

    Use as a context manager: on exit the model's parameters return to the contiguous layout.

    Args:
        model: The model, already on ``device``.
        device: Where it runs.
        example: A batch of inputs (N, C, H, W) of the kind it will see (decides channels_last).
        mixed_precision: bf16 autocast on CUDA; False keeps fp32 there.
    """

    def __init__(self, model: nn.Module, device: str | torch.device, example: torch.Tensor, *,
                 mixed_precision: bool = True) -> None:
        self.model = model
        self.device = device
        self.mixed = mixed_precision and is_cuda(device)
        self.channels_last = use_channels_last(device, example, model) if len(example) else False
        model_layout(model, self.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.mixed or self.channels_last):
            return self.model(x)
        with autocast(self.device, self.mixed):
            out = self.model(to_layout(x, self.channels_last))
        return out.float()

    def close(self) -> nn.Module:
        """Restore the contiguous layout; returns the model."""
        return restore_layout(self.model, self.channels_last)

    def __enter__(self) -> FastForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
