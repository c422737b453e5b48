"""The report of a multi-objective study: its Pareto front, drawn by Optuna's `plot_pareto_front`
and listed trial by trial, and a single-objective view of the study on its first objective that
the rest of the report (history, importances, slices, tables) is drawn from unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.analysis.figures import Figure, _quiet
from hpsearch.search.objectives import format_value, pareto_front
from hpsearch.search.record import StudyMetric, study_metric

logger = logging.getLogger(__name__)

FRONT_TITLE = "Pareto front"


@dataclasses.dataclass(frozen=True)
class ParetoReport:
    section: str  # the front's table, as HTML
    figure: Figure  # Optuna's Pareto-front plot
    view: optuna.Study  # the study on its first objective, for the rest of the report
    line: str  # the report's one-line answer
    rule: str  # how it was found


def pareto_report(study: optuna.Study) -> ParetoReport | None:
    """None for a study with one objective."""
    metric = study_metric(study)
    if not metric.multi_objective:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(study) if complete else []
    line, rule = _answer(front, metric)
    return ParetoReport(section=_front_section(front, metric, n_complete=len(complete)),
                        figure=_front_figure(study, metric, n_complete=len(complete)),
                        view=first_objective_view(study, metric), line=line, rule=rule)


def _answer(front: list[FrozenTrial], metric: StudyMetric) -> tuple[str, str]:
    if not front:
        return "no completed trial yet", "A multi-objective study's answer is its Pareto front."

    def named(t: FrozenTrial) -> str:
        values = ", ".join(f"{n} {format_value(n, v)}" for n, v in zip(metric.names, t.values))
        return f"#{t.number} ({values})"

    ends = named(front[0]) + (f" to {named(front[-1])}" if len(front) > 1 else "")
    return (f"a Pareto front of {len(front)} trial(s), from {ends}",
            ("The completed trials that no other completed trial beats in every objective, "
            f"ordered by {metric.name}; listed and drawn below."))


def first_objective_view(study: optuna.Study, metric: StudyMetric) -> optuna.Study:
    """An in-memory copy of `study` with one objective, the first: the same trials, each
    completed one valued by its first objective, and the same settings."""
    view = _quiet(lambda: optuna.create_study(study_name=study.study_name,
                                              direction=study.directions[0]))
    for key, value in study.user_attrs.items():
        if key != "objectives":
            view.set_user_attr(key, value)
    _quiet(lambda: view.set_metric_names([metric.name]))
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.values is not None:
            t = copy.copy(t)
            t.values = [t.values[0]]
        trials.append(t)
    view.add_trials(trials)
    return view


def _front_section(front: list[FrozenTrial], metric: StudyMetric, *, n_complete: int) -> str:
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(metric.names, metric.directions))
    parts = [f"<section><h2>{FRONT_TITLE}: {len(front)} of {n_complete} completed trials</h2>",
             (f'<p class="note">Objectives: {html.escape(objectives)}. These trials are the ones '
              "no other completed trial beats in every objective (Optuna's "
              "<code>Study.best_trials</code>), ordered by the first objective. The rest of the "
              f"page ranks trials by {html.escape(metric.name)} alone. Optuna does not prune "
              "multi-objective trials, so every trial trained all its epochs.</p>")]
    if front:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", *metric.names, "parameters"))
        rows = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (
                str(t.number), *(format_value(n, v) for n, v in zip(metric.names, t.values)),
                ", ".join(f"{k}={v}" for k, v in t.params.items()))) + "</tr>"
            for t in front)
        parts.append(f'<table class="pareto"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n'
                     "</tbody></table>")
    parts.append("</section>")
    return "\n".join(parts)


def _front_figure(study: optuna.Study, metric: StudyMetric, *, n_complete: int) -> Figure:
    if not n_complete:
        return Figure("pareto_front", FRONT_TITLE, "Not drawn: no completed trial yet.", None)
    if len(metric.names) > 3:
        return Figure("pareto_front", FRONT_TITLE, "Not drawn: Optuna plots a front of 2 or 3 "
                      f"objectives, this study has {len(metric.names)}.", None)
    try:
        figure = _quiet(lambda: optuna.visualization.plot_pareto_front(
            study, target_names=list(metric.names)))
    except Exception as e:  # one bad figure must not lose the whole report
        logger.warning("the Pareto-front figure failed", exc_info=True)
        return Figure("pareto_front", FRONT_TITLE, f"Not drawn: {type(e).__name__}: {e}.", None)
    return Figure("pareto_front", FRONT_TITLE, (
        f"Drawn from all {n_complete} completed trials by Optuna's plot_pareto_front: the front "
        "in shades of red, dominated trials in blue (darker: later trials)."), figure)
