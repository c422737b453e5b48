"""Multi-objective studies: declared metrics, stored once, told together, answered by a Pareto
front in `best`, `status`, `export`, `final`, the report and the dashboard."""

from __future__ import annotations

import json
import re
import statistics
import threading
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from hpsearch.analysis.dashboard import make_dashboard_server
from hpsearch.analysis.report import build_report
from hpsearch.cli import main
from hpsearch.errors import StudyError
from hpsearch.search.record import ResultSummary, StudyRecord, study_metric
from hpsearch.search.registry import load_study
from hpsearch.search.storage import open_storage
from tests import browser

TRIALS = 6


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The built-in `mlp_size` study on digits, 6 trials of 1 epoch (about 5 s)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('multiobj') / 'mo.db'}"
    result = CliRunner().invoke(main, ["run", "mlp_size", "--trials", str(TRIALS), "--epochs", "2",
                                       "--storage", url, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Pareto front of mlp_size" in result.output
    return url


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="mlp_size", storage=open_storage(url, heartbeat=None).storage)


def non_dominated(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The trials no other trial is at least as good as in every objective and better in one
    (every objective minimised), computed here by hand."""
    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return {t.number for t in trials if not any(dominates(o.values, t.values) for o in trials)}


def test_the_study_stores_its_objectives_and_tells_every_value(study_url: str) -> None:
    study = load(study_url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_error", "n_params"]
    record = StudyRecord.from_study(study)
    assert record.objectives == ["val_error", "n_params"] and record.metric == "val_error"
    assert record.pruner == "none"
    metric = study_metric(study)
    assert metric.multi_objective and metric.names == ("val_error", "n_params")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == TRIALS
    for t in trials:
        result = ResultSummary.from_trial(t)
        history = t.user_attrs["history"]["val_error"]
        assert t.values == [history[result.best_epoch - 1], result.n_params]
        assert result.epochs_run == 2  # no pruning: every trial trains all its epochs
        assert t.intermediate_values == {}  # Optuna stores none with several objectives


def test_best_prints_exactly_the_non_dominated_trials(study_url: str) -> None:
    study = load(study_url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    expected = non_dominated(trials)
    assert 0 < len(expected) < TRIALS  # some trials are dominated, so the check means something
    result = CliRunner().invoke(main, ["best", "mlp_size", "--storage", study_url])
    assert result.exit_code == 0, result.output
    printed = [int(n) for n in re.findall(r"^\s+#(\d+)\s", result.output, flags=re.MULTILINE)]
    assert set(printed) == expected and len(printed) == len(expected)
    by_number = {t.number: t for t in trials}
    assert [by_number[n].values[0] for n in printed] == sorted(by_number[n].values[0] for n in printed)
    assert f"{len(expected)} of {TRIALS} completed trials" in result.output
    status = CliRunner().invoke(main, ["status", "mlp_size", "--storage", study_url])
    assert status.exit_code == 0, status.output
    assert f"Pareto front (val_error, n_params): {len(expected)} trial(s)" in status.output
    assert "best: trial" not in status.output


def test_studies_lists_the_metrics_of_a_multi_objective_module() -> None:
    output = CliRunner().invoke(main, ["studies"]).output
    assert "none pruner, metrics val_error, n_params (a Pareto front)" in output


def test_a_pruner_request_is_refused_with_the_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = CliRunner().invoke(main, ["run", "mlp_size", "--pruner", "median", "--trials", "1",
                                       "--storage", url])
    assert result.exit_code == 1
    assert "Optuna does not prune multi-objective trials" in result.output
    assert "--pruner 'median' would never stop a trial" in result.output
    assert not (tmp_path / "p.db").exists()  # refused before anything was stored


def _module(path: Path, metrics: str, extra: str = "") -> Path:
    path.write_text(f'''"""A tiny size study."""
from hpsearch.config import TrainConfig
BASE = TrainConfig(dataset="digits", hidden=(4,), epochs=1)
{metrics}
{extra}
def suggest(trial, base):
    return base.replace(hidden=(trial.suggest_int("width", 2, 8),))
''')
    return path


@pytest.mark.parametrize("declared,message", [
    ('METRICS = {"val_error": "maximize"}', "val_error is better smaller; declare it 'minimize'"),
    ('METRICS = {"val_error": "minimize", "size": "minimize"}', "unknown metric 'size'"),
    ('METRICS = ["val_error", "n_params"]', "must map each metric to its direction"),
    ('METRICS = {"val_error": "down"}', "give 'minimize' or 'maximize'"),
    ('METRIC = "val_error"\nMETRICS = {"val_error": "minimize"}', "both METRIC and METRICS"),
    ('METRICS = {"val_error": "minimize", "n_params": "minimize"}\nPRUNER = "median"',
     "Optuna does not prune multi-objective trials"),
    ('METRICS = {"val_error": "minimize", "n_params": "minimize"}\nSAMPLER = "cmaes"',
     "CMA-ES sampler cannot search"),
])
def test_bad_metric_declarations_are_named(tmp_path: Path, declared: str, message: str) -> None:
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(str(_module(tmp_path / "size.py", declared)))


def test_a_resume_with_other_metrics_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    module = _module(tmp_path / "size.py", 'METRICS = {"val_error": "minimize", "n_params": "minimize"}')
    run = ["run", str(module), "--storage", url, "--device", "cpu", "--trials"]
    first = CliRunner().invoke(main, [*run, "1"])
    assert first.exit_code == 0, first.output
    _module(module, 'METRICS = {"val_error": "minimize", "epoch_seconds": "minimize"}')
    other = CliRunner().invoke(main, [*run, "2"])
    assert other.exit_code == 1
    assert ("was created with metrics ['val_error', 'n_params'] (minimize, minimize), not "
            "['val_error', 'epoch_seconds']") in other.output
    _module(module, 'METRIC = "val_error"')
    single = CliRunner().invoke(main, [*run, "2"])
    assert single.exit_code == 1 and "not ['val_error'] (minimize)" in single.output
    _module(module, 'METRICS = {"val_error": "minimize", "n_params": "minimize"}')
    same = CliRunner().invoke(main, [*run, "2"])
    assert same.exit_code == 0, same.output
    values = [t.values for t in optuna.load_study(study_name="size", storage=url).trials]
    assert len(values) == 2 and all(len(v) == 2 for v in values)


def test_export_writes_the_front_or_the_k_best_by_one_metric(study_url: str, tmp_path: Path) -> None:
    study = load(study_url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    front = CliRunner().invoke(main, ["export", "mlp_size", "--storage", study_url,
                                      "-o", str(tmp_path / "front.yaml")])
    assert front.exit_code == 0, front.output
    document = yaml.safe_load((tmp_path / "front.yaml").read_text())
    assert document["selection"] == "the Pareto front"
    assert document["objectives"] == {"val_error": "minimize", "n_params": "minimize"}
    exported = [entry["trial"] for entry in document["configs"]]
    assert set(exported) == non_dominated(trials) and len(exported) == len(set(exported))
    by_number = {t.number: t for t in trials}
    for entry in document["configs"]:
        assert entry["pareto_optimal"] is True
        assert list(entry["values"].values()) == by_number[entry["trial"]].values

    by = CliRunner().invoke(main, ["export", "mlp_size", "--storage", study_url, "--by", "n_params",
                                   "--top", "3", "-o", str(tmp_path / "by.yaml")])
    assert by.exit_code == 0, by.output
    chosen = [e["trial"] for e in yaml.safe_load((tmp_path / "by.yaml").read_text())["configs"]]
    smallest = sorted(trials, key=lambda t: (t.values[1], t.number))[:3]
    assert chosen == [t.number for t in smallest]
    assert "wrote 3 config(s)" in by.output and "the best 3 by n_params" in by.output

    wrong = CliRunner().invoke(main, ["export", "mlp_size", "--storage", study_url, "--by",
                                      "val_loss", "-o", str(tmp_path / "x.yaml")])
    assert wrong.exit_code == 1
    assert "no metric 'val_loss' to export by; its metrics: val_error, n_params" in wrong.output


def test_final_reports_each_objective_with_its_interval(study_url: str, tmp_path: Path) -> None:
    exported = tmp_path / "two.yaml"
    result = CliRunner().invoke(main, ["export", "mlp_size", "--storage", study_url, "--top", "2",
                                       "-o", str(exported)])
    assert result.exit_code == 0, result.output
    entries = yaml.safe_load(exported.read_text())["configs"]
    assert len(entries) == 2 and all(e["pareto_optimal"] for e in entries)
    output = tmp_path / "final.json"
    final = CliRunner().invoke(main, ["final", str(exported), "--seeds", "2", "--device", "cpu",
                                      "-o", str(output)])
    assert final.exit_code == 0, final.output
    document = json.loads(output.read_text())
    for entry, config in zip(entries, document["configs"]):
        assert config["search_values"] == entry["values"]
        objectives = config["objectives"]
        # Size: exactly the searched model's; time: the seeds' own spread, with a t-interval.
        assert objectives["n_params"] == entry["values"]["n_params"]
        seconds = [run["epoch_seconds"] for run in config["runs"]]
        assert objectives["epoch_seconds_mean"] == pytest.approx(statistics.fmean(seconds))
        assert objectives["epoch_seconds_std"] == pytest.approx(statistics.stdev(seconds))
        low, high = objectives["epoch_seconds_t_ci"]
        assert 0 <= low <= objectives["epoch_seconds_mean"] <= high
        row = next(line for line in final.output.splitlines()
                   if line.startswith(f"| {config['label']} | val_error"))
        assert f"| {entry['values']['n_params']:.0f} |" in row and "±" in row
    assert "| config | search values | test error: mean (95% t-CI) | parameters " in final.output


def test_the_report_draws_and_lists_the_front(study_url: str, tmp_path: Path) -> None:
    study = load(study_url)
    expected = non_dominated(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    report = build_report(study, storage_url=study_url)
    pareto = next(f for f in report.figures if f.title == "Pareto front")
    assert pareto.html is not None and "Pareto-front Plot" in pareto.html
    table = report.html.split('<table class="pareto">', 1)[1].split("</table>", 1)[0]
    listed = {int(n) for n in re.findall(r"<tr><td>(\d+)</td>", table)}
    assert listed == expected
    assert f"Pareto front: {len(expected)} of {TRIALS} completed trials" in report.html
    assert report.answer.line.startswith(f"a Pareto front of {len(expected)} trial(s), from #")
    # The rest of the page is drawn on the first objective, as for a single-objective study.
    history = next(f for f in report.figures if f.title == "Optimization history")
    assert history.html is not None


def test_rerun_compares_the_first_objective(study_url: str) -> None:
    result = CliRunner().invoke(main, ["rerun", "mlp_size", "0", "--storage", study_url,
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert re.search(r"val_error: stored [\d.]+, rerun [\d.]+ \(identical\)", result.output)


@pytest.mark.browser
def test_the_dashboard_shows_the_front_in_its_own_views(study_url: str) -> None:
    study = load(study_url)
    expected = non_dominated(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    server = make_dashboard_server(open_storage(study_url, heartbeat=None), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = browser.load(f"http://127.0.0.1:{server.server_address[1]}/dashboard/studies/"
                            f"{study._study_id}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not page.errors, page.errors
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.dom))
    # optuna-dashboard's multi-objective study page: its Pareto-front plot, with an axis per
    # objective named as stored, and its Best Trials card, which lists the front.
    assert "Pareto Front" in text and "Objective X: val_error" in text.replace(" ", " ")
    best = text.split("Best Trials", 1)[1].split("Study User Attributes", 1)[0]
    assert {int(n) for n in re.findall(r"Trial (\d+) Objective Values", best)} == expected


def test_three_objectives_under_cross_validation_are_told_from_the_folds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    module = tmp_path / "costs.py"
    module.write_text('''"""Error, time and size on iris, 3 folds."""
from hpsearch.config import TrainConfig
BASE = TrainConfig(dataset="iris", hidden=(4,), epochs=2)
METRICS = {"val_error": "minimize", "epoch_seconds": "minimize", "n_params": "minimize"}
CV = 3
def suggest(trial, base):
    return base.replace(hidden=(trial.suggest_int("width", 2, 8),))
''')
    result = CliRunner().invoke(main, ["run", str(module), "--trials", "2", "--storage", url,
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="costs", storage=url)
    assert study.metric_names == ["val_error", "epoch_seconds", "n_params"]
    for t in study.trials:
        cv = t.user_attrs["cv"]
        error, seconds, size = t.values
        assert cv["k"] == 3 and error == pytest.approx(statistics.fmean(cv["values"]))
        # Stored fold seconds are rounded to the millisecond.
        assert seconds == pytest.approx(sum(cv["seconds"]) / sum(cv["epochs_run"]), abs=1e-3)
        assert size == t.user_attrs["result"]["n_params"]


def test_the_python_api_reads_a_multi_objective_study(study_url: str, tmp_path: Path) -> None:
    import hpsearch

    assert hpsearch.answer("mlp_size", storage=study_url).startswith("a Pareto front of")
    table = hpsearch.trend_table("mlp_size", storage=study_url)
    assert "best val_error" in table.columns and table["completed"].sum() > 0
    assert "pareto_front" in hpsearch.figures("mlp_size", storage=study_url)
    path = hpsearch.export_best("mlp_size", tmp_path / "api.yaml", storage=study_url, top=None)
    exported = {e["trial"] for e in yaml.safe_load(path.read_text())["configs"]}
    assert exported == non_dominated(load(study_url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))


def test_status_names_a_long_front_in_part(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'long.db'}"
    study = optuna.create_study(study_name="long", storage=url, directions=["minimize"] * 2)
    study.set_metric_names(["val_error", "n_params"])
    for i in range(15):  # every trial is on the front: less error for more parameters
        study.add_trial(optuna.trial.create_trial(values=[i / 100, 1000 - i], params={},
                                                  distributions={}))
    result = CliRunner().invoke(main, ["status", "long", "--storage", url])
    assert result.exit_code == 0, result.output
    numbers = ", ".join(f"#{n}" for n in range(12))
    assert f"Pareto front (val_error, n_params): 15 trial(s): {numbers} and 3 more;" in result.output
