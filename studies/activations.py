"""Activation x depth at width 128: where sigmoid and tanh stop training in deep nets."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="mnist", hidden=(128,), optimizer="adam", lr=1e-3, epochs=10)
DATASETS = ("mnist", "fashion-mnist", "digits")
SAMPLER = "grid"
PRUNER = "none"  # a grid is a table to fill, not a search to cut short
GRID = {
    "activation": ["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"],
    "depth": [1, 2, 4, 8, 15],
}
TRIALS = len(GRID["activation"]) * len(GRID["depth"])
# Per-layer activation and gradient spread at initialisation shows the vanishing gradients.
RECORD_INIT_STATS = True
WIDTH = 128


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    depth = trial.suggest_categorical("depth", GRID["depth"])
    return base.replace(
        activation=trial.suggest_categorical("activation", GRID["activation"]),
        hidden=(WIDTH,) * depth,
    )
