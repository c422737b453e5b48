"""Train a stored trial's config again, same seed and split, and compare with what was stored.

The stored config is complete (the study module already resolved it), so no study module and no
sampler are involved: this checks that the trial is reproducible from what it recorded. On the
CPU with the same package versions the values match exactly; across devices or versions they
differ by floating-point reordering, which the comparison makes visible.

The trial's recorded speed options are repeated: a bf16 trial is trained in bf16 again. What
cannot be repeated is said in `Rerun.notes`: a compiled step is run eagerly off CUDA, and a
trial of a stack is trained alone.

A cross-validated trial is trained again on the same k folds (its run record holds k, its config
the split seed) and compared fold by fold and by the mean.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import optuna
import torch

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, DataPlace, DataSource, check_same_data
from hpsearch.errors import StudyError
from hpsearch.search.provenance import RunRecord, package_versions
from hpsearch.search.record import DEFAULT_METRIC, TrialRecord, study_metric
from hpsearch.training import (
    METRICS,
    CrossValResult,
    SpeedOptions,
    TrainResult,
    train,
    train_folds,
)


@dataclasses.dataclass(frozen=True)
class Rerun:
    trial: int
    metric: str
    config: TrainConfig
    stored_value: float | None  # None unless the trial completed
    stored: TrialRecord  # what the trial stored: run record, history, result, folds
    result: TrainResult | CrossValResult
    version_changes: dict[str, tuple[str, str]]  # package: (stored, now)
    speed: SpeedOptions  # what the rerun trained with
    notes: list[str]  # how the rerun differs from how the trial ran, and why
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance of the rerun's data
    data_note: str | None = None  # why the data was not checked, or was allowed to differ

    @property
    def stored_history(self) -> list[float | None]:
        """The metric per epoch, as stored."""
        return self.stored.history.metric(self.metric)

    @property
    def history(self) -> list[float]:
        return [r.metric(self.metric) for r in self.result.history]

    @property
    def value(self) -> float | None:
        """The rerun's metric at the epoch the run kept (for k folds, their mean), as the study
        would have stored it."""
        if isinstance(self.result, CrossValResult):
            return self.result.value if self.result.complete else None
        return None if self.result.failure else self.result.final.metric(self.metric)

    @property
    def max_epoch_difference(self) -> float | None:
        """Largest absolute difference over the epochs both runs have values for (of every fold
        the stored trial trained, for a cross-validated one)."""
        if isinstance(self.result, CrossValResult):
            stored = self.stored.cv.history if self.stored.cv is not None else []
            rerun = [[r.metric(self.metric) for r in fold.history] for fold in self.result.folds]
        else:
            stored, rerun = [self.stored_history], [self.history]
        pairs = [(a, b) for old, new in zip(stored, rerun) for a, b in zip(old, new)
                 if a is not None]
        if not pairs:
            return None
        return max(abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
                   for a, b in pairs)


def rerun_trial(
    study: optuna.Study,
    number: int,
    *,
    device: torch.device,
    data_dir: DataPlace = None,
    speed: SpeedOptions | None = None,
    allow_other_data: bool = False,
) -> Rerun:
    """Train trial `number` again; with `speed` None, as the trial's run record says it ran."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        known = f"0 to {max(trials)}" if trials else "none"
        raise StudyError(f"study {study.study_name!r} has no trial {number}; trial numbers: {known}")
    trial = trials[number]
    stored = TrialRecord.from_trial(trial)
    config = stored.config(
        where=repr(study.study_name),
        why="it was not run by hpsearch, or failed before its config was made",
    )
    metric = study_metric(study).name
    if metric not in METRICS:
        # A study that names no metric of the trainer's (made by hand around hpsearch trials) is
        # compared on the metric a study module has when it declares none.
        metric = DEFAULT_METRIC
    run = stored.run
    data = DataCache(data_dir, device)
    train_again: Callable[..., TrainResult | CrossValResult]
    if run.cv_folds:
        folds = data.folds(config.dataset, k=run.cv_folds, split_seed=config.split_seed)
        used = {**folds[0].provenance(), "folds": run.cv_folds}
        train_again = functools.partial(train_folds, config, folds, metric=metric)
    else:
        splits = data.get(config.dataset, val_fraction=config.val_fraction,
                          split_seed=config.split_seed)
        used = splits.provenance()
        train_again = functools.partial(train, config, splits)
    source = DataSource.from_dict(used)
    assert source is not None
    note = check_same_data(run.data, source, allow_other_data=allow_other_data,
                           recorded_by=f"trial {number} of {study.study_name!r}",
                           fix="pass --data-dir with the data the trial used")
    notes: list[str] = []
    if speed is None:
        speed, notes = _recorded_speed(run, device)
    # No pruner here: a pruned trial runs all its epochs (and folds), and the stored ones are
    # compared.
    result = train_again(device=device, speed=speed)
    # values[0]: the metric of a single-objective trial, the first objective of a multi-objective one
    stored_value = trial.values[0] if trial.values else None
    return Rerun(trial=number, metric=metric, config=config, stored_value=stored_value,
                 stored=stored, result=result, version_changes=_version_changes(run), speed=speed,
                 notes=notes, data=used, data_note=note)


def _version_changes(run: RunRecord) -> dict[str, tuple[str, str]]:
    """Packages whose version differs from the trial's: package: (stored, now)."""
    now = package_versions()
    return {k: (str(v), now[k]) for k, v in run.versions.items() if k in now and str(v) != now[k]}


def _recorded_speed(run: RunRecord, device: torch.device) -> tuple[SpeedOptions, list[str]]:
    """The speed options the trial ran with, less what this device cannot repeat, with why."""
    bf16, compile_ = bool(run.speed.get("bf16")), bool(run.speed.get("compile"))
    notes = []
    if bf16 and not torch.amp.is_autocast_available(device.type):
        bf16 = False
        notes.append(f"the trial ran in bf16; {device.type} has no bfloat16 autocast, so the rerun "
                     "trains in float32 and its values will differ")
    if compile_ and device.type != "cuda":
        compile_ = False
        notes.append(f"the trial ran with --compile; rerun trains eagerly on {device} (compiling "
                     "off CUDA needs a C++ toolchain and tens of seconds); a compiled step matches "
                     "the eager one up to floating-point reordering")
    if run.population > 1:
        notes.append(f"the trial trained in a stack of {run.population} trials; rerun trains it alone "
                     "(same seed, data order and dropout masks; the stack's batched matrix "
                     "products can round differently)")
    return SpeedOptions(compile=compile_, bf16=bf16), notes

