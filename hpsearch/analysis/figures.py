"""Optuna's plotly figures of a study, drawn on samples when the study is large.

The history uses every completed trial; importances use at most `MAX_IMPORTANCE` completed
trials drawn at random; the scatter-like figures use the best `KEEP_BEST` completed trials plus
a random draw of the others, `MAX_PLOTTED` in all; learning curves show the best `CURVES_BEST`
completed and `CURVES_PRUNED` pruned trials at random. Samples are drawn with a fixed seed, so a
report is repeatable, and each figure's caption says what it was drawn from.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)

MAX_PLOTTED = 1000
KEEP_BEST = 200
MAX_IMPORTANCE = 2000
CURVES_BEST = 30
CURVES_PRUNED = 20
SAMPLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure: a plotly object (which a notebook displays inline) and its caption."""

    key: str  # a short stable name: "history", "importances", "grid", ...
    title: str
    caption: str
    plot: go.Figure | None  # None when the figure could not be drawn; caption says why

    @functools.cached_property
    def html(self) -> str | None:
        """The figure as an HTML fragment that uses the page's one copy of plotly.js."""
        if self.plot is None:
            return None
        return str(self.plot.to_html(full_html=False, include_plotlyjs=False,
                                     default_width="100%"))


def _view(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding only `trials`, for figures drawn on a sample."""
    view = _quiet(lambda: optuna.create_study(direction=study.direction))
    view.add_trials(sorted(trials, key=lambda t: t.number))
    return view


def _plot_sample(complete: list[FrozenTrial]) -> tuple[list[FrozenTrial], str]:
    n = len(complete)
    if n <= MAX_PLOTTED:
        return complete, f"all {n} completed trials"
    rest = random.Random(SAMPLE_SEED).sample(complete[KEEP_BEST:], MAX_PLOTTED - KEEP_BEST)
    return complete[:KEEP_BEST] + rest, (
        f"{MAX_PLOTTED} of {n} completed trials: the best {KEEP_BEST} and "
        f"{MAX_PLOTTED - KEEP_BEST} of the others drawn at random (seed {SAMPLE_SEED})"
    )


def _importance_sample(complete: list[FrozenTrial]) -> tuple[list[FrozenTrial], str]:
    n = len(complete)
    if n <= MAX_IMPORTANCE:
        return complete, f"all {n} completed trials"
    return random.Random(SAMPLE_SEED).sample(complete, MAX_IMPORTANCE), (
        f"{MAX_IMPORTANCE} of {n} completed trials drawn at random (seed {SAMPLE_SEED})"
    )


def _curve_sample(
    trials: Sequence[FrozenTrial], complete: list[FrozenTrial]
) -> tuple[list[FrozenTrial], str]:
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    with_curves = [t for t in complete if t.intermediate_values]
    if len(with_curves) + len(pruned) <= CURVES_BEST + CURVES_PRUNED:
        return with_curves + pruned, (
            f"all {len(with_curves)} completed and {len(pruned)} pruned trials"
        )
    best = with_curves[:CURVES_BEST]
    drawn = random.Random(SAMPLE_SEED).sample(pruned, min(CURVES_PRUNED, len(pruned)))
    return best + drawn, (
        f"the best {len(best)} of {len(with_curves)} completed trials and {len(drawn)} of "
        f"{len(pruned)} pruned trials drawn at random (seed {SAMPLE_SEED})"
    )


def draw_figures(
    study: optuna.Study, trials: Sequence[FrozenTrial], complete: list[FrozenTrial], *, metric: str
) -> list[Figure]:
    vis = optuna.visualization
    if not complete:
        why = "no completed trial yet" if trials else "the study has no trials yet"
        return [Figure(key, title, f"Not drawn: {why}.", None) for key, title in _FIGURE_TITLES]
    plotted, plotted_note = _plot_sample(complete)
    imp_trials, imp_note = _importance_sample(complete)
    curves, curves_note = _curve_sample(trials, complete)
    plot_view = _view(study, plotted)
    params = sorted({p for t in complete for p in t.params})

    importances: dict[str, float] = {}
    if len(complete) >= 2 and params:
        importances = _quiet(lambda: optuna.importance.get_param_importances(_view(study, imp_trials)))
    top2 = list(importances)[:2] if len(importances) >= 2 else params[:2]
    history_note = f"all {len(complete)} completed trials (of {len(trials)})"

    def draw(key: str, title: str, note: str, make: Callable[[], Any],
             unless: str | None = None) -> Figure:
        if unless:
            return Figure(key, title, f"Not drawn: {unless}.", None)
        try:
            figure = _quiet(make)
        except Exception as e:  # one bad figure must not lose the whole report
            logger.warning("figure %r failed", title, exc_info=True)
            return Figure(key, title, f"Not drawn: {type(e).__name__}: {e}.", None)
        return Figure(key, title, f"Drawn from {note}.", figure)

    no_params = "the study has no searched parameters" if not params else None
    return [
        draw("history", "Optimization history", history_note,
             lambda: vis.plot_optimization_history(study, target_name=metric)),
        draw("importances", "Parameter importances", imp_note + " (Optuna's default evaluator)",
             lambda: vis.plot_param_importances(_view(study, imp_trials), target_name=metric),
             no_params or ("importances need at least 2 completed trials" if len(complete) < 2 else None)),
        draw("parallel_coordinate", "Parallel coordinates", plotted_note,
             lambda: vis.plot_parallel_coordinate(plot_view, target_name=metric), no_params),
        draw("slice", "Slice plots", plotted_note,
             lambda: vis.plot_slice(plot_view, target_name=metric), no_params),
        draw("contour", f"Contour of {' and '.join(top2) if len(top2) == 2 else 'the two most important parameters'}",
             plotted_note + "; the two most important parameters",
             lambda: vis.plot_contour(plot_view, params=top2, target_name=metric),
             "a contour needs two searched parameters" if len(top2) < 2 else None),
        draw("intermediate_values", "Intermediate values (learning curves)", curves_note,
             lambda: vis.plot_intermediate_values(_view(study, curves)),
             "no trial reported per-epoch values" if not curves else None),
    ]


_FIGURE_TITLES = (
    ("history", "Optimization history"), ("importances", "Parameter importances"),
    ("parallel_coordinate", "Parallel coordinates"), ("slice", "Slice plots"),
    ("contour", "Contour of the two most important parameters"),
    ("intermediate_values", "Intermediate values (learning curves)"))


def _quiet(make: Callable[[], Any]) -> Any:
    """Optuna warns (not raises) about experimental APIs and tiny studies; the caption explains."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            return make()
        finally:
            optuna.logging.set_verbosity(level)


def figure_html(figure: Figure) -> str:
    body = figure.html if figure.html is not None else ""
    return (f'<section class="figure"><h2>{html.escape(figure.title)}</h2>\n{body}\n'
            f'<p class="note">{html.escape(figure.caption)}</p></section>')
