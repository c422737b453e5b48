"""A grid study's metric as a table over its two grid axes, and the one-line answer it gives.

A grid study (sampler `grid`) asks one question over two axes (activation x depth, init x
activation, depth x width). Its table has one row per value of the row axis and one column per
value of the column axis: the columns are the axis whose values are numbers when only one is
(depth, the scale the question runs along), else the axis with fewer values, else the second
by name. A grid with more than two axes keeps the two with the most values and takes, in each
cell, the best trial over the others; `GridTable.note` says so.

The answer rule, computed from the stored trials and never written by hand:
- best: the cell of the best completed trial, with its metric;
- per row, the cells where it does not train: a failed trial (diverged, out of memory), or a
  completed one whose validation error stays above `NOT_TRAINING` x the chance error (1 - 1/C
  for C classes, known for the built-in data sets). Pruned and missing cells are not judged.
  A row whose failures are all past its last trained column "fails to train beyond" it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.outcomes import COUNTED, FAILED, PRUNED, trial_outcome
from hpsearch.search.record import History

NOT_TRAINING = 0.8  # x chance error: a model this close to guessing has not learned the task
CLASSES = {"mnist": 10, "fashion-mnist": 10, "digits": 10, "cifar10": 10, "iris": 3}


def chance_error(dataset: str | None) -> float | None:
    """1 - 1/C for a built-in data set of C classes (parity-N has 2); None if unknown."""
    if not dataset:
        return None
    classes = 2 if dataset.startswith("parity-") else CLASSES.get(dataset)
    return 1 - 1 / classes if classes else None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid cell: its best completed trial's value, else how its trials ended."""

    value: float | None  # the best completed trial's metric; None if none completed
    outcome: str  # "complete", "pruned", "failed", or "not run"
    trial: FrozenTrial | None  # the trial the cell shows


@dataclasses.dataclass(frozen=True)
class GridTable:
    row_axis: str
    col_axis: str
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]
    note: str  # what the table aggregates, or ""

    def cell(self, row: Any, col: Any) -> Cell:
        return self.cells.get((row, col), Cell(None, "not run", None))


def grid_axes(trials: Sequence[FrozenTrial]) -> dict[str, list[Any]]:
    """The grid's axes (its categorical parameters), each with its values as declared."""
    axes: dict[str, list[Any]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name not in axes and isinstance(dist, CategoricalDistribution):
                axes[name] = list(dist.choices)
    return axes


def numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _pick_axes(axes: dict[str, list[Any]]) -> tuple[str, str]:
    """(row axis, column axis) of the two axes with the most values (the rule in the docstring)."""
    two = sorted(axes, key=lambda name: (-len(axes[name]), name))[:2]
    two.sort()
    first, second = two
    if numeric(axes[first]) != numeric(axes[second]):
        return (second, first) if numeric(axes[first]) else (first, second)
    if len(axes[first]) != len(axes[second]):
        return (first, second) if len(axes[first]) > len(axes[second]) else (second, first)
    return first, second


def grid_table(trials: Sequence[FrozenTrial], *, maximize: bool) -> GridTable | None:
    """The metric over the grid's two axes; None for a study with fewer than two."""
    axes = grid_axes(trials)
    if len(axes) < 2:
        return None
    row_axis, col_axis = _pick_axes(axes)
    rest = sorted(set(axes) - {row_axis, col_axis})
    note = (f"Each cell is the best over {', '.join(rest)} (the grid has {len(axes)} axes; the "
            "table shows the two with the most values)." if rest else "")
    grouped: dict[tuple[Any, Any], list[FrozenTrial]] = {}
    for t in trials:
        if trial_outcome(t) in COUNTED and row_axis in t.params and col_axis in t.params:
            grouped.setdefault((t.params[row_axis], t.params[col_axis]), []).append(t)
    cells = {key: _cell(group, maximize=maximize) for key, group in grouped.items()}
    return GridTable(row_axis, col_axis, axes[row_axis], axes[col_axis], cells, note)


def _cell(trials: list[FrozenTrial], *, maximize: bool) -> Cell:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        best = (max if maximize else min)(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
        return Cell(best.value, "complete", best)
    failed = [t for t in trials if trial_outcome(t) == FAILED]
    if failed:
        return Cell(None, FAILED, failed[0])
    return Cell(None, PRUNED, trials[0])


def trial_error(trial: FrozenTrial, *, metric: str) -> float | None:
    """The trial's best validation error: from its history, else its metric if it is one."""
    errors = [e for e in History.from_trial(trial).metric("val_error")
              if e is not None and math.isfinite(e)]
    if errors:
        return min(errors)
    if trial.value is None:
        return None
    if metric.endswith("error"):
        return trial.value
    return 1 - trial.value if metric.endswith("accuracy") else None


def trains(cell: Cell, *, metric: str, chance: float | None) -> bool | None:
    """Whether the cell's configuration trained; None when it cannot be judged."""
    if cell.outcome == FAILED:
        return False
    if cell.outcome != "complete" or cell.trial is None or chance is None:
        return None if cell.outcome != "complete" else True
    error = trial_error(cell.trial, metric=metric)
    return None if error is None else error <= NOT_TRAINING * chance
