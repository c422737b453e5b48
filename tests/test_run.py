"""Studies end to end through the CLI and the worker loop, on tiny data and real storages."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.devices import resolve_device
from hpsearch.search.registry import load_study, study_names
from hpsearch.search.settings import grid_size, make_sampler, resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.study import open_study
from hpsearch.search.worker import WorkerOptions, run_worker
from tests.conftest import interrupted_once_study

CPU = torch.device("cpu")

# One small, fast configuration per study module: every module must run.
STUDY_ARGS = {
    "quickstart": ["--epochs", "2"],
    "iris_mlp": ["--epochs", "3"],
    "mnist_mlp": ["--dataset", "digits", "--epochs", "2"],
    "activations": ["--dataset", "digits", "--epochs", "1"],
    "losses": ["--dataset", "iris", "--epochs", "3"],
    "init": ["--dataset", "digits", "--epochs", "1"],
    "depth_width": ["--dataset", "parity-4", "--epochs", "5"],
    "optimizers": ["--dataset", "digits", "--epochs", "2"],
    "cnn_lr_wd": ["--dataset", "mnist", "--epochs", "1"],
    "hinton_mlp": ["--dataset", "fashion-mnist", "--epochs", "1"],
    "mlp_size": ["--epochs", "2"],  # two objectives: its answer is a Pareto front
}


def test_every_study_module_has_a_test_configuration() -> None:
    assert sorted(STUDY_ARGS) == study_names()


@pytest.mark.parametrize("study", sorted(STUDY_ARGS))
def test_every_study_module_runs_and_records_its_trials(
    study: str, cli: CliRunner, sqlite_url: str, mnist_dir: Path
) -> None:
    args = ["run", study, "--trials", "2", "--storage", sqlite_url, "--device", "cpu", *STUDY_ARGS[study]]
    result = cli.invoke(main, [*args, "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    spec = load_study(study)
    answer = "Pareto front of" if spec.multi_objective else "best trial of"
    assert "ran 2 trials" in result.output and answer in result.output
    dataset = args[args.index("--dataset") + 1] if "--dataset" in args else spec.default_dataset
    name = study if dataset == spec.default_dataset else f"{study}-{dataset}"
    trials = optuna.load_study(study_name=name, storage=sqlite_url).get_trials()
    assert len(trials) == 2
    for trial in trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        config = trial.user_attrs["config"]
        run = trial.user_attrs["run"]
        assert run["seed"] == config["seed"] == trial.number  # --seed 0 + trial number
        assert run["device"] == "cpu" and run["versions"]["torch"] == torch.__version__
        assert run["source_hash"] == spec.source_hash and run["study_module"] == study
        assert trial.user_attrs["result"]["n_params"] > 0
        epochs = trial.user_attrs["result"]["epochs_run"]
        assert epochs == len(trial.user_attrs["history"]["val_error"])
        # One report per epoch, or per fold for a cross-validated study (iris_mlp's CV = 5).
        # Optuna takes no per-epoch report in a study with several objectives (mlp_size).
        steps = 0 if spec.multi_objective else run["split"]["cv_folds"] or epochs
        expected = 0 if spec.multi_objective else spec.cv if study == "iris_mlp" else epochs
        assert len(trial.intermediate_values) == steps == expected
        if spec.record_init_stats:
            assert len(trial.user_attrs["init_stats"]["activation_std"]) == len(config["hidden"])


def test_resumed_study_continues_its_count(cli: CliRunner, sqlite_url: str) -> None:
    args = ["run", "quickstart", "--storage", sqlite_url, "--epochs", "1"]
    assert cli.invoke(main, [*args, "--trials", "2"]).exit_code == 0
    again = cli.invoke(main, [*args, "--trials", "5"])
    assert again.exit_code == 0, again.output
    assert "resumed: 2 trials were already finished" in again.output
    assert "ran 3 trials" in again.output
    numbers = [t.number for t in optuna.load_study(study_name="quickstart", storage=sqlite_url).trials]
    assert numbers == [0, 1, 2, 3, 4]
    done = cli.invoke(main, [*args, "--trials", "5"])
    assert done.exit_code == 0, done.output
    assert "ran no trials: the study already holds its 5; raise --trials to run more" in done.output


def test_pruned_trials_are_recorded_as_pruned(sqlite_url: str) -> None:
    settings = resolve_settings(load_study("quickstart"), epochs=4)
    handle = open_storage(sqlite_url)
    study = open_study(handle, settings)
    study.pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # prunes every trial after epoch 1
    from hpsearch.data import DataCache
    from hpsearch.search.trials import run_trial

    outcome = run_trial(study, study.ask(), settings, handle=handle, device=CPU, data=DataCache(None, CPU))
    assert outcome.outcome == "pruned"
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert trial.user_attrs["result"]["stop_reason"] == "stopped"


DIVERGING_STUDY = '''
"""Trial 0 diverges, the others train."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), optimizer="sgd", epochs=3)
PRUNER = "none"

def suggest(trial, base):
    lr = trial.suggest_categorical("lr", [1e6, 0.01])
    return base.replace(lr=1e6 if trial.number == 0 else 0.01)
'''


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(
    cli: CliRunner, sqlite_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "diverging.py"
    module.write_text(DIVERGING_STUDY)
    result = cli.invoke(main, ["run", str(module), "--trials", "3", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.output and "trial 0 failed: training loss became" in result.output
    trials = optuna.load_study(study_name="diverging", storage=sqlite_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["result"]["outcome"] == "failed"
    assert "lr=1e+06" in trials[0].user_attrs["result"]["reason"]


BROKEN_STUDY = '''
"""Every trial raises."""
def suggest(trial, base):
    trial.suggest_float("x", 0, 1)
    raise ValueError("bug in the study module")
'''


def test_a_raising_study_module_fails_its_trials_then_stops_with_the_reason(
    cli: CliRunner, sqlite_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "broken.py"
    module.write_text(BROKEN_STUDY)
    result = cli.invoke(main, ["run", str(module), "--trials", "20", "--storage", sqlite_url])
    assert result.exit_code == 1
    assert "5 trials in a row failed" in result.output and "bug in the study module" in result.output
    trials = optuna.load_study(study_name="broken", storage=sqlite_url).trials
    assert len(trials) == 5 and all(t.state == TrialState.FAIL for t in trials)
    assert "ValueError: bug in the study module" in trials[0].user_attrs["result"]["reason"]


INTERRUPTED_STUDY = interrupted_once_study(trial=1, epochs=2)


def test_an_interrupted_trial_is_queued_again_and_the_rerun_resumes(
    cli: CliRunner, sqlite_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "interrupted.py"
    module.write_text(INTERRUPTED_STUDY)
    args = ["run", str(module), "--trials", "3", "--storage", sqlite_url]
    first = cli.invoke(main, args)
    assert first.exit_code == 130 and "Run the same command to resume" in first.output
    study = optuna.load_study(study_name="interrupted", storage=sqlite_url)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["result"]["outcome"] == "interrupted"
    assert study.trials[2].params == study.trials[1].params
    second = cli.invoke(main, args)
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="interrupted", storage=sqlite_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and complete[1].params == study.trials[1].params


def test_run_worker_stops_at_the_study_budget_on_every_storage(storage_url: str) -> None:
    settings = resolve_settings(load_study("depth_width"), dataset="parity-4", epochs=2)
    report = run_worker(open_storage(storage_url), settings, WorkerOptions(trials=4, device=CPU))
    assert len(report.outcomes) == 4
    study = optuna.load_study(study_name=settings.study_name, storage=open_storage(storage_url).storage)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 4 and len(set(params)) == 4  # a grid never repeats a point


def test_telling_the_last_grid_point_through_ask_and_tell_raises_nothing() -> None:
    # Optuna's GridSampler calls `study.stop()` there, which raises outside `Study.optimize`.
    settings = resolve_settings(load_study("depth_width"), dataset="parity-4", epochs=2)
    size = grid_size(settings)
    assert size is not None and size > 1
    study = optuna.create_study(sampler=make_sampler(settings, seed=None))
    for _ in range(size):
        study.tell(study.ask(), 0.5)
    assert isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * size


def test_best_prints_the_full_config(cli: CliRunner, sqlite_url: str) -> None:
    cli.invoke(main, ["run", "quickstart", "--trials", "2", "--epochs", "1", "--storage", sqlite_url])
    result = cli.invoke(main, ["best", "quickstart", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "best trial of quickstart" in result.output
    assert "optimizer: adam" in result.output and "hidden:\n- 128" in result.output


def test_studies_lists_every_module(cli: CliRunner) -> None:
    output = cli.invoke(main, ["studies"]).output
    for name in study_names():
        assert name in output
    assert "metric val_error, 5-fold cross-validation on small sets" in output  # iris_mlp


# --- bad input: a clear error naming the value and the fix, and nothing stored lost ---------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope"], "unknown study 'nope'; valid names: activations"),
        (["run", "quickstart", "--trials", "0"], "0 is not in the range x>=1"),
        (["run", "quickstart", "--trials", "-3"], "-3 is not in the range x>=1"),
        (["run", "quickstart", "--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["run", "quickstart", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "quickstart", "--sampler", "bayes"], "'bayes' is not one of"),
        (["run", "quickstart", "--storage", "mongodb://host/db"], "unsupported backend 'mongodb'"),
        (["run", "quickstart", "--storage", "sqlite:////no/such/folder/x.db"], "folder /no/such/folder does not exist"),
        (["run", "quickstart", "--storage", "postgresql://nobody@127.0.0.1:5432/test"], 'role "nobody" does not exist'),
        (["run", "quickstart", "--storage", "postgresql://postgres@127.0.0.1:1/test"], "check that the server is running"),
        (["run", "quickstart", "--storage", "journal:/no/such/folder/x.log"], "folder /no/such/folder does not exist"),
        (["best", "quickstart", "--storage", "sqlite:///{tmp}/empty.db"], "empty.db does not exist (nothing was created)"),
    ],
)
def test_bad_input_gets_a_clear_error(args: list[str], message: str, cli: CliRunner, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli.invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_data_dir_without_the_files_names_them(
    cli: CliRunner, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(tmp_path / "empty-cache"))
    result = cli.invoke(main, ["run", "mnist_mlp", "--storage", sqlite_url, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte" in result.output and str(tmp_path) in result.output
    # Nothing was created: the data are checked before the first trial.
    assert optuna.get_all_study_summaries(sqlite_url) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused(cli: CliRunner) -> None:
    result = cli.invoke(main, ["run", "quickstart", "--device", "cuda"])
    assert result.exit_code == 1 and "no CUDA GPU is available" in result.output
    assert resolve_device("auto") == CPU


def test_a_module_without_search_space_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    module = tmp_path / "empty_study.py"
    module.write_text('"""No suggest here."""\nTRIALS = 3\n')
    result = cli.invoke(main, ["run", str(module)])
    assert result.exit_code == 1 and "has no search space: define `def suggest(trial" in result.output


def test_resuming_on_another_data_set_is_refused_and_keeps_the_trials(cli: CliRunner, sqlite_url: str) -> None:
    cli.invoke(main, ["run", "quickstart", "--trials", "1", "--epochs", "1", "--storage", sqlite_url])
    result = cli.invoke(main, ["run", "quickstart", "--study-name", "quickstart", "--dataset", "iris",
                               "--storage", sqlite_url])
    assert result.exit_code == 1 and "was created with dataset='digits'" in result.output
    assert len(optuna.load_study(study_name="quickstart", storage=sqlite_url).trials) == 1


def test_a_corrupt_sqlite_file_is_reported_not_overwritten(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database")
    result = cli.invoke(main, ["run", "quickstart", "--storage", f"sqlite:///{path}"])
    assert result.exit_code == 1 and "cannot open storage" in result.output
    assert path.read_text() == "these are my notes, not a database"


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes"])
def test_each_sampler_runs_a_study(sampler: str, cli: CliRunner, sqlite_url: str) -> None:
    result = cli.invoke(main, ["run", "quickstart", "--trials", "3", "--epochs", "1", "--sampler", sampler,
                               "--pruner", "none", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    assert study.user_attrs["sampler"] == sampler
    assert len({t.params["lr"] for t in study.trials}) == 3
