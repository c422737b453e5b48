"""One self-contained HTML page about a study: Optuna's plotly figures and the trend tables.

A multi-objective study's page opens with its Pareto front (`hpsearch.analysis.pareto`). The
figures are Optuna's own (optimization history, parameter importances, parallel
coordinates, slices, contour of the two most important parameters, intermediate values); the
tables show, for each categorical or few-valued parameter, the best and median metric per value
and how many trials stand behind each, so a reader sees the trend and not only the winner.

Every table uses every trial; the figures of a large study are drawn on samples, and the page
says so under each figure (`hpsearch.analysis.figures`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import html
import logging
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.offline
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.analysis.cost import cost_section, cost_totals
from hpsearch.analysis.figures import Figure, draw_figures, figure_html
from hpsearch.analysis.pareto import ParetoReport, pareto_report
from hpsearch.analysis.question import Answer, answer_study
from hpsearch.analysis.stopping import convergence_section
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
from hpsearch.search.record import (
    ResultSummary,
    StopRecord,
    StudyRecord,
    stored_estimates,
    study_metric,
)

logger = logging.getLogger(__name__)

MAX_INT_LEVELS = 12  # an integer parameter with at most this many values gets a table
MAX_REASONS = 15


@dataclasses.dataclass(frozen=True)
class Report:
    """What a study's page shows; `html` renders the page on first use, so a caller that wants
    only the answer or the figures (the Python API) never pays for the 4.7 MB of plotly.js."""

    figures: list[Figure]  # Optuna's figures
    n_trials: int
    answer: Answer  # the one-line answer, a grid study's table and the figures that answer it
    study: optuna.Study  # a multi-objective study's view on its first objective
    trials: list[FrozenTrial] = dataclasses.field(repr=False)
    complete: list[FrozenTrial] = dataclasses.field(repr=False)  # best first
    pareto: ParetoReport | None = None
    storage_url: str = ""

    @functools.cached_property
    def html(self) -> str:
        return _page(self)


def build_report(study: optuna.Study, *, storage_url: str = "") -> Report:
    pareto = pareto_report(study)  # several objectives: the front, and the rest on the first
    if pareto is not None:
        study = pareto.view
    trials = study.get_trials(deepcopy=False)
    metric, maximize = study_metric(study).name, study_metric(study).maximize
    complete = _ranked([t for t in trials if t.state == TrialState.COMPLETE and t.value is not None],
                       maximize)
    figures = [*([pareto.figure] if pareto else []),
               *draw_figures(study, trials, complete, metric=metric)]
    answer = answer_study(study, trials, complete)
    if pareto is not None:  # the front is the answer; the learning curves stay
        answer = dataclasses.replace(answer, line=pareto.line, rule=pareto.rule)
    return Report(figures=figures, n_trials=len(trials), answer=answer, study=study,
                  trials=trials, complete=complete, pareto=pareto, storage_url=storage_url)


def _page(report: Report) -> str:
    study, trials, complete, pareto = report.study, report.trials, report.complete, report.pareto
    metric, maximize = study_metric(study).name, study_metric(study).maximize
    sections = [
        report.answer.html(),
        *([pareto.section, figure_html(pareto.figure)] if pareto else []),
        _summary_section(study, trials, complete, metric=metric, storage_url=report.storage_url),
        _outcome_section(trials),
        cost_section(cost_totals(trials, maximize=maximize), metric=metric),
        convergence_section(stored_estimates(study), StopRecord.from_study(study)),
        _best_section(complete, metric=metric),
        _parameter_section(trials, complete, metric=metric, maximize=maximize),
        *(figure_html(f) for f in report.figures if not pareto or f is not pareto.figure),
    ]
    drawn = any(f.plot for f in [*report.figures, *report.answer.figures])
    return _PAGE.format(
        title=html.escape(f"hpsearch report: {study.study_name}"),
        # Inlined once, and only when there is a figure to draw (it is 4.7 MB).
        plotlyjs=plotly.offline.get_plotlyjs() if drawn else "",
        body="\n".join(sections),
        footer=html.escape(
            f"hpsearch {hpsearch.__version__}, optuna {optuna.__version__}; generated "
            f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
        ),
    )


def _ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    return sorted(trials, key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]


def write_report(study: optuna.Study, path: Path, *, storage_url: str = "") -> Report:
    report = build_report(study, storage_url=storage_url)
    Path(path).write_text(report.html, encoding="utf-8")
    return report


# --- tables ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


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
    settings = StudyRecord.from_study(study)
    rows: list[tuple[str, Any]] = [
        ("study", study.study_name),
        ("storage", storage_url or "-"),
        ("study module", _or_dash(settings.study_module)),
        ("data set", _or_dash(settings.dataset)),
        ("data", describe_data(settings.data)),
        ("metric", f"{metric} ({study_metric(study).direction})"),
        ("sampler / pruner", f"{_or_dash(settings.sampler)} / {_or_dash(settings.pruner)}"),
        ("max epochs per trial", _or_dash(settings.epochs)),
        ("precision", _or_dash(settings.precision)),
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
        result = ResultSummary.from_trial(t)
        rows.append((t.number, t.value, _or_dash(result.best_epoch), _or_dash(result.epochs_run),
                     _or_dash(result.seconds),
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
.note, .rule {{ color: #555; font-size: 0.9em; }}
p.answer {{ font-size: 1.25em; margin: 0.5em 0 0.2em; }}
table.grid td {{ text-align: right; }}
table.grid td.pruned, table.grid td.failed, table.grid td.not-run {{ text-align: center; }}
table.grid td.pruned {{ background: #fff4d6; }}
table.grid td.failed {{ background: #fbdcdc; color: #900; }}
table.grid td.not-run {{ color: #999; }}
section {{ margin-bottom: 2em; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head><body>
<h1>{title}</h1>
{body}
<p class="note">{footer}</p>
</body></html>
"""
