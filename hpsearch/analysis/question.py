"""What a report says first: the answer to the study's question, its grid and its figures.

`answer_study` reads the stored trials and returns the one-line answer (`answer`, rule in
`grid`), the grid table of a grid study, and the figures of `answer_figures`; `report` puts
them at the top of the page, before the generic Optuna figures and the trend tables.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial

from hpsearch.analysis.answer import answer_rule, best_answer, cell_text, grid_answer
from hpsearch.analysis.answer_figures import grid_heatmap, init_stats_figure, learning_curves
from hpsearch.analysis.figures import Figure, figure_html
from hpsearch.analysis.grid import GridTable, chance_error, grid_table
from hpsearch.search.record import StudyRecord, study_metric


@dataclasses.dataclass(frozen=True)
class Answer:
    line: str  # the one-line answer
    rule: str  # how it was computed, said under it
    table: GridTable | None  # a grid study's metric over its two axes
    figures: list[Figure]  # only those the study has data for
    metric: str

    def html(self) -> str:
        line = html.escape(self.line)
        parts = [f'<section class="answer"><p class="answer"><strong>Answer:</strong> {line}</p>',
                 f'<p class="rule">{html.escape(self.rule)}</p></section>']
        if self.table is not None:
            parts.append(grid_html(self.table, metric=self.metric))
        parts += [figure_html(f) for f in self.figures]
        return "\n".join(parts)


def is_grid(study: optuna.Study, trials: Sequence[FrozenTrial]) -> bool:
    """Run with `--sampler grid` (hpsearch stores it), or by Optuna's GridSampler elsewhere."""
    if StudyRecord.from_study(study).sampler == "grid":
        return True
    return any("grid_id" in t.system_attrs for t in trials)


def answer_study(
    study: optuna.Study, trials: Sequence[FrozenTrial], complete: list[FrozenTrial]
) -> Answer:
    """`complete` are the completed trials, best first."""
    metric, maximize = study_metric(study).name, study_metric(study).maximize
    best = complete[0] if complete else None
    table = grid_table(trials, maximize=maximize) if is_grid(study, trials) else None
    figures: list[Figure] = []
    if table is None:
        line, rule = best_answer(best, metric=metric), "The best completed trial."
    else:
        chance = chance_error(StudyRecord.from_study(study).dataset)
        line = grid_answer(table, best, metric=metric, chance=chance)
        rule = answer_rule(chance=chance) + (" " + table.note if table.note else "")
        figures.append(grid_heatmap(table, metric=metric, maximize=maximize))
    for figure in (init_stats_figure(trials), learning_curves(complete)):
        if figure is not None:
            figures.append(figure)
    return Answer(line, rule, table, figures, metric)


def grid_html(table: GridTable, *, metric: str) -> str:
    """The grid as an HTML table: rows x columns, pruned, failed and missing cells marked."""
    head = f"<th>{html.escape(table.row_axis)} \\ {html.escape(table.col_axis)}</th>" + "".join(
        f"<th>{html.escape(str(c))}</th>" for c in table.cols)
    rows = []
    for r in table.rows:
        cells = []
        for c in table.cols:
            cell = table.cell(r, c)
            mark = "" if cell.value is not None else f' class="{cell.outcome.replace(" ", "-")}"'
            cells.append(f"<td{mark}>{html.escape(cell_text(cell, metric=metric))}</td>")
        rows.append(f"<tr><th>{html.escape(str(r))}</th>{''.join(cells)}</tr>")
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f"<section><h2>{html.escape(metric)} by {html.escape(table.row_axis)} and "
            f"{html.escape(table.col_axis)}</h2><table class=\"grid\"><thead><tr>{head}</tr>"
            f"</thead><tbody>\n" + "\n".join(rows) + f"\n</tbody></table>{note}</section>")
