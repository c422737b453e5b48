"""The architectures the studies compare, and the weight initialisations they test.

Models are built on the meta device and initialised from the run's own generator, never from
PyTorch's global random state: PyTorch's default Linear and Conv initialisation is re-created
with that generator, draw for draw, so a seed gives the weights `torch.manual_seed(seed)` gave.
Dropout draws its masks from a generator the engine hands it, or takes them as an input.
"""

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


class Dropout(nn.Dropout):
    """`nn.Dropout` whose masks come from a run's generator, or are given.

    On the CPU its mask is the one `F.dropout` draws (`bernoulli_(1 - p)` then `/ (1 - p)`), from
    `generator` instead of the global stream. The stacked engine draws every member's masks
    itself and passes them in as the `mask` buffer through `torch.func.functional_call`, since
    random ops under `vmap` cannot draw from a member's own generator.
    """

    mask: torch.Tensor | None

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.generator: torch.Generator | None = None
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.mask is not None:
            return x * self.mask
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        return x * draw_mask(x.shape, self.p, self.generator, like=x)


def draw_mask(
    shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator, *, like: torch.Tensor
) -> torch.Tensor:
    """A dropout mask: 0 with probability p, else 1 / (1 - p)."""
    noise = torch.empty(shape, dtype=like.dtype, device=like.device)
    return noise.bernoulli_(1 - p, generator=generator).div_(1 - p)


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generator = generator


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
                layers.append(Dropout(dropout))
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
            Dropout(dropout),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(inplace=True),
            Dropout(dropout),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(_pad_to_32(x)))


def build_model(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int,
    *, generator: torch.Generator | None = None,
) -> nn.Module:
    """The model a config describes, for data of `input_shape` (without the batch dimension).

    On the CPU, initialised from `generator` (a CPU generator; by default one seeded with the
    config's seed); the caller moves it to its device, so a seed gives the same weights on any.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    model = empty_model(config, input_shape, num_classes, device=torch.device("cpu"))
    _default_init(model, generator)
    initialise(model, config.init, std=config.init_std, generator=generator)
    return model


def empty_model(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int, *, device: torch.device
) -> nn.Module:
    """The model's layers with uninitialised weights on `device` (meta: no memory at all)."""
    # Built on the meta device, so constructing it draws nothing from the global random state.
    with torch.device("meta"):
        model = _architecture(config, input_shape, num_classes)
    return model if device.type == "meta" else model.to_empty(device=device)


def _architecture(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
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
    return model


def _default_init(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's own reset_parameters, drawing from `generator`, in construction order."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # ones, zeros and fresh running statistics: no draws


Initialiser = Callable[[torch.Tensor, torch.Generator], object]


def _lecun(fn: Callable[..., torch.Tensor]) -> Initialiser:
    # LeCun initialisation is He's with the gain of a linear unit: Var(w) = 1 / fan_in.
    return lambda w, g: fn(w, mode="fan_in", nonlinearity="linear", generator=g)


def _he(fn: Callable[..., torch.Tensor]) -> Initialiser:
    return lambda w, g: fn(w, mode="fan_in", nonlinearity="relu", generator=g)


INITIALISERS: dict[str, Initialiser | None] = {
    "default": None,  # PyTorch's own per-layer default
    "xavier_uniform": lambda w, g: nn.init.xavier_uniform_(w, generator=g),
    "xavier_normal": lambda w, g: nn.init.xavier_normal_(w, generator=g),
    "he_uniform": _he(nn.init.kaiming_uniform_),
    "he_normal": _he(nn.init.kaiming_normal_),
    "lecun_uniform": _lecun(nn.init.kaiming_uniform_),
    "lecun_normal": _lecun(nn.init.kaiming_normal_),
    "orthogonal": lambda w, g: nn.init.orthogonal_(w, generator=g),
    "normal": None,  # needs the std from the config, handled below
}
assert set(INITIALISERS) == set(INITS)


def initialise(model: nn.Module, scheme: str, *, generator: torch.Generator, std: float = 1.0) -> None:
    """Re-initialise every Linear and Conv weight by `scheme`; biases start at zero."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if scheme == "normal":
                nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
            else:
                initialiser = INITIALISERS[scheme]
                assert initialiser is not None
                initialiser(module.weight, generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
