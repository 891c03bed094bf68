"""Model architectures, chosen by ``model.name`` in params.yaml.

``model.name`` is one of:

- a registered name (``small_cnn``, ``resnet18``);
- ``torchvision:<builder>``: a torchvision classification builder (``torchvision:resnet18``,
  ``torchvision:mobilenet_v3_small``), randomly initialised, with ``num_classes`` set and its
  first convolution rebuilt for the data's channel count;
- ``package.module:factory``: the user's own model, an importable callable taking
  ``(in_channels, num_classes)`` and returning an ``nn.Module`` (the module must be importable,
  e.g. on ``PYTHONPATH``).

Models take float images in [0, 1], shape (B, C, H, W), and return logits (B, num_classes).
Inputs are not normalised outside the model: attacks such as AMUN's PGD and clamping to the
valid pixel range assume raw [0, 1] pixels (methods.md section 7). :func:`check_model` runs one
dry forward pass so a model that does not fit the data fails at start-up with a
:class:`~unlearn.config.ConfigError`, not in the middle of training.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

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


def _torchvision_factory(builder_name: str) -> ModelFactory:
    import torchvision.models

    available = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if builder_name not in available:
        raise ConfigError(f"model.name: {TORCHVISION_PREFIX}{builder_name} is not a torchvision classification "
                          f"model; valid: {', '.join(available)}")
    builder = torchvision.models.get_model_builder(builder_name)

    def factory(in_channels: int, num_classes: int) -> nn.Module:
        return adapt_input_channels(builder(weights=None, num_classes=num_classes), in_channels)

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
        ConfigError: If the builder or module does not exist, or the factory has the wrong signature.
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
        image_shape: Optional (C, H, W) of the data; when given the model is checked with one dry
            forward pass (:func:`check_forward`), which draws no random numbers.

    Returns:
        A freshly initialised model (on the CPU; move it with ``.to(device)``).

    Raises:
        ConfigError: If the name cannot be resolved, the factory does not return a module, or
            the model does not map images of ``image_shape`` to ``num_classes`` logits.
    """
    model = MODELS.get(name)(in_channels, num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    if image_shape is not None:
        check_forward(model, name, tuple(image_shape), num_classes)
    return model


def check_forward(model: nn.Module, name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """One forward pass of two blank images in eval mode; ConfigError unless it gives (2, num_classes).

    Eval mode and ``no_grad`` leave BatchNorm statistics and gradients untouched, and the global
    RNG state is restored, so checking a model does not change what training it later gives.
    """
    if len(image_shape) != 3:
        raise ConfigError(f"model.name: image shape must be (C, H, W), got {image_shape}")
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(torch.zeros((2, *image_shape), device=device))
    except Exception as exc:  # any failure of the user's forward pass is a configuration problem
        raise ConfigError(f"model.name: {name!r} cannot take images of shape {image_shape} (C, H, W): "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model.name: {name!r} returned {type(out).__name__} from forward, not a logits tensor")
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model.name: {name!r} maps images of shape {image_shape} to outputs of shape "
                          f"{tuple(out.shape[1:])} per image; expected ({num_classes},) logits, one per class")


def check_model(name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Start-up check of ``model.name`` against the data: build it and run one dry forward pass.

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
