"""The population worker: ask Optuna for up to K trials at once and train same-shape ones together.

It keeps `worker.run_worker`'s contract (the study's budget of finished trials, counted under the
study's lock; lost trials recovered and queued again; the same user attributes and outcome names
as `runner.run_trial`), and changes two things:

- trials are asked in batches of up to `population`, grouped by `population.stackable_key`, and
  each group is trained as one stacked computation (`train_population`); a trial whose config
  cannot stack, or that has no partner of its shape, trains alone with `trainer.train`;
- the storage round-trips that do not depend on the number of trials (the budget count, lost
  trial recovery) happen once per batch instead of once per trial.

Each trial still reports every epoch's value to its own Optuna trial and asks its pruner, so the
dashboard's intermediate values and per-trial pruning work as before.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache
from hpsearch.errors import HPSearchError, StudyError
from hpsearch.population import stackable_key, train_population
from hpsearch.registry import suggest_config
from hpsearch.runner import (
    ATTR_CONFIG,
    ATTR_RUN,
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PRUNED,
    RunSettings,
    TrialOutcome,
    _finish,
    _first_line,
    grid_size,
    heartbeat,
    open_study,
    retry,
    run_record,
)
from hpsearch.storage import StorageHandle
from hpsearch.trainer import EpochRecord, SpeedOptions, TrainResult, train
from hpsearch.worker import (
    MAX_CONSECUTIVE_ERRORS,
    OnTrial,
    WorkerReport,
    _ask,
    budget_state,
    recover_lost_trials,
)

logger = logging.getLogger(__name__)


class _Pending:
    """A trial asked for in this batch, on its way to being told."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.config: TrainConfig | None = None
        self.outcome: TrialOutcome | None = None


def run_population_worker(
    handle: StorageHandle,
    settings: RunSettings,
    *,
    trials: int,
    population: int,
    device: torch.device,
    timeout: float | None = None,
    sampler_seed: int | None = None,
    on_trial: OnTrial | None = None,
    poll_seconds: float = 1.0,
    speed: SpeedOptions | None = None,
) -> WorkerReport:
    """Run trials of one study, up to `population` at a time, until it holds `trials` finished ones."""
    if trials < 1:
        raise StudyError(f"--trials {trials}: the study needs a budget of at least 1 trial")
    if population < 1:
        raise StudyError(f"--population {population}: train at least 1 trial at a time")
    grid = grid_size(settings)
    if grid is not None and trials > grid:
        logger.warning("the grid has %d points; running %d trials, not %d", grid, grid, trials)
        trials = grid
    data = DataCache(settings.data_dir, device)
    base = settings.base_config(0)
    data.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
    study = open_study(handle, settings, sampler_seed=sampler_seed)
    report = WorkerReport(settings.study_name, trials, already_done=budget_state(study).done)
    deadline = time.monotonic() + timeout if timeout else None
    errors_in_a_row = 0

    while True:
        if deadline is not None and time.monotonic() > deadline:
            report.stopped = "timeout"
            break
        recover_lost_trials(study, handle)
        with handle.lock(settings.study_name):
            state = budget_state(study)
            if state.done >= trials:
                break
            # Asking a queued (WAITING) trial does not add to the planned count; a new one does.
            room = state.waiting + max(0, trials - state.planned)
            batch = [_Pending(_ask(study)) for _ in range(min(population, room))]
        if not batch:
            time.sleep(poll_seconds)
            continue
        try:
            _run_batch(study, batch, settings, handle=handle, device=device, data=data,
                       speed=speed or SpeedOptions())
        except KeyboardInterrupt:
            report.stopped = "interrupted"
            raise
        state = budget_state(study)  # once per batch, not once per trial
        for pending in batch:
            outcome = pending.outcome
            assert outcome is not None
            report.outcomes.append(outcome)
            if on_trial is not None:
                on_trial(outcome, state)
            errors_in_a_row = errors_in_a_row + 1 if outcome.error else 0
            if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                raise StudyError(
                    f"{errors_in_a_row} trials in a row failed with errors, the last with: "
                    f"{outcome.reason}; fix the study module or the config and run again (the "
                    "failed trials stay in the study with their reasons)"
                )
    return report


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
    with heartbeat(handle, [pending.trial._trial_id for pending in batch]):
        try:
            for pending in batch:
                _prepare(study, pending, settings, device)
            prepared = [p for p in batch if p.outcome is None]
            groups: dict[object, list[_Pending]] = {}
            for pending in prepared:
                assert pending.config is not None
                key = None if spec.record_init_stats else stackable_key(pending.config)
                groups.setdefault(key if key is not None else id(pending), []).append(pending)
            for group in groups.values():
                for pending in group:
                    _record_run(study, pending, settings, device, len(group))
            for group in groups.values():
                group = [p for p in group if p.outcome is None]
                if group:
                    _train_group(study, group, settings, device=device, data=data,
                                 speed=speed)
        except KeyboardInterrupt:
            for pending in batch:
                if pending.outcome is None:
                    _fail(study, pending, None, INTERRUPTED, "interrupted by the user", spec.metric)
                    retry(study, handle.storage.get_trial(pending.trial._trial_id))
            raise


def _prepare(study: optuna.Study, pending: _Pending, settings: RunSettings, device: torch.device) -> None:
    trial = pending.trial
    try:
        config = suggest_config(settings.spec, trial, settings.base_config(trial.number))
        trial.set_user_attr(ATTR_CONFIG, config.to_dict())
    except Exception as e:  # noqa: BLE001 - a bug in a study module fails its trial (logged)
        _fail(study, pending, None, FAILED, _reason(e, [trial.number], device), settings.spec.metric)
        return
    pending.config = config


def _record_run(study: optuna.Study, pending: _Pending, settings: RunSettings,
                device: torch.device, population: int) -> None:
    """`runner.run_record`, plus how many trials trained in the same stack (1: alone)."""
    assert pending.config is not None
    try:
        record = run_record(settings, pending.config, device)
        pending.trial.set_user_attr(ATTR_RUN, {**record, "population": population})
    except Exception as e:  # noqa: BLE001 - the storage failing this write fails the trial (logged)
        _fail(study, pending, None, FAILED, _reason(e, [pending.trial.number], device),
              settings.spec.metric)


def _reason(e: Exception, numbers: list[int], device: torch.device) -> str:
    """The failure reason `runner.run_trial` would store for this exception."""
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory on {device}: {_first_line(e)}"
    if isinstance(e, HPSearchError):
        return str(e)
    where = traceback.extract_tb(e.__traceback__)[-1]
    logger.warning("trial(s) %s raised", numbers, exc_info=e)
    return f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"


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

    def report(pending: _Pending, record: EpochRecord) -> bool:
        pending.trial.report(record.metric(metric), record.epoch)
        return ask_pruner and pending.trial.should_prune()

    try:
        splits = data.get(first.dataset, val_fraction=first.val_fraction, split_seed=first.split_seed)
        if len(group) > 1:
            results = train_population(
                configs,  # type: ignore[arg-type]
                splits, device=device, compile=speed.compile,
                on_epoch=lambda k, record: report(group[k], record),
            )
        else:
            results = [train(first, splits, device=device, speed=speed,
                             on_epoch=lambda record: report(group[0], record),
                             record_init_stats=settings.spec.record_init_stats)]
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
        _fail_all(study, group, _reason(e, [p.trial.number for p in group], device), metric)
        return
    except Exception as e:  # noqa: BLE001 - as runner.run_trial: the trials fail, the study goes on
        _fail_all(study, group, _reason(e, [p.trial.number for p in group], device), metric)
        return
    for pending, result in zip(group, results):
        pending.outcome = _tell(study, pending.trial, result, metric)


def _tell(study: optuna.Study, trial: optuna.Trial, result: TrainResult, metric: str) -> TrialOutcome:
    """The same outcome `runner.run_trial` gives a finished training run."""
    if result.failure is not None:
        state, outcome, reason = TrialState.FAIL, FAILED, result.failure
    elif result.stop_reason == "stopped":
        state, outcome, reason = TrialState.PRUNED, PRUNED, f"pruned after epoch {len(result.history)}"
    else:
        state, outcome, reason = TrialState.COMPLETE, COMPLETE, None
    return _finish(study, trial, result, state=state, outcome=outcome, reason=reason,
                   metric=metric, error=False)


def _fail(study: optuna.Study, pending: _Pending, result: TrainResult | None, outcome: str,
          reason: str, metric: str) -> None:
    pending.outcome = _finish(study, pending.trial, result, state=TrialState.FAIL, outcome=outcome,
                              reason=reason, metric=metric, error=outcome == FAILED)


def _fail_all(study: optuna.Study, group: list[_Pending], reason: str, metric: str) -> None:
    for pending in group:
        _fail(study, pending, None, FAILED, reason, metric)

