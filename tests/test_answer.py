"""The one-line answer of a grid study, on a synthetic study whose answer is known."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.analysis.report import build_report

DEPTHS = [1, 2, 4, 8]


def grid_study() -> optuna.Study:
    """relu trains everywhere (best at depth 4); sigmoid sits at chance beyond depth 2."""
    dists = {"activation": CategoricalDistribution(["relu", "sigmoid"]),
             "depth": CategoricalDistribution(DEPTHS)}
    study = optuna.create_study(study_name="grid")
    study.set_user_attr("sampler", "grid")
    study.set_user_attr("metric", "val_error")
    study.set_user_attr("dataset", "digits")  # chance error 0.9, threshold 0.72
    for act in ("relu", "sigmoid"):
        for depth in DEPTHS:
            error = 0.05 - 0.01 * (depth == 4) if act == "relu" else (0.1 if depth <= 2 else 0.9)
            study.add_trial(create_trial(
                params={"activation": act, "depth": depth}, distributions=dists,
                state=TrialState.COMPLETE, value=error,
                user_attrs={"history": {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6],
                                        "val_error": [error + 0.1, error]},
                            "init_stats": {"activation_std": [1.0, 0.1], "grad_std": [0.01, 0.1]}}))
    return study


def test_grid_answer_names_the_best_cell_and_where_a_row_stops_training() -> None:
    report = build_report(grid_study())
    assert report.answer.line == "best: relu at depth 4, val_error 4%; sigmoid fails to train beyond depth 2"
    assert "<strong>Answer:</strong> best: relu at depth 4" in report.html
    titles = [f.title for f in report.answer.figures]
    assert titles == ["val_error over activation x depth", "Activations and gradients at initialisation",
                      "Learning curves of the best 5 trials"]
    assert all(f.html for f in report.answer.figures)
    assert report.answer.table is not None and report.answer.table.cols == DEPTHS
