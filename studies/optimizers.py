"""Each optimizer tuned with its own parameters: momentum, nesterov, alpha, centered, betas, rho."""

from __future__ import annotations

import optuna

from hpsearch.config import LR_RANGES, TrainConfig

BASE = TrainConfig(dataset="mnist", hidden=(500, 300), batch_size=100, epochs=10)
DATASETS = ("mnist", "fashion-mnist", "digits")
TRIALS = 60
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    optimizer = trial.suggest_categorical("optimizer", list(LR_RANGES))
    config = base.replace(
        optimizer=optimizer, lr=trial.suggest_float("lr", *LR_RANGES[optimizer], log=True)
    )
    if optimizer == "sgd":
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        nesterov = momentum > 0 and trial.suggest_categorical("nesterov", [False, True])
        return config.replace(momentum=momentum, nesterov=nesterov)
    if optimizer == "rmsprop":
        return config.replace(
            alpha=trial.suggest_float("alpha", 0.8, 0.999),
            momentum=trial.suggest_float("momentum", 0.0, 0.99),
            centered=trial.suggest_categorical("centered", [False, True]),
        )
    if optimizer in ("adam", "adamw"):
        return config.replace(
            beta1=trial.suggest_float("beta1", 0.8, 0.99),
            beta2=trial.suggest_float("beta2", 0.9, 0.9999),
            weight_decay=(
                trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True)
                if optimizer == "adamw"
                else 0.0
            ),
        )
    if optimizer == "adadelta":
        return config.replace(rho=trial.suggest_float("rho", 0.8, 0.99))
    return config  # adagrad: the learning rate is its only parameter
