"""`hpsearch report` on empty, failed-only, one-trial, normal and large studies."""

from __future__ import annotations

import random
import re
import statistics
import time
from html import unescape
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.analysis import figures as figures_module
from hpsearch.analysis.report import build_report, write_report
from hpsearch.cli import main
from hpsearch.search.storage import open_storage

FIGURES = ("Optimization history", "Parameter importances", "Parallel coordinates", "Slice plots",
           "Contour of", "Intermediate values (learning curves)")
PLOTLY_MARK = "* plotly.js v"  # the banner of the inlined library

TREND_STUDY = '''"""Optimizer x activation x depth x width on iris, for the report tests."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", epochs=3, batch_size=16)
TRIALS = 8
SAMPLER = "random"
PRUNER = "none"


def suggest(trial, base):
    width = trial.suggest_int("units", 4, 16, step=4)
    return base.replace(
        optimizer=trial.suggest_categorical("optimizer", ["sgd", "adam"]),
        activation=trial.suggest_categorical("activation", ["relu", "tanh"]),
        hidden=(width,) * trial.suggest_int("n_layers", 1, 2),
        lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True),
    )
'''

DIVERGING_STUDY = '''"""A learning rate no network survives."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), optimizer="sgd", epochs=3)
TRIALS = 2
PRUNER = "none"


def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e12, 1e13, log=True))
'''


def run_module(tmp_path: Path, name: str, source: str) -> str:
    module = tmp_path / f"{name}.py"
    module.write_text(source)
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    result = CliRunner().invoke(main, ["run", str(module), "--storage", url, "--device", "cpu"])
    assert "ran " in result.output, result.output
    return url


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None).storage)


def captions(html: str) -> list[str]:
    found = re.findall(r"<p class=\"note\">(Drawn from [^<]*|Not drawn: [^<]*)</p>", html)
    return [unescape(c) for c in found]


def test_report_of_an_empty_study(sqlite_url: str, tmp_path: Path) -> None:
    handle = open_storage(sqlite_url, heartbeat=None)
    study = optuna.create_study(storage=handle.storage, study_name="empty")
    report = write_report(study, tmp_path / "r.html", storage_url=handle.url)
    html = (tmp_path / "r.html").read_text()
    assert "<title>hpsearch report: empty</title>" in html
    assert "The study has no trials yet." in html
    assert captions(html) == ["Not drawn: the study has no trials yet."] * len(FIGURES)
    assert all(f.html is None for f in report.figures)
    assert PLOTLY_MARK not in html  # nothing to draw, so no 4.7 MB of JavaScript


def test_report_of_a_failed_only_study(tmp_path: Path) -> None:
    url = run_module(tmp_path, "diverging", DIVERGING_STUDY)
    out = tmp_path / "failed.html"
    result = CliRunner().invoke(main, ["report", "diverging", "--storage", url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "<td>failed</td><td>2</td>" in html
    assert "Why trials failed" in html
    # Both failures are one kind (they differ only in numbers), shown once with both trials.
    assert re.search(r"<td>training loss became (nan|inf)[^<]*</td><td>2</td><td>0, 1</td>", html)
    assert captions(html) == ["Not drawn: no completed trial yet."] * len(FIGURES)
    assert "best trial</td><td>none completed" in html


def test_report_of_a_single_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    result = CliRunner().invoke(main, ["run", "quickstart", "--trials", "1", "--epochs", "2",
                                       "--storage", url, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    html = build_report(load(url, "quickstart")).html
    assert captions(html) == [
        "Drawn from all 1 completed trials (of 1).",
        "Not drawn: importances need at least 2 completed trials.",
        "Drawn from all 1 completed trials.",
        "Drawn from all 1 completed trials.",
        "Not drawn: a contour needs two searched parameters.",
        "Drawn from all 1 completed and 0 pruned trials.",
    ]
    assert html.count(PLOTLY_MARK) == 1


def test_report_of_a_study_made_by_run(tmp_path: Path) -> None:
    url = run_module(tmp_path, "trend", TREND_STUDY)
    out = tmp_path / "trend.html"
    result = CliRunner().invoke(main, ["report", "trend", "--storage", url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 of 6 figures drawn" in result.output
    html = out.read_text()
    assert html.count(PLOTLY_MARK) == 1  # inlined once, shared by every figure
    assert "<script src=" not in html and "<link " not in html  # self-contained
    for title in FIGURES:
        assert f"<h2>{title}" in html
    assert "Optimization History Plot" in html and "Contour Plot" in html
    study = load(url, "trend")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert captions(html)[0] == "Drawn from all 8 completed trials (of 8)."

    # One table per categorical or few-valued parameter, with what the trials say.
    for name in ("optimizer", "activation", "n_layers", "units"):
        assert f"<h3>{name}</h3>" in html
    assert "<h3>lr</h3>" not in html  # continuous: the slice plot shows it
    for value in ("sgd", "adam"):
        scores = [t.value for t in complete if t.params["optimizer"] == value]
        if not scores:
            continue
        row = (f"<tr><td>{value}</td><td>{len(scores)}</td><td>{min(scores):.4g}</td>"
               f"<td>{statistics.median(scores):.4g}</td><td>0</td><td>0</td></tr>")
        assert row in html


# --- large studies: sampled figures, exact tables -------------------------------------------


def synthetic_study(n: int, *, seed: int = 0) -> optuna.Study:
    """n trials shaped like an hpsearch study: 70% complete, 20% pruned, 10% failed."""
    rng = random.Random(seed)
    distributions = {
        "optimizer": CategoricalDistribution(["sgd", "adam", "adagrad"]),
        "n_layers": IntDistribution(1, 4),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
    }
    trials = []
    for _ in range(n):
        params = {"optimizer": rng.choice(["sgd", "adam", "adagrad"]), "n_layers": rng.randint(1, 4),
                  "lr": 10 ** rng.uniform(-5, -1)}
        value = 0.02 + 0.02 * abs(params["lr"] * 1e3 - 1) + 0.03 * (params["optimizer"] == "sgd")
        state = rng.choices([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL], [7, 2, 1])[0]
        epochs = {TrialState.COMPLETE: 10, TrialState.PRUNED: 3, TrialState.FAIL: 0}[state]
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                   TrialState.FAIL: "failed"}[state]
        trials.append(create_trial(
            params=params, distributions=distributions, state=state,
            value=value if state == TrialState.COMPLETE else None,
            intermediate_values={e: value + 0.1 / e for e in range(1, epochs + 1)},
            user_attrs={"result": {"outcome": outcome,
                                   "reason": "training loss became nan in epoch 2 (lr=0.09)"
                                   if state == TrialState.FAIL else None}},
        ))
    study = optuna.create_study(study_name=f"synthetic-{n}")
    study.add_trials(trials)
    return study


def test_large_study_is_sampled_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("MAX_PLOTTED", 100), ("KEEP_BEST", 20), ("MAX_IMPORTANCE", 150),
                        ("CURVES_BEST", 5), ("CURVES_PRUNED", 4)):
        monkeypatch.setattr(figures_module, name, value)
    study = synthetic_study(400)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    n = len(complete)
    html = build_report(study).html
    assert captions(html) == [
        f"Drawn from all {n} completed trials (of 400).",
        f"Drawn from 150 of {n} completed trials drawn at random (seed 0) (Optuna's default evaluator).",
        f"Drawn from 100 of {n} completed trials: the best 20 and 80 of the others drawn at random (seed 0).",
        f"Drawn from 100 of {n} completed trials: the best 20 and 80 of the others drawn at random (seed 0).",
        (f"Drawn from 100 of {n} completed trials: the best 20 and 80 of the others drawn at random "
         "(seed 0); the two most important parameters."),
        (f"Drawn from the best 5 of {n} completed trials and 4 of {len(pruned)} pruned trials drawn "
         "at random (seed 0)."),
    ]
    # The tables aggregate every trial, not the sample.
    counts = re.findall(r"<tr><td>(sgd|adam|adagrad)</td><td>(\d+)</td>", html)
    assert sum(int(c) for _, c in counts) == n
    assert f"<td>complete</td><td>{n}</td>" in html


@pytest.mark.slow
def test_report_of_thousands_of_trials_is_quick() -> None:
    study = synthetic_study(5000)
    started = time.perf_counter()
    report = build_report(study)
    seconds = time.perf_counter() - started
    assert all(f.html is not None for f in report.figures)
    assert seconds < 60, f"{seconds:.1f} s"
    assert len(report.html) < 20e6
