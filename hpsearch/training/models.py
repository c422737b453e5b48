"""The architectures the studies compare, and the weight initialisations they test."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.config import ACTIVATIONS, INITS, MODELS, TrainConfig
from hpsearch.errors import ConfigError

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
assert set(ACTIVATION_LAYERS) == set(ACTIVATIONS)


class MLP(nn.Module):
    """Flatten, then (Linear, [BatchNorm], activation, [Dropout]) per hidden layer, then Linear."""

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        num_classes: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for out in hidden:
            layers.append(nn.Linear(width, out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(ACTIVATION_LAYERS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _pad_to_32(x: torch.Tensor) -> torch.Tensor:
    # LeCun's LeNet-5 read 32x32 images; MNIST's 28x28 digits sit centred with a 2-pixel border.
    if x.shape[-1] == 28:
        return F.pad(x, (2, 2, 2, 2))
    return x


class LeNet5(nn.Module):
    """The classic LeNet-5: tanh and average pooling, 32x32 input (28x28 is padded)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # 32 -> 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # -> 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # -> 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(_pad_to_32(x)))


class AlexNetCIFAR(nn.Module):
    """AlexNet cut down for 32x32 inputs: five 3x3 convolutions, three pools, three FC layers.

    Widths follow AlexNet's 64-192-384-256-256 convolutions; the classifier is narrowed to
    1024-512 because a 4x4x256 feature map feeds it instead of 6x6x256.
    """

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32 -> 16
            nn.Conv2d(64, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # -> 8
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(_pad_to_32(x)))


def build_model(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model a config describes, for data of `input_shape` (without the batch dimension)."""
    assert config.model in MODELS
    if config.model == "mlp":
        model: nn.Module = MLP(
            math.prod(input_shape),
            config.hidden,
            num_classes,
            activation=config.activation,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
        )
    else:
        if len(input_shape) != 3 or input_shape[1:] not in ((28, 28), (32, 32)):
            raise ConfigError(
                f"model {config.model!r} needs 28x28 or 32x32 images, but data set "
                f"{config.dataset!r} has inputs of shape {tuple(input_shape)}; use model 'mlp' "
                "or an image data set such as mnist, fashion-mnist or cifar10"
            )
        if config.model == "lenet5":
            model = LeNet5(input_shape[0], num_classes)
        else:
            model = AlexNetCIFAR(input_shape[0], num_classes, dropout=config.dropout)
    initialise(model, config.init, std=config.init_std)
    return model


def _lecun(fn: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    # LeCun initialisation is He's with the gain of a linear unit: Var(w) = 1 / fan_in.
    return lambda w: fn(w, mode="fan_in", nonlinearity="linear")


INITIALISERS: dict[str, Callable[[torch.Tensor], object] | None] = {
    "default": None,  # PyTorch's own per-layer default
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "he_uniform": lambda w: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu"),
    "he_normal": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    "lecun_uniform": _lecun(nn.init.kaiming_uniform_),
    "lecun_normal": _lecun(nn.init.kaiming_normal_),
    "orthogonal": nn.init.orthogonal_,
    "normal": None,  # needs the std from the config, handled below
}
assert set(INITIALISERS) == set(INITS)


def initialise(model: nn.Module, scheme: str, *, std: float = 1.0) -> None:
    """Re-initialise every Linear and Conv weight by `scheme`; biases start at zero."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if scheme == "normal":
                nn.init.normal_(module.weight, mean=0.0, std=std)
            else:
                initialiser = INITIALISERS[scheme]
                assert initialiser is not None
                initialiser(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
