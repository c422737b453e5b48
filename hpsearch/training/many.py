"""`train_many`: train several configs, stacking those of one shape, each ending in its own result.

This is where configs are grouped by what can train as one stacked computation; the search layer
hands over the configs of a batch of trials and gets one result (or the error that ended it)
per config, in order.

Checkpoints (`checkpoints`) are kept for members that train alone; a stack saves none, and a
member with a checkpoint to resume from trains alone, from it. A stack killed midway is
therefore trained again from its first epoch: its members come back as separate queued trials,
which the next workers ask for among new ones and stack in other company, so a member's row of
a stack (its part of the shared optimizer step count included) would have no stack to go back
into; and a stacked member equals its single run only up to rounding, so it could not go on
alone from that row exactly either.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch

from hpsearch.config import TrainConfig
from hpsearch.data import Splits
from hpsearch.errors import raise_if_interrupted
from hpsearch.training.checkpoint import RunCheckpoint
from hpsearch.training.eager import train
from hpsearch.training.results import EpochRecord, TrainResult
from hpsearch.training.speed import SpeedOptions
from hpsearch.training.stacked import stackable_key, train_population

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """How a member is about to train: the size of its stack (1: alone) and the speed options
    it actually trains with (a stack trains in float32)."""

    population: int
    speed: SpeedOptions


SplitsFor = Callable[[TrainConfig], Splits]
OnStart = Callable[[int, RunInfo], None]  # member index, how it trains; raising fails it alone
OnMemberEpoch = Callable[[int, EpochRecord], bool | None]  # True stops that member
CheckpointFor = Callable[[int], RunCheckpoint | None]  # member index -> where it saves, if it does


def train_many(
    configs: Sequence[TrainConfig],
    data: SplitsFor,
    *,
    device: torch.device,
    speed: SpeedOptions | None = None,
    on_start: OnStart | None = None,
    on_epoch: OnMemberEpoch | None = None,
    record_init_stats: bool = False,
    stack: bool = True,
    checkpoints: CheckpointFor | None = None,
) -> list[TrainResult | Exception]:
    """Train every config, in stacks of one shape where `stack`; results in the configs' order.

    A member ends with its `TrainResult`, or with the exception that ended it: one raised by
    `on_start` ends that member alone, one raised while a stack trains ends all of its members,
    and a stack that runs out of memory is trained again one member at a time. Only
    KeyboardInterrupt propagates. A member trained alone resumes from, and saves to, its
    `checkpoints(index)`; one with a file to resume from trains alone.
    """
    speed = speed or SpeedOptions()
    results: list[TrainResult | Exception | None] = [None] * len(configs)
    groups: dict[object, list[int]] = {}
    for index, config in enumerate(configs):
        checkpoint = checkpoints(index) if checkpoints is not None else None
        resuming = checkpoint is not None and checkpoint.resumable()
        key = stackable_key(config) if stack and not record_init_stats and not resuming else None
        groups.setdefault(key if key is not None else ("alone", index), []).append(index)
    for members in groups.values():
        _train_group(configs, members, results, data, device=device, speed=speed,
                     on_start=on_start, on_epoch=on_epoch, record_init_stats=record_init_stats,
                     checkpoints=checkpoints)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _train_group(
    configs: Sequence[TrainConfig], members: list[int], results: list[TrainResult | Exception | None],
    data: SplitsFor, *, device: torch.device, speed: SpeedOptions, on_start: OnStart | None,
    on_epoch: OnMemberEpoch | None, record_init_stats: bool, checkpoints: CheckpointFor | None,
) -> None:
    started, used = _start(members, results, speed=speed, on_start=on_start)
    if not started:
        return
    try:
        splits = data(configs[started[0]])
        if len(started) == 1:
            index = started[0]
            member_epoch = None if on_epoch is None else (lambda r: on_epoch(index, r))
            results[index] = train(configs[index], splits, device=device, on_epoch=member_epoch,
                                   speed=used, record_init_stats=record_init_stats,
                                   checkpoint=checkpoints(index) if checkpoints else None)
            return
        stacked = train_population(
            [configs[i] for i in started], splits, device=device, compile=used.compile,
            on_epoch=None if on_epoch is None else (lambda k, r: on_epoch(started[k], r)))
        for index, result in zip(started, stacked):
            results[index] = result
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(started) == 1:
            results[started[0]] = e
            return
        logger.warning("a stack of %d trials ran out of memory on %s; training them one at a time",
                       len(started), device)
        for index in started:
            _train_group(configs, [index], results, data, device=device, speed=speed,
                         on_start=on_start, on_epoch=on_epoch, record_init_stats=record_init_stats,
                         checkpoints=checkpoints)
    except Exception as e:  # noqa: BLE001 - the stack's members fail together, the caller goes on
        raise_if_interrupted(e)  # a stop signal a library wrapped stops them all
        for index in started:
            results[index] = e


def _start(
    members: list[int], results: list[TrainResult | Exception | None], *, speed: SpeedOptions,
    on_start: OnStart | None,
) -> tuple[list[int], SpeedOptions]:
    """Tell each member how it is about to train; those whose `on_start` raises fail alone.

    When one fails, the others are told again with the smaller stack, so every member's
    `RunInfo` (its trial's run record) names the stack it actually trains in.
    """
    started = list(members)
    while True:
        # A stack trains in float32 (bf16 autocast is for trials trained alone).
        used = speed if len(started) == 1 else SpeedOptions(compile=speed.compile)
        refused = []
        for index in started:
            try:
                if on_start is not None:
                    on_start(index, RunInfo(population=len(started), speed=used))
            except Exception as e:  # noqa: BLE001 - the member fails alone, with its reason
                raise_if_interrupted(e)  # a stop signal a library wrapped stops them all
                results[index] = e
                refused.append(index)
        if not refused:
            return started, used
        started = [index for index in started if index not in refused]
