"""The Python API (`import hpsearch`): light to import, the study path of `hpsearch run`, a
kernel interrupt that leaves the study resumable, and what it hands back (DataFrame, figures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from optuna.trial import TrialState

import hpsearch
from hpsearch.errors import StorageError, StudyError
from hpsearch.search.outcomes import trial_outcome


def test_import_hpsearch_is_light_and_reexports_the_api() -> None:
    code = ("import sys, hpsearch; print([m for m in ('torch', 'optuna', 'plotly', 'pandas') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    from hpsearch import api

    assert hpsearch.run_study is api.run_study and set(api.__all__) < set(hpsearch.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hpsearch.nope  # noqa: B018


def test_bad_arguments_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="unknown option.*trails.*valid ones: trials"):
        hpsearch.run_study("quickstart", trails=3)
    with pytest.raises(StudyError, match="epochs=0"):
        hpsearch.run_study("quickstart", epochs=0)
    with pytest.raises(StudyError, match="sampler='tp'"):
        hpsearch.run_study("quickstart", sampler="tp")
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(StorageError, match="does not exist .*hpsearch.run_study"):
        hpsearch.trials_dataframe("quickstart", storage=missing)
    assert not (tmp_path / "none.db").exists()


def test_a_kernel_interrupt_leaves_the_study_resumable(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGINT (what Jupyter's interrupt sends) in the middle of trial 1: the trial is stored as
    interrupted and queued again, KeyboardInterrupt reaches the caller, and the same call
    resumes and ends with the budget met, the queued trial run with its parameters."""
    report = optuna.Trial.report

    def interrupted_report(self: optuna.Trial, value: float, step: int) -> None:
        report(self, value, step)
        if self.number == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(optuna.Trial, "report", interrupted_report)
    args = {"trials": 3, "epochs": 2, "sampler": "random", "pruner": "none",
            "storage": sqlite_url}
    with pytest.raises(KeyboardInterrupt):
        hpsearch.run_study("quickstart", **args)
    assert "Call run_study again to resume" in capsys.readouterr().err
    trials = optuna.load_study(study_name="quickstart", storage=sqlite_url).get_trials()
    assert [trial_outcome(t) for t in trials] == ["complete", "interrupted", "waiting"]
    assert trials[1].user_attrs["outcome_reason"] == "interrupted by SIGINT"
    assert trials[2].params == trials[1].params

    monkeypatch.setattr(optuna.Trial, "report", report)
    study = hpsearch.run_study("quickstart", **args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trial ")]
    # stderr is not a terminal here: one line per finished trial instead of a bar.
    assert [line.split(" (")[0].rsplit(" ", 1)[0] for line in lines] == [
        "trial 2 complete", "trial 3 complete"]
    assert lines[-1].endswith("study: 3/3 finished")
    outcomes = [trial_outcome(t) for t in study.get_trials()]
    assert outcomes == ["complete", "interrupted", "complete", "complete"]
    assert study.trials[2].state == TrialState.COMPLETE and study.trials[2].params == trials[1].params

    frame = hpsearch.trials_dataframe("quickstart", storage=sqlite_url)
    assert list(frame["outcome"]) == outcomes
    assert list(frame["config.lr"]) == [t.params["lr"] for t in study.trials]
    assert frame["config.hidden"][0] == [128] and "val_error" in frame
    assert frame["reason"][1] == "interrupted by SIGINT"
    shown = hpsearch.figures(study)
    assert {"history", "importances", "learning_curves"} <= set(shown)
    assert all(isinstance(f, go.Figure) for f in shown.values())
    assert hpsearch.answer(study).startswith("best: trial #")


def test_train_one_config_returns_its_history() -> None:
    result = hpsearch.train(hpsearch.TrainConfig(dataset="digits", epochs=2), device="cpu")
    assert [r.epoch for r in result.history] == [1, 2]
    assert result.final.val_error is not None and result.final.val_error < 0.5  # chance: 0.9
