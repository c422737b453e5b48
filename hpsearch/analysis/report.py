"""One self-contained HTML page about a study: Optuna's plotly figures and the trend tables.

The figures are Optuna's own (optimization history, parameter importances, parallel
coordinates, slices, contour of the two most important parameters, intermediate values); the
tables show, for each categorical or few-valued parameter, the best and median metric per value
and how many trials stand behind each, so a reader sees the trend and not only the winner.

Large studies are sampled, and the page says so under each figure: the history and all tables
use every trial; importances use at most `MAX_IMPORTANCE` completed trials drawn at random; the
scatter-like figures use the best `KEEP_BEST` completed trials plus a random draw of the others,
`MAX_PLOTTED` in all; learning curves show the best `CURVES_BEST` completed and `CURVES_PRUNED`
pruned trials at random. Samples are drawn with a fixed seed, so a report is repeatable.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import logging
import random
import re
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.offline
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.data import describe_data
from hpsearch.search.outcomes import (
    COUNTED,
    FAILED,
    INTERRUPTED,
    LOST,
    outcome_counts,
    outcome_reason,
    trial_outcome,
)
from hpsearch.search.record import ATTR_DATA, ATTR_RESULT

logger = logging.getLogger(__name__)

MAX_PLOTTED = 1000
KEEP_BEST = 200
MAX_IMPORTANCE = 2000
CURVES_BEST = 30
CURVES_PRUNED = 20
MAX_INT_LEVELS = 12  # an integer parameter with at most this many values gets a table
SAMPLE_SEED = 0
MAX_REASONS = 15


@dataclasses.dataclass(frozen=True)
class Figure:
    title: str
    caption: str
    html: str | None  # None when the figure could not be drawn; caption says why


@dataclasses.dataclass(frozen=True)
class Report:
    html: str
    figures: list[Figure]
    n_trials: int


def build_report(study: optuna.Study, *, storage_url: str = "") -> Report:
    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get("metric") or (study.metric_names or ["objective value"])[0]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = _ranked([t for t in trials if t.state == TrialState.COMPLETE and t.value is not None],
                       maximize)
    figures = _figures(study, trials, complete, metric=metric)
    sections = [
        _summary_section(study, trials, complete, metric=metric, storage_url=storage_url),
        _outcome_section(trials),
        _best_section(complete, metric=metric),
        _parameter_section(trials, complete, metric=metric, maximize=maximize),
        *(_figure_html(f) for f in figures),
    ]
    page = _PAGE.format(
        title=html.escape(f"hpsearch report: {study.study_name}"),
        # Inlined once, and only when there is a figure to draw (it is 4.7 MB).
        plotlyjs=plotly.offline.get_plotlyjs() if any(f.html for f in figures) else "",
        body="\n".join(sections),
        footer=html.escape(
            f"hpsearch {hpsearch.__version__}, optuna {optuna.__version__}; generated "
            f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
        ),
    )
    return Report(html=page, figures=figures, n_trials=len(trials))


def write_report(study: optuna.Study, path: Path, *, storage_url: str = "") -> Report:
    report = build_report(study, storage_url=storage_url)
    Path(path).write_text(report.html, encoding="utf-8")
    return report


# --- sampling -------------------------------------------------------------------------------


def _ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    return sorted(trials, key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]


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


# --- figures --------------------------------------------------------------------------------


def _figures(
    study: optuna.Study, trials: Sequence[FrozenTrial], complete: list[FrozenTrial], *, metric: str
) -> list[Figure]:
    vis = optuna.visualization
    if not complete:
        why = "no completed trial yet" if trials else "the study has no trials yet"
        return [Figure(title, f"Not drawn: {why}.", None) for title in _FIGURE_TITLES]
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

    def draw(title: str, note: str, make: Callable[[], Any], unless: str | None = None) -> Figure:
        if unless:
            return Figure(title, f"Not drawn: {unless}.", None)
        try:
            figure = _quiet(make)
        except Exception as e:  # one bad figure must not lose the whole report
            logger.warning("figure %r failed", title, exc_info=True)
            return Figure(title, f"Not drawn: {type(e).__name__}: {e}.", None)
        return Figure(title, f"Drawn from {note}.", figure.to_html(
            full_html=False, include_plotlyjs=False, default_width="100%"))

    no_params = "the study has no searched parameters" if not params else None
    return [
        draw("Optimization history", history_note,
             lambda: vis.plot_optimization_history(study, target_name=metric)),
        draw("Parameter importances", imp_note + " (Optuna's default evaluator)",
             lambda: vis.plot_param_importances(_view(study, imp_trials), target_name=metric),
             no_params or ("importances need at least 2 completed trials" if len(complete) < 2 else None)),
        draw("Parallel coordinates", plotted_note,
             lambda: vis.plot_parallel_coordinate(plot_view, target_name=metric), no_params),
        draw("Slice plots", plotted_note,
             lambda: vis.plot_slice(plot_view, target_name=metric), no_params),
        draw(f"Contour of {' and '.join(top2) if len(top2) == 2 else 'the two most important parameters'}",
             plotted_note + "; the two most important parameters",
             lambda: vis.plot_contour(plot_view, params=top2, target_name=metric),
             "a contour needs two searched parameters" if len(top2) < 2 else None),
        draw("Intermediate values (learning curves)", curves_note,
             lambda: vis.plot_intermediate_values(_view(study, curves)),
             "no trial reported per-epoch values" if not curves else None),
    ]


_FIGURE_TITLES = ("Optimization history", "Parameter importances", "Parallel coordinates",
                  "Slice plots", "Contour of the two most important parameters",
                  "Intermediate values (learning curves)")


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


def _figure_html(figure: Figure) -> str:
    body = figure.html if figure.html is not None else ""
    return (f'<section class="figure"><h2>{html.escape(figure.title)}</h2>\n{body}\n'
            f'<p class="note">{html.escape(figure.caption)}</p></section>')


# --- tables ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _summary_section(
    study: optuna.Study, trials: Sequence[FrozenTrial], complete: list[FrozenTrial], *,
    metric: str, storage_url: str,
) -> str:
    attrs = study.user_attrs
    rows: list[tuple[str, Any]] = [
        ("study", study.study_name),
        ("storage", storage_url or "-"),
        ("study module", attrs.get("study_module", "-")),
        ("data set", attrs.get("dataset", "-")),
        ("data", describe_data(attrs.get(ATTR_DATA))),
        ("metric", f"{metric} ({study.direction.name.lower()})"),
        ("sampler / pruner", f"{attrs.get('sampler', '-')} / {attrs.get('pruner', '-')}"),
        ("max epochs per trial", attrs.get("epochs", "-")),
        ("precision", attrs.get("precision", "-")),
        ("trials", len(trials)),
    ]
    if complete:
        best = complete[0]
        rows += [("best trial", f"#{best.number}: {metric} = {best.value:.6g}"),
                 ("best parameters", ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))]
    else:
        rows.append(("best trial", "none completed"))
    return "<section><h2>Study</h2>" + _table(("", ""), rows) + "</section>"


def _outcome_section(trials: Sequence[FrozenTrial]) -> str:
    counts = outcome_counts(trials)
    parts = ["<section><h2>Outcomes</h2>"]
    if not trials:
        parts.append("<p>The study has no trials yet.</p></section>")
        return "".join(parts)
    parts.append(_table(("outcome", "trials"), list(counts.items())))
    # Group reasons that differ only in numbers (the epoch, the learning rate).
    reasons: dict[tuple[str, str], list[FrozenTrial]] = {}
    for t in trials:
        outcome = trial_outcome(t)
        if outcome in (FAILED, INTERRUPTED, LOST):
            reasons.setdefault((outcome, _failure_kind(_reason(t))), []).append(t)
    if reasons:
        rows = sorted(reasons.values(), key=lambda group: -len(group))[:MAX_REASONS]
        parts.append("<h3>Why trials failed, were interrupted or lost</h3>")
        parts.append(_table(("outcome", "reason (first example)", "trials", "trial numbers"), [
            (trial_outcome(group[0]), _reason(group[0]), len(group),
             ", ".join(str(t.number) for t in group[:10]) + (" ..." if len(group) > 10 else ""))
            for group in rows
        ]))
        if len(reasons) > MAX_REASONS:
            parts.append(f'<p class="note">{len(reasons) - MAX_REASONS} rarer kinds of failure '
                         "not shown.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _reason(trial: FrozenTrial) -> str:
    return str(outcome_reason(trial) or "no reason recorded")[:300]


def _failure_kind(reason: str) -> str:
    return re.sub(r"[-+]?\d[\d.]*(e[-+]?\d+)?", "#", reason)


def _best_section(complete: list[FrozenTrial], *, metric: str, top: int = 10) -> str:
    if not complete:
        return ""
    rows = []
    for t in complete[:top]:
        result = t.user_attrs.get(ATTR_RESULT) or {}
        rows.append((t.number, t.value, result.get("best_epoch", "-"), result.get("epochs_run", "-"),
                     result.get("seconds", "-"),
                     ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())))
    return (f"<section><h2>Best {len(rows)} trials</h2>"
            + _table(("trial", metric, "best epoch", "epochs run", "seconds", "parameters"), rows)
            + "</section>")


def level_parameters(trials: Sequence[FrozenTrial]) -> dict[str, list[Any]]:
    """Categorical parameters and integers with few values, each with its values in order."""
    levels: dict[str, list[Any]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in levels:
                continue
            if isinstance(dist, CategoricalDistribution):
                levels[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                values = list(range(dist.low, dist.high + 1, dist.step))
                if len(values) <= MAX_INT_LEVELS:
                    levels[name] = values
    return dict(sorted(levels.items()))


def parameter_table(
    trials: Sequence[FrozenTrial], name: str, values: Sequence[Any], *, maximize: bool
) -> list[tuple[Any, ...]]:
    """Per value: completed trials, best and median metric, pruned and failed counts.

    Only trials that ended on their own count: an interrupted or lost trial was queued again
    with the same parameters, and its retry counts instead.
    """
    rows = []
    ended = [t for t in trials if trial_outcome(t) in COUNTED]
    for value in values:
        having = [t for t in ended if name in t.params and t.params[name] == value]
        if not having:
            continue
        scores = [t.value for t in having if t.state == TrialState.COMPLETE and t.value is not None]
        best = (max(scores) if maximize else min(scores)) if scores else "-"
        median = statistics.median(scores) if scores else "-"
        pruned = sum(t.state == TrialState.PRUNED for t in having)
        failed = sum(trial_outcome(t) == FAILED for t in having)
        rows.append((value, len(scores), best, median, pruned, failed))
    return rows


def _parameter_section(
    trials: Sequence[FrozenTrial], complete: list[FrozenTrial], *, metric: str, maximize: bool
) -> str:
    levels = level_parameters(trials)
    if not levels:
        return ""
    parts = ["<section><h2>Metric by parameter value</h2>",
             (f"<p class=\"note\">Every trial counts. Best and median {html.escape(metric)} are "
              "over completed trials; pruned trials stopped early and have no final value, so a "
              "value with many pruned trials was mostly judged poor by the pruner. Interrupted "
              "and lost trials are left out: their parameters were queued again.</p>")]
    for name, values in levels.items():
        rows = parameter_table(trials, name, values, maximize=maximize)
        if rows:
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(_table((name, "completed", f"best {metric}", f"median {metric}",
                                 "pruned", "failed"), rows))
    parts.append("</section>")
    return "\n".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
.note {{ color: #555; font-size: 0.9em; }}
section {{ margin-bottom: 2em; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head><body>
<h1>{title}</h1>
{body}
<p class="note">{footer}</p>
</body></html>
"""
