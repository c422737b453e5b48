"""Optimizers by name, each with its own real parameters, and the learning-rate schedules."""

from __future__ import annotations

import math
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


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of 1-based `epoch`: what StepLR or CosineAnnealingLR (T_max = epochs)
    would have set after `epoch - 1` steps.

    A pure function of the config, so every member of a stack has its schedule without a
    scheduler object. It follows the schedulers' own recursive updates, not their closed forms,
    so the floats are the schedulers' to the last bit (a test compares them).
    """
    assert config.schedule in SCHEDULES
    lr = config.lr
    for done in range(1, epoch):  # the scheduler's last_epoch after each step
        if config.schedule == "step" and done % config.step_size == 0:
            lr = lr * config.gamma
        elif config.schedule == "cosine":
            # eta_min is 0, so the scheduler's `* (lr - eta_min) + eta_min` is `* lr` exactly.
            t_max = config.epochs
            lr = (1 + math.cos(math.pi * done / t_max)) / (
                1 + math.cos(math.pi * (done - 1) / t_max)) * lr
    return lr
