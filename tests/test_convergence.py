"""When to stop: the Terminator against the binomial noise of the validation set, on studies
whose answer is known (one at its optimum early, one still improving far above the noise)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.errors import StudyError
from hpsearch.search.convergence import (
    ConvergenceWatch,
    StopRecord,
    binomial_noise,
    stored_estimates,
    validation_size,
)
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, WorkerReport, run_worker

CPU = torch.device("cpu")
BUDGET = 40

# SGD far below its useful learning rates on digits, 2 epochs: every larger rate trains much
# better (validation error 0.97 to 0.6 across the range), so the best keeps improving by many
# times the noise of 144 validation examples.
STILL_IMPROVING = '''"""SGD's learning rate on digits, far below the optimum."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(32,), optimizer="sgd", batch_size=64, epochs=2)
TRIALS = 10
PRUNER = "none"

def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e-5, 3e-2, log=True))
'''


def test_the_noise_is_the_binomial_standard_error_of_the_best_validation_value() -> None:
    assert binomial_noise(5 / 144, 144, accuracy=False) == pytest.approx(
        math.sqrt((5 / 144) * (139 / 144) / 144))
    assert binomial_noise(0.9, 1000, accuracy=True) == pytest.approx(math.sqrt(0.1 * 0.9 / 1000))
    # A perfect score still has a noise: half an example off.
    assert binomial_noise(0.0, 100, accuracy=False) == pytest.approx(math.sqrt(0.005 * 0.995 / 100))
    trial = optuna.trial.create_trial(value=0.1, user_attrs={"run": {"data": {
        "sizes": {"train": 1150, "val": 287}, "folds": 5}}})
    assert validation_size(trial) == 1437  # the mean over 5 folds saw every example once
    single = optuna.trial.create_trial(value=0.1, user_attrs={"run": {"data": {
        "sizes": {"train": 1293, "val": 144, "test": None}}}})
    assert validation_size(single) == 144


def test_a_study_at_its_optimum_early_stops_well_before_its_budget_in_every_worker(
    journal_url: str, cli: CliRunner,
) -> None:
    """Adam's learning rate on digits: every rate in [1e-3, 1e-2] reaches about 3-4% error, so
    the optimum is found in the first trials; two workers share the study and both stop."""
    settings = resolve_settings(load_study("quickstart"), epochs=3, pruner="none")
    reports: list[WorkerReport] = []

    def work(index: int) -> None:
        options = WorkerOptions(trials=BUDGET, device=CPU, sampler_seed=index,
                                stop_when_converged=True, stop_min_trials=8)
        reports.append(run_worker(open_storage(journal_url), settings, options))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.stopped for r in reports] == ["converged", "converged"]
    study = optuna.load_study(study_name="quickstart", storage=open_storage(journal_url).storage)
    stop = StopRecord.from_study(study)
    assert stop is not None and {r.stop_reason for r in reports} == {stop.reason}
    assert stop.estimate.improvement < stop.estimate.noise and stop.estimate.complete >= 8
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) <= BUDGET // 2, f"stopped only after {len(finished)} of {BUDGET} trials"
    estimates = stored_estimates(study)
    assert estimates[-1].converged and all(e.complete >= 8 for e in estimates)
    # A third worker joining later stops at once, with the stored reason.
    late = cli.invoke(main, ["worker", "quickstart", "--trials", str(BUDGET), "--epochs", "3",
                             "--pruner", "none", "--stop-when-converged", "--storage", journal_url])
    assert late.exit_code == 0, late.output
    assert "done (converged): ran 0 trials" in late.output
    assert f"stopped starting trials: {stop.reason}" in late.output
    status = cli.invoke(main, ["status", "quickstart", "--storage", journal_url])
    assert f"stopped starting trials: {stop.reason}" in status.output
    assert f"when to stop: {len(estimates)} estimate(s) from trial #{estimates[0].trial}" in status.output


def test_a_study_still_improving_faster_than_the_noise_runs_its_whole_budget(
    sqlite_url: str, tmp_path: Path, cli: CliRunner,
) -> None:
    module = tmp_path / "still_improving.py"
    module.write_text(STILL_IMPROVING)
    result = cli.invoke(main, ["run", str(module), "--sampler", "random", "--stop-when-converged",
                               "--stop-min-trials", "6", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "ran 10 trials" in result.output and "stopped starting trials" not in result.output
    study = optuna.load_study(study_name="still_improving", storage=sqlite_url)
    assert StopRecord.from_study(study) is None
    estimates = stored_estimates(study)
    assert [e.complete for e in estimates] == [6, 7, 8, 9, 10]
    assert all(e.improvement > e.noise for e in estimates), estimates
    best = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert max(best) - min(best) > 5 * estimates[-1].noise  # values far apart: not noise


def test_stop_when_converged_is_refused_where_it_has_no_meaning(
    journal_url: str, tmp_path: Path, cli: CliRunner,
) -> None:
    handle = open_storage(journal_url)
    two = optuna.create_study(directions=["minimize", "minimize"], storage=handle.storage,
                              study_name="two")
    with pytest.raises(StudyError, match="has 2 objectives"):
        ConvergenceWatch(two, handle, metric="val_error", min_trials=10)
    one = optuna.create_study(storage=handle.storage, study_name="one")
    with pytest.raises(StudyError, match="'val_loss'.*val_error or val_accuracy"):
        ConvergenceWatch(one, handle, metric="val_loss", min_trials=10)
    module = tmp_path / "by_loss.py"
    module.write_text(STILL_IMPROVING + 'METRIC = "val_loss"\n')
    launched = cli.invoke(main, ["launch", str(module), "--workers", "2", "--stop-when-converged",
                                 "--storage", journal_url])
    assert launched.exit_code == 1 and "metric is 'val_loss'" in launched.output, launched.output
    assert "launching" not in launched.output  # refused once, before any worker started
    # Refused from the study module, before any study is created for nothing.
    assert "by_loss" not in optuna.get_all_study_names(storage=handle.storage)
    # A multi-objective study module (error against size): refused before its first trial.
    pareto = cli.invoke(main, ["run", "mlp_size", "--trials", "2", "--epochs", "1",
                               "--stop-when-converged", "--storage", journal_url])
    assert pareto.exit_code == 1 and "has 2 objectives" in pareto.output, pareto.output
    assert "mlp_size" not in optuna.get_all_study_names(storage=handle.storage)


def _told(study: optuna.Study, lr: float, value: float | None, state: TrialState) -> None:
    run = {"data": {"sizes": {"train": 1293, "val": 144, "test": None}}}
    study.add_trial(optuna.trial.create_trial(
        params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)},
        value=value, state=state, user_attrs={"run": run}))


def test_a_look_estimates_only_when_a_trial_completed_since_the_last_one(journal_url: str) -> None:
    handle = open_storage(journal_url)
    study = optuna.create_study(storage=handle.storage, study_name="flat")
    watch = ConvergenceWatch(study, handle, metric="val_error", min_trials=5)
    for k, value in enumerate([5, 6, 5, 7]):
        _told(study, 0.002 + 0.001 * k, value / 144, TrialState.COMPLETE)
    assert watch.look() is None and stored_estimates(study) == []  # 4 complete, fewer than 5
    _told(study, 0.007, 6 / 144, TrialState.COMPLETE)
    first = watch.look()
    assert first is not None and first.complete == 5 and first.trial == 4
    assert first.noise == pytest.approx(binomial_noise(5 / 144, 144, accuracy=False))
    _told(study, 0.008, None, TrialState.PRUNED)
    assert watch.look() is None  # a pruned trial adds nothing the bound uses
    _told(study, 0.009, 5 / 144, TrialState.COMPLETE)
    second = watch.look()
    assert second is not None and (second.complete, second.trial) == (6, 6)
    assert [e.complete for e in stored_estimates(study)] == [5, 6]
    # Values one or two examples apart: what more trials could gain is below the noise.
    assert first.converged and watch.stopped() == StopRecord.from_study(study).reason  # type: ignore[union-attr]
    assert StopRecord.from_study(study).estimate == stored_estimates(study)[0]  # type: ignore[union-attr]
