"""Depth vs width: shallow-and-wide against deep-and-narrow MLPs on n-bit parity or images."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

# Parity data sets hold every n-bit pattern, so validation accuracy says whether the
# architecture can represent and learn the function (run parity-4, -8, -12 and -16).
BASE = TrainConfig(dataset="parity-8", optimizer="adam", lr=3e-3, batch_size=64, epochs=100)
DATASETS = ("parity-8", "parity-4", "parity-12", "parity-16", "mnist", "fashion-mnist", "digits")
SAMPLER = "grid"
PRUNER = "none"
GRID = {"depth": [1, 2, 4], "width": [32, 64, 128]}
TRIALS = len(GRID["depth"]) * len(GRID["width"])


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    depth = trial.suggest_categorical("depth", GRID["depth"])
    width = trial.suggest_categorical("width", GRID["width"])
    return base.replace(hidden=(width,) * depth)
