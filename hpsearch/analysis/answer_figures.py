"""The figures that answer a study's question, in the form the course notebooks draw them.

A grid study's metric as a heatmap over its two axes (pruned, failed and missing cells named in
the cell), the per-layer activation and weight-gradient standard deviation at initialisation
(one line per configuration, log scale: the vanishing-gradient picture), and the learning
curves of the best trials (per-epoch train and validation loss, from each trial's history).
Each returns None when the study has nothing to draw it from; the report then leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from hpsearch.analysis.answer import cell_text
from hpsearch.analysis.figures import Figure
from hpsearch.analysis.grid import GridTable
from hpsearch.search.record import History, InitStats

CURVES = 5  # learning curves of this many best trials: more lines hide the over-fitting gap
COLOURS = qualitative.Plotly + qualitative.Dark24


def config_label(trial: FrozenTrial) -> str:
    """`activation=relu, depth=8`: a trial's searched parameters, the name of its line."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(trial.params.items())) or f"trial #{trial.number}"


def grid_heatmap(table: GridTable, *, metric: str, maximize: bool) -> Figure:
    z = [[table.cell(r, c).value for c in table.cols] for r in table.rows]
    text = [[cell_text(table.cell(r, c), metric=metric) for c in table.cols] for r in table.rows]
    figure = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in table.cols], y=[str(r) for r in table.rows], text=text,
        texttemplate="%{text}", colorscale="Viridis", reversescale=not maximize,
        colorbar={"title": {"text": metric}}, hoverongaps=False,
        hovertemplate=f"{table.row_axis}=%{{y}}<br>{table.col_axis}=%{{x}}<br>%{{text}}<extra></extra>",
    ))
    figure.update_layout(xaxis={"title": {"text": table.col_axis}, "type": "category"},
                         yaxis={"title": {"text": table.row_axis}, "type": "category",
                                "autorange": "reversed"},
                         title={"text": f"{metric} by {table.row_axis} and {table.col_axis}"})
    caption = (f"Each cell: the best completed trial's {metric}; a cell with none names how its "
               "trials ended (pruned, failed) or says it was not run, and stays blank. "
               "Brighter is better. " + table.note).strip()
    return Figure("grid", f"{metric} over {table.row_axis} x {table.col_axis}", caption, figure)


def _first_per_config(trials: Sequence[FrozenTrial]) -> list[tuple[FrozenTrial, InitStats]]:
    seen: dict[str, tuple[FrozenTrial, InitStats]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        stats = InitStats.from_trial(t)
        if stats is not None and config_label(t) not in seen:
            seen[config_label(t)] = (t, stats)
    return list(seen.values())


def _positive(values: Sequence[float | None]) -> list[float | None]:
    """A log axis cannot show zero or non-finite spreads: they become gaps."""
    return [v if v is not None and math.isfinite(v) and v > 0 else None for v in values]


def init_stats_figure(trials: Sequence[FrozenTrial]) -> Figure | None:
    configs = _first_per_config(trials)
    if not configs:
        return None
    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "activation std per layer", "weight-gradient std per layer"))
    for i, (trial, stats) in enumerate(configs):
        colour, label = COLOURS[i % len(COLOURS)], config_label(trial)
        for col, key in ((1, "activation_std"), (2, "grad_std")):
            values = _positive(list(stats.values.get(key, [])))
            figure.add_trace(go.Scatter(
                x=list(range(1, len(values) + 1)), y=values, mode="lines+markers", name=label,
                legendgroup=label, showlegend=col == 1, line={"color": colour}), row=1, col=col)
    figure.update_yaxes(type="log", title_text="standard deviation")
    figure.update_xaxes(title_text="layer (input side first)", dtick=1)
    figure.update_layout(height=520)
    caption = (f"One line per configuration ({len(configs)}): the standard deviation of each "
               "activation layer's output and of each layer's weight gradient, from one forward "
               "and backward pass at initialisation. Lines that fall by orders of magnitude "
               "towards the input side are vanishing gradients.")
    return Figure("init_stats", "Activations and gradients at initialisation", caption, figure)


def learning_curves(complete: Sequence[FrozenTrial], *, best: int = CURVES) -> Figure | None:
    """Train (solid) and validation (dashed) loss per epoch of the best `best` trials."""
    shown = [t for t in complete if History.from_trial(t).metric("train_loss")][:best]
    if not shown:
        return None
    figure = go.Figure()
    for i, trial in enumerate(shown):
        history, colour = History.from_trial(trial), COLOURS[i % len(COLOURS)]
        name = f"#{trial.number} {config_label(trial)}"
        for key, dash in (("train_loss", "solid"), ("val_loss", "dash")):
            values = history.metric(key)
            if any(v is not None for v in values):
                figure.add_trace(go.Scatter(
                    x=list(range(1, len(values) + 1)), y=values, mode="lines", legendgroup=name,
                    name=f"{name} ({key.split('_')[0]})", line={"color": colour, "dash": dash}))
    figure.update_layout(xaxis={"title": {"text": "epoch"}}, yaxis={"title": {"text": "loss"}},
                         height=480)
    caption = (f"The best {len(shown)} completed trials: training loss solid, validation loss "
               "dashed, same colour per trial. A validation loss that rises while the training "
               "loss falls is over-fitting; both flat and high is under-fitting.")
    return Figure("learning_curves", f"Learning curves of the best {len(shown)} trials", caption,
                  figure)
