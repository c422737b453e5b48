"""Workers under faults: started together, paused, killed on other hosts or namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.search import trials as trial_path
from hpsearch.search.liveness import heartbeat, recover_lost_trials
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.provenance import worker_identity
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import ATTR_BEAT, open_storage
from hpsearch.search.storage import requeue as retry
from hpsearch.search.study import open_study, study_attrs
from hpsearch.search.worker import WorkerOptions, budget_state, run_worker

CPU = torch.device("cpu")


def _quickstart(**kwargs: object):  # type: ignore[no-untyped-def]
    return resolve_settings(load_study("quickstart"), epochs=1, pruner="none", **kwargs)  # type: ignore[arg-type]


def test_workers_opening_a_fresh_postgres_database_together_all_get_the_whole_study(
    postgres_url: str,
) -> None:
    settings = _quickstart()
    n = 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            open_study(open_storage(postgres_url, heartbeat=None), settings)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    study = optuna.load_study(study_name="quickstart", storage=postgres_url)
    assert study.user_attrs == study_attrs(settings)
    assert study.metric_names == ["val_error"]
    assert len(optuna.get_all_study_summaries(postgres_url)) == 1


def test_a_study_whose_creator_died_midway_is_completed_by_the_next_worker(postgres_url: str) -> None:
    settings = _quickstart()
    # What a creator killed after its first attribute leaves behind: the next worker used to stop
    # with "created with dataset=None".
    partial = optuna.create_study(study_name="quickstart", storage=postgres_url)
    for key, value in list(study_attrs(settings).items())[:1]:
        partial.set_user_attr(key, value)
    handle = open_storage(postgres_url, heartbeat=None)
    report = run_worker(handle, settings, WorkerOptions(trials=1, device=CPU))
    study = optuna.load_study(study_name="quickstart", storage=postgres_url)
    assert study.user_attrs.items() >= study_attrs(settings).items()
    assert len(report.outcomes) == 1 and budget_state(study).done == 1


# --- which running trials are lost: pid only within one PID namespace, else the heartbeat ----


def _gone_pid() -> int:
    """A pid that no process here has (that of a child that has exited and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _running_trial(study: optuna.Study, worker: dict[str, object]) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    trial.set_user_attr("run", {"worker": worker})
    return trial


@pytest.mark.parametrize(
    ("differs", "lost"),
    [(None, True), ("pid_ns", False), ("boot_id", False)],
)
def test_a_pid_counts_only_in_the_same_host_boot_and_pid_namespace(
    differs: str | None, lost: bool, sqlite_url: str
) -> None:
    handle = open_storage(sqlite_url)
    study = open_study(handle, _quickstart())
    # Same host name, the pid of no process here: another container on the host network, or a
    # cloned VM, whose worker is alive and beating.
    worker: dict[str, object] = {**worker_identity(), "pid": _gone_pid(), "id": "another-worker"}
    if differs is not None:
        worker[differs] = "something else"
    trial = _running_trial(study, worker)
    assert recover_lost_trials(study, handle) == ([trial.number] if lost else [])
    state = study.get_trials()[trial.number].state
    assert state == (TrialState.FAIL if lost else TrialState.RUNNING)


def test_a_journal_trial_of_a_dead_worker_on_another_host_is_recovered_by_its_heartbeat(
    journal_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = open_storage(journal_url, heartbeat=1)
    settings = _quickstart()
    study = open_study(handle, settings)
    elsewhere = {"host": "container2", "pid": 1, "id": "x", "boot_id": "y", "pid_ns": 1}
    orphan = _running_trial(study, elsewhere)
    handle.storage.set_trial_system_attr(trial_id(orphan), ATTR_BEAT, time.time() - 3.5)
    alive = _running_trial(study, elsewhere)  # beating: must be left alone
    handle.storage.set_trial_system_attr(trial_id(alive), ATTR_BEAT, time.time())
    assert recover_lost_trials(study, handle) == [orphan.number]
    study.tell(alive, 0.5)

    started = time.monotonic()
    report = run_worker(handle, settings, WorkerOptions(trials=3, device=CPU, timeout=60))
    assert report.stopped == "budget" and time.monotonic() - started < 30
    trials = study.get_trials()
    assert trials[orphan.number].user_attrs["result"]["outcome"] == "lost"
    assert "no heartbeat" in trials[orphan.number].user_attrs["result"]["reason"]
    retried = [t for t in trials if t.params == orphan.params and t.state == TrialState.COMPLETE]
    assert len(retried) == 1 and budget_state(study).done == 3
    # The retry carries neither the dead worker's record nor its last beat.
    assert retried[0].user_attrs["run"]["worker"]["id"] == worker_identity()["id"]


def test_a_journal_trial_that_never_beat_is_recovered_once_its_start_is_older_than_the_grace(
    journal_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker killed between `ask` and its first beat, or a journal from before beats existed.
    handle = open_storage(journal_url, heartbeat=1)
    study = open_study(handle, _quickstart())
    elsewhere = {"host": "container2", "pid": 1, "id": "x", "boot_id": "y", "pid_ns": 1}
    orphan = _running_trial(study, elsewhere)
    assert ATTR_BEAT not in study.get_trials()[orphan.number].system_attrs
    assert recover_lost_trials(study, handle) == []  # just started: it may still beat
    time.sleep(3.5)
    assert recover_lost_trials(study, handle) == [orphan.number]
    assert study.get_trials()[orphan.number].state == TrialState.FAIL


def test_a_trial_optunas_heartbeat_fails_is_queued_without_the_dead_attempts_record(
    sqlite_url: str,
) -> None:
    # The copy Optuna's own callback makes would carry the dead worker's record: its pid could
    # get the retry failed as lost, and `status` would credit the retry to the dead worker.
    handle = open_storage(sqlite_url, heartbeat=1)
    study = open_study(handle, _quickstart())
    elsewhere = {"host": "container2", "pid": 1, "id": "x", "boot_id": "y", "pid_ns": 1}
    dead = _running_trial(study, elsewhere)
    handle.storage.record_heartbeat(trial_id(dead))
    time.sleep(4.5)  # SQLite's clock (CURRENT_TIMESTAMP) has whole seconds; grace is 3
    recover_lost_trials(study, handle)
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == trials[dead.number].params
    assert queued[0].user_attrs == {}


def test_the_journal_heartbeat_is_written_while_a_trial_runs(journal_url: str) -> None:
    handle = open_storage(journal_url, heartbeat=1)
    study = open_study(handle, _quickstart())
    trial = study.ask()
    with heartbeat(handle, trial_id(trial)):
        time.sleep(1.5)
    beats = study.get_trials()[0].system_attrs[ATTR_BEAT]
    assert time.time() - 3 < beats <= time.time()


# --- a worker whose trial another worker failed drops it and goes on ------------------------


def _fail_from_outside(url: str) -> None:
    """What another worker's `recover_lost_trials` does to a trial it thinks is lost."""
    other = open_storage(url, heartbeat=None)
    study = optuna.load_study(study_name="quickstart", storage=other.storage)
    victim = min(study.get_trials(states=(TrialState.RUNNING,)), key=lambda t: t.number)
    other.storage.set_trial_state_values(trial_id(victim), state=TrialState.FAIL)
    retry(study, other.storage.get_trial(trial_id(victim)))


@pytest.mark.parametrize("population", [1, 2])
def test_a_worker_whose_trial_is_taken_over_drops_it_and_finishes_the_budget(
    population: int, storage_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[bool] = []

    def hooked(train):  # type: ignore[no-untyped-def]
        def run(*args, on_epoch, **kwargs):  # type: ignore[no-untyped-def]
            def epoch(*epoch_args):  # type: ignore[no-untyped-def]
                if not done:
                    done.append(True)
                    _fail_from_outside(storage_url)
                return on_epoch(*epoch_args)
            return train(*args, on_epoch=epoch, **kwargs)
        return run

    monkeypatch.setattr(trial_path, "train_many", hooked(trial_path.train_many))
    handle = open_storage(storage_url)
    settings = resolve_settings(load_study("quickstart"), epochs=2, pruner="none")
    report = run_worker(handle, settings, WorkerOptions(trials=3, device=CPU, population=population))
    study = optuna.load_study(study_name="quickstart", storage=open_storage(storage_url).storage)
    assert done and report.count("taken over") == 1 and report.counts()["taken over"] == 1
    assert budget_state(study).done == 3 and "was taken over" in caplog.text
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0


def _identity_in_own_pid_namespace() -> dict[str, object] | None:
    """`worker_identity()` as a worker started under `unshare --pid --fork --mount-proc` sees it."""
    code = "import json; from hpsearch.search.provenance import worker_identity; print(json.dumps(worker_identity()))"
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except FileNotFoundError:
        return None
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_a_worker_in_another_pid_namespace_is_told_apart_and_left_to_the_heartbeat(
    sqlite_url: str,
) -> None:
    other = _identity_in_own_pid_namespace()
    if other is None:
        pytest.skip("unshare --pid needs util-linux and root (or user namespaces)")
    me = worker_identity()
    assert other["host"] == me["host"] and other["boot_id"] == me["boot_id"]
    assert other["pid_ns"] != me["pid_ns"] and other["id"] != me["id"]
    handle = open_storage(sqlite_url)
    study = open_study(handle, _quickstart())
    trial = _running_trial(study, {**other, "pid": _gone_pid()})
    assert recover_lost_trials(study, handle) == []
    assert study.get_trials()[trial.number].state == TrialState.RUNNING
