"""`hpsearch status`: where a study stands, read from the storage alone."""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.runner import ATTR_RUN, trial_outcome

RECENT_SECONDS = 600.0  # a worker counts as seen recently if it started or ended a trial this lately


@dataclasses.dataclass(frozen=True)
class WorkerSeen:
    worker: str  # host:pid
    trials: int
    running: int
    last_seen: datetime.datetime


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    study_name: str
    states: dict[str, int]  # running, waiting, complete, pruned, failed, lost or interrupted
    best: FrozenTrial | None
    metric: str
    workers: list[WorkerSeen]  # seen within RECENT_SECONDS, most recent first
    running: list[FrozenTrial]


def study_status(study: optuna.Study, *, now: datetime.datetime | None = None) -> StudyStatus:
    now = now or datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    states: Counter[str] = Counter()
    for t in trials:
        if t.state == TrialState.FAIL:
            # A failed trial whose worker died (no outcome recorded: the heartbeat or another
            # worker failed it) or was interrupted was queued again; its config did not fail.
            states["failed" if trial_outcome(t) == "failed" else "lost or interrupted"] += 1
        else:
            states[t.state.name.lower()] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return StudyStatus(
        study_name=study.study_name,
        states=dict(states),
        best=best,
        metric=study.user_attrs.get("metric", "value"),
        workers=_workers(trials, now),
        running=[t for t in trials if t.state == TrialState.RUNNING],
    )


def _workers(trials: list[FrozenTrial], now: datetime.datetime) -> list[WorkerSeen]:
    seen: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        worker = t.user_attrs.get(ATTR_RUN, {}).get("worker")
        if isinstance(worker, dict) and "host" in worker:
            seen.setdefault(f"{worker['host']}:{worker.get('pid')}", []).append(t)
    recent = []
    for name, own in seen.items():
        last = max((t.datetime_complete or t.datetime_start or datetime.datetime.min) for t in own)
        if (now - last).total_seconds() <= RECENT_SECONDS or any(
            t.state == TrialState.RUNNING for t in own
        ):
            running = sum(t.state == TrialState.RUNNING for t in own)
            recent.append(WorkerSeen(name, len(own), running, last))
    return sorted(recent, key=lambda w: w.last_seen, reverse=True)
