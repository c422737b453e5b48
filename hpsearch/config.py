"""The one description of a training run: a flat, frozen, validated `TrainConfig`.

Study modules produce it from an Optuna trial, `final` reads it back from YAML, and the
trainer consumes it. Field names double as Optuna parameter names and dashboard labels,
so they stay stable snake_case.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from hpsearch.errors import ConfigError, choices_hint

# The vocabulary. Implementations (models, optim, trainer) key their tables by these names and
# a test checks that every name here has an implementation.
MODELS = ("mlp", "lenet5", "alexnet_cifar")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid")
INITS = (
    "default",
    "xavier_uniform",
    "xavier_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "normal",
)
LOSSES = ("cross_entropy", "nll", "mse")
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta")
# The learning-rate range a study searches for each optimizer, around its usual scale
# (Adadelta's default is 1.0). Shared by the studies that search over optimizers; its bounds
# are part of their search spaces, so a change makes new trials incomparable with stored ones.
LR_RANGES: dict[str, tuple[float, float]] = {
    "sgd": (1e-3, 0.3),
    "rmsprop": (1e-5, 1e-2),
    "adam": (1e-5, 1e-2),
    "adamw": (1e-5, 1e-2),
    "adagrad": (1e-3, 0.3),
    "adadelta": (0.05, 3.0),
}
SCHEDULES = ("none", "step", "cosine")
BATCH_MODES = ("full", "mini", "sample")
STOPPING = ("fixed", "early", "target")
# Training-batch augmentation on the device: "crop_flip" is torchvision's RandomCrop(size,
# padding=augment_pad) followed by RandomHorizontalFlip(), drawn per example (training.augment).
AUGMENTS = ("none", "crop_flip")

_NAMED_FIELDS = {
    "model": MODELS,
    "activation": ACTIVATIONS,
    "init": INITS,
    "loss": LOSSES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "batch_mode": BATCH_MODES,
    "stopping": STOPPING,
    "augment": AUGMENTS,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything needed to train and evaluate one model, and nothing about how it was chosen.

    `hidden`, `activation` and `batch_norm` shape the MLP only; LeNet-5 and AlexNet-CIFAR have
    fixed architectures (`dropout` also sets AlexNet's classifier dropout). L2 regularisation is
    `weight_decay` in the optimizer; L1 is added to the loss; both together are elastic net.
    """

    # data
    dataset: str = "digits"
    val_fraction: float = 0.1
    split_seed: int = 0
    # model
    model: str = "mlp"
    hidden: tuple[int, ...] = (500, 300)
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    init: str = "default"
    init_std: float = 1.0  # standard deviation for init="normal" only
    # objective
    loss: str = "cross_entropy"
    l1: float = 0.0
    weight_decay: float = 0.0
    # optimizer; each optimizer reads only its own parameters
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd
    alpha: float = 0.99  # rmsprop smoothing constant
    centered: bool = False  # rmsprop
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999  # adam, adamw
    eps: float = 1e-8  # adam, adamw, rmsprop
    rho: float = 0.9  # adadelta
    schedule: str = "none"
    step_size: int = 10  # StepLR period in epochs
    gamma: float = 0.1  # StepLR factor
    # loop
    batch_mode: str = "mini"
    batch_size: int = 100  # used when batch_mode == "mini"
    epochs: int = 20  # the maximum; early and target stopping may end sooner
    stopping: str = "fixed"
    patience: int = 5  # epochs without a better validation loss, for stopping="early"
    target_error: float = 0.0  # validation error to stop at, for stopping="target"
    # training batches only, images only; configs stored before these fields load with the defaults
    augment: str = "none"
    augment_pad: int = 4  # pixels of zero padding a crop may shift into, for augment="crop_flip"
    seed: int = 0

    def __post_init__(self) -> None:
        # YAML and JSON give lists; keep the frozen config hashable.
        if not isinstance(self.hidden, tuple):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        for name, valid in _NAMED_FIELDS.items():
            value = getattr(self, name)
            if value not in valid:
                raise ConfigError(f"{name}: {choices_hint(value, valid, name)}")
        _check(self.hidden and all(isinstance(w, int) and w > 0 for w in self.hidden),
               "hidden", self.hidden, "a non-empty list of positive layer widths, e.g. [500, 300]")
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a fraction in (0, 1)")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a probability in [0, 1)")
        _check(self.init_std > 0, "init_std", self.init_std, "a positive standard deviation")
        _check(_finite(self.lr) and self.lr > 0, "lr", self.lr, "a positive learning rate")
        for name in ("l1", "weight_decay", "momentum", "target_error"):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, name, value, "a non-negative number")
        for name in ("alpha", "beta1", "beta2", "rho", "gamma"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0 or (name == "gamma" and value == 1.0), name, value,
                   "a number in [0, 1)")
        _check(self.eps > 0, "eps", self.eps, "a small positive number such as 1e-8")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "a batch size of at least 1")
        _check(self.epochs >= 1, "epochs", self.epochs, "at least 1 epoch")
        _check(self.step_size >= 1, "step_size", self.step_size, "at least 1 epoch")
        _check(self.patience >= 1, "patience", self.patience, "at least 1 epoch")
        _check(self.augment_pad >= 0, "augment_pad", self.augment_pad,
               "a padding of 0 or more pixels, e.g. 4 as in RandomCrop(32, padding=4)")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise ConfigError(
                f"nesterov=True needs optimizer='sgd' with momentum > 0, got optimizer="
                f"{self.optimizer!r}, momentum={self.momentum}; set nesterov=False or add momentum"
            )

    @property
    def l2(self) -> float:
        return self.weight_decay

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again."""
        unknown = sorted(set(changes) - FIELD_NAMES)
        if unknown:
            raise ConfigError(_unknown_fields_message(unknown))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types, in field order."""
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Read a config back (export files, stored trials); unknown keys are an error, not ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a mapping of field: value, got {data!r}")
        unknown = sorted(set(data) - FIELD_NAMES)
        if unknown:
            raise ConfigError(_unknown_fields_message(unknown))
        for name, value in data.items():
            _check_type(name, value)
        try:
            return cls(**dict(data))
        except TypeError as e:
            raise ConfigError(f"bad training config {dict(data)!r}: {e}") from e


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


# A file gives any YAML type; the checks in __post_init__ compare values and would let
# `epochs: 1.5` or `lr: "0.1"` through to fail deep inside training.
_FIELD_TYPES = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a name"}


def _check_type(name: str, value: object) -> None:
    expected = _FIELD_TYPES[name]
    if expected is tuple:
        return  # `hidden`: __post_init__ checks its items
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: expected {_TYPE_WORDS[expected]}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check(ok: object, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: expected {expected}")


def _unknown_fields_message(unknown: list[str]) -> str:
    return (
        f"unknown training config field(s) {', '.join(unknown)}; "
        f"valid fields: {', '.join(sorted(FIELD_NAMES))}"
    )
