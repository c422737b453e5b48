"""When to stop, as `status` prints it and the report draws it: the Terminator's estimate of what
more trials could gain, against the validation noise, over the trials of a study run with
`--stop-when-converged` (the estimates are stored on the study; see search/convergence.py)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from hpsearch.search.record import Estimate, StopRecord

SHOWN = 6  # the latest estimates `status` lists


def convergence_lines(estimates: list[Estimate], stopped: StopRecord | None) -> list[str]:
    """Nothing for a study run without `--stop-when-converged`."""
    lines = []
    if estimates:
        mean = sum(e.seconds for e in estimates) / len(estimates)
        last = estimates[-1]
        verdict = "below" if last.converged else "above"
        lines.append(f"when to stop: {len(estimates)} estimate(s) from trial #{estimates[0].trial}"
                     f", {mean:.2f} s each; after trial #{last.trial} the room left "
                     f"{last.improvement:.4g} is {verdict} the noise {last.noise:.4g}")
        lines.append("  room left / noise by trial: " + ", ".join(
            f"#{e.trial} {e.improvement:.3g}/{e.noise:.3g}" for e in estimates[-SHOWN:]))
    if stopped is not None:
        lines.append(f"stopped starting trials: {stopped.reason}")
    return lines


def convergence_figure(estimates: list[Estimate]) -> go.Figure:
    """The regret bound and the noise against the trial after which each was estimated."""
    trials = [e.trial for e in estimates]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=trials, y=[e.improvement for e in estimates],
                                mode="lines+markers", name="room left (regret bound)"))
    figure.add_trace(go.Scatter(x=trials, y=[e.noise for e in estimates], mode="lines",
                                name="validation noise sqrt(e(1-e)/n)", line={"dash": "dash"}))
    figure.update_layout(title="What more trials could gain, against the noise",
                         xaxis_title="trial", yaxis_title="metric", yaxis_type="log", height=450)
    return figure


def convergence_section(estimates: list[Estimate], stopped: StopRecord | None) -> str:
    """The report's section; empty for a study run without `--stop-when-converged`."""
    if not estimates:
        return ""
    body = convergence_figure(estimates).to_html(full_html=False, include_plotlyjs=False,
                                                 default_width="100%")
    lines = convergence_lines(estimates, stopped)
    notes = "".join(f'<p class="note">{html.escape(line.strip())}</p>' for line in lines)
    return ('<section class="figure"><h2>When to stop</h2>\n'
            "<p>After each trial, Optuna's Terminator bounds how much better the optimum may be "
            "than the best trial (a Gaussian process on the best trials); the study stops "
            "starting trials once that falls below the binomial noise of the best trial's "
            f"validation value.</p>\n{body}\n{notes}</section>")
