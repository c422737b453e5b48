"""Resuming and extending a study: new points, the same settings, and nothing foreign adopted."""

from __future__ import annotations

from pathlib import Path

import optuna
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from tests.conftest import interrupted_once_study

INTERRUPTED_AT_3 = interrupted_once_study(trial=3, epochs=1)


def _lrs(url: str, name: str) -> list[float]:
    """The lr of every trial that was not a re-queued copy of an interrupted one."""
    study = optuna.load_study(study_name=name, storage=url)
    requeued = {t.number for t in study.trials if "failed_trial" in t.system_attrs}
    return [t.params["lr"] for t in study.trials if t.number not in requeued and "lr" in t.params]


def test_extending_a_study_draws_new_points(cli: CliRunner, sqlite_url: str) -> None:
    args = ["run", "quickstart", "--epochs", "1", "--pruner", "none", "--sampler", "random",
            "--storage", sqlite_url]
    assert cli.invoke(main, [*args, "--trials", "4"]).exit_code == 0
    first = _lrs(sqlite_url, "quickstart")
    result = cli.invoke(main, [*args, "--trials", "8"])
    assert result.exit_code == 0, result.output
    lrs = _lrs(sqlite_url, "quickstart")
    assert len(lrs) == 8 and lrs[:4] == first
    assert len(set(lrs)) == 8, lrs  # the second half used to repeat the first exactly


def test_a_fresh_study_with_one_seed_is_reproducible(cli: CliRunner, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        assert cli.invoke(main, ["run", "quickstart", "--epochs", "1", "--trials", "3",
                                 "--sampler", "random", "--storage", url]).exit_code == 0
        runs.append(_lrs(url, "quickstart"))
    assert runs[0] == runs[1]


def test_resuming_after_an_interrupt_repeats_only_the_requeued_trial(
    cli: CliRunner, sqlite_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "interrupted.py"
    module.write_text(INTERRUPTED_AT_3)
    args = ["run", str(module), "--trials", "6", "--storage", sqlite_url]  # TPE, the default
    assert cli.invoke(main, args).exit_code == 130
    second = cli.invoke(main, args)
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="interrupted", storage=sqlite_url)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 6
    lrs = _lrs(sqlite_url, "interrupted")
    assert len(lrs) == 6 and len(set(lrs)) == 6, lrs


def test_resuming_with_other_settings_is_refused_and_names_them(cli: CliRunner, sqlite_url: str) -> None:
    args = ["run", "quickstart", "--trials", "2", "--epochs", "1", "--storage", sqlite_url]
    assert cli.invoke(main, args).exit_code == 0
    before = optuna.load_study(study_name="quickstart", storage=sqlite_url).trials
    result = cli.invoke(main, [*args[:-2], "--storage", sqlite_url, "--trials", "4", "--epochs", "3",
                               "--seed", "7", "--sampler", "random"])
    assert result.exit_code == 1
    assert ("was created with epochs=1 (given 3), seed=0 (given 7), sampler='tpe' (given "
            "'random'); resume it with the same settings (--epochs 1 --seed 0 --sampler tpe) or "
            "start a new study with --study-name NAME") in result.output
    assert "Traceback" not in result.output
    after = optuna.load_study(study_name="quickstart", storage=sqlite_url).trials
    assert [(t.number, t.state, t.params) for t in after] == [(t.number, t.state, t.params) for t in before]


def test_a_study_hpsearch_did_not_create_is_not_adopted(cli: CliRunner, sqlite_url: str) -> None:
    foreign = optuna.create_study(study_name="quickstart", storage=sqlite_url)
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    result = cli.invoke(main, ["run", "quickstart", "--trials", "3", "--epochs", "1",
                               "--storage", sqlite_url])
    assert result.exit_code == 1
    assert ("study 'quickstart' in sqlite:///" in result.output
            and "was not created by hpsearch (it has 2 trial(s) and no hpsearch settings)"
            in result.output and "choose another --study-name NAME" in result.output)
    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    assert len(study.trials) == 2 and study.user_attrs == {}
