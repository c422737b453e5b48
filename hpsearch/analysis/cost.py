"""What a study has cost: device time by device kind and by outcome, trials per hour, and the
best value so far against the device time spent to reach it.

A trial's wall time is Optuna's own, from `datetime_start` to `datetime_complete`: it covers
everything the trial held its device for (data on the device, training, the storage round-trips),
also for a trial that failed before it trained and so has no training seconds in its result.
Its device is the one in its run record (`RunRecord.device`). A trial trained in a stack of K
(`--population K`) shared its device with K-1 others for the same wall time, so it is charged
1/K of it. A lost trial is charged until it was found lost (up to the heartbeat grace after its
worker died); running and queued trials are not charged yet.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.outcomes import COMPLETE, COUNTED, ORDER, trial_outcome
from hpsearch.search.record import RunRecord

UNKNOWN_DEVICE = "unknown"  # a trial that failed before its run record was written


@dataclasses.dataclass(frozen=True)
class CostPoint:
    """The best value after `trial` ended, with the device seconds all ended trials took so far."""

    trial: int
    device_seconds: float
    best: float


@dataclasses.dataclass(frozen=True)
class CostTotals:
    device_seconds: dict[str, float]  # by device kind ("cpu", "cuda NVIDIA H200", "mps")
    by_outcome: dict[str, float]  # device seconds by outcome, in outcomes.ORDER
    ended: int  # trials charged: every trial that ended, whatever its outcome
    counted: int  # trials that count toward --trials (complete, pruned, failed)
    span_seconds: float  # from the first trial's start to the last one's end
    curve: list[CostPoint]  # empty for a multi-objective study or one with nothing complete

    @property
    def total(self) -> float:
        return sum(self.device_seconds.values())

    @property
    def lost(self) -> float:
        """Device seconds of every trial that did not complete: failed, pruned, interrupted, lost."""
        return sum(seconds for word, seconds in self.by_outcome.items() if word != COMPLETE)

    @property
    def trials_per_hour(self) -> float | None:
        """Trials counted toward the budget per hour of the study's wall-clock span (all workers
        together); None before any ended."""
        if self.counted == 0 or self.span_seconds <= 0:
            return None
        return 3600.0 * self.counted / self.span_seconds


def device_kind(run: RunRecord) -> str:
    """`cpu`, `mps`, or `cuda` with the GPU's name: the GPUs of one model cost alike."""
    if run.device is None:
        return UNKNOWN_DEVICE
    kind = run.device.split(":", 1)[0]
    return f"{kind} {run.device_name}" if kind == "cuda" and run.device_name else kind


def device_seconds(trial: FrozenTrial) -> float:
    """The device time charged to an ended trial: its wall time over its stack's size."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return max(0.0, wall) / RunRecord.from_trial(trial).population


def cost_totals(trials: Sequence[FrozenTrial], *, maximize: bool | None) -> CostTotals:
    """The totals over `trials`; `maximize` None (a multi-objective study) draws no curve."""
    ended = sorted((t for t in trials if t.state.is_finished() and t.datetime_complete is not None),
                   key=lambda t: (t.datetime_complete, t.number))
    by_kind: dict[str, float] = {}
    by_outcome = dict.fromkeys(ORDER, 0.0)
    curve: list[CostPoint] = []
    spent, best = 0.0, None
    for t in ended:
        seconds = device_seconds(t)
        kind = device_kind(RunRecord.from_trial(t))
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        by_outcome[trial_outcome(t)] += seconds
        spent += seconds
        if maximize is None or t.state != TrialState.COMPLETE or t.value is None:
            continue
        if best is None or (t.value > best if maximize else t.value < best):
            best = t.value
            curve.append(CostPoint(t.number, spent, best))
    starts = [t.datetime_start for t in ended if t.datetime_start is not None]
    span = (ended[-1].datetime_complete - min(starts)).total_seconds() if starts else 0.0  # type: ignore[operator]
    return CostTotals(
        device_seconds=dict(sorted(by_kind.items(), key=lambda item: -item[1])),
        by_outcome={word: s for word, s in by_outcome.items() if s > 0},
        ended=len(ended), counted=sum(trial_outcome(t) in COUNTED for t in ended),
        span_seconds=span, curve=curve,
    )


def describe_seconds(seconds: float) -> str:
    """`42.0 s`, `12.5 min`, `3.20 h`: device time as a reader takes it in."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def cost_lines(totals: CostTotals) -> list[str]:
    """The totals as `status` prints them, one fact a line."""
    if totals.ended == 0:
        return ["cost: no trial has ended yet"]
    kinds = ", ".join(f"{kind} {describe_seconds(s)}" for kind, s in totals.device_seconds.items())
    rate = totals.trials_per_hour
    lines = [f"cost: {describe_seconds(totals.total)} of device time over {totals.ended} ended "
             f"trials ({kinds})"
             + (f"; {rate:.0f} trials/hour over {describe_seconds(totals.span_seconds)}"
                if rate is not None else "")]
    share = f" ({100 * totals.lost / totals.total:.0f}%)" if totals.total > 0 else ""
    parts = ", ".join(f"{word} {describe_seconds(s)}" for word, s in totals.by_outcome.items()
                      if word != COMPLETE)
    lines.append(f"  not complete: {describe_seconds(totals.lost)}{share}"
                 + (f" ({parts})" if parts else ""))
    if totals.curve:
        last = totals.curve[-1]
        lines.append(f"  best so far reached at trial #{last.trial} after "
                     f"{describe_seconds(last.device_seconds)} of device time "
                     f"({len(totals.curve)} improvement{'s' if len(totals.curve) > 1 else ''})")
    return lines


def cost_figure(totals: CostTotals, *, metric: str) -> go.Figure:
    """Best value so far against cumulative device time: what each better config cost."""
    curve = totals.curve
    figure = go.Figure(go.Scatter(
        x=[p.device_seconds for p in curve] + [totals.total],
        y=[p.best for p in curve] + [curve[-1].best], mode="lines+markers", line_shape="hv",
        text=[f"trial #{p.trial}" for p in curve] + ["now"], name=f"best {metric}",
        hovertemplate="%{text}: %{y:.4g} after %{x:.1f} device-seconds<extra></extra>"))
    figure.update_layout(title=f"Best {metric} so far against device time",
                         xaxis_title="device-seconds (all ended trials)", yaxis_title=metric,
                         height=450)
    return figure


def cost_section(totals: CostTotals, *, metric: str) -> str:
    """The report's section: the totals as a table and, with a completed trial, the curve."""
    if totals.ended == 0:
        return ""
    rows = [("device time", describe_seconds(totals.total)),
            *((f"  on {kind}", describe_seconds(s)) for kind, s in totals.device_seconds.items()),
            *((f"  {word} trials", describe_seconds(s)) for word, s in totals.by_outcome.items()),
            ("not complete", describe_seconds(totals.lost)),
            ("trials per hour", f"{totals.trials_per_hour:.0f}" if totals.trials_per_hour else "-")]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    body = (cost_figure(totals, metric=metric).to_html(
        full_html=False, include_plotlyjs=False, default_width="100%") if totals.curve else "")
    return (f'<section class="figure"><h2>Cost</h2><table><tbody>{table}</tbody></table>\n{body}\n'
            f'<p class="note">Device time is each ended trial\'s wall time (Optuna\'s start to '
            f"end), shared among the trials of a stack; running trials are not counted yet.</p>"
            "</section>")
