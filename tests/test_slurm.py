"""`hpsearch slurm-script`: the script it prints, and that script run as a job array on a real
single-node Slurm (tests/slurm.py) against PostgreSQL, one task cancelled and two preempted
mid-study."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.cli.parallel import worker_command
from hpsearch.search.record import RunRecord
from hpsearch.search.runs import StudyOptions
from hpsearch.search.storage import open_storage
from tests.slurm import Cluster

PG = "postgresql://postgres@127.0.0.1:5432/hpsearch"

# Trials 0 and 1 run for minutes, long enough to be caught mid-trial however slow the machine
# is; every other trial, their retries included (a retry has a new number), takes about a second.
SLOW_TWO = '''"""Learning rate on digits; trials 0 and 1 are slow on purpose."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(16,), epochs=1)
PRUNER = "none"
SAMPLER = "random"

def suggest(trial, base):
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return base.replace(lr=lr, epochs=5000 if trial.number in (0, 1) else 1)
'''


def _script(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(main, ["slurm-script", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _exec_line(script: str) -> list[str]:
    [line] = [line for line in script.splitlines() if line.startswith("exec ")]
    return shlex.split(line)


def test_the_script_asks_slurm_for_the_array_and_runs_workers_with_the_resolved_options(
    cli: CliRunner,
) -> None:
    script = _script(cli, "quickstart", "--array", "4", "--gpus-per-task", "1", "--time", "1-12:00",
                     "--partition", "gpu", "--mem", "8G", "--cpus-per-task", "3", "--trials", "40",
                     "--seed", "5", "--storage", PG)
    directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "--job-name=hpsearch-quickstart", "--array=0-3", "--ntasks=1", "--cpus-per-task=3",
        "--gpus-per-task=1", "--mem=8G", "--time=1-12:00", "--partition=gpu", "--requeue",
        "--open-mode=append", "--output=hpsearch-quickstart-%A_%a.out"]
    assert f"export HPSEARCH_STORAGE={PG}\n" in script and "export OMP_NUM_THREADS=3\n" in script
    assert "export HPSEARCH_WORKER_INDEX=$(( SLURM_ARRAY_TASK_ID + 4 * ${SLURM_RESTART_COUNT:-0} ))" in script
    argv = _exec_line(script)
    assert argv[0] == "exec" and argv[2:5] == ["-m", "hpsearch", "worker"]
    parsed = worker_command.make_context("worker", argv[5:]).params
    # What the study module left to its defaults is written out, so every task agrees.
    assert StudyOptions.from_params(parsed) == StudyOptions(
        study="quickstart", trials=40, study_name="quickstart", dataset="digits", epochs=10,
        device="cuda", seed=5, sampler="tpe", pruner="median", cv=0)


def test_a_study_module_given_by_relative_path_is_found_from_wherever_slurm_starts_the_task(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.py").write_text(SLOW_TWO)
    monkeypatch.chdir(tmp_path)
    argv = _exec_line(_script(cli, "./mine.py", "--array", "2", "--storage", PG))
    assert argv[5] == str(tmp_path / "mine.py") and "--device" in argv and "auto" in argv


@pytest.mark.parametrize(("args", "message"), [
    (["--storage", "sqlite:///x.db"], "cannot share a SQLite or journal file"),
    (["--storage", "journal:x.log"], "cannot share a SQLite or journal file"),
    (["--storage", "postgresql://u:secret@db/hp"], "put the password in ~/.pgpass"),
    (["--storage", PG, "--time", "2h"], "'2h' is not a form sbatch takes"),
    (["--storage", PG, "--mem", "lots"], "'lots' is not a form sbatch takes"),
])
def test_a_storage_the_nodes_cannot_share_or_a_bad_slurm_value_is_refused(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = cli.invoke(main, ["slurm-script", "quickstart", "--array", "2", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "secret" not in result.output


def _trials(storage: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="slow_two", storage=storage).trials
    except KeyError:
        return []


def _wait_for(predicate, timeout: float, what: str, cluster: Cluster) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {cluster.jobs()}"
        time.sleep(0.3)


def _task_of(trial: optuna.trial.FrozenTrial) -> str:
    """The array task (JOB_TASK) whose worker process runs `trial`: the batch step is the
    worker itself (the script execs it), so its environment names the task."""
    pid = RunRecord.from_trial(trial).worker.pid
    env = dict(item.split("=", 1) for item in
               Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def _check_reruns(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Every trial that did not finish was stopped by SIGTERM and run again, by another worker,
    to its end; nothing is left running or queued."""
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.FAIL}
    for stopped in (t for t in trials if t.state == TrialState.FAIL):
        result = stopped.user_attrs["result"]
        assert result["outcome"] == "interrupted" and result["reason"] == "interrupted by SIGTERM"
        [rerun] = [t for t in trials
                   if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == stopped.number]
        assert rerun.state == TrialState.COMPLETE and rerun.params == stopped.params
        assert RunRecord.from_trial(rerun).worker.pid != RunRecord.from_trial(stopped).worker.pid


@pytest.mark.slurm
def test_a_slurm_array_finishes_the_budget_through_a_cancelled_task_and_a_preemption(
    cli: CliRunner, tmp_path: Path, postgres_url: str
) -> None:
    (tmp_path / "slow_two.py").write_text(SLOW_TWO)
    script = tmp_path / "job.sh"
    script.write_text(_script(cli, str(tmp_path / "slow_two.py"), "--array", "3", "--trials", "12",
                              "--storage", postgres_url))
    storage = open_storage(postgres_url, heartbeat=None).storage
    with Cluster(tmp_path / "slurm") as cluster:
        job = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).strip()

        def running() -> list[optuna.trial.FrozenTrial]:
            return [t for t in _trials(storage) if t.number in (0, 1) and t.intermediate_values]

        _wait_for(lambda: len(running()) == 2, 120, "trials 0 and 1 to train", cluster)
        trial0, trial1 = sorted(running(), key=lambda t: t.number)
        cancelled = _task_of(trial0)
        preempted = sorted({f"{job}_{task}" for task in range(3)} - {cancelled})
        assert _task_of(trial1) in preempted
        cluster.run("scancel", cancelled)
        # A job of the higher partition takes the whole node: Slurm preempts the other two tasks.
        urgent = cluster.run("sbatch", "--parsable", "--partition=urgent", "--exclusive",
                             f"--output={tmp_path}/urgent.out", "--wrap", "sleep 1").strip()
        _wait_for(lambda: cluster.jobs().get(urgent) == "COMPLETED", 120, "the preemption", cluster)
        # Slurm holds a requeued job about 2 minutes before it may start; StartTime=now skips that.
        for task in preempted:
            cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now")
        _wait_for(lambda: all(s in ("COMPLETED", "CANCELLED") for s in cluster.jobs().values()),
                  120, "the array to end", cluster)
        states = cluster.jobs()
        shown = {task: cluster.run("scontrol", "show", "job", task) for task in preempted}
    logs = {p.name.rsplit("-", 1)[1].removesuffix(".out"): p.read_text()
            for p in tmp_path.glob("hpsearch-slow_two-*.out")}
    trials = _trials(storage)
    assert states == {cancelled: "CANCELLED", urgent: "COMPLETED",
                      **dict.fromkeys(preempted, "COMPLETED")}, f"{states}\n{logs}"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 12, logs
    assert {0, 1} <= {t.number for t in trials if t.state == TrialState.FAIL}
    _check_reruns(trials)
    assert "SIGTERM: its running trial is queued again" in logs[cancelled]
    for task in preempted:
        # Requeued once; its second run is worker 3 + its index, seeded apart from its first.
        index = int(task.split("_")[1])
        assert "Restarts=1" in shown[task] and "DUE TO PREEMPTION" in logs[task], logs[task]
        assert f"[w{index}] study slow_two" in logs[task] and f"[w{index + 3}] study" in logs[task]


def test_without_slurm_the_test_fails_with_the_install_command_that_make_test_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="installs it \\(apt-get install slurm-wlm munge\\)"):
        Cluster(tmp_path)
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    packages = re.search(r"^SYSTEM_PACKAGES \?= (.*)$", makefile, re.MULTILINE)
    commands = re.search(r"^SYSTEM_COMMANDS \?= (.*)$", makefile, re.MULTILINE)
    assert packages and {"slurm-wlm", "munge"} <= set(packages.group(1).split())
    assert commands and {"slurmctld", "slurmd", "munged"} <= set(commands.group(1).split())
