"""Train a stored trial's config again, same seed and split, and compare with what was stored.

The stored config is complete (the study module already resolved it), so no study module and no
sampler are involved: this checks that the trial is reproducible from what it recorded. On the
CPU with the same package versions the values match exactly; across devices or versions they
differ by floating-point reordering, which the comparison makes visible.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache
from hpsearch.errors import StudyError
from hpsearch.runner import ATTR_CONFIG, ATTR_HISTORY, ATTR_RESULT, ATTR_RUN, package_versions
from hpsearch.trainer import TrainResult, train


@dataclasses.dataclass(frozen=True)
class Rerun:
    trial: int
    metric: str
    config: TrainConfig
    stored_value: float | None  # None unless the trial completed
    stored_history: list[float | None]  # the metric per epoch, as stored
    result: TrainResult
    stored_run: dict[str, Any]
    stored_result: dict[str, Any]  # outcome, stop reason, best epoch... as stored
    version_changes: dict[str, tuple[str, str]]  # package: (stored, now)

    @property
    def history(self) -> list[float]:
        return [r.metric(self.metric) for r in self.result.history]

    @property
    def value(self) -> float | None:
        """The rerun's metric at the epoch the run kept, as the study would have stored it."""
        return None if self.result.failure else self.result.final.metric(self.metric)

    @property
    def max_epoch_difference(self) -> float | None:
        """Largest absolute difference over the epochs both runs have values for."""
        pairs = [(a, b) for a, b in zip(self.stored_history, self.history) if a is not None]
        if not pairs:
            return None
        return max(abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
                   for a, b in pairs)


def rerun_trial(
    study: optuna.Study,
    number: int,
    *,
    device: torch.device,
    data_dir: Path | None = None,
) -> Rerun:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        known = f"0 to {max(trials)}" if trials else "none"
        raise StudyError(f"study {study.study_name!r} has no trial {number}; trial numbers: {known}")
    trial = trials[number]
    stored = trial.user_attrs.get(ATTR_CONFIG)
    if not isinstance(stored, dict):
        raise StudyError(
            f"trial {number} of {study.study_name!r} has no stored config (user attribute "
            f"{ATTR_CONFIG!r}): it was not run by hpsearch, or failed before its config was made"
        )
    config = TrainConfig.from_dict(stored)
    metric = study.user_attrs.get("metric", "val_error")
    run = trial.user_attrs.get(ATTR_RUN, {})
    history = trial.user_attrs.get(ATTR_HISTORY, {}).get(metric, [])
    splits = DataCache(data_dir, device).get(
        config.dataset, val_fraction=config.val_fraction, split_seed=config.split_seed
    )
    # No pruner here: a pruned trial runs all its epochs, and the stored epochs are compared.
    result = train(config, splits, device=device)
    now = package_versions()
    changes = {k: (str(v), now[k]) for k, v in run.get("versions", {}).items()
               if k in now and str(v) != now[k]}
    return Rerun(
        trial=number,
        metric=metric,
        config=config,
        stored_value=trial.value,
        stored_history=list(history),
        result=result,
        stored_run=run,
        stored_result=dict(trial.user_attrs.get(ATTR_RESULT) or {}),
        version_changes=changes,
    )

