"""Cross-validated training: one config trained on each of k folds and scored by their mean.

Like the trainer, this knows nothing of Optuna. It calls `train` once per fold, in fold
order, and after each finished fold passes `on_fold` the number of folds done and the running
mean of their values; `on_fold` returns True to stop (the trial path reports that mean as the
intermediate value at step = folds done and asks its pruner). `rerun` calls it without one.

A fold's value is the study's metric at the epoch that fold kept (its best epoch under early
stopping, else its last), so the trial's value is the mean over folds of what a single-split
trial would have reported. Every fold trains from the same seed: folds differ only in their data.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hpsearch.config import TrainConfig
from hpsearch.data import Splits
from hpsearch.training.eager import train
from hpsearch.training.results import EpochRecord, TrainResult
from hpsearch.training.speed import SpeedOptions

OnFold = Callable[[int, float], bool | None]


@dataclasses.dataclass(frozen=True)
class CrossValResult:
    """The folds trained for one config (fewer than k when stopped or diverged), in fold order."""

    config: TrainConfig
    metric: str
    k: int
    folds: list[TrainResult]
    stopped: bool = False  # `on_fold` asked to stop before all k folds were trained

    @property
    def values(self) -> list[float]:
        """The metric of each fold that finished, in fold order."""
        return [fold.final.metric(self.metric) for fold in self.folds if fold.failure is None]

    @property
    def value(self) -> float:
        """The mean over the folds; the trial's value once all k have finished."""
        return statistics.fmean(self.values)

    @property
    def complete(self) -> bool:
        """All k folds finished and none was stopped."""
        return not self.stopped and len(self.values) == self.k

    @property
    def failure(self) -> str | None:
        for done, fold in enumerate(self.folds, 1):
            if fold.failure is not None:
                return f"fold {done} of {self.k}: {fold.failure}"
        return None

    @property
    def stop_reason(self) -> str:
        if self.failure is not None:
            return "diverged"
        if self.stopped:
            return "stopped"
        return "/".join(sorted({fold.stop_reason for fold in self.folds}))

    @property
    def best_epoch(self) -> int:
        """The folds' kept epochs, averaged: the epoch count a final run on all the data trains."""
        return round(statistics.fmean(fold.best_epoch for fold in self.folds))

    @property
    def history(self) -> list[EpochRecord]:
        """Per-epoch means over the folds, for the epochs every fold ran."""
        epochs = min(len(fold.history) for fold in self.folds)
        return [_mean_record([fold.history[e] for fold in self.folds]) for e in range(epochs)]

    @property
    def seconds(self) -> float:
        return sum(fold.seconds for fold in self.folds)

    @property
    def n_params(self) -> int:
        return self.folds[0].n_params

    @property
    def init_stats(self) -> dict[str, list[float]] | None:
        return self.folds[0].init_stats

    def history_dict(self) -> dict[str, list[float | None]]:
        fields = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "epoch"]
        return {name: [getattr(r, name) for r in self.history] for name in fields}

    def to_attrs(self) -> dict[str, Any]:
        """The per-fold record stored with the trial (user attribute `cv`)."""
        return {
            "k": self.k,
            "metric": self.metric,
            "values": self.values,
            "best_epochs": [fold.best_epoch for fold in self.folds],
            "epochs_run": [len(fold.history) for fold in self.folds],
            "stop_reasons": [fold.stop_reason for fold in self.folds],
            "seconds": [round(fold.seconds, 3) for fold in self.folds],
            # The metric per epoch of each fold: what `rerun` compares, fold by fold.
            "history": [[r.metric(self.metric) for r in fold.history] for fold in self.folds],
        }


def train_folds(
    config: TrainConfig,
    folds: Sequence[Splits],
    *,
    metric: str,
    device: torch.device,
    on_fold: OnFold | None = None,
    record_init_stats: bool = False,
    speed: SpeedOptions | None = None,
) -> CrossValResult:
    """Train `config` on each fold in turn; stop at a diverged fold or when `on_fold` says so."""
    results: list[TrainResult] = []
    stopped = False
    for done, fold in enumerate(folds, 1):
        result = train(config, fold, device=device, speed=speed,
                       record_init_stats=record_init_stats and done == 1)
        results.append(result)
        if result.failure is not None:
            break
        running_mean = statistics.fmean(r.final.metric(metric) for r in results)
        if on_fold is not None and on_fold(done, running_mean):
            stopped = True
            break
    return CrossValResult(config=config, metric=metric, k=len(folds), folds=results,
                          stopped=stopped)


def _mean_record(records: list[EpochRecord]) -> EpochRecord:
    def mean(name: str) -> float | None:
        values = [getattr(r, name) for r in records]
        return None if any(v is None for v in values) else statistics.fmean(values)

    return EpochRecord(
        epoch=records[0].epoch,
        train_loss=statistics.fmean(r.train_loss for r in records),
        val_loss=mean("val_loss"),
        val_accuracy=mean("val_accuracy"),
        val_error=mean("val_error"),
        val_f1=mean("val_f1"),
        lr=records[0].lr,
        seconds=statistics.fmean(r.seconds for r in records),
    )
