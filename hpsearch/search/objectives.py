"""What a study optimises: one metric, or several at once (a multi-objective study).

A study module declares one metric (`METRIC = "val_error"`) or several with their directions
(`METRICS = {"val_error": "minimize", "n_params": "minimize"}`). Besides the per-epoch metrics
the trainer records (`training.METRICS`), a study may minimise what a trained model costs:
`n_params` (its parameter count) and `epoch_seconds` (its training wall time per epoch). A
trial is told one value per objective, in the declared order; the first is the study's primary
metric (`StudyRecord.metric`), the one reported per epoch and ranked by where one ranking is
needed.

Optuna neither reports intermediate values nor prunes in a study with several objectives
(`Trial.report` and `Trial.should_prune` raise NotImplementedError there), so a multi-objective
trial trains to its end and a pruner is refused (`settings.resolve_settings`). Its answer is the
Pareto front, `Study.best_trials`: the completed trials that no other completed trial beats in
every objective.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from hpsearch.errors import StudyError, choices_hint
from hpsearch.training import METRICS, CrossValResult, TrainResult

# What a trained model costs, minimised: name -> what it is (for the docs and errors).
COST_METRICS: dict[str, str] = {
    "n_params": "parameter count of the model",
    "epoch_seconds": "training wall time per epoch, in seconds",
}
DIRECTIONS = ("minimize", "maximize")


def natural_direction(name: str) -> Literal["minimize", "maximize"]:
    """Which way `name` is better: the trainer's metrics by `METRICS`, costs are minimised."""
    return "maximize" if METRICS.get(name, False) else "minimize"


def known_metrics() -> list[str]:
    return [*METRICS, *COST_METRICS]


def read_objectives(study: str, declared: Any) -> tuple[str, ...]:
    """The objectives of a module's `METRICS = {name: direction, ...}`, in order; StudyError
    naming the bad entry and its fix."""
    example = 'METRICS = {"val_error": "minimize", "n_params": "minimize"}'
    if not isinstance(declared, Mapping) or not declared:
        raise StudyError(f"study module {study!r}: METRICS = {declared!r} must map each metric to "
                         f"its direction, e.g. {example}")
    for name, direction in declared.items():
        if name not in known_metrics():
            raise StudyError(f"study module {study!r}: METRICS: "
                             f"{choices_hint(name, known_metrics(), 'metric')}")
        if direction not in DIRECTIONS:
            raise StudyError(f"study module {study!r}: METRICS[{name!r}] = {direction!r}; give "
                             "'minimize' or 'maximize'")
        if direction != natural_direction(name):
            raise StudyError(f"study module {study!r}: METRICS[{name!r}] = {direction!r}, but "
                             f"{name} is better {'larger' if METRICS.get(name) else 'smaller'}; "
                             f"declare it {natural_direction(name)!r}")
    return tuple(declared)


def trial_values(result: TrainResult | CrossValResult, objectives: Sequence[str]) -> list[float]:
    """A completed run's value of each objective, in order: what its trial is told."""
    values = []
    for name in objectives:
        if name == "n_params":
            values.append(float(result.n_params))
        elif name == "epoch_seconds":
            runs = result.folds if isinstance(result, CrossValResult) else [result]
            epochs = sum(len(run.history) for run in runs)
            values.append(result.seconds / max(epochs, 1))
        elif isinstance(result, CrossValResult):  # the mean over the folds
            values.append(result.value if name == result.metric else
                          statistics.fmean(fold.final.metric(name) for fold in result.folds))
        else:
            values.append(result.final.metric(name))
    return values


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's Pareto front (`Study.best_trials`), ordered by the first objective, then number."""
    front = study.best_trials
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def format_value(name: str, value: float) -> str:
    """An objective's value as a person reads it: a count whole, the rest to 4 digits."""
    return f"{value:.0f}" if name == "n_params" else f"{value:.4g}"
