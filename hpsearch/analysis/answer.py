"""The one line at the top of a report: what the stored trials say (the rule is in `grid`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial

from hpsearch.analysis.grid import NOT_TRAINING, Cell, GridTable, numeric, trains


def format_metric(metric: str, value: float) -> str:
    """`val_error 2.1%` for errors and accuracies, `val_loss 0.0312` for the rest."""
    if metric.endswith(("error", "accuracy")):
        return f"{metric} {100 * value:.3g}%"
    return f"{metric} {value:.4g}"


def _label(axis: str, value: Any) -> str:
    return str(value) if isinstance(value, str) else f"{axis} {value}"


def _where(table: GridTable, cols: Sequence[Any]) -> str:
    """`at depth 8 and 15` for a numeric column axis, `with relu and tanh` for the others."""
    values = [str(c) for c in cols]
    joined = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]
    if numeric(table.cols):
        return f"at {table.col_axis} {joined}"
    return f"with {joined}"


def _best_phrase(table: GridTable, best: FrozenTrial, *, metric: str) -> str:
    row, col = best.params[table.row_axis], best.params[table.col_axis]
    link = "at" if numeric(table.cols) else "with"
    assert best.value is not None
    return f"best: {_label(table.row_axis, row)} {link} {_label(table.col_axis, col)}, " + \
        format_metric(metric, best.value)


def _row_phrase(table: GridTable, row: Any, judged: list[tuple[Any, bool]]) -> str | None:
    """How the row fails to train, or None if it trains wherever it was judged."""
    fails = [col for col, ok in judged if not ok]
    if not fails:
        return None
    name = _label(table.row_axis, row)
    if len(fails) == len(judged):
        every = f"every {table.col_axis}" + ("" if len(judged) == len(table.cols) else " judged")
        return f"{name} fails to train {'at' if numeric(table.cols) else 'with'} {every}"
    trained = [col for col, ok in judged if ok]
    last = trained[-1]
    if numeric(table.cols) and all(table.cols.index(c) > table.cols.index(last) for c in fails):
        return f"{name} fails to train beyond {table.col_axis} {last}"
    return f"{name} fails to train {_where(table, fails)}"


def grid_answer(
    table: GridTable, best: FrozenTrial | None, *, metric: str, chance: float | None
) -> str:
    """The answer of a grid study: its best cell, then where each row stops training."""
    if best is None:
        return "no configuration completed yet"
    parts = [_best_phrase(table, best, metric=metric)]
    for row in table.rows:
        judged: list[tuple[Any, bool]] = []
        for col in table.cols:
            verdict = trains(table.cell(row, col), metric=metric, chance=chance)
            if verdict is not None:
                judged.append((col, verdict))
        phrase = _row_phrase(table, row, judged)
        if phrase:
            parts.append(phrase)
    if len(parts) == 1:
        parts.append("every configuration trains")
    return "; ".join(parts)


def answer_rule(*, chance: float | None) -> str:
    """The rule behind `grid_answer`, said under the answer."""
    if chance is None:
        return ("Fails to train: the trial failed (diverged, out of memory); the data set's "
                "chance error is not known, so near-chance errors are not judged.")
    return (f"Fails to train: the trial failed (diverged, out of memory) or its best validation "
            f"error stayed above {NOT_TRAINING} x chance ({100 * NOT_TRAINING * chance:.3g}%). "
            "Pruned and missing cells are not judged.")


def best_answer(best: FrozenTrial | None, *, metric: str) -> str:
    """The answer of a study that is not a grid: its best trial and that trial's parameters."""
    if best is None or best.value is None:
        return "no configuration completed yet"
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in best.params.items())
    return f"best: trial #{best.number}" + (f" ({params})" if params else "") + ", " + \
        format_metric(metric, best.value)


def cell_text(cell: Cell, *, metric: str) -> str:
    """What a table or heatmap cell shows: its value, or how its trials ended."""
    if cell.value is not None:
        return format_metric(metric, cell.value).split(" ", 1)[1]
    return cell.outcome
