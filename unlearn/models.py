"""Model architectures, registered by name (``model.name`` in params.yaml).

Models take float images in [0, 1], shape (B, C, H, W), and return logits (B, num_classes).
Inputs are not normalised outside the model: attacks such as AMUN's PGD and clamping to the
valid pixel range assume raw [0, 1] pixels (methods.md section 7).
"""

from __future__ import annotations

import torch
from torch import nn

from unlearn.registry import Registry

MODELS: Registry = Registry("model architecture", modules=("unlearn.models",))


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


def build_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate a registered architecture.

    Args:
        name: Registry name (``small_cnn``, ``resnet18``).
        in_channels: Image channels.
        num_classes: Output classes.

    Returns:
        A freshly initialised model (on the CPU; move it with ``.to(device)``).
    """
    return MODELS.get(name)(in_channels, num_classes)
