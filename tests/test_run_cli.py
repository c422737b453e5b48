"""What `hpsearch run` prints and how it behaves as a process: the closing `next:` line, torch
threads, and Ctrl-C when started in the background."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.cli.state import invoked_as


def test_run_never_prints_the_database_password(cli: CliRunner, postgres_url: str) -> None:
    url = postgres_url.replace("postgres@", "postgres:secret123@")  # trust auth ignores it
    result = cli.invoke(main, ["run", "quickstart", "--trials", "1", "--epochs", "1",
                               "--storage", url])
    assert result.exit_code == 0, result.output
    assert "secret123" not in result.output
    next_line = [line for line in result.output.splitlines() if line.startswith("next: ")]
    assert next_line and next_line[0].endswith(
        f" best quickstart --storage '{url.replace('secret123', '***')}'")


def test_run_from_the_environment_needs_no_storage_in_the_next_line(
    cli: CliRunner, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPSEARCH_STORAGE", sqlite_url)
    result = cli.invoke(main, ["run", "quickstart", "--trials", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"next: {invoked_as()} best quickstart")


def test_the_next_line_names_hpsearch_as_it_can_be_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not activated: `hpsearch` alone is not found
    monkeypatch.setattr(sys, "argv", [".venv/bin/hpsearch", "run"])
    assert invoked_as() == ".venv/bin/hpsearch"
    monkeypatch.setattr(sys, "argv", ["/x/hpsearch/__main__.py", "run"])  # python -m hpsearch
    assert invoked_as() == f"{sys.executable} -m hpsearch"
    if (venv_bin / "hpsearch").exists():
        monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated
        assert invoked_as() == "hpsearch"


@pytest.mark.parametrize(("args", "threads"), [([], 1), (["--threads", "2"], 2)])
def test_run_sets_torch_threads(args: list[str], threads: int, cli: CliRunner, sqlite_url: str) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        result = cli.invoke(main, ["run", "quickstart", "--trials", "1", "--epochs", "1",
                                   "--storage", sqlite_url, *args])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


SLOW = '''"""Every trial waits long enough to be interrupted."""
import time
from pathlib import Path
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), epochs=1)
PRUNER = "none"

def suggest(trial, base):
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    Path(__file__).with_suffix(".started").write_text(str(trial.number))
    time.sleep(120)
    return base.replace(lr=lr)
'''


def test_run_started_in_the_background_stops_on_ctrl_c(tmp_path: Path) -> None:
    module = tmp_path / "slow.py"
    module.write_text(SLOW)
    url = f"sqlite:///{tmp_path / 'bg.db'}"

    # Started with SIGINT ignored, as `cmd &` in a non-interactive shell does (exec keeps it).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "run", str(module), "--trials", "2", "--storage", url],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 60
        while not module.with_suffix(".started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the trial never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    trials = optuna.load_study(study_name="slow", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["result"]["outcome"] == "interrupted"


def test_the_running_trial_reports_its_epochs_and_folds(sqlite_url: str, tmp_path: Path) -> None:
    from hpsearch.search.registry import load_study
    from hpsearch.search.reports import Progress
    from hpsearch.search.settings import resolve_settings
    from hpsearch.search.storage import open_storage
    from hpsearch.search.worker import WorkerOptions, run_worker

    seen: list[Progress] = []
    settings = resolve_settings(load_study("quickstart"), epochs=2, pruner="none")
    run_worker(open_storage(sqlite_url), settings, WorkerOptions(trials=2, device=torch.device("cpu")),
               on_progress=seen.append)
    assert [(p.trial, p.step, p.of, p.unit) for p in seen] == [
        (0, 1, 2, "epoch"), (0, 2, 2, "epoch"), (1, 1, 2, "epoch"), (1, 2, 2, "epoch")]
    folds: list[Progress] = []
    cv = resolve_settings(load_study("quickstart"), dataset="iris", epochs=1, pruner="none", cv=3)
    run_worker(open_storage(f"sqlite:///{tmp_path / 'cv.db'}"), cv,
               WorkerOptions(trials=1, device=torch.device("cpu")), on_progress=folds.append)
    assert [(p.trial, p.step, p.of, p.unit) for p in folds] == [
        (0, 1, 3, "fold"), (0, 2, 3, "fold"), (0, 3, 3, "fold")]


def test_run_shows_the_running_trial_and_logs_each_finished_one(cli: CliRunner, sqlite_url: str) -> None:
    from hpsearch.search.reports import Progress, describe

    assert describe(Progress(trial=3, step=4, of=20, unit="epoch")) == "trial 3: epoch 4/20"
    result = cli.invoke(main, ["run", "quickstart", "--trials", "2", "--epochs", "1",
                               "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2  # output is not a terminal here, so one line per finished trial
    assert lines[0].startswith("trial 0 complete ") and lines[0].endswith("study: 1/2 finished")
    assert lines[1].startswith("trial 1 complete ") and lines[1].endswith("study: 2/2 finished")


# --- bad values on the command line: click's usage error (exit 2), naming the option ----------


@pytest.mark.parametrize("command", [
    ["run", "quickstart"], ["worker", "quickstart"], ["launch", "quickstart"],
    ["final", "{export}"], ["rerun", "quickstart", "0"],
])
def test_a_misspelt_device_is_a_usage_error_for_every_command_that_takes_one(
    command: list[str], cli: CliRunner, tmp_path: Path
) -> None:
    export = tmp_path / "best.yaml"
    export.write_text("configs: []\n")
    args = [a.replace("{export}", str(export)) for a in command]
    result = cli.invoke(main, [*args, "--device", "tpu", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]
                        if command[0] != "final" else [*args, "--device", "tpu"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--device': unknown device 'tpu'; use auto, cpu" in result.output
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(("gpus", "message"), [
    ("0,0", "'0,0': give distinct GPU indices separated by commas, like 0,1"),
    ("cuda:1", "'cuda:1': give distinct GPU indices"),
    ("", "'': give distinct GPU indices"),
])
def test_a_malformed_gpu_list_is_a_usage_error(gpus: str, message: str, cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(main, ["launch", "quickstart", "--gpus", gpus,
                               "--storage", f"journal:{tmp_path / 'x.log'}"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--gpus': {message}" in result.output
    assert not (tmp_path / "x.log").exists()


@pytest.mark.parametrize(("variable", "value"), [
    ("HPSEARCH_HEARTBEAT_SECONDS", "0"), ("HPSEARCH_HEARTBEAT_SECONDS", "ten"),
    ("HPSEARCH_DB_RETRY_SECONDS", "soon"),
])
def test_a_bad_value_in_the_environment_is_a_usage_error_naming_its_variable(
    variable: str, value: str, cli: CliRunner, sqlite_url: str
) -> None:
    result = cli.invoke(main, ["run", "quickstart", "--storage", sqlite_url], env={variable: value})
    assert result.exit_code == 2, result.output
    option = "--heartbeat-seconds" if "HEARTBEAT" in variable else "--db-retry-seconds"
    assert f"Invalid value for '{option}'" in result.output and variable in result.output
