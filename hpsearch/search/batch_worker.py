"""A batch of trials asked together (`worker.run_worker(population=K)`), trained by shape.

Trials of a batch are grouped by `population.stackable_key`, and each group is trained as one
stacked computation (`train_population`); a trial whose config cannot stack, that has no
partner of its shape, or that is cross-validated, trains alone with `runner.train_trial`, as
`runner.run_trial` trains. Every trial gets the same user attributes and outcome names as
`runner.run_trial`, and one heartbeat thread beats for all.

Each trial still reports every epoch's value to its own Optuna trial and asks its pruner, so the
dashboard's intermediate values and per-trial pruning work as before.
"""

from __future__ import annotations

import logging

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.outcomes import interrupt_reason
from hpsearch.search.registry import suggest_config
from hpsearch.search.runner import (
    ATTR_CONFIG,
    ATTR_RUN,
    FAILED,
    INTERRUPTED,
    TAKEN_OVER,
    RunSettings,
    TrialOutcome,
    _finish,
    data_record,
    error_reason,
    heartbeat,
    report,
    retry,
    run_record,
    set_attr,
    taken_over,
    tell_result,
    train_trial,
)
from hpsearch.search.storage import StorageHandle
from hpsearch.training import (
    CrossValResult,
    EpochRecord,
    SpeedOptions,
    TrainResult,
    stackable_key,
    train_population,
)

logger = logging.getLogger(__name__)


class _Pending:
    """A trial asked for in this batch, on its way to being told."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.config: TrainConfig | None = None
        self.outcome: TrialOutcome | None = None


def train_batch(
    study: optuna.Study,
    trials: list[optuna.Trial],
    settings: RunSettings,
    *,
    handle: StorageHandle,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions,
) -> list[TrialOutcome]:
    """Train and tell a batch of asked trials, stacking the ones of one shape; only
    KeyboardInterrupt propagates (every trial of the batch is then told interrupted)."""
    batch = [_Pending(trial) for trial in trials]
    _run_batch(study, batch, settings, handle=handle, device=device, data=data, speed=speed)
    outcomes = [pending.outcome for pending in batch]
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def _run_batch(
    study: optuna.Study,
    batch: list[_Pending],
    settings: RunSettings,
    *,
    handle: StorageHandle,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions,
) -> None:
    """Train and tell every trial of the batch; only KeyboardInterrupt propagates."""
    spec = settings.spec
    with heartbeat(handle, [trial_id(pending.trial) for pending in batch]):
        try:
            for pending in batch:
                _prepare(study, pending, settings, device)
            prepared = [p for p in batch if p.outcome is None]
            groups: dict[object, list[_Pending]] = {}
            for pending in prepared:
                assert pending.config is not None
                # Cross-validated trials train fold after fold, each alone.
                stacks = not (spec.record_init_stats or settings.cv)
                key = stackable_key(pending.config) if stacks else None
                groups.setdefault(key if key is not None else id(pending), []).append(pending)
            for group in groups.values():
                # A stack trains in float32 (bf16 autocast is for trials trained alone).
                used = speed if len(group) == 1 else SpeedOptions(compile=speed.compile)
                for pending in group:
                    _record_run(study, pending, settings, device, speed=used, population=len(group),
                                data=data)
            for group in groups.values():
                group = [p for p in group if p.outcome is None]
                if group:
                    _train_group(study, group, settings, device=device, data=data,
                                 speed=speed)
        except KeyboardInterrupt as e:
            for pending in batch:
                if pending.outcome is None:
                    _fail(study, pending, None, INTERRUPTED, interrupt_reason(e), spec.metric)
                    assert pending.outcome is not None
                    if pending.outcome.outcome != TAKEN_OVER:
                        retry(study, handle.storage.get_trial(trial_id(pending.trial)))
            raise


def _prepare(study: optuna.Study, pending: _Pending, settings: RunSettings, device: torch.device) -> None:
    trial = pending.trial
    try:
        config = suggest_config(settings.spec, trial, settings.base_config(trial.number))
        set_attr(trial, ATTR_CONFIG, config.to_dict())
    except optuna.exceptions.UpdateFinishedTrialError:
        pending.outcome = taken_over(trial)
        return
    except Exception as e:  # noqa: BLE001 - a bug in a study module fails its trial (logged)
        _fail(study, pending, None, FAILED, error_reason(e, [trial.number], device), settings.spec.metric)
        return
    pending.config = config


def _record_run(study: optuna.Study, pending: _Pending, settings: RunSettings,
                device: torch.device, *, speed: SpeedOptions, population: int,
                data: DataCache) -> None:
    """`runner.run_record`, with the speed options used, the size of the trial's stack and the
    provenance of its data."""
    config = pending.config
    assert config is not None
    try:
        record = run_record(settings, config, device, speed=speed, population=population,
                            data=data_record(settings, config, data))
        set_attr(pending.trial, ATTR_RUN, record)
    except optuna.exceptions.UpdateFinishedTrialError:
        pending.outcome = taken_over(pending.trial)
    except Exception as e:  # noqa: BLE001 - the storage failing this write fails the trial (logged)
        _fail(study, pending, None, FAILED, error_reason(e, [pending.trial.number], device),
              settings.spec.metric)


def _train_group(
    study: optuna.Study,
    group: list[_Pending],
    settings: RunSettings,
    *,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions,
) -> None:
    metric = settings.spec.metric
    configs = [p.config for p in group]
    assert all(c is not None for c in configs)
    first = configs[0]
    assert first is not None
    # NopPruner's verdict is always no; skipping the call saves a read of the trial per epoch
    # (about 0.1 ms on SQLite with Optuna's cache, measured by benchmarks/bench_trainer.py).
    ask_pruner = not isinstance(study.pruner, optuna.pruners.NopPruner)

    def report_epoch(pending: _Pending, record: EpochRecord) -> bool:
        if not report(pending.trial, record.metric(metric), record.epoch):
            return True  # taken over: stop this member alone
        return ask_pruner and pending.trial.should_prune()

    try:
        if len(group) > 1:
            splits = data.get(first.dataset, val_fraction=first.val_fraction,
                              split_seed=first.split_seed)
            results: list[TrainResult | CrossValResult] = list(train_population(
                configs,  # type: ignore[arg-type]
                splits, device=device, compile=speed.compile,
                on_epoch=lambda k, record: report_epoch(group[k], record),
            ))
        else:
            results = [train_trial(group[0].trial, first, settings, device=device, data=data,
                                   speed=speed)]
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(group) > 1:
            # The stack did not fit: train its members one at a time instead.
            logger.warning("a stack of %d trials ran out of memory on %s; training them one at "
                           "a time", len(group), device)
            for pending in group:
                _train_group(study, [pending], settings, device=device, data=data, speed=speed)
            return
        _fail_all(study, group, error_reason(e, [p.trial.number for p in group], device), metric)
        return
    except Exception as e:  # noqa: BLE001 - as runner.run_trial: the trials fail, the study goes on
        _fail_all(study, group, error_reason(e, [p.trial.number for p in group], device), metric)
        return
    for pending, result in zip(group, results):
        pending.outcome = tell_result(study, pending.trial, result, metric=metric)


def _fail(study: optuna.Study, pending: _Pending, result: TrainResult | None, outcome: str,
          reason: str, metric: str) -> None:
    pending.outcome = _finish(study, pending.trial, result, state=TrialState.FAIL, outcome=outcome,
                              reason=reason, metric=metric, error=outcome == FAILED)


def _fail_all(study: optuna.Study, group: list[_Pending], reason: str, metric: str) -> None:
    for pending in group:
        _fail(study, pending, None, FAILED, reason, metric)

