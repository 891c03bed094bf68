"""Model architectures, chosen by ``model.name`` in params.yaml.

``model.name`` is one of:

- a registered name (``small_cnn``, ``tiny_cnn``, ``resnet18``);
- ``torchvision:<builder>``: a torchvision classification builder (``torchvision:resnet18``,
  ``torchvision:mobilenet_v3_small``), randomly initialised, with ``num_classes`` set and its
  first convolution rebuilt for the data's channel count;
- ``package.module:factory``: the user's own model, an importable callable taking
  ``(in_channels, num_classes)`` and returning an ``nn.Module`` (the module must be importable,
  e.g. on ``PYTHONPATH``).

Models take float images in [0, 1], shape (B, C, H, W), and return logits (B, num_classes).
Inputs are not normalised outside the model: attacks such as AMUN's PGD and clamping to the
valid pixel range assume raw [0, 1] pixels (methods.md section 7). :func:`check_model` runs a
dry forward pass in eval and in training mode so a model that does not fit the data, or that
training cannot use, fails at start-up with a :class:`~unlearn.config.ConfigError`, not in the
middle of training.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from unlearn.config import ConfigError
from unlearn.registry import Registry

ModelFactory = Callable[[int, int], nn.Module]
TORCHVISION_PREFIX = "torchvision:"


class ModelRegistry(Registry[ModelFactory]):
    """The registry of architectures, which also resolves import paths and torchvision builders.

    ``get("pkg.mod:factory")`` and ``get("torchvision:resnet18")`` return factories with the
    registered ones' signature ``(in_channels, num_classes) -> nn.Module``, so every caller of
    ``MODELS.get`` / :func:`build_model` accepts a user's model without knowing about it.
    """

    def get(self, name: str) -> ModelFactory:
        """The factory for ``name``; import paths are imported now (ConfigError if they fail)."""
        if ":" in name:
            return resolve_model(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            try:
                resolve_model(name)
            except ConfigError:
                return False
            return True
        return super().__contains__(name)


MODELS: ModelRegistry = ModelRegistry("model architecture", modules=("unlearn.models",))


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; sized for 8x8 digits (about 100k parameters).

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        width: Channels of the first block (doubled in each later block).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width),
            _conv_bn(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_bn(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem, no max-pool (as in AMUN/SalUn's CIFAR models).

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        layers, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, K)
        return self.head(self.pool(self.layers(self.stem(x))))


@MODELS.register("small_cnn")
def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """The default CNN for the embedded 8x8 digits."""
    return SmallCNN(in_channels, num_classes)


@MODELS.register("tiny_cnn")
def tiny_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """``small_cnn`` at half the width (a quarter of its parameters and about a third of its training time).

    Why: a smoke run of a new installation, and the test suite's end-to-end runs, check what the pipeline does, not
    how well a model learns; on 8x8 digits this one still reaches about 94% test accuracy in 4 epochs.
    """
    return SmallCNN(in_channels, num_classes, width=16)


@MODELS.register("resnet18")
def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-18 for 32x32 images."""
    return CifarResNet18(in_channels, num_classes)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = module_name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    return None


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Rebuild the first ``Conv2d`` for ``in_channels`` inputs (same kernel, stride, padding, bias).

    torchvision's builders assume RGB; grey images (Fashion-MNIST) need a 1-channel stem. The new
    convolution is freshly initialised, as the rest of the untrained model is.
    """
    found = _first_conv(model)
    if found is None or found[2].in_channels == in_channels:
        return model
    parent, attr, conv = found
    if conv.groups != 1:
        raise ConfigError(f"model.name: cannot adapt a grouped first convolution to {in_channels} input channels")
    replacement = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                            padding_mode=conv.padding_mode)
    setattr(parent, attr, replacement)
    return model


def _torchvision_options(builder: Callable[..., nn.Module]) -> dict[str, bool]:
    """Constructor options that make a torchvision model trainable by :func:`unlearn.training.train_model`.

    Models with auxiliary classifiers (GoogLeNet, Inception v3) return a namedtuple, not a logits
    tensor, in training mode unless built with ``aux_logits=False``; the same models warn unless
    ``init_weights`` is set. Read from the model class's constructor (the builder's return
    annotation), so any builder with these parameters is covered, not a list of names.
    """
    model_class = inspect.signature(builder).return_annotation
    if not isinstance(model_class, type):
        return {}
    try:
        parameters = inspect.signature(model_class.__init__).parameters
    except (TypeError, ValueError):
        return {}
    options = {}
    if "aux_logits" in parameters:
        options["aux_logits"] = False
    if "init_weights" in parameters and parameters["init_weights"].default is None:
        options["init_weights"] = True  # the default (None) also initialises, with a warning
    return options


def _torchvision_factory(builder_name: str) -> ModelFactory:
    import torchvision.models

    available = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if builder_name not in available:
        raise ConfigError(f"model.name: {TORCHVISION_PREFIX}{builder_name} is not a torchvision classification "
                          f"model; valid: {', '.join(available)}")
    builder = torchvision.models.get_model_builder(builder_name)
    options = _torchvision_options(builder)

    def factory(in_channels: int, num_classes: int) -> nn.Module:
        return adapt_input_channels(builder(weights=None, num_classes=num_classes, **options), in_channels)

    factory.__name__ = f"torchvision_{builder_name}"
    return factory


def _import_factory(path: str) -> ModelFactory:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"model.name: {path!r} is not of the form package.module:factory")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name: cannot import module {module_name!r} for {path!r} ({exc}); "
                          "is it installed or on PYTHONPATH?") from None
    except Exception as exc:  # the module exists but fails to run (SyntaxError, an error at import time)
        raise ConfigError(f"model.name: importing module {module_name!r} for {path!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(f"model.name: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ConfigError(f"model.name: {path!r} is not callable")
    try:
        inspect.signature(target).bind(1, 2)
    except TypeError:
        raise ConfigError(f"model.name: {path!r} must accept (in_channels, num_classes)") from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    return target


def resolve_model(name: str) -> ModelFactory:
    """The factory for a ``torchvision:<builder>`` or ``package.module:factory`` model name.

    Raises:
        ConfigError: If the builder or module does not exist, the module fails on import, or the
            factory has the wrong signature.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_factory(name[len(TORCHVISION_PREFIX):])
    return _import_factory(name)


def build_model(
    name: str, in_channels: int, num_classes: int, image_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Instantiate an architecture (registered name, ``torchvision:<builder>`` or import path).

    Args:
        name: ``model.name`` from params.yaml.
        in_channels: Image channels.
        num_classes: Output classes.
        image_shape: Optional (C, H, W) of the data; when given the model is checked with a dry
            forward pass in eval and in training mode (:func:`check_forward`), which leaves the model
            and the random state as they were.

    Returns:
        A freshly initialised model (on the CPU; move it with ``.to(device)``).

    Raises:
        ConfigError: If the name cannot be resolved, the factory raises or does not return a
            module, or the model does not map images of ``image_shape`` to ``num_classes`` logits
            in eval and training mode.
    """
    factory = MODELS.get(name)
    try:
        model = factory(in_channels, num_classes)
    except ConfigError:
        raise
    except Exception as exc:  # the user's factory: its failure is a problem with model.name, not a crash
        raise ConfigError(f"model.name: factory {name!r} failed for in_channels={in_channels}, "
                          f"num_classes={num_classes}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    if image_shape is not None:
        check_forward(model, name, tuple(image_shape), num_classes)
    return model


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's training flag and every buffer (BatchNorm statistics, counters) on exit.

    A training-mode forward updates BatchNorm's running statistics and ``num_batches_tracked``
    even under ``no_grad``; a check must not change what the model later trains or predicts.
    Buffers are restored by object and value, so a buffer reassigned in ``forward`` is put back too.
    """
    flags = [(module, module.training) for module in model.modules()]
    buffers = [(module, key, buffer, None if buffer is None else buffer.detach().clone())
               for module in model.modules() for key, buffer in module._buffers.items()]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, key, buffer, saved in buffers:
                module._buffers[key] = buffer
                if buffer is not None:
                    buffer.copy_(saved)
        for module, training in flags:
            module.training = training


def _forward(model: nn.Module, images: torch.Tensor, training: bool) -> object:
    """One forward pass under ``no_grad`` in the given mode, with the RNG forked (dropout draws)."""
    device = images.device
    devices = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), _untouched(model):
        model.train(training)
        return model(images)


def _check_output(out: object, name: str, image_shape: tuple[int, ...], num_classes: int, mode: str) -> None:
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model.name: {name!r} returned {type(out).__name__} from forward in {mode} mode, "
                          "not a logits tensor")
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model.name: {name!r} maps images of shape {image_shape} to outputs of shape "
                          f"{tuple(out.shape[1:])} per image in {mode} mode; expected ({num_classes},) logits, "
                          "one per class")
    if not out.dtype.is_floating_point:
        raise ConfigError(f"model.name: {name!r} returned {out.dtype} logits in {mode} mode; cross-entropy "
                          "needs floating-point logits")


def check_forward(model: nn.Module, name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Forward two blank images in eval and in training mode; ConfigError unless both give float (2, K) logits.

    Both modes are checked because training uses one and evaluation the other: a model can pass
    in eval mode and return a tuple (auxiliary heads) in training mode. The model must also have
    a trainable parameter, or the optimiser fails on an empty parameter list. Both passes run
    under ``no_grad`` with the RNG forked, and every module's mode and buffer (BatchNorm
    statistics) is restored, so checking a model does not change what training it later gives.
    """
    if len(image_shape) != 3:
        raise ConfigError(f"model.name: image shape must be (C, H, W), got {image_shape}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.name: {name!r} has no trainable parameters (none with requires_grad); "
                          "training would have nothing to update")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = torch.zeros((2, *image_shape), device=device)
    for training, mode in ((False, "eval"), (True, "training")):
        try:
            out = _forward(model, images, training)
        except Exception as exc:  # any failure of the user's forward pass is a configuration problem
            raise ConfigError(f"model.name: {name!r} cannot take images of shape {image_shape} (C, H, W) in "
                              f"{mode} mode: {type(exc).__name__}: {exc}") from None
        _check_output(out, name, image_shape, num_classes, mode)


def check_model(name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Start-up check of ``model.name`` against the data: build it and run a dry forward pass in each mode.

    Building draws initial weights, so it runs inside a forked RNG: the caller's seeded runs
    are unaffected.

    Raises:
        ConfigError: On any problem, naming it.
    """
    from unlearn.registry import UnknownNameError

    with torch.random.fork_rng(devices=[]):
        try:
            build_model(name, image_shape[0], num_classes, image_shape=image_shape)
        except UnknownNameError as exc:
            raise ConfigError(f"model.name: {exc}") from None
