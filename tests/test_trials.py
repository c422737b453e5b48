"""The one trial path: a trial alone and a trial in a stack follow the same rules.

Three places where the single and the stacked paths used to differ, each decided once and
checked for a population of 1 and of 3: whether NopPruner is asked, what the run record holds,
and what a storage error while recording does to the trial and the budget; and an interrupt
ends every member of a batch the same way.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from hpsearch.search import trials as trial_path
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, budget_state, run_worker

CPU = torch.device("cpu")


def _run(url: str, *, population: int, pruner: str, trials: int = 3):  # type: ignore[no-untyped-def]
    settings = resolve_settings(load_study("quickstart"), epochs=2, pruner=pruner)
    handle = open_storage(url)
    report = run_worker(handle, settings, WorkerOptions(trials=trials, device=CPU,
                                                        population=population))
    study = optuna.load_study(study_name=settings.study_name, storage=handle.storage)
    return report, study


def _count_should_prune(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    asked: list[int] = []
    original = optuna.Trial.should_prune

    def counted(self: optuna.Trial) -> bool:
        asked.append(self.number)
        return original(self)

    monkeypatch.setattr(optuna.Trial, "should_prune", counted)
    return asked


@pytest.mark.parametrize("population", [1, 3])
def test_nop_pruner_is_never_asked_and_a_real_one_every_epoch(
    population: int, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _count_should_prune(monkeypatch)
    report, study = _run(f"sqlite:///{tmp_path / 'none.db'}", population=population, pruner="none")
    assert [o.outcome for o in report.outcomes] == ["complete"] * 3
    assert asked == []
    # Every epoch was still reported, so the dashboard's intermediate values are there.
    assert [len(t.intermediate_values) for t in study.trials] == [2, 2, 2]

    report, study = _run(f"sqlite:///{tmp_path / 'median.db'}", population=population,
                         pruner="median")
    assert [o.outcome for o in report.outcomes] == ["complete"] * 3  # 5 start-up trials
    assert sorted(asked) == [0, 0, 1, 1, 2, 2]  # each trial, once per epoch


@pytest.mark.parametrize("population", [1, 3])
def test_every_run_record_holds_its_population_and_the_speed_it_trained_with(
    population: int, sqlite_url: str
) -> None:
    _, study = _run(sqlite_url, population=population, pruner="none")
    runs = [t.user_attrs["run"] for t in study.trials]
    assert [run["population"] for run in runs] == [population] * 3
    assert all(run["speed"] == {"compile": False, "bf16": False} for run in runs)
    assert all(run["split"]["cv_folds"] == 0 and run["data"]["sizes"]["train"] > 0 for run in runs)


@pytest.mark.parametrize("population", [1, 3])
def test_a_storage_error_while_recording_fails_that_trial_alone_and_counts(
    population: int, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed: list[int] = []
    original = optuna.Trial.set_user_attr

    def flaky(self: optuna.Trial, key: str, value: Any) -> None:
        if key == "run" and self.number == 1 and not failed:
            failed.append(self.number)
            raise sqlalchemy.exc.OperationalError("UPDATE trial_user_attributes", {},
                                                  Exception("database is locked"))
        original(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", flaky)
    report, study = _run(sqlite_url, population=population, pruner="none")
    assert failed == [1]
    assert [o.outcome for o in report.outcomes] == ["complete", "failed", "complete"]
    broken = report.outcomes[1]
    assert broken.error and "OperationalError" in broken.reason and "database is locked" in broken.reason
    # It counts toward the budget: three trials in all, not a fourth to make up for it.
    assert len(study.trials) == 3 and budget_state(study).done == 3
    stored = study.trials[1]
    assert stored.state == TrialState.FAIL and "run" not in stored.user_attrs
    assert stored.user_attrs["result"]["outcome"] == "failed"
    assert "database is locked" in stored.user_attrs["outcome_reason"]
    # The others trained as usual, with their own records, which name the stack they trained in
    # (the two of them, once trial 1 left it).
    trained_in = 1 if population == 1 else population - 1
    assert all(study.trials[n].user_attrs["run"]["population"] == trained_in for n in (0, 2))


@pytest.mark.parametrize("population", [1, 3])
def test_an_interrupt_tells_every_member_interrupted_and_queues_it_again(
    population: int, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted_after_one_epoch(*args: Any, on_epoch: Any, **kwargs: Any) -> Any:
        def epoch(index: int, record: Any) -> Any:
            on_epoch(index, record)
            raise KeyboardInterrupt

        return train_many(*args, on_epoch=epoch, **kwargs)

    train_many = trial_path.train_many
    monkeypatch.setattr(trial_path, "train_many", interrupted_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(sqlite_url, population=population, pruner="none")
    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    ran = [t for t in study.trials if t.state == TrialState.FAIL]
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(ran) == population and all(
        t.user_attrs["result"] == {"outcome": "interrupted", "reason": "interrupted by SIGINT"}
        for t in ran)
    assert sorted(t.params["lr"] for t in queued) == sorted(t.params["lr"] for t in ran)
    assert budget_state(study).done == 0
