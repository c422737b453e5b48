"""The per-member control of a training run, written once for both engines.

An engine (`eager.EagerEngine`: one `nn.Module`; `stacked.StackedEngine`: K members in one
`[K, P]` buffer) trains an epoch and evaluates; everything a run decides happens here: the
learning rate of each epoch, divergence, the epoch record, early and target stopping, the best
epoch and its weights, pruning through `on_epoch`, and the `TrainResult`. A member that stops
leaves its engine (which then trains the others on) and ends with its result.

A run given a `RunCheckpoint` (a single run: the eager engine, which is `Resumable`) saves, after
each epoch it trains on from, its engine's state (weights, optimizer, generators) with its own
(history, best epoch, loss and weights, which hold the stopping rules' state) and the epoch; the
schedule needs nothing more, since an epoch's learning rate is a function of its number. It
starts from the epoch after the one its checkpoint holds, or from epoch 1 when there is none
that serves.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.data import Split
from hpsearch.training.checkpoint import CheckpointError, RunCheckpoint
from hpsearch.training.models import count_parameters
from hpsearch.training.optim import learning_rate
from hpsearch.training.results import EpochRecord, Evaluation, OnMemberEpoch, TrainResult

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Generators:
    """A run's random streams; nothing in training draws from PyTorch's global state.

    `init` (CPU) builds the model, and on the CPU dropout continues that same stream, which is
    what `torch.manual_seed(seed)` once gave both; `order` shuffles the data where it lives.
    """

    init: torch.Generator
    order: torch.Generator
    dropout: torch.Generator

    @classmethod
    def for_run(cls, seed: int, device: torch.device) -> Generators:
        init = torch.Generator().manual_seed(seed)
        # Shuffle where the data are; MPS generators are not dependable across torch versions,
        # so Apple GPUs draw the permutation on the CPU and copy it (n int64s per epoch).
        order = torch.Generator(device=shuffle_device(device)).manual_seed(seed)
        dropout = init if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
        return cls(init=init, order=order, dropout=dropout)


def shuffle_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device


class Engine(Protocol):
    """What the control loop needs from an engine; row r is the r-th member still training."""

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        """One epoch at these learning rates; each member's mean training loss."""

    def evaluate(self, split: Split) -> list[Evaluation]: ...

    def snapshot(self, row: int) -> object:
        """A copy of the member's current weights, to return to if they stay its best."""

    def finish(self, row: int, best: object | None) -> nn.Module:
        """The member's model, with its `best` weights, or its current ones when None."""

    def keep(self, rows: list[int]) -> None:
        """Go on with these rows only (in this order); the others have finished."""


@runtime_checkable
class Resumable(Protocol):
    """An engine whose state can be saved and restored (the eager engine)."""

    def state(self) -> dict[str, Any]:
        """Everything the next epoch depends on: weights, optimizer, generators."""

    def restore(self, state: dict[str, Any]) -> None:
        """Take `state` back; checks it all before it changes anything (CheckpointError)."""


@dataclasses.dataclass
class Member:
    index: int  # position in the caller's list of configs
    config: TrainConfig
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    best_state: object | None = None
    stop_reason: str = "epochs"
    failure: str | None = None
    model: nn.Module | None = None
    seconds: float = 0.0

    def diverged(self, epoch: int, train_loss: float) -> None:
        self.stop_reason = "diverged"
        self.failure = f"training loss became {train_loss} in epoch {epoch} (lr={self.config.lr:g})"
        logger.info("run %d diverged: %s", self.index, self.failure)

    def end_epoch(
        self, record: EpochRecord, val: Evaluation | None, snapshot: Callable[[], object],
        on_epoch: OnMemberEpoch | None,
    ) -> bool:
        """Record the epoch and apply the stopping rules; True while the member trains on."""
        self.history.append(record)
        config, epoch = self.config, record.epoch
        if config.stopping == "early":
            assert val is not None
            if val.loss < self.best_loss:
                self.best_epoch, self.best_loss = epoch, val.loss
                self.best_state = snapshot()
            elif epoch - self.best_epoch >= config.patience:
                self.stop_reason = "early_stopping"
        else:
            self.best_epoch = epoch
            if config.stopping == "target" and val is not None and val.error <= config.target_error:
                self.stop_reason = "target"
        if on_epoch is not None and on_epoch(self.index, record):
            self.stop_reason = "stopped"
        return self.stop_reason == "epochs" and epoch < config.epochs

    def state(self) -> dict[str, Any]:
        assert self.stop_reason == "epochs" and self.failure is None  # saved only while training
        return {"history": [dataclasses.asdict(r) for r in self.history],
                "best_epoch": self.best_epoch, "best_loss": self.best_loss,
                "best_state": self.best_state}

    def restored(self, state: dict[str, Any]) -> Member:
        """A copy of this (fresh) member with a saved `state`; raises on a malformed one."""
        history = [EpochRecord(**r) for r in state["history"]]
        if [r.epoch for r in history] != list(range(1, len(history) + 1)):
            raise CheckpointError(f"its history has epochs {[r.epoch for r in history]}")
        return dataclasses.replace(self, history=history, best_epoch=int(state["best_epoch"]),
                                   best_loss=float(state["best_loss"]),
                                   best_state=state["best_state"])

    def result(self) -> TrainResult:
        assert self.model is not None
        return TrainResult(
            config=self.config,
            history=self.history,
            best_epoch=self.best_epoch,
            stop_reason=self.stop_reason,
            failure=self.failure,
            n_params=count_parameters(self.model),
            seconds=self.seconds,
            model=self.model,
        )


def run(
    engine: Engine, configs: Sequence[TrainConfig], *, val: Split | None,
    on_epoch: OnMemberEpoch | None = None, started: float | None = None,
    checkpoint: RunCheckpoint | None = None,
) -> list[TrainResult]:
    """Train every member to its end; results in the configs' order.

    The members share the number of epochs (a stack's key holds it); each has its own schedule,
    stopping rule and pruning. An epoch reads values back to the host once for training losses
    and once for the evaluation, for all members together. `checkpoint` (a single run only)
    resumes the run from its last saved epoch and saves it after each epoch it trains on from.
    """
    started = time.perf_counter() if started is None else started
    members = [Member(i, c) for i, c in enumerate(configs)]
    first = 1
    if checkpoint is not None:
        assert len(members) == 1 and isinstance(engine, Resumable)
        members[0], first, started = _resume(engine, members[0], checkpoint, started)
    live = list(members)

    def leave(rows: list[int]) -> None:
        nonlocal live
        elapsed = time.perf_counter() - started
        for row in rows:
            m = live[row]
            m.model, m.seconds = engine.finish(row, m.best_state), elapsed
            m.best_state = None  # the copy has served; a long stack should not hold it
        kept = [r for r in range(len(live)) if r not in set(rows)]
        if rows and kept:
            engine.keep(kept)
        live = [live[r] for r in kept]

    for epoch in range(first, configs[0].epochs + 1):
        lrs = [learning_rate(m.config, epoch) for m in live]
        losses = engine.train_epoch(lrs)
        diverged = [row for row, loss in enumerate(losses) if not math.isfinite(loss)]
        for row in diverged:
            live[row].diverged(epoch, losses[row])
        finite = [row for row in range(len(live)) if row not in diverged]
        losses, lrs = [losses[r] for r in finite], [lrs[r] for r in finite]
        leave(diverged)
        if not live:
            break
        evals: Sequence[Evaluation | None] = (
            engine.evaluate(val) if val is not None else [None] * len(live))
        elapsed = time.perf_counter() - started
        stopping = []
        for row, (m, loss, ev, lr) in enumerate(zip(live, losses, evals, lrs)):
            record = _record(epoch, loss, ev, lr, elapsed)
            if not m.end_epoch(record, ev, functools.partial(engine.snapshot, row), on_epoch):
                stopping.append(row)
        leave(stopping)
        if not live:
            break
        if checkpoint is not None:
            assert isinstance(engine, Resumable)
            checkpoint.save(live[0].config, {
                "epoch": epoch, "elapsed": time.perf_counter() - started,
                "member": live[0].state(), "engine": engine.state()})
    return [m.result() for m in members]


def _resume(engine: Resumable, member: Member, checkpoint: RunCheckpoint,
            started: float) -> tuple[Member, int, float]:
    """The member restored from its newest usable checkpoint, the epoch to go on from and the
    start time moved back by the time already trained; the fresh member, 1, `started` if none."""
    loaded = checkpoint.load(member.config)
    if loaded is None:
        return member, 1, started
    source, state = loaded
    try:
        epoch = int(state["epoch"])
        restored = member.restored(state["member"])  # changes nothing: a copy
        if len(restored.history) != epoch or not 1 <= epoch < member.config.epochs:
            raise CheckpointError(f"it holds {len(restored.history)} epochs as epoch {epoch}")
        engine.restore(state["engine"])  # the last step; checks everything before it applies
    except (CheckpointError, KeyError, TypeError, ValueError) as e:
        logger.warning("checkpoint %s ignored: %s; the run starts from epoch 1", source.path, e)
        return member, 1, started
    logger.info("resuming after epoch %d from %s", epoch, source.path)
    if checkpoint.on_resume is not None:
        checkpoint.on_resume(source, restored.history)
    return restored, epoch + 1, started - float(state["elapsed"])


def _record(epoch: int, train_loss: float, val: Evaluation | None, lr: float,
            elapsed: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val.loss if val else None,
        val_accuracy=val.accuracy if val else None,
        val_error=val.error if val else None,
        val_f1=val.f1 if val else None,
        lr=lr,
        seconds=elapsed,
    )
