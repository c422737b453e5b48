"""Cross-validated trials on small data sets: folds, stored fold values, pruning steps, rerun."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.terminator import CrossValidationErrorEvaluator
from optuna.trial import TrialState

from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli import main
from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, RawData, load_raw, make_folds, make_splits, register_dataset
from hpsearch.errors import DataError, StudyError
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.study import open_study
from hpsearch.search.trials import run_trial
from hpsearch.search.worker import WorkerOptions, run_worker
from hpsearch.training import train, train_folds

CPU = torch.device("cpu")

CV_STUDY = '''"""Learning rate of a small MLP on iris, 3-fold cross-validated."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), epochs=2, batch_size=16)
TRIALS = 3
PRUNER = "none"
CV = 3


def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
'''


@register_dataset("big-enough")
def _big_enough(data_dir: Path, download: bool) -> RawData:
    """2,000 training examples: at the size where a study's CV no longer applies."""
    y = torch.arange(2000) % 2
    return RawData(y[:, None].float(), y, y[:10, None].float(), y[:10], classes=("a", "b"))


@pytest.fixture
def cv_module(tmp_path: Path) -> Path:
    module = tmp_path / "cv_iris.py"
    module.write_text(CV_STUDY)
    return module


def _run(cli: CliRunner, module: Path, url: str, *extra: str) -> None:
    result = cli.invoke(main, ["run", str(module), "--storage", url, "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output


def test_folds_are_stratified_disjoint_and_standardised_on_their_training_part() -> None:
    # Feature 0 is the example's index, so each fold's scaled values can be mapped back to it.
    raw = load_raw("iris")
    n = len(raw.train_y)
    indexed = RawData(torch.arange(n, dtype=torch.float32)[:, None], raw.train_y,
                      raw.test_x, raw.test_y, classes=raw.classes)
    folds = make_folds(indexed, name="iris", k=5, split_seed=0)
    assert len(folds) == 5
    seen: list[int] = []
    for fold in folds:
        both = torch.cat([fold.train.x[:, 0], fold.val.x[:, 0]])
        ids = ((both - both.min()) / (both.max() - both.min()) * (n - 1)).round().long()
        assert sorted(ids.tolist()) == list(range(n))  # train + validation = the training set
        seen += ids[len(fold.train):].tolist()
        # Stratified: iris's 40/40/40 training classes give 8 of each to every validation part.
        assert torch.bincount(fold.val.y).tolist() == [8, 8, 8]
        assert float(fold.train.x.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(fold.train.x.std()) == pytest.approx(1.0, abs=1e-5)
        assert fold.test is None
    assert sorted(seen) == list(range(n))  # each example validates in exactly one fold
    again = make_folds(indexed, name="iris", k=5, split_seed=0)
    assert all(torch.equal(a.val.x, b.val.x) for a, b in zip(folds, again))
    other = make_folds(indexed, name="iris", k=5, split_seed=1)
    assert any(not torch.equal(a.val.x, b.val.x) for a, b in zip(folds, other))


def test_a_cross_validated_trial_stores_each_fold_and_its_value_is_their_mean(
    cv_module: Path, sqlite_url: str, cli: CliRunner
) -> None:
    _run(cli, cv_module, sqlite_url)
    study = optuna.load_study(study_name="cv_iris", storage=sqlite_url)
    assert study.user_attrs["cv"] == 3
    folds = make_folds(load_raw("iris"), name="iris", k=3, split_seed=0)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        cv = trial.user_attrs["cv"]
        assert cv["k"] == 3 and len(cv["values"]) == 3 and cv["epochs_run"] == [2, 2, 2]
        assert trial.value == statistics.fmean(cv["values"])
        # Pruning steps are folds: after fold j, the mean of folds 1..j.
        assert trial.intermediate_values == {
            j: statistics.fmean(cv["values"][:j]) for j in (1, 2, 3)}
        assert trial.system_attrs["terminator:cv_scores"] == cv["values"]
        assert trial.user_attrs["run"]["split"]["cv_folds"] == 3
        config = TrainConfig.from_dict(trial.user_attrs["config"])
        alone = [train(config, fold, device=CPU).final.val_error for fold in folds]
        assert cv["values"] == alone
    # Optuna's Terminator reads the fold values of the best trial.
    error = CrossValidationErrorEvaluator().evaluate(study.trials, study.direction)
    assert error >= 0.0


def test_cv_0_restores_the_single_split_and_a_study_does_not_mix_the_two(
    cv_module: Path, sqlite_url: str, cli: CliRunner
) -> None:
    _run(cli, cv_module, sqlite_url, "--cv", "0", "--trials", "1")
    study = optuna.load_study(study_name="cv_iris", storage=sqlite_url)
    (trial,) = study.trials
    assert "cv" not in trial.user_attrs and study.user_attrs["cv"] == 0
    assert sorted(trial.intermediate_values) == [1, 2]  # one report per epoch
    config = TrainConfig.from_dict(trial.user_attrs["config"])
    split = make_splits(load_raw("iris"), name="iris", val_fraction=config.val_fraction,
                        split_seed=config.split_seed)
    assert trial.value == train(config, split, device=CPU).final.val_error

    resumed = cli.invoke(main, ["run", str(cv_module), "--storage", sqlite_url, "--device", "cpu"])
    assert resumed.exit_code == 1
    assert "was created with cv=0, not 3; resume it with --cv 0" in resumed.output
    assert len(optuna.load_study(study_name="cv_iris", storage=sqlite_url).trials) == 1


def test_rerun_of_a_cross_validated_trial_runs_the_same_folds(
    cv_module: Path, sqlite_url: str, cli: CliRunner
) -> None:
    _run(cli, cv_module, sqlite_url, "--trials", "2")
    storage = open_storage(sqlite_url, heartbeat=None).storage
    study = optuna.load_study(study_name="cv_iris", storage=storage)
    rerun = rerun_trial(study, 1, device=CPU)
    assert rerun.value == rerun.stored_value == study.trials[1].value
    assert rerun.result.values == study.trials[1].user_attrs["cv"]["values"]
    assert rerun.max_epoch_difference == 0.0
    shown = cli.invoke(main, ["rerun", "cv_iris", "1", "--storage", sqlite_url])
    assert shown.exit_code == 0, shown.output
    assert " fold    stored val_error" in shown.output
    assert "(identical)" in shown.output and "largest per-epoch difference: 0" in shown.output


def test_final_of_a_cross_validated_trial_trains_on_the_whole_training_set(
    cv_module: Path, sqlite_url: str, cli: CliRunner, tmp_path: Path
) -> None:
    _run(cli, cv_module, sqlite_url, "--trials", "1")
    exported = tmp_path / "best.yaml"
    assert cli.invoke(main, ["export", "cv_iris", "--storage", sqlite_url, "--top", "1",
                             "-o", str(exported)]).exit_code == 0
    entry = yaml.safe_load(exported.read_text())["configs"][0]
    assert entry["search"]["cv_folds"] == 3 and entry["config"]["epochs"] == 2
    out = tmp_path / "final.json"
    result = cli.invoke(main, ["final", str(exported), "--seeds", "1", "--device", "cpu",
                               "-o", str(out)])
    assert result.exit_code == 0, result.output
    run = yaml.safe_load(out.read_text())["configs"][0]["runs"][0]
    assert run["rerun"]["split"]["n_train"] == 120 and run["rerun"]["split"]["n_test"] == 30
    config = TrainConfig.from_dict(entry["config"])
    final = make_splits(load_raw("iris"), name="iris", val_fraction=0.1, split_seed=0, final=True)
    direct = train(config, final, device=CPU, evaluate_test=True)
    assert direct.test is not None and run["error"] == direct.test.error


def test_population_workers_train_cross_validated_trials_alone_with_the_same_results(
    cv_module: Path, tmp_path: Path
) -> None:
    values = {}
    for population in (1, 3):
        handle = open_storage(f"sqlite:///{tmp_path / f'p{population}.db'}")
        settings = resolve_settings(load_study(str(cv_module)))
        run_worker(handle, settings, WorkerOptions(trials=3, device=CPU, sampler_seed=0, population=population))
        trials = optuna.load_study(study_name="cv_iris", storage=handle.storage).trials
        assert all(t.user_attrs["run"].get("population", 1) == 1 for t in trials)
        values[population] = [t.user_attrs["cv"]["values"] for t in trials]
    assert values[1] == values[3]


def test_a_cross_validated_trial_is_pruned_between_folds_on_the_running_mean(
    cv_module: Path, sqlite_url: str
) -> None:
    settings = resolve_settings(load_study(str(cv_module)))
    handle = open_storage(sqlite_url)
    study = open_study(handle, settings)
    study.pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # any error > 0 is pruned at once
    outcome = run_trial(study, study.ask(), settings, handle=handle, device=CPU,
                        data=DataCache(None, CPU))
    assert outcome.outcome == "pruned" and outcome.reason == "pruned after fold 1 of 3"
    (trial,) = study.trials
    cv = trial.user_attrs["cv"]
    assert trial.intermediate_values == {1: cv["values"][0]} and len(cv["values"]) == 1
    assert trial.user_attrs["result"]["stop_reason"] == "stopped"


def test_a_diverging_fold_fails_the_trial_with_its_fold_named() -> None:
    folds = make_folds(load_raw("iris"), name="iris", k=3, split_seed=0)
    config = TrainConfig(dataset="iris", hidden=(8,), optimizer="sgd", lr=1e6, batch_size=16,
                         epochs=3)
    result = train_folds(config, folds, metric="val_error", device=CPU)
    assert len(result.folds) == 1 and result.stop_reason == "diverged"
    assert result.failure is not None
    assert result.failure.startswith("fold 1 of 3: training loss became")


def test_where_cross_validation_applies(tmp_path: Path) -> None:
    module = tmp_path / "cv_iris.py"
    module.write_text(CV_STUDY)
    spec = load_study(str(module))
    assert resolve_settings(spec).cv == 3
    assert resolve_settings(spec, cv=1).cv == 0  # 0 and 1 are off
    # A study's CV is for small, non-memorised sets; --cv K is taken as given where it can be.
    assert resolve_settings(spec, dataset="parity-4").cv == 0
    assert resolve_settings(spec, dataset="big-enough").cv == 0
    assert resolve_settings(spec, dataset="big-enough", cv=2).cv == 2
    with pytest.raises(DataError, match="'parity-4' is memorised .* run it with --cv 0"):
        resolve_settings(spec, dataset="parity-4", cv=3)
    with pytest.raises(DataError, match="smallest class, so stratified folds need k from 2 to 40"):
        resolve_settings(spec, cv=41)
    module.write_text(CV_STUDY.replace("CV = 3", "CV = -2"))
    with pytest.raises(StudyError, match="CV = -2; give the number of folds"):
        load_study(str(module))


def test_status_counts_a_running_cross_validated_trial_in_folds(
    cli: CliRunner, cv_module: Path, sqlite_url: str
) -> None:
    _run(cli, cv_module, sqlite_url, "--trials", "1")
    study = optuna.load_study(study_name="cv_iris", storage=sqlite_url)
    running = study.ask()
    running.set_user_attr("run", {"worker": {"host": "h", "pid": 1}, "split": {"cv_folds": 3}})
    for fold, mean in enumerate((0.2, 0.25), start=1):
        running.report(mean, fold)
    result = cli.invoke(main, ["status", "cv_iris", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"running: trial #{running.number} on h:1" in result.output
    assert "2 of 3 folds reported" in result.output
