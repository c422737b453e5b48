"""The trial record: what `to_attrs()` writes reads back with `from_trial()` from a real storage,
in today's JSON shapes; trials stored by an older hpsearch read with defaults; one metric rule."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.config import TrainConfig
from hpsearch.errors import StudyError
from hpsearch.search.outcomes import COMPLETE, FAILED, LOST, outcome_reason, trial_outcome
from hpsearch.search.provenance import WorkerIdentity, worker_identity
from hpsearch.search.record import (
    ATTR_CONFIG,
    ATTR_HISTORY,
    ATTR_RESULT,
    ATTR_RUN,
    CrossValRecord,
    History,
    Outcome,
    ResultSummary,
    RunRecord,
    StudyRecord,
    TrialRecord,
    config_attrs,
    finished_attrs,
    set_attrs,
    study_metric,
)
from hpsearch.search.storage import open_storage
from hpsearch.training import SpeedOptions, train, train_folds

CONFIG = TrainConfig(dataset="iris", hidden=(8,), epochs=3, batch_size=16, seed=5)
DATA = {"kind": "built-in", "location": "iris", "sha256": "ab" * 32, "files": {},
        "sizes": {"train": 120, "val": 30}}

# The keys a run record has held since hpsearch recorded data provenance; the dashboard, old
# studies and `final` read them by these names.
RUN_KEYS = ["data", "speed", "population", "seed", "dataset", "split", "device", "device_name",
            "worker", "versions", "study_module", "source_hash"]


def _study(url: str, **kwargs: object) -> optuna.Study:
    return optuna.create_study(storage=open_storage(url, heartbeat=None).storage, **kwargs)


def _stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial as a fresh read of the storage returns it (not the writer's cached copy)."""
    reread = optuna.load_study(study_name=study.study_name, storage=study._storage)
    return reread.get_trials(deepcopy=False)[number]


def test_a_told_trial_reads_back_as_written(storage_url: str, iris_splits) -> None:
    study = _study(storage_url, study_name="round-trip")
    trial = study.ask()
    run = RunRecord.of(CONFIG, device=torch.device("cpu"), study_module="quickstart",
                       source_hash="f00d", speed=SpeedOptions(bf16=True).to_dict(),
                       population=3, data=DATA)
    result = train(CONFIG, iris_splits, device=torch.device("cpu"), record_init_stats=True)
    set_attrs(trial, {**config_attrs(CONFIG), **run.to_attrs()})
    set_attrs(trial, finished_attrs(COMPLETE, None, result))
    study.tell(trial, result.final.metric("val_error"))

    stored = _stored(study, 0)
    record = TrialRecord.from_trial(stored)
    assert record.config(where="the study", why="-") == CONFIG
    assert record.run == run
    assert record.run.worker == WorkerIdentity.from_dict(worker_identity())
    assert record.run.precision == "bf16" and record.run.population == 3
    assert record.history.metric("val_error") == [r.val_error for r in result.history]
    assert record.result == ResultSummary(COMPLETE, None, stop_reason=result.stop_reason,
                                          best_epoch=result.best_epoch, epochs_run=3,
                                          seconds=round(result.seconds, 3),
                                          n_params=result.n_params)
    assert record.outcome == Outcome(COMPLETE, None) and trial_outcome(stored) == COMPLETE
    assert record.init_stats is not None and record.init_stats.values == result.init_stats
    assert record.cv is None
    # The shapes stay today's: the dashboard and older studies read these keys.
    assert list(stored.user_attrs[ATTR_RUN]) == RUN_KEYS
    assert stored.user_attrs[ATTR_RUN]["split"] == {"val_fraction": CONFIG.val_fraction, "split_seed": 0,
                                                    "cv_folds": 0}
    assert stored.user_attrs[ATTR_RESULT]["n_params"] == result.n_params
    assert set(stored.user_attrs) == {"config", "run", "history", "init_stats", "result",
                                      "outcome"}


def test_a_cross_validated_trial_keeps_its_folds(sqlite_url: str) -> None:
    from hpsearch.data import DataCache

    folds = DataCache(None, torch.device("cpu")).folds("iris", k=3, split_seed=0)
    result = train_folds(CONFIG, folds, metric="val_error", device=torch.device("cpu"))
    study = _study(sqlite_url)
    trial = study.ask()
    set_attrs(trial, finished_attrs(COMPLETE, None, result))
    study.tell(trial, result.value)

    cv = CrossValRecord.from_trial(_stored(study, 0))
    assert cv is not None and cv.k == 3 and cv.metric == "val_error"
    assert cv.values == result.values
    assert cv.history == [[r.val_error for r in fold.history] for fold in result.folds]
    assert cv.epochs_run == [3, 3, 3]


def test_non_finite_values_are_stored_as_strict_json(sqlite_url: str) -> None:
    study = _study(sqlite_url)
    trial = study.ask()
    set_attrs(trial, History({"train_loss": [0.5, math.nan, math.inf]}).to_attrs())
    study.tell(trial, state=TrialState.FAIL)
    stored = _stored(study, 0)
    json.dumps(stored.user_attrs, allow_nan=False)  # raises on NaN or Infinity
    assert History.from_trial(stored).metric("train_loss") == [0.5, None, None]


def test_a_trial_stored_by_an_older_hpsearch_reads_with_defaults(sqlite_url: str) -> None:
    study = _study(sqlite_url)
    old, bare = study.ask(), study.ask()
    # Before population, speed, data provenance, worker ids and the top-level outcome existed.
    old.set_user_attr(ATTR_CONFIG, {"dataset": "iris", "epochs": 3})
    old.set_user_attr(ATTR_RUN, {"seed": 1, "dataset": "iris", "device": "cpu",
                                 "worker": {"host": "h", "pid": 7}})
    old.set_user_attr(ATTR_RESULT, {"outcome": FAILED, "reason": "loss diverged at epoch 2"})
    old.set_user_attr(ATTR_HISTORY, {"val_error": [0.5, None]})
    study.tell(old, state=TrialState.FAIL)
    study.tell(bare, state=TrialState.FAIL)  # its worker died before it wrote anything

    record = TrialRecord.from_trial(_stored(study, 0))
    assert record.config(where="s", why="-") == TrainConfig(dataset="iris", epochs=3)
    assert record.run.population == 1 and record.run.speed == {} and record.run.data is None
    assert record.run.precision == "float32" and record.run.cv_folds == 0
    assert record.run.worker == WorkerIdentity(host="h", pid=7)
    assert record.run.worker.label == "h:7"
    assert record.result == ResultSummary(FAILED, "loss diverged at epoch 2")
    assert not record.result.trained
    assert record.outcome == Outcome(FAILED, "loss diverged at epoch 2")
    assert record.history.metric("val_error") == [0.5, None]
    assert record.history.metric("val_f1") == []

    nothing = TrialRecord.from_trial(_stored(study, 1))
    assert nothing.run == RunRecord() and nothing.result == ResultSummary()
    assert nothing.stored_config is None and nothing.cv is None and nothing.init_stats is None
    assert trial_outcome(_stored(study, 1)) == LOST
    assert "no outcome recorded" in str(outcome_reason(_stored(study, 1)))
    with pytest.raises(StudyError, match=r"trial 1 of study 's' has no stored config .*: why not"):
        nothing.config(where="study 's'", why="why not")


def test_the_result_of_a_trial_that_never_trained_keeps_its_short_shape() -> None:
    assert ResultSummary.of(LOST, "worker died").to_dict() == {"outcome": LOST,
                                                               "reason": "worker died"}
    assert finished_attrs(FAILED, "bad config", None) == {
        "result": {"outcome": FAILED, "reason": "bad config"},
        "outcome": FAILED, "outcome_reason": "bad config",
    }
    assert Outcome(COMPLETE, None).to_attrs() == {"outcome": COMPLETE}


def test_one_rule_for_the_study_metric(sqlite_url: str) -> None:
    stored = _study(sqlite_url, study_name="stored", direction="maximize")
    stored.set_user_attr("metric", "val_accuracy")
    stored.set_metric_names(["something else"])
    assert study_metric(stored).name == "val_accuracy"
    assert study_metric(stored).maximize and study_metric(stored).direction == "maximize"

    # A study whose creator stopped between naming the metric and storing its settings.
    named = _study(sqlite_url, study_name="named")
    named.set_metric_names(["val_error"])
    assert study_metric(named).name == "val_error" and not study_metric(named).maximize

    foreign = _study(sqlite_url, study_name="foreign")
    assert study_metric(foreign).name == "value"


def test_study_settings_read_back_and_an_older_study_lacks_some(sqlite_url: str) -> None:
    settings = StudyRecord(cv=0, study_module="quickstart", dataset="digits", metric="val_error",
                           epochs=3, seed=0, sampler="tpe", pruner="median", source_hash="f00d",
                           data=DATA)
    study = _study(sqlite_url, study_name="settings")
    for key, value in settings.to_attrs().items():
        study.set_user_attr(key, value)
    reread = optuna.load_study(study_name="settings", storage=study._storage)
    assert StudyRecord.from_study(reread) == settings
    assert next(iter(settings.to_attrs())) == "cv" and "precision" not in settings.to_attrs()

    older = _study(sqlite_url, study_name="older")
    older.set_user_attr("study_module", "quickstart")  # before cv, data and precision existed
    assert StudyRecord.from_study(older) == StudyRecord(study_module="quickstart")
