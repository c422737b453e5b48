"""Parallel workers: a shared budget, workers killed or interrupted mid-trial, storages refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.cli.options import StudyOptions, worker_argv
from hpsearch.cli.parallel import worker_command
from hpsearch.errors import HPSearchError, StorageError
from hpsearch.search.launch import parse_gpus, plan_workers, worker_env
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.registry import load_study
from hpsearch.search.retrying import transient
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, budget_state, run_worker

CPU = torch.device("cpu")

# Trial 0 runs long enough (minutes) to be caught mid-trial however slow the machine is; every
# later trial (retries included) is quick.
SLOW_FIRST = '''"""Learning rate on digits; trial 0 is slow on purpose."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(32,), epochs=2)
PRUNER = "none"

def suggest(trial, base):
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return base.replace(lr=lr, epochs=5000 if trial.number == 0 else 2)
'''

# Every trial runs long enough to be interrupted.
SLOW_ALL = SLOW_FIRST.replace("5000 if trial.number == 0 else 2", "5000")


def _module(tmp_path: Path, source: str, name: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return str(path)


def _hpsearch(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    output, _ = proc.communicate(timeout=timeout)
    return output


def _wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None).storage).trials


def _has_trials(url: str, name: str) -> bool:
    try:
        return bool(_trials(url, name))
    except (KeyError, HPSearchError):
        return False


def _finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
               (t.state == TrialState.FAIL and t.user_attrs["result"]["outcome"] == "failed")
               for t in trials)


def test_three_workers_on_postgres_share_one_budget_without_repeating_a_grid_point(
    postgres_url: str,
) -> None:
    proc = _hpsearch("launch", "depth_width", "--workers", "3", "--trials", "7", "--dataset",
                     "parity-4", "--epochs", "3", "--storage", postgres_url)
    output = _finish(proc)
    assert proc.returncode == 0, output
    trials = _trials(postgres_url, "depth_width-parity-4")
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 7, output
    assert len(trials) == 7  # no surplus trial was started and abandoned
    points = [(t.params["depth"], t.params["width"]) for t in trials]
    assert len(set(points)) == 7
    assert "workers exited with [0, 0, 0]" in output and "7 complete" in output


def test_a_worker_killed_mid_trial_leaves_no_running_trial_and_the_budget_is_met(
    tmp_path: Path, postgres_url: str
) -> None:
    study = _module(tmp_path, SLOW_FIRST, "slow_first")
    args = ["worker", study, "--trials", "3", "--storage", postgres_url, "--worker-index", "0"]
    victim = _hpsearch(*args)

    def trial_zero_training() -> bool:
        try:
            trials = _trials(postgres_url, "slow_first")
        except (KeyError, HPSearchError):
            return False
        return bool(trials) and len(trials[0].intermediate_values) >= 1

    _wait_for(trial_zero_training, what="trial 0 to report an epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _trials(postgres_url, "slow_first")[0].state == TrialState.RUNNING

    survivor = _hpsearch(*args[:-1], "1")
    output = _finish(survivor)
    assert survivor.returncode == 0, output
    trials = _trials(postgres_url, "slow_first")
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert _finished(trials) == 3
    lost = trials[0]
    assert lost.state == TrialState.FAIL and lost.user_attrs["result"]["outcome"] == "lost"
    assert f"{victim.pid} died" in lost.user_attrs["result"]["reason"]
    retried = [t for t in trials[1:] if t.params == lost.params]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


def test_the_heartbeat_fails_a_silent_trial_of_another_host_and_queues_it_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = open_storage(postgres_url, heartbeat=1)
    settings = resolve_settings(load_study("quickstart"), epochs=1, pruner="none")
    from hpsearch.search.study import open_study

    study = open_study(handle, settings)
    orphan = study.ask()
    orphan.suggest_float("lr", 1e-3, 1e-2, log=True)
    # A worker on another machine (so no process check can see it) that beat once and died.
    orphan.set_user_attr("run", {"worker": {"host": "elsewhere", "pid": 1}})
    handle.storage.record_heartbeat(trial_id(orphan))
    time.sleep(3.5)  # the grace period is 3 beats
    report = run_worker(handle, settings, WorkerOptions(trials=2, device=CPU))
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert [t.params for t in trials if t.state == TrialState.COMPLETE].count(orphan.params) == 1
    assert len(report.outcomes) == 2 and budget_state(study).done == 2


def test_two_workers_on_a_journal_file_finish_exactly_the_budget(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    proc = _hpsearch("launch", "quickstart", "--workers", "2", "--trials", "6", "--epochs", "2",
                     "--storage", url)
    output = _finish(proc)
    assert proc.returncode == 0, output
    trials = _trials(url, "quickstart")
    assert _finished(trials) == 6 and len(trials) == 6
    assert "[w0]" in output and "[w1]" in output


def test_launch_refuses_several_workers_on_one_sqlite_file(cli: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = cli.invoke(main, ["launch", "quickstart", "--workers", "2", "--storage", url])
    assert result.exit_code == 1
    assert "SQLite takes one writer" in result.output
    assert f"journal:{tmp_path / 'study.log'}" in result.output and "postgresql://" in result.output


def test_a_second_worker_on_a_busy_sqlite_file_is_refused_and_the_first_keeps_its_trials(
    cli: CliRunner, sqlite_url: str
) -> None:
    first = cli.invoke(main, ["run", "quickstart", "--trials", "2", "--epochs", "1", "--storage", sqlite_url])
    assert first.exit_code == 0, first.output
    with open_storage(sqlite_url).single_writer():  # a worker that is still running
        second = cli.invoke(main, ["worker", "quickstart", "--trials", "4", "--storage", sqlite_url])
    assert second.exit_code == 1
    assert "another worker is already writing" in second.output and "journal:" in second.output
    assert len(_trials(sqlite_url, "quickstart")) == 2


def test_workers_carry_on_when_postgresql_drops_their_connections(
    tmp_path: Path, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    # 10 epochs and a drop every 0.1 s: a worker with few storage reads per trial can finish a
    # short study on connections that the pool's pre-ping replaced between transactions, and
    # then meets no dropped connection at all (seen once in CI with 3 epochs and 0.5 s).
    proc = _hpsearch("worker", "quickstart", "--trials", "12", "--epochs", "10", "--storage",
                     postgres_url, "--worker-index", "0")
    dropped = 0
    stop = threading.Event()

    def drop_connections() -> None:
        nonlocal dropped
        with psycopg.connect(admin, autocommit=True) as conn:
            while not stop.wait(0.1):
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
                ).fetchall()
                dropped += len(rows)

    # Drop connections once the worker is in the middle of the study.
    _wait_for(lambda: _has_trials(postgres_url, "quickstart"), what="the first trial")
    dropper = threading.Thread(target=drop_connections)
    dropper.start()
    try:
        output = _finish(proc)
    finally:
        stop.set()
        dropper.join()
    assert dropped >= 2, f"the test dropped no connection; output: {output}"
    assert "retrying" in output  # the worker did meet a dropped connection, and retried
    assert proc.returncode == 0, output
    trials = _trials(postgres_url, "quickstart")
    assert _finished(trials) == 12
    assert TrialState.RUNNING not in [t.state for t in trials]


def test_ctrl_c_on_launch_stops_every_worker_and_leaves_nothing_running(
    tmp_path: Path, postgres_url: str
) -> None:
    study = _module(tmp_path, SLOW_ALL, "slow_all")
    proc = _hpsearch("launch", study, "--workers", "2", "--trials", "4", "--storage", postgres_url)

    def both_running() -> bool:
        try:
            trials = _trials(postgres_url, "slow_all")
        except (KeyError, HPSearchError):
            return False
        return sum(t.state == TrialState.RUNNING and len(t.intermediate_values) > 0
                   for t in trials) == 2

    try:
        _wait_for(both_running, what="two running trials")
        proc.send_signal(signal.SIGINT)
        output = _finish(proc, timeout=90)
    finally:
        # The workers run in their own sessions; never leave one training after a failure.
        subprocess.run(["pkill", "-KILL", "-f", study], check=False)
    assert proc.returncode == 130, output
    trials = _trials(postgres_url, "slow_all")
    # The launcher's and workers' output, and every trial, to tell which worker kept going.
    seen = output + "\n" + "\n".join(f"{t.number} {t.state.name} {t.params} {t.user_attrs}"
                                     for t in trials)
    assert TrialState.RUNNING not in [t.state for t in trials], seen
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2
    assert {t.user_attrs["result"]["outcome"] for t in interrupted} == {"interrupted"}
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.params["lr"] for t in queued) == sorted(t.params["lr"] for t in interrupted)


def test_status_shows_states_best_and_workers(cli: CliRunner, journal_url: str) -> None:
    cli.invoke(main, ["run", "quickstart", "--trials", "3", "--epochs", "1", "--storage", journal_url])
    result = cli.invoke(main, ["status", "quickstart", "--storage", journal_url])
    assert result.exit_code == 0, result.output
    assert "study quickstart: 3 complete" in result.output
    assert "best: trial #" in result.output and f":{os.getpid()}: 3 trial(s)" in result.output
    missing = cli.invoke(main, ["status", "nope", "--storage", journal_url])
    assert missing.exit_code == 1 and "no study 'nope'" in missing.output


def test_workers_are_placed_round_robin_on_gpus_and_split_cpu_threads() -> None:
    plans = plan_workers(workers=None, gpus=["0", "1"], per_gpu=2, cpu_count=16)
    assert [p.gpu for p in plans] == ["0", "1", "0", "1"] and plans[0].threads == 4
    assert worker_env(plans[1], {})["CUDA_VISIBLE_DEVICES"] == "1"
    cpu = plan_workers(workers=3, gpus=[], per_gpu=1, cpu_count=8)
    assert [p.threads for p in cpu] == [2, 2, 2]
    env = worker_env(cpu[2], {"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "2"
    assert env["HPSEARCH_WORKER_INDEX"] == "2"
    with pytest.raises(HPSearchError, match="--per-gpu"):
        plan_workers(workers=5, gpus=["0", "1"], per_gpu=2, cpu_count=8)
    with pytest.raises(HPSearchError, match="distinct GPU indices"):
        parse_gpus("0,0")
    with pytest.raises(HPSearchError, match="distinct GPU indices"):
        parse_gpus("cuda:1")


def test_only_lost_connections_are_retried() -> None:
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost
    assert transient(lost) and transient(wrapped)
    bad_data = sqlalchemy.exc.DataError("INSERT", {}, Exception("value too long"))
    assert not transient(bad_data) and not transient(ValueError("x"))


def test_an_unreachable_postgresql_fails_fast_at_open_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match="check that the server is running"):
        open_storage("postgresql+psycopg://postgres@127.0.0.1:1/none", db_retry_seconds=1)


def test_worker_trains_populations_within_the_shared_budget(cli: CliRunner, journal_url: str) -> None:
    result = cli.invoke(main, ["worker", "quickstart", "--trials", "5", "--epochs", "2",
                               "--population", "3", "--storage", journal_url, "--worker-index", "0"])
    assert result.exit_code == 0, result.output
    trials = _trials(journal_url, "quickstart")
    assert _finished(trials) == 5 and len(trials) == 5
    # Quickstart fixes the architecture, so each batch (3, then the 2 left) trains as one stack.
    assert sorted(t.user_attrs["run"]["population"] for t in trials) == [2, 2, 3, 3, 3]


def test_launch_on_gpus_without_cuda_fails_once_with_the_reason(cli: CliRunner, journal_url: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli.invoke(main, ["launch", "quickstart", "--gpus", "0,1", "--storage", journal_url])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output and "--gpus" in result.output
    assert "launching" not in result.output  # no worker was started


# One value per StudyOptions field, none of them its default.
NOT_DEFAULT = {
    "trials": 7, "timeout": 12.5, "study_name": "other-name", "dataset": "iris",
    "data_dir": Path("/data/here"), "epochs": 3, "device": "cuda:1", "seed": 4,
    "sampler": "random", "pruner": "none", "cv": 3, "allow_other_data": True, "population": 2,
    "compile": True, "bf16": True, "allow_mixed_precision": True,
    "stop_when_converged": True, "stop_min_trials": 7, "checkpoint_dir": Path("/shared/checkpoints"),
}


def _parsed_by_worker(argv: list[str]) -> StudyOptions:
    ctx = worker_command.make_context("worker", argv)
    return StudyOptions.from_params(dict(ctx.params))


def test_every_study_option_reaches_launchs_workers() -> None:
    """`launch` gives its workers `worker_argv()`: each option, set alone and all together,
    parses back in `hpsearch worker` into the very options the launcher had."""
    assert set(NOT_DEFAULT) == {f.name for f in fields(StudyOptions)} - {"study"}
    default = StudyOptions(study="quickstart")
    assert _parsed_by_worker(worker_argv(default)) == default
    for name, value in NOT_DEFAULT.items():
        options = StudyOptions(study="quickstart", **{name: value})
        assert getattr(options, name) != getattr(default, name), name
        assert _parsed_by_worker(worker_argv(options)) == options, name
    everything = StudyOptions(study="quickstart", **NOT_DEFAULT)  # type: ignore[arg-type]
    assert _parsed_by_worker(worker_argv(everything)) == everything


def test_launch_passes_its_storage_heartbeat_and_data_settings_to_the_workers_environment(
    cli: CliRunner, journal_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []

    def fake_launch(plans: object, argv: list[str], *, env: dict[str, str]) -> object:
        seen.append((argv, env))
        raise SystemExit(0)

    monkeypatch.setattr("hpsearch.cli.parallel.launch", fake_launch)
    result = cli.invoke(main, ["--heartbeat-seconds", "3", "--cache-dir", "/data/cache", "launch",
                               "quickstart", "--epochs", "1", "--storage", journal_url])
    assert result.exit_code == 0, result.output
    (argv, env), = seen
    assert env["HPSEARCH_STORAGE"] == journal_url and journal_url not in argv
    assert env["HPSEARCH_HEARTBEAT_SECONDS"] == "3" and env["HPSEARCH_DB_RETRY_SECONDS"] == "300.0"
    assert env["HPSEARCH_DATA_DIR"] == "/data/cache"
    assert env["HPSEARCH_DOWNLOAD"] == "0"  # conftest's, read by the launcher, passed on
    assert argv[:3] == ["quickstart", "--trials", "20"] and argv[argv.index("--epochs") + 1] == "1"
