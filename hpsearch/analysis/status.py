"""`hpsearch status`: where a study stands, read from the storage alone."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.analysis.cost import CostTotals, cost_totals
from hpsearch.data import DataSource
from hpsearch.search.objectives import pareto_front
from hpsearch.search.outcomes import (
    FAILED,
    INTERRUPTED,
    LOST,
    outcome_counts,
    outcome_reason,
    trial_outcome,
)
from hpsearch.search.record import (
    Estimate,
    RunRecord,
    StopRecord,
    StudyRecord,
    stored_estimates,
    study_metric,
)

RECENT_SECONDS = 600.0  # a worker counts as seen recently if it started or ended a trial this lately
MAX_REASON_TRIALS = 5  # trial numbers listed after each reason


@dataclasses.dataclass(frozen=True)
class WorkerSeen:
    worker: str  # host:pid
    trials: int
    running: int
    last_seen: datetime.datetime


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    study_name: str
    states: dict[str, int]  # trials by outcome (hpsearch.search.outcomes), in its ORDER
    reasons: dict[str, list[int]]  # why trials failed, were interrupted or lost: trial numbers
    best: FrozenTrial | None
    metric: str
    workers: list[WorkerSeen]  # seen within RECENT_SECONDS, most recent first
    running: list[FrozenTrial]
    data: Any = None  # the study's data record (`Splits.provenance`), None if not recorded
    on_other_data: int = 0  # trials that ran on data with another hash (--allow-other-data)
    cost: CostTotals | None = None  # device time, trials per hour, best value against cost
    estimates: list[Estimate] = dataclasses.field(default_factory=list)  # --stop-when-converged
    stopped: StopRecord | None = None  # why the study stopped starting trials, if it did
    objectives: tuple[str, ...] = ()  # a multi-objective study's metrics (best is then None)
    pareto: list[FrozenTrial] = dataclasses.field(default_factory=list)  # its Pareto front


def study_status(study: optuna.Study, *, now: datetime.datetime | None = None) -> StudyStatus:
    now = now or datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    reasons: dict[str, list[int]] = {}
    for t in trials:
        if trial_outcome(t) in (FAILED, INTERRUPTED, LOST):
            reasons.setdefault(str(outcome_reason(t)), []).append(t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    metric = study_metric(study)
    best = study.best_trial if complete and not metric.multi_objective else None
    return StudyStatus(
        study_name=study.study_name,
        states=outcome_counts(trials),
        reasons=reasons,
        best=best,
        metric=metric.name,
        workers=_workers(trials, now),
        running=[t for t in trials if t.state == TrialState.RUNNING],
        data=StudyRecord.from_study(study).data,
        on_other_data=_on_other_data(study, trials),
        cost=cost_totals(trials, maximize=_maximize(study)),
        estimates=stored_estimates(study),
        stopped=StopRecord.from_study(study),
        objectives=metric.names if metric.multi_objective else (),
        pareto=pareto_front(study) if metric.multi_objective and complete else [],
    )


def _maximize(study: optuna.Study) -> bool | None:
    """Whether higher is better; None for a study of several objectives (no single best)."""
    directions = study.directions
    return None if len(directions) > 1 else directions[0] == optuna.study.StudyDirection.MAXIMIZE


def _on_other_data(study: optuna.Study, trials: list[FrozenTrial]) -> int:
    study_data = DataSource.from_dict(StudyRecord.from_study(study).data)
    if study_data is None:
        return 0
    # A queued retry carries a copy of its original's run record; count the original only.
    used = (DataSource.from_dict(RunRecord.from_trial(t).data) for t in trials
            if t.state != TrialState.WAITING)
    return sum(1 for source in used if source is not None and source.sha256 != study_data.sha256)


def _workers(trials: list[FrozenTrial], now: datetime.datetime) -> list[WorkerSeen]:
    seen: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if t.state == TrialState.WAITING:
            continue  # a queued retry is nobody's yet (Optuna's heartbeat retry copies the worker)
        worker = RunRecord.from_trial(t).worker
        if worker.host is not None:
            seen.setdefault(worker.label, []).append(t)
    recent = []
    for name, own in seen.items():
        last = max((t.datetime_complete or t.datetime_start or datetime.datetime.min) for t in own)
        if (now - last).total_seconds() <= RECENT_SECONDS or any(
            t.state == TrialState.RUNNING for t in own
        ):
            running = sum(t.state == TrialState.RUNNING for t in own)
            recent.append(WorkerSeen(name, len(own), running, last))
    return sorted(recent, key=lambda w: w.last_seen, reverse=True)
