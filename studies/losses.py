"""MSE on one-hot vs cross-entropy vs NLL on log-softmax, each at its best learning rate (SGD)."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

BASE = TrainConfig(
    dataset="mnist", hidden=(500, 300), optimizer="sgd", momentum=0.9, batch_size=100, epochs=10
)
DATASETS = ("mnist", "fashion-mnist", "digits", "iris")
TRIALS = 30
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    return base.replace(
        loss=trial.suggest_categorical("loss", ["mse", "cross_entropy", "nll"]),
        lr=trial.suggest_float("lr", 1e-4, 1.0, log=True),
    )
