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


def raises_value(in_channels: int, num_classes: int) -> nn.Module:
    """A factory that fails: a user's mistake the start-up check must name, not crash on."""
    raise ValueError("bad width")


class _TupleInTraining(TinyNet):
    """Returns (logits, features) in training mode, like an auxiliary head: fine in eval mode only."""

    def forward(self, x):
        features = self.features(x)
        logits = self.head(features)
        return (logits, features) if self.training else logits


def tuple_in_training(in_channels: int, num_classes: int) -> nn.Module:
    return _TupleInTraining(in_channels, num_classes)


def frozen(in_channels: int, num_classes: int) -> nn.Module:
    """Every parameter frozen: the optimiser would get an empty parameter list."""
    return TinyNet(in_channels, num_classes).requires_grad_(False)


class _IntegerLogits(TinyNet):
    def forward(self, x):
        return self.head(self.features(x)).round().long()


def integer_logits(in_channels: int, num_classes: int) -> nn.Module:
    return _IntegerLogits(in_channels, num_classes)


class _WithDropout(TinyNet):
    """Dropout before the head: a training-mode forward draws random numbers."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def with_dropout(in_channels: int, num_classes: int) -> nn.Module:
    return _WithDropout(in_channels, num_classes)


class Rescaling(TinyNet):
    """Scales 0..255 inputs itself, by looking at the values: trains and predicts, but torch.export cannot trace
    a branch on tensor values, so MLflow's pt2 format cannot save it."""

    def forward(self, x):
        if x.max() > 1.0:
            x = x / 255.0
        return super().forward(x)


def rescaling(in_channels: int, num_classes: int) -> nn.Module:
    return Rescaling(in_channels, num_classes)
