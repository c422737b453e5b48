"""MNIST MLP: validation error by optimizer, activation, depth, width, lr, batch, dropout, L2, stopping."""

from __future__ import annotations

import optuna

from hpsearch.config import LR_RANGES, TrainConfig

# Hinton's 784-500-300-10 setting: Adam, batch 100, 20 epochs, 54k/6k split.
BASE = TrainConfig(dataset="mnist", hidden=(500, 300), batch_size=100, epochs=20)
DATASETS = ("mnist", "fashion-mnist", "digits")
TRIALS = 100
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    optimizer = trial.suggest_categorical("optimizer", list(LR_RANGES))
    n_layers = trial.suggest_int("n_layers", 1, 4)
    units = trial.suggest_int("units", 100, 800, step=100)
    stopping = trial.suggest_categorical("stopping", ["fixed", "early"])
    return base.replace(
        optimizer=optimizer,
        lr=trial.suggest_float("lr", *LR_RANGES[optimizer], log=True),
        momentum=trial.suggest_float("momentum", 0.0, 0.99) if optimizer in ("sgd", "rmsprop") else 0.0,
        activation=trial.suggest_categorical(
            "activation", ["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]
        ),
        hidden=(units,) * n_layers,
        batch_size=trial.suggest_categorical("batch_size", [32, 64, 100, 128, 256]),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        stopping=stopping,
        patience=trial.suggest_int("patience", 2, 5) if stopping == "early" else base.patience,
    )
