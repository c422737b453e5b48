"""`final` on configs exported from a multi-objective study: every objective measured again on the
final runs, each with the interval that fits how it varies.

- Error: the test error of each seed with its 95% Wilson interval, and the mean over seeds with
  its 95% t-interval (`final.summarise`, as for any config).
- Size (`n_params`): a property of the config, the same for every seed: reported exactly.
- Time (`epoch_seconds`): each seed's training wall time per epoch on the official training set
  (larger than the search's training split, so not the search's value); the mean over seeds with
  its standard deviation and 95% t-interval, since it varies with the machine's load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpsearch.analysis.stats import mean_std, t_interval
from hpsearch.search.objectives import format_value
from hpsearch.training import TrainResult


def search_values(source: Mapping[str, Any]) -> dict[str, float] | None:
    """An export entry's value of each objective, if it came from a multi-objective study."""
    values = source.get("values")
    return dict(values) if isinstance(values, Mapping) else None


def objective_record(source: Mapping[str, Any], result: TrainResult) -> dict[str, Any]:
    """What one seed's run adds for an entry of a multi-objective export; {} for any other."""
    if search_values(source) is None:
        return {}
    epochs = max(len(result.history), 1)
    return {"n_params": result.n_params, "epoch_seconds": round(result.seconds / epochs, 6)}


def objective_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Size and time over the seeds that finished; None when the entry has no objectives."""
    ok = [r for r in runs if "epoch_seconds" in r and r.get("error") is not None]
    if not ok:
        return None
    sizes = {r["n_params"] for r in ok}
    assert len(sizes) == 1, f"one config built models of {sorted(sizes)} parameters"
    seconds = [r["epoch_seconds"] for r in ok]
    mean, std = mean_std(seconds)
    ci = t_interval(seconds, within=(0.0, math.inf))
    return {"n_params": sizes.pop(), "epoch_seconds_mean": mean, "epoch_seconds_std": std,
            "epoch_seconds_t_ci": list(ci) if ci else None}


def objectives_table(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: each objective of each multi-objective config, search and final."""
    rows = [c for c in configs if c.get("search_values")]
    if not rows:
        return []
    lines = ["", ("Objectives (multi-objective export): test error with its 95% t-interval over "
                  "seeds (per-seed Wilson intervals above); parameters exactly; seconds per "
                  "epoch on the official training set as mean ± sd over seeds (95% t-interval)."),
             "", ("| config | search values | test error: mean (95% t-CI) | parameters "
                  "| s/epoch: mean ± sd (95% t-CI) |"), "| --- | --- | --- | --- | --- |"]
    for c in rows:
        search = ", ".join(f"{k} {format_value(k, v)}" for k, v in c["search_values"].items())
        s, o = c["summary"], c.get("objectives")
        if s is None or o is None:
            lines.append(f"| {c['label']} | {search} | all seeds failed | | |")
            continue
        ci = s["error_t_ci"]
        error = f"{100 * s['mean_error']:.2f}%" + (
            f" ({100 * ci[0]:.2f}-{100 * ci[1]:.2f}%)" if ci else "")
        t_ci = o["epoch_seconds_t_ci"]
        time = f"{o['epoch_seconds_mean']:.4f} ± {o['epoch_seconds_std']:.4f}" + (
            f" ({t_ci[0]:.4f}-{t_ci[1]:.4f})" if t_ci else "")
        lines.append(f"| {c['label']} | {search} | {error} | {o['n_params']} | {time} |")
    return lines
