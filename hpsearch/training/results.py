"""What a training run gives back: per-epoch records, evaluations and the run's result.

Both engines (eager and stacked) end every member in these types, so the search layer and the
analysis commands read one shape whatever trained the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.errors import ConfigError
from hpsearch.training.metrics import confusion_matrix, macro_f1

# Metric name -> whether larger is better. A study's metric must be one of these.
METRICS: dict[str, bool] = {
    "val_error": False,
    "val_loss": False,
    "val_accuracy": True,
    "val_f1": True,
    "train_loss": False,
}

STOP_REASONS = ("epochs", "early_stopping", "target", "diverged", "stopped")


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_error: float | None
    val_f1: float | None
    lr: float
    seconds: float  # wall time since training began

    def metric(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"metric {name!r} needs a validation split, and this run has none")
        return float(value)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on one split; `predictions` are kept for paired tests between models."""

    loss: float
    accuracy: float
    error: float
    f1: float
    confusion: list[list[int]]
    predictions: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluations(
    loss_sum: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, num_classes: int,
    *, keep_predictions: bool = False,
) -> list[Evaluation]:
    """One `Evaluation` per member from its summed loss `[K]` and predictions `[K, n]`."""
    n = target.numel()
    confusion = confusion_matrix(pred, target.expand_as(pred), num_classes)
    # Correct counts are exact in float32 below 2**24; dividing on the host keeps 1 - accuracy
    # free of float32 rounding. One host sync for all members.
    stats = torch.stack([loss_sum / n, confusion.diagonal(dim1=-2, dim2=-1).sum(-1).float(),
                         macro_f1(confusion)], dim=1).tolist()
    confusions, preds = confusion.tolist(), pred.tolist() if keep_predictions else None
    return [
        Evaluation(loss=loss, accuracy=correct / n, error=1.0 - correct / n, f1=f1,
                   confusion=confusions[k], predictions=preds[k] if preds is not None else [])
        for k, (loss, correct, f1) in enumerate(stats)
    ]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    history: list[EpochRecord]
    best_epoch: int  # the epoch whose weights the run ends with (0 if none finished)
    stop_reason: str
    failure: str | None  # why the run diverged, else None
    n_params: int
    seconds: float
    test: Evaluation | None = None
    init_stats: dict[str, list[float]] | None = None
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def final(self) -> EpochRecord:
        """The record of the epoch whose weights were kept."""
        if self.best_epoch == 0:
            raise ConfigError(f"the run stopped before finishing an epoch ({self.failure})")
        return self.history[self.best_epoch - 1]

    def history_dict(self) -> dict[str, list[float | None]]:
        """Per-epoch values by name, the form stored with each trial."""
        fields = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "epoch"]
        return {name: [getattr(r, name) for r in self.history] for name in fields}


OnEpoch = Callable[[EpochRecord], bool | None]  # True stops the run (pruning)
OnMemberEpoch = Callable[[int, EpochRecord], bool | None]  # member index first
