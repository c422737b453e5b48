"""What a study cost: device time by kind and outcome, trials per hour, best value against cost."""

from __future__ import annotations

import datetime
import re
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.analysis.cost import cost_lines, cost_totals, device_kind
from hpsearch.analysis.report import build_report
from hpsearch.cli import main
from hpsearch.search.outcomes import outcome_attrs
from hpsearch.search.record import RunRecord, load_existing_study
from hpsearch.search.storage import open_storage

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0)


def _trial(number: int, state: TrialState, *, start: float | None, seconds: float | None,
           value: float | None = None, outcome: str | None = None, device: str | None = "cpu",
           device_name: str | None = None, population: int = 1) -> FrozenTrial:
    attrs: dict[str, Any] = {}
    if device is not None:  # a trial that failed before its run record was written has none
        attrs["run"] = {"device": device, "device_name": device_name, "population": population}
    if outcome is not None:
        attrs.update(outcome_attrs(outcome, f"{outcome} for the test"))
    begin = T0 + datetime.timedelta(seconds=start) if start is not None else None
    end = begin + datetime.timedelta(seconds=seconds) if begin is not None and seconds is not None else None
    return FrozenTrial(
        number=number, state=state, value=value, values=None, datetime_start=begin,
        datetime_complete=end, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1)},
        user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=number,
    )


def _study_trials() -> list[FrozenTrial]:
    complete = TrialState.COMPLETE
    return [
        _trial(0, complete, start=0, seconds=10, value=0.30),
        # Failed at once by a bad config: no training seconds in its result, 5 s of wall time.
        _trial(1, TrialState.FAIL, start=10, seconds=5, outcome="failed", device=None),
        _trial(2, TrialState.PRUNED, start=15, seconds=3),
        _trial(3, complete, start=18, seconds=10, value=0.20),
        _trial(4, TrialState.FAIL, start=28, seconds=4, outcome="lost"),
        _trial(5, TrialState.FAIL, start=32, seconds=2, outcome="interrupted"),
        # Two trials stacked on one GPU for 8 s: 4 s of the GPU each.
        _trial(6, complete, start=34, seconds=8, value=0.25, device="cuda:0",
               device_name="NVIDIA H200", population=2),
        _trial(7, complete, start=34, seconds=8, value=0.10, device="cuda:1",
               device_name="NVIDIA H200", population=2),
        _trial(8, TrialState.RUNNING, start=42, seconds=None),  # not charged until it ends
        _trial(9, TrialState.WAITING, start=None, seconds=None),
    ]


def test_cost_totals_charge_every_ended_trial_by_device_and_outcome() -> None:
    totals = cost_totals(_study_trials(), maximize=False)
    assert totals.device_seconds == {"cpu": pytest.approx(29.0), "cuda NVIDIA H200": pytest.approx(8.0),
                                     "unknown": pytest.approx(5.0)}
    assert totals.total == pytest.approx(42.0)
    assert totals.by_outcome == {"complete": pytest.approx(28.0), "pruned": pytest.approx(3.0),
                                 "failed": pytest.approx(5.0), "interrupted": pytest.approx(2.0),
                                 "lost": pytest.approx(4.0)}
    assert totals.lost == pytest.approx(14.0)  # the failed trial's 5 s count, with no result
    # Counted toward the budget: complete, pruned, failed (not lost, interrupted, running).
    assert (totals.ended, totals.counted) == (8, 6)
    assert totals.span_seconds == pytest.approx(42.0)
    assert totals.trials_per_hour == pytest.approx(6 * 3600 / 42)
    # Trials 6 and 7 end at the same moment and are taken in number order.
    assert [(p.trial, p.device_seconds, p.best) for p in totals.curve] == [
        (0, pytest.approx(10.0), 0.30), (3, pytest.approx(28.0), 0.20),
        (7, pytest.approx(42.0), 0.10)]
    maximized = cost_totals(_study_trials(), maximize=True)
    assert [p.trial for p in maximized.curve] == [0]  # 0.30 is never beaten upwards
    assert cost_totals(_study_trials(), maximize=None).curve == []  # several objectives


def test_cost_lines_name_the_device_time_lost_and_the_best_so_far() -> None:
    lines = cost_lines(cost_totals(_study_trials(), maximize=False))
    assert lines[0] == ("cost: 42.0 s of device time over 8 ended trials (cpu 29.0 s, cuda NVIDIA "
                        "H200 8.0 s, unknown 5.0 s); 514 trials/hour over 42.0 s")
    assert lines[1] == ("  not complete: 14.0 s (33%) (pruned 3.0 s, failed 5.0 s, interrupted "
                        "2.0 s, lost 4.0 s)")
    assert lines[2] == "  best so far reached at trial #7 after 42.0 s of device time (3 improvements)"
    assert cost_lines(cost_totals([], maximize=False)) == ["cost: no trial has ended yet"]


def test_device_kind_groups_gpus_by_model_and_cpus_by_type() -> None:
    assert device_kind(RunRecord(device="cuda:3", device_name="NVIDIA H100 80GB HBM3")) == (
        "cuda NVIDIA H100 80GB HBM3")
    assert device_kind(RunRecord(device="cpu", device_name="CPU (x86_64, 4 threads)")) == "cpu"
    assert device_kind(RunRecord()) == "unknown"


def test_status_prints_the_cost_of_a_real_study(cli: CliRunner, sqlite_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_estimates(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Terminator was asked without --stop-when-converged")

    # Without the flag, the convergence estimate stays off the trial loop altogether.
    monkeypatch.setattr("hpsearch.search.worker.ConvergenceWatch", no_estimates)
    run = cli.invoke(main, ["run", "quickstart", "--trials", "3", "--epochs", "1",
                            "--storage", sqlite_url])
    assert run.exit_code == 0, run.output
    result = cli.invoke(main, ["status", "quickstart", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    study = load_existing_study(open_storage(sqlite_url, heartbeat=None), "quickstart")
    walls = [t.duration.total_seconds() for t in study.trials if t.duration is not None]
    assert len(walls) == 3
    shown = re.search(r"cost: ([\d.]+) s of device time over 3 ended trials \(cpu ([\d.]+) s\); "
                      r"(\d+) trials/hour", result.output)
    assert shown is not None, result.output
    assert float(shown[1]) == pytest.approx(sum(walls), abs=0.06)
    assert float(shown[2]) == float(shown[1])
    assert "not complete: 0.0 s (0%)" in result.output
    best = min(study.trials, key=lambda t: t.value or 1.0).number
    assert f"best so far reached at trial #{best} after" in result.output
    assert "convergence" not in study.user_attrs and "when to stop" not in result.output


def test_the_report_draws_the_cost_curve_and_the_estimates_against_the_noise() -> None:
    study = optuna.create_study()
    study.add_trials([t for t in _study_trials() if t.state.is_finished()])
    rows = [{"trial": 3, "complete": 2, "improvement": 0.05, "noise": 0.02, "seconds": 0.4},
            {"trial": 7, "complete": 4, "improvement": 0.01, "noise": 0.02, "seconds": 0.3}]
    study.set_user_attr("convergence", rows)
    study.set_user_attr("stopped", {"reason": "converged for the test", **rows[1]})
    page = build_report(study).html
    cost = page[page.index("<h2>Cost</h2>"):page.index("<h2>When to stop</h2>")]
    assert "<td>device time</td><td>42.0 s</td>" in cost
    assert "<td>  failed trials</td><td>5.0 s</td>" in cost
    assert "<td>not complete</td><td>14.0 s</td>" in cost
    # The curve: each new best at the device time spent so far, then held to the total.
    assert re.search(r'"x":\[10\.0,28\.0,42\.0,42\.0\],"y":\[0\.3,0\.2,0\.1,0\.1\]', cost), cost[-3000:]
    stop = page[page.index("<h2>When to stop</h2>"):page.index("<h2>Best")]
    assert re.search(r'"x":\[3,7\],"y":\[0\.05,0\.01\]', stop)
    assert re.search(r'"x":\[3,7\],"y":\[0\.02,0\.02\]', stop)
    assert "stopped starting trials: converged for the test" in stop
