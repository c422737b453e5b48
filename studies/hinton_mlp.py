"""Hinton's 784-500-300-10 MLP with Adam: lr, weight decay, betas and dropout; the shape is fixed."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

# Every trial has the same layers, so `hpsearch run hinton_mlp --population K` trains K trials
# at a time as one stacked computation.
BASE = TrainConfig(
    dataset="fashion-mnist", hidden=(500, 300), activation="relu", optimizer="adam",
    batch_size=100, epochs=20,
)
DATASETS = ("fashion-mnist", "mnist", "digits")
TRIALS = 100
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    return base.replace(
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        beta1=trial.suggest_float("beta1", 0.8, 0.95),
        beta2=trial.suggest_float("beta2", 0.99, 0.9999),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
    )
