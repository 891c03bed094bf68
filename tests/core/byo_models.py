"""A user's own models, referenced from params.yaml as ``tests.core.byo_models:<factory>`` (test fixtures)."""

from torch import nn


class TinyNet(nn.Module):
    """A user's model: conv + BatchNorm + linear head sized for 8x8 inputs (flattened, so the size matters)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Flatten())
        self.head = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_net(in_channels: int, num_classes: int) -> nn.Module:
    return TinyNet(in_channels, num_classes)


def ten_classes_always(in_channels: int, num_classes: int) -> nn.Module:
    """Ignores num_classes: a mistake the start-up check must catch."""
    return TinyNet(in_channels, 10)


def no_arguments() -> nn.Module:
    return TinyNet(1, 2)


def not_a_module(in_channels: int, num_classes: int):
    return "a string"


NOT_CALLABLE = 42
