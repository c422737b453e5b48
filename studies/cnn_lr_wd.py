"""CNN training: LeNet-5 on MNIST-style data, AlexNet-CIFAR on CIFAR-10; SGD lr, L2, momentum, StepLR.

On CIFAR-10 AlexNet trains with random crops (padding 4) and flips, as the course notebook does:
without them it overfits CIFAR-10's 50,000 images within a few epochs.
"""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

BASE = TrainConfig(
    dataset="mnist",
    model="lenet5",
    optimizer="sgd",
    momentum=0.9,
    schedule="step",
    batch_size=64,
    epochs=10,
)
DATASETS = ("mnist", "fashion-mnist", "cifar10")
TRIALS = 30
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    cifar = base.dataset == "cifar10"
    return base.replace(
        model="alexnet_cifar" if cifar else "lenet5",
        dropout=0.5 if cifar else 0.0,
        augment="crop_flip" if cifar else base.augment,
        lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        momentum=trial.suggest_float("momentum", 0.5, 0.99),
        step_size=trial.suggest_int("step_size", 2, 10),
        gamma=trial.suggest_float("gamma", 0.1, 0.9),
    )
