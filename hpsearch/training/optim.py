"""Optimizers and learning-rate schedules by name, each with its own real parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from hpsearch.config import OPTIMIZERS, SCHEDULES, TrainConfig

Params = Iterable[nn.Parameter]


def _sgd(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay
    )


def _rmsprop(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        params, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum, centered=c.centered,
        weight_decay=c.weight_decay,
    )


def _adam(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay
    )


def _adamw(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay
    )


def _adagrad(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=c.lr, weight_decay=c.weight_decay)


def _adadelta(params: Params, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(params, lr=c.lr, rho=c.rho, weight_decay=c.weight_decay)


OPTIMIZER_BUILDERS: dict[str, Callable[[Params, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": _adamw,
    "adagrad": _adagrad,
    "adadelta": _adadelta,
}
assert set(OPTIMIZER_BUILDERS) == set(OPTIMIZERS)


def build_optimizer(params: Params, config: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZER_BUILDERS[config.optimizer](params, config)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-epoch schedule, or None for a constant learning rate."""
    assert config.schedule in SCHEDULES
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None
