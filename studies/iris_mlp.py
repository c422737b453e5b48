"""Iris 4-32-16-3 MLP: loss x L1 x L2 x dropout x batch mode (full, mini-batch 16, per-sample)."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

BASE = TrainConfig(
    dataset="iris", hidden=(32, 16), optimizer="sgd", lr=0.01, batch_size=16, epochs=200
)
DATASETS = ("iris",)
TRIALS = 30
PRUNER = "none"
# 120 training examples: one 10% validation split (12 examples) ranks trials in steps of 8.3%,
# so each trial is scored by its mean validation error over 5 stratified folds instead.
CV = 5


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    return base.replace(
        loss=trial.suggest_categorical("loss", ["cross_entropy", "nll", "mse"]),
        l1=trial.suggest_categorical("l1", [0.0, 1e-4, 1e-3]),
        weight_decay=trial.suggest_categorical("weight_decay", [0.0, 1e-4, 1e-3]),
        dropout=trial.suggest_categorical("dropout", [0.0, 0.2, 0.5]),
        batch_mode=trial.suggest_categorical("batch_mode", ["full", "mini", "sample"]),
    )
