"""How a trial ended, said one way everywhere, and stored as strictly valid JSON."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from html import unescape
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.analysis.dashboard import make_dashboard_server
from hpsearch.analysis.report import build_report, parameter_table
from hpsearch.cli import main
from hpsearch.search.outcomes import describe_counts, outcome_counts
from hpsearch.search.reports import TrialOutcome
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerReport

# Trial 0 diverges (lr 1e6 with SGD): its val_loss reaches NaN before the training loss does.
DIVERGING_STUDY = '''"""lr 1e6 diverges."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), optimizer="sgd", epochs=3)
PRUNER = "none"

def suggest(trial, base):
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return base.replace(lr=1e6 if trial.number == 0 else 0.01)
'''


def _reject_constant(name: str) -> None:
    raise ValueError(f"bare {name} in stored JSON")


def _third_trial_training(storage: str) -> bool:
    """The third trial of `slow_third` has reported an epoch: a signal now lands mid-trial."""
    try:
        trials = optuna.load_study(study_name="slow_third", storage=storage).trials
    except KeyError:
        return False
    return len(trials) == 3 and len(trials[2].intermediate_values) >= 1


def test_a_diverged_trial_is_stored_as_strict_json(cli: CliRunner, tmp_path: Path) -> None:
    module = tmp_path / "diverging.py"
    module.write_text(DIVERGING_STUDY)
    db = tmp_path / "d.db"
    made = cli.invoke(main, ["run", str(module), "--trials", "2", "--storage", f"sqlite:///{db}",
                             "--device", "cpu"])
    assert made.exit_code == 0, made.output
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT t.number, a.key, a.value_json FROM trial_user_attributes a "
            "JOIN trials t USING (trial_id)").fetchall()
    assert {key for _, key, _ in rows} >= {"config", "run", "result", "history"}
    for number, key, raw in rows:
        json.loads(raw, parse_constant=_reject_constant)  # raises on NaN, Infinity, -Infinity
    history = {n: json.loads(raw) for n, key, raw in rows if key == "history"}
    assert history[0]["val_loss"][-1] is None  # the diverged epoch's NaN, stored as null
    assert all(v is not None for v in history[1]["val_loss"])
    # Readers take the null: rerun prints it as "-" beside the rerun's value.
    rerun = cli.invoke(main, ["rerun", "diverging", "0", "--storage", f"sqlite:///{db}"])
    assert rerun.exit_code == 0, rerun.output
    assert "trial 0 of diverging (failed)" in rerun.output


# Trials 0 and 1 are quick; trial 2 trains until it is stopped by a signal.
SLOW_THIRD = '''"""Width and learning rate on iris; trial 2 is slow on purpose."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", epochs=2, batch_size=16)
PRUNER = "none"
SAMPLER = "random"

def suggest(trial, base):
    units = trial.suggest_int("units", 4, 16, step=4)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return base.replace(hidden=(units,), lr=lr, epochs=100000 if trial.number == 2 else 2)
'''


def _wait_for(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for trial 2 to report an epoch")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_trial_reads_the_same_everywhere(
    signum: signal.Signals, cli: CliRunner, tmp_path: Path
) -> None:
    module = tmp_path / "slow_third.py"
    module.write_text(SLOW_THIRD)
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url, heartbeat=None).storage
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "worker", str(module), "--trials", "5", "--storage", url,
         "--device", "cpu"], env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        _wait_for(lambda: _third_trial_training(storage))
        worker.send_signal(signum)
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    name = signal.Signals(signum).name
    assert worker.returncode == 130, output
    assert f"interrupted by {name}" in output

    study = optuna.load_study(study_name="slow_third", storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.FAIL, TrialState.WAITING]
    stopped, queued = trials[2], trials[3]
    # What optuna-dashboard lists for the trial: its user attributes, as stored.
    assert stopped.user_attrs["outcome"] == "interrupted"
    assert stopped.user_attrs["outcome_reason"] == f"interrupted by {name}"
    assert queued.params == stopped.params and "outcome" not in queued.user_attrs
    assert "run" not in queued.user_attrs  # the retry has not run anywhere yet
    assert outcome_counts(trials) == {"complete": 2, "interrupted": 1, "waiting": 1}

    status = cli.invoke(main, ["status", "slow_third", "--storage", url])
    assert status.exit_code == 0, status.output
    assert "study slow_third: 2 complete, 1 interrupted, 1 waiting\n" in status.output
    assert f"  interrupted by {name}: trial #2" in status.output
    # The worker ran trials 0, 1 and 2; the queued copy of trial 2 is nobody's yet.
    assert f":{worker.pid}: 3 trial(s), 0 running" in status.output

    page = unescape(build_report(study).html)
    assert "<td>interrupted</td><td>1</td>" in page and "<td>waiting</td><td>1</td>" in page
    assert "<td>failed</td>" not in page
    assert f"<td>interrupted by {name}</td>" in page
    # The per-parameter tables count the trials that ended on their own (the retry repeats it).
    rows = parameter_table(trials, "units", [4, 8, 12, 16], maximize=False)
    assert sum(row[1] for row in rows) == 2 and all(row[5] == 0 for row in rows)

    # optuna-dashboard's API, as its trial page asks for it: Optuna's "Fail", and the outcome.
    listed = _dashboard_trials(url)
    assert listed[2]["state"] == "Fail"
    assert listed[2]["user_attrs"]["outcome"] == "interrupted"
    assert listed[2]["user_attrs"]["outcome_reason"] == f"interrupted by {name}"
    assert listed[3]["state"] == "Waiting" and "outcome" not in listed[3]["user_attrs"]


def _dashboard_trials(url: str) -> list[dict[str, Any]]:
    server = make_dashboard_server(open_storage(url, heartbeat=None), host="127.0.0.1", port=0)
    with server.in_background() as base:
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            (summary,) = json.loads(response.read())["study_summaries"]
        with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=30) as response:
            trials = json.loads(response.read())["trials"]
    # Attribute values come as the dashboard shows them: strings.
    return [{**t, "user_attrs": {a["key"]: a["value"] for a in t["user_attrs"]}} for t in trials]


def test_launch_passes_on_the_signal_it_got(tmp_path: Path) -> None:
    module = tmp_path / "slow_third.py"
    module.write_text(SLOW_THIRD)
    url = f"journal:{tmp_path / 's.log'}"
    storage = open_storage(url, heartbeat=None).storage
    launcher = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "launch", str(module), "--workers", "1", "--trials", "5",
         "--storage", url, "--device", "cpu"], env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        _wait_for(lambda: _third_trial_training(storage))
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, output
    assert "interrupted by SIGTERM: trial #2" in output  # the status printed at the end
    stopped = optuna.load_study(study_name="slow_third", storage=storage).trials[2]
    assert stopped.user_attrs["outcome_reason"] == "interrupted by SIGTERM"


def test_a_workers_counts_add_up_to_the_trials_it_ran() -> None:
    report = WorkerReport("s", 3, outcomes=[
        TrialOutcome(number=n, outcome=word, value=None, reason=None, seconds=0.0)
        for n, word in enumerate(["complete", "taken over", "failed", "complete"])])
    assert report.counts() == {"complete": 2, "failed": 1, "taken over": 1}
    assert describe_counts(report.counts()) == "2 complete, 1 failed, 1 taken over"
