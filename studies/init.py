"""Weight initialisation at depth 15, width 128: xavier, he, lecun, orthogonal, normal(1.0)."""

from __future__ import annotations

import optuna

from hpsearch.config import INITS, TrainConfig

DEPTH, WIDTH = 15, 128
BASE = TrainConfig(
    dataset="mnist",
    hidden=(WIDTH,) * DEPTH,
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    batch_size=100,
    epochs=5,
    init_std=1.0,
)
DATASETS = ("mnist", "fashion-mnist", "digits")
SAMPLER = "grid"
PRUNER = "none"
GRID = {"init": list(INITS), "activation": ["relu", "tanh"]}
TRIALS = len(GRID["init"]) * len(GRID["activation"])
RECORD_INIT_STATS = True


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    return base.replace(
        init=trial.suggest_categorical("init", GRID["init"]),
        activation=trial.suggest_categorical("activation", GRID["activation"]),
    )
