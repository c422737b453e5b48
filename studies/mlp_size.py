"""MLP width and depth: validation error against parameter count, a Pareto front of sizes."""

from __future__ import annotations

import optuna

from hpsearch.config import TrainConfig

# Two objectives: `hpsearch best` prints the Pareto front, the configs that no other trial beats
# in both error and size. Multi-objective TPE (the default sampler) models good configs from its
# first trials on; NSGA-II (`--sampler nsga2`) draws its first population of 50 at random, more
# than this study's 40 trials. Optuna does not prune multi-objective trials: every trial trains
# all its epochs.
BASE = TrainConfig(dataset="digits", optimizer="adam", lr=3e-3, batch_size=64, epochs=20)
DATASETS = ("digits", "mnist", "fashion-mnist")
METRICS = {"val_error": "minimize", "n_params": "minimize"}
TRIALS = 40


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    depth = trial.suggest_int("depth", 1, 3)
    width = trial.suggest_int("width", 2, 256, log=True)
    return base.replace(hidden=(width,) * depth)
