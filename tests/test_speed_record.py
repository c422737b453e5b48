"""Speed options are part of a trial's record: `rerun` uses them, and a study keeps one precision."""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from click.testing import CliRunner
from optuna.distributions import FloatDistribution

from hpsearch.analysis.report import build_report
from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli import main
from hpsearch.config import TrainConfig
from hpsearch.search.storage import open_storage
from hpsearch.training import SpeedOptions

CPU = torch.device("cpu")
QUICK = ["--epochs", "2", "--device", "cpu", "--pruner", "none"]


def _study(url: str, name: str = "quickstart") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None).storage)


def test_a_bf16_trial_records_its_precision_and_rerun_trains_in_bf16(cli: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bf16.db'}"
    made = cli.invoke(main, ["run", "quickstart", "--trials", "2", "--bf16", "--storage", url, *QUICK])
    assert made.exit_code == 0, made.output
    study = _study(url)
    for trial in study.trials:
        assert trial.user_attrs["run"]["speed"] == {"compile": False, "bf16": True}
        assert trial.user_attrs["run"]["population"] == 1
    assert study.user_attrs["precision"] == "bf16"
    assert "<td>precision</td><td>bf16</td>" in build_report(study).html

    rerun = rerun_trial(study, 1, device=CPU)
    assert rerun.speed == SpeedOptions(bf16=True) and rerun.notes == []
    assert rerun.history == study.trials[1].user_attrs["history"]["val_error"]
    float32 = rerun_trial(study, 1, device=CPU, speed=SpeedOptions())
    assert float32.result.history_dict()["train_loss"] != rerun.result.history_dict()["train_loss"]

    shown = cli.invoke(main, ["rerun", "quickstart", "1", "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert "in bf16, rerun on" in shown.output and shown.output.count("in bf16") == 2
    assert "(identical)" in shown.output


def test_a_study_refuses_to_mix_bf16_and_float32_unless_asked(cli: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    assert cli.invoke(main, ["run", "quickstart", "--trials", "1", "--storage", url, *QUICK]).exit_code == 0
    refused = cli.invoke(main, ["run", "quickstart", "--trials", "2", "--bf16", "--storage", url, *QUICK])
    assert refused.exit_code == 1
    assert ("Error: study 'quickstart' trains in float32 and this run asks for bf16"
            in refused.output), refused.output
    assert "--allow-mixed-precision" in refused.output
    assert len(_study(url).trials) == 1  # nothing stored changed

    stacked = cli.invoke(main, ["run", "quickstart", "--trials", "3", "--population", "2",
                                "--storage", url, *QUICK])
    assert stacked.exit_code == 0, stacked.output
    populations = [t.user_attrs["run"]["population"] for t in _study(url).trials]
    assert populations == [1, 2, 2]

    both = cli.invoke(main, ["run", "quickstart", "--trials", "4", "--bf16", "--population", "2",
                             "--storage", url, *QUICK])
    assert both.exit_code == 1 and "stacked trials train in float32" in both.output, both.output

    mixed = cli.invoke(main, ["run", "quickstart", "--trials", "4", "--bf16",
                              "--allow-mixed-precision", "--storage", url, *QUICK])
    assert mixed.exit_code == 0, mixed.output
    assert "mixing bf16 trials into a float32 study" in mixed.output
    speeds = [t.user_attrs["run"]["speed"]["bf16"] for t in _study(url).trials]
    assert speeds == [False, False, False, True]


def test_rerun_says_what_it_cannot_repeat(sqlite_url: str) -> None:
    """A compiled trial of a stack, rerun on the CPU: eager and alone, and it says so."""
    study = optuna.create_study(storage=open_storage(sqlite_url, heartbeat=None).storage)
    config = TrainConfig(dataset="iris", hidden=(8,), epochs=2, lr=0.01, seed=3)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)},
        value=0.5, user_attrs={"config": config.to_dict(), "run": {
            "device": "cuda:0", "speed": {"compile": True, "bf16": True}, "population": 16}}))
    rerun = rerun_trial(study, 0, device=CPU)
    assert rerun.speed == SpeedOptions(compile=False, bf16=True)
    assert len(rerun.notes) == 2
    assert "ran with --compile; rerun trains eagerly on cpu" in rerun.notes[0]
    assert "trained in a stack of 16 trials; rerun trains it alone" in rerun.notes[1]
