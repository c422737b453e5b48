"""What the trial path hands back to the worker and the CLI, and how it names an ending.

`TrialOutcome` is one told (or dropped) trial, `Progress` the running one's step, `describe`
names either in one line; `classify`
maps a training run that ended by itself to a state, an outcome and a reason, `error_reason`
does so for an exception, and `taken_over` is the trial another worker failed as lost.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.errors import HPSearchError
from hpsearch.search.outcomes import COMPLETE, FAILED, PRUNED, TAKEN_OVER
from hpsearch.training import CrossValResult, TrainResult

logger = logging.getLogger(__name__)

Result = TrainResult | CrossValResult


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    number: int
    outcome: str
    value: float | None
    reason: str | None
    seconds: float
    error: bool = False  # failed by an exception (bad config, out of memory, a bug), not divergence
    values: tuple[float, ...] = ()  # a completed trial's value of each objective (value: the first)


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far the running trial has got: `step` of `of` epochs (or folds, under
    cross-validation); for a progress display, which the trainer knows nothing about."""

    trial: int
    step: int
    of: int
    unit: str  # "epoch" or "fold"


OnProgress = Callable[[Progress], None]


def classify(result: Result) -> tuple[TrialState, str, str | None]:
    """The state, outcome and reason of a training run that ended by itself: failed (diverged),
    pruned or complete."""
    if result.failure is not None:
        return TrialState.FAIL, FAILED, result.failure
    if result.stop_reason == "stopped":
        where = (f"fold {len(result.folds)} of {result.k}" if isinstance(result, CrossValResult)
                 else f"epoch {len(result.history)}")
        return TrialState.PRUNED, PRUNED, f"pruned after {where}"
    return TrialState.COMPLETE, COMPLETE, None


def error_reason(e: Exception, device: torch.device) -> str:
    """The stored reason of a trial that failed by an exception: out of memory, a bad config
    (hpsearch's own errors, which say what to fix), or a bug, with where it was raised."""
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory on {device}: {_first_line(e)}"
    if isinstance(e, HPSearchError):
        return str(e)
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def taken_over(trial: optuna.Trial) -> TrialOutcome:
    """The outcome of a trial that another worker failed as lost (and queued again) while this
    worker still ran it: nothing more is written to it."""
    reason = ("another worker declared it lost (its heartbeat or its process looked dead, e.g. during "
              "a long pause) and queued it again")
    logger.warning("trial %d was taken over: %s; dropping it and going on", trial.number, reason)
    return TrialOutcome(number=trial.number, outcome=TAKEN_OVER, value=None, reason=reason, seconds=0.0)


def describe(outcome: TrialOutcome | Progress | None) -> str:
    """`trial 3 complete 0.0486`, or the running trial's `trial 3: epoch 4/20`: how the command
    line and the Python API's progress bars name a trial."""
    if outcome is None:
        return ""
    if isinstance(outcome, Progress):  # the running trial
        return f"trial {outcome.trial}: {outcome.unit} {outcome.step}/{outcome.of}"
    value = f" {outcome.value:.4f}" if outcome.value is not None else ""
    if len(outcome.values) > 1:  # a multi-objective trial: each objective's value
        value = " " + ", ".join(f"{v:.4g}" for v in outcome.values)
    return f"trial {outcome.number} {outcome.outcome}{value}"


def finished_line(outcome: TrialOutcome, *, done: int, budget: int) -> str:
    """`trial 3 complete 0.0486 (2.0 s); study: 4/20 finished`: the line a log gets per finished
    trial, from `run`, `worker` and the Python API alike."""
    return f"{describe(outcome)} ({outcome.seconds:.1f} s); study: {done}/{budget} finished"
