"""`hpsearch rerun` trains a stored trial again and gets the stored value back on the CPU."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli import main
from hpsearch.errors import StudyError
from hpsearch.search.storage import open_storage

# Dropout and early stopping draw on the random streams and keep a best epoch: the hard case.
NOISY_STUDY = '''"""Dropout and early stopping on iris."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(16, 16), dropout=0.3, epochs=8, batch_size=16,
                   stopping="early", patience=2)
TRIALS = 2
PRUNER = "none"


def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True),
                        l1=trial.suggest_float("l1", 1e-5, 1e-3, log=True))
'''


def test_rerun_command_reproduces_the_stored_value(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    runner = CliRunner()
    made = runner.invoke(main, ["run", "quickstart", "--trials", "2", "--epochs", "3",
                                "--storage", url, "--device", "cpu"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(main, ["rerun", "quickstart", "1", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "trial 1 of quickstart (complete), seed 1, digits" in result.output
    assert "(identical)" in result.output
    assert "largest per-epoch difference: 0" in result.output

    missing = runner.invoke(main, ["rerun", "quickstart", "7", "--storage", url])
    assert missing.exit_code == 1 and "has no trial 7; trial numbers: 0 to 1" in missing.output


def test_rerun_with_dropout_and_early_stopping_is_exact(tmp_path: Path) -> None:
    module = tmp_path / "noisy.py"
    module.write_text(NOISY_STUDY)
    url = f"sqlite:///{tmp_path / 'noisy.db'}"
    made = CliRunner().invoke(main, ["run", str(module), "--storage", url, "--device", "cpu"])
    assert made.exit_code == 0, made.output
    study = optuna.load_study(study_name="noisy", storage=open_storage(url, heartbeat=None).storage)
    for trial in study.trials:
        rerun = rerun_trial(study, trial.number, device=torch.device("cpu"))
        assert rerun.config.seed == trial.number
        assert rerun.stored_value is not None
        assert rerun.value == rerun.stored_value
        assert rerun.history == trial.user_attrs["history"]["val_error"]
        assert rerun.result.best_epoch == trial.user_attrs["result"]["best_epoch"]
        assert rerun.max_epoch_difference == 0.0
        assert rerun.version_changes == {}


def test_rerun_needs_a_trial_made_by_hpsearch(sqlite_url: str) -> None:
    study = optuna.create_study(storage=open_storage(sqlite_url, heartbeat=None).storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(StudyError, match="has no stored config"):
        rerun_trial(study, 0, device=torch.device("cpu"))
