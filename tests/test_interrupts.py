"""A stop signal that a library swallows is still a stop.

SIGINT raises `Interrupted` wherever the worker happens to be. When that is inside a database
call, psycopg and SQLAlchemy may fail while cleaning up (a connection left mid-transaction) and
raise their own error with the interrupt as its context; Optuna then wraps that as
StorageInternalError. Seen in a `launch` Ctrl-C test: the trial was stored as failed by a
StorageInternalError, the worker went on to the next trial, and the launcher had to kill it,
leaving that trial RUNNING.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.errors import interrupt_in
from hpsearch.search.outcomes import Interrupted, interrupt_on_signals, trial_outcome
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, run_worker

CPU = torch.device("cpu")


def _swallowed_interrupt() -> optuna.exceptions.StorageInternalError:
    """What psycopg, SQLAlchemy and Optuna make of a SIGINT in the middle of a commit."""
    try:
        try:
            raise Interrupted(signal.SIGINT)
        except KeyboardInterrupt as e:
            raise RuntimeError("can't change 'autocommit' now: connection in transaction") from e
    except RuntimeError:
        try:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        except optuna.exceptions.StorageInternalError as wrapped:
            return wrapped


def test_interrupt_in_finds_the_signal_behind_a_library_error() -> None:
    found = interrupt_in(_swallowed_interrupt())
    assert isinstance(found, Interrupted) and found.signal_name == "SIGINT"
    assert interrupt_in(ValueError("a plain bug")) is None
    looped = ValueError("a cycle")
    looped.__context__ = RuntimeError("back")
    looped.__context__.__context__ = looped
    assert interrupt_in(looped) is None


@pytest.mark.parametrize("population", [1, 2])
def test_a_swallowed_interrupt_stops_the_worker_and_queues_its_trials(
    population: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = resolve_settings(load_study("quickstart"), epochs=3, pruner="none", sampler="random")

    def report(self: optuna.Trial, value: float, step: int) -> None:
        raise _swallowed_interrupt()

    monkeypatch.setattr(optuna.Trial, "report", report)
    handle = open_storage(url, heartbeat=None)
    with pytest.raises(KeyboardInterrupt):
        run_worker(handle, settings, WorkerOptions(trials=4, device=CPU, population=population))
    trials = optuna.load_study(study_name=settings.study_name, storage=url).get_trials()
    ran = [t for t in trials if t.state != TrialState.WAITING]
    # The worker stopped at its first batch: no later trial was started, none was failed.
    assert len(ran) == population, [(t.number, t.state) for t in trials]
    assert [trial_outcome(t) for t in ran] == ["interrupted"] * population
    assert {t.user_attrs["outcome_reason"] for t in ran} == {"interrupted by SIGINT"}
    assert sum(t.state == TrialState.WAITING for t in trials) == population  # queued again


# Trial 0 drops an object whose finalizer raises what the SIGTERM handler raises: a stand-in for
# a signal that lands while the garbage collector runs a finalizer or weakref callback (seen with
# SQLAlchemy's), where Python prints "Exception ignored in ..." and drops the exception.
FINALIZER_STOP = '''"""Trial 0 meets a stop signal inside a finalizer."""
import signal
from hpsearch.config import TrainConfig
from hpsearch.search.outcomes import Interrupted

BASE = TrainConfig(dataset="iris", hidden=(8,), epochs=3)
PRUNER = "none"

class Finalized:
    def __del__(self):
        raise Interrupted(signal.SIGTERM)

def suggest(trial, base):
    if trial.number == 0:
        Finalized()
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
'''


def test_a_stop_signal_swallowed_by_a_finalizer_still_stops_the_worker_and_queues_its_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = tmp_path / "finalizer_stop.py"
    module.write_text(FINALIZER_STOP)
    settings = resolve_settings(load_study(str(module)), sampler="random")
    handle = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=None)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored afterwards
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        interrupt_on_signals()
        with pytest.raises(Interrupted):
            run_worker(handle, settings, WorkerOptions(trials=3, device=CPU))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    trials = optuna.load_study(study_name=settings.study_name, storage=handle.storage).get_trials()
    # Stopped at trial 0's first report: told interrupted, queued again, nothing else started.
    assert [(t.number, trial_outcome(t)) for t in trials] == [(0, "interrupted"), (1, "waiting")]
    assert len(trials[0].intermediate_values) == 0
    assert trials[0].user_attrs["outcome_reason"] == "interrupted by SIGTERM"
