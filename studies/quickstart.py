"""Optuna's quickstart: Adam's learning rate only, log-uniform in [1e-3, 1e-2]."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

BASE = TrainConfig(hidden=(128,), optimizer="adam", batch_size=64, epochs=10)
DATASETS = ("digits", "mnist", "fashion-mnist")
TRIALS = 20
PRUNER = "median"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-2, log=True))
