"""Training: a frozen `TrainConfig`, data on the device and a device in, a `TrainResult` out.

Nothing here imports Optuna; reporting and pruning reach the loop as callbacks. Other layers
import from this package only, never from its modules, so the modules can change freely.

    many.train_many            groups configs by stacked.stackable_key, trains group by group
      control.run              the one per-member loop: lr, divergence, records, stopping, result
        eager.EagerEngine      one nn.Module and torch.optim (train() is the single case)
        stacked.StackedEngine  K members in one [K, P] buffer, StackedOptimizer, and
                               stacked_forward (torch.func vmap, or baddbmm for plain MLPs)

models (architectures, seeded init, Dropout), optim (optimizers, the pure learning_rate),
losses, results (EpochRecord, Evaluation, TrainResult), speed (SpeedOptions), crossval,
checkpoint (the file a single run saves after each epoch and resumes from: RunCheckpoint).
"""

from __future__ import annotations

from hpsearch.training.checkpoint import CheckpointFile, RunCheckpoint
from hpsearch.training.crossval import CrossValResult, train_folds
from hpsearch.training.eager import evaluate, train
from hpsearch.training.many import RunInfo, train_many
from hpsearch.training.metrics import accuracy, confusion_matrix, macro_f1
from hpsearch.training.models import ACTIVATION_LAYERS, build_model, count_parameters
from hpsearch.training.optim import build_optimizer, learning_rate
from hpsearch.training.results import (
    METRICS,
    STOP_REASONS,
    EpochRecord,
    Evaluation,
    TrainResult,
)
from hpsearch.training.speed import SpeedOptions
from hpsearch.training.stacked import stackable_key, train_population
from hpsearch.training.stacked_optim import StackedOptimizer

__all__ = [
    "ACTIVATION_LAYERS",
    "METRICS",
    "STOP_REASONS",
    "CheckpointFile",
    "CrossValResult",
    "EpochRecord",
    "Evaluation",
    "RunCheckpoint",
    "RunInfo",
    "SpeedOptions",
    "StackedOptimizer",
    "TrainResult",
    "accuracy",
    "build_model",
    "build_optimizer",
    "confusion_matrix",
    "count_parameters",
    "evaluate",
    "learning_rate",
    "macro_f1",
    "stackable_key",
    "train",
    "train_folds",
    "train_many",
    "train_population",
]
