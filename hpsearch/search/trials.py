"""One trial path: suggest, record, train, report and prune, classify the outcome, tell Optuna once.

Every trial goes through `run_trials`, alone (a batch of one, the ordinary case) or with the
other trials a worker asked for together (`--population K`). Optuna's own `_run_trial`
(`optuna/study/_optimize.py`) is the model: it runs the objective inside the heartbeat, maps
each way it can end to a state and tells once. A batch is a loop around the same steps: each
trial is suggested and its config stored, then all train together with `training.train_many`,
which stacks the configs of one shape; a member's run record is written as it starts
(`on_start`: the size of its stack and the speed options it trains with), and each epoch is
reported to the member's own trial, whose pruner is asked (`on_epoch`).

A cross-validated trial (`RunSettings.cv` = k) trains alone, fold after fold (`train_folds`),
and reports after each fold the running mean of the fold values at step = folds done (1..k),
which is what its pruner compares between trials; its value is the mean over the k folds.

Each trial ends in one outcome (the words are `hpsearch.search.outcomes`'s), logged with its
reason: complete; pruned; failed (diverged, out of memory, a bad config, a bug, or the storage
failing to record it); interrupted (KeyboardInterrupt or SIGTERM: told, queued again, re-raised);
or taken over (another worker declared it lost while this one ran it: dropped, never told).

Three rules hold for every trial, alone or stacked:
- NopPruner's verdict is always no, so it is never asked (each ask reads the trial back).
- The run record holds `population` (1: trained alone) and the speed options actually used.
- A storage error while recording a trial fails it, counted and with its reason: the retrying
  storage has already waited out a transient outage by then, and the worker's limit on errors
  in a row (`worker.MAX_CONSECUTIVE_ERRORS`) stops a worker whose database stays down.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, Splits
from hpsearch.errors import HPSearchError, raise_if_interrupted
from hpsearch.search.checkpoints import remove_checkpoints, trial_checkpoint
from hpsearch.search.liveness import heartbeat
from hpsearch.search.objectives import trial_values
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.outcomes import (
    COUNTED,
    FAILED,
    INTERRUPTED,
    TAKEN_OVER,
    interrupt_reason,
    raise_swallowed_interrupt,
)
from hpsearch.search.record import RunRecord, config_attrs, finished_attrs, set_attrs
from hpsearch.search.registry import suggest_config
from hpsearch.search.reports import (
    OnProgress,
    Progress,
    Result,
    TrialOutcome,
    classify,
    error_reason,
    taken_over,
)
from hpsearch.search.settings import RunSettings, data_record
from hpsearch.search.storage import StorageHandle, repeats, requeue
from hpsearch.training import (
    CrossValResult,
    EpochRecord,
    RunInfo,
    SpeedOptions,
    train_folds,
    train_many,
)

logger = logging.getLogger(__name__)

@dataclasses.dataclass(eq=False)
class _Member:
    """A trial asked for in this batch, on its way to being told."""

    trial: optuna.Trial
    config: TrainConfig | None = None
    ended: Result | Exception | None = None  # what training returned, or the error that ended it
    taken_over: bool = False  # found failed by another worker while this one ran it
    outcome: TrialOutcome | None = None
    repeats: list[int] = dataclasses.field(default_factory=list)  # earlier attempts, oldest first


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every step of a batch needs."""

    study: optuna.Study
    settings: RunSettings
    handle: StorageHandle
    device: torch.device
    data: DataCache
    speed: SpeedOptions
    on_progress: OnProgress | None
    checkpoint_dir: Path | None = None  # where single runs save after each epoch (None: nowhere)
    logged: set[int] = dataclasses.field(default_factory=set)  # errors whose traceback is logged

    @property
    def metric(self) -> str:
        return self.settings.spec.metric

    def splits(self, config: TrainConfig) -> Splits:
        return self.data.get(config.dataset, val_fraction=config.val_fraction,
                             split_seed=config.split_seed)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    settings: RunSettings,
    *,
    handle: StorageHandle,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions | None = None,
    on_progress: OnProgress | None = None,
    checkpoint_dir: Path | None = None,
) -> TrialOutcome:
    """Train one trial and tell Optuna how it ended: a batch of one."""
    return run_trials(study, [trial], settings, handle=handle, device=device, data=data,
                      speed=speed, on_progress=on_progress, checkpoint_dir=checkpoint_dir)[0]


def run_trials(
    study: optuna.Study,
    trials: Sequence[optuna.Trial],
    settings: RunSettings,
    *,
    handle: StorageHandle,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions | None = None,
    on_progress: OnProgress | None = None,
    checkpoint_dir: Path | None = None,
) -> list[TrialOutcome]:
    """Suggest, record, train and tell each of `trials` (asked together), stacking those of one
    shape; outcomes in the trials' order. Only KeyboardInterrupt propagates, after every trial
    not yet told is told interrupted and queued again. With `checkpoint_dir`, a trial trained
    alone saves itself after each epoch and a repeated one resumes (`search.checkpoints`)."""
    run = _Run(study, settings, handle, device, data, speed or SpeedOptions(), on_progress,
               checkpoint_dir)
    members = [_Member(trial) for trial in trials]
    # One thread beats for all the trials of a batch, so their beats do not contend.
    with heartbeat(handle, [trial_id(trial) for trial in trials]):
        try:
            for member in members:
                _suggest(run, member)
            _train(run, [member for member in members if member.outcome is None])
            for member in members:
                if member.outcome is None:
                    member.outcome = _conclude(run, member)
        except KeyboardInterrupt as e:
            _interrupt(run, members, e)
            raise
    outcomes = [member.outcome for member in members if member.outcome is not None]
    assert len(outcomes) == len(members)
    return outcomes


def _suggest(run: _Run, member: _Member) -> None:
    trial = member.trial
    try:
        # A repeat is the same run again: its first attempt's seed, so a checkpoint fits it.
        member.repeats = repeats(run.handle.storage.get_trial_system_attrs(trial_id(trial)))
        seed_number = member.repeats[0] if member.repeats else trial.number
        config = suggest_config(run.settings.spec, trial, run.settings.base_config(seed_number))
        set_attrs(trial, config_attrs(config))
    except Exception as e:  # noqa: BLE001 - a bad config or a bug in the study module fails its trial
        member.ended = e
        member.outcome = _conclude(run, member)
        return
    member.config = config


def _record(run: _Run, member: _Member, info: RunInfo) -> None:
    """Write the run record of a member about to train; an error here fails that member alone."""
    config = member.config
    assert config is not None
    spec = run.settings.spec
    record = RunRecord.of(config, device=run.device, study_module=spec.name,
                          source_hash=spec.source_hash, cv_folds=run.settings.cv,
                          speed=info.speed.to_dict(), population=info.population,
                          data=data_record(run.settings, config, run.data))
    set_attrs(member.trial, record.to_attrs())


def _train(run: _Run, members: list[_Member]) -> None:
    """Train the suggested members: stacked by shape, or each alone fold after fold under
    cross-validation. Sets each member's `ended`."""
    if run.settings.cv:
        for member in members:
            _train_folds(run, member)
        return
    configs = [member.config for member in members if member.config is not None]
    assert len(configs) == len(members)

    def on_start(index: int, info: RunInfo) -> None:
        _record(run, members[index], info)

    def on_epoch(index: int, record: EpochRecord) -> bool:
        return _step(run, members[index], record.metric(run.metric), record.epoch,
                     of=configs[index].epochs, unit="epoch")

    folder = run.checkpoint_dir
    results = train_many(configs, run.splits, device=run.device, speed=run.speed,
                         on_start=on_start, on_epoch=on_epoch,
                         record_init_stats=run.settings.spec.record_init_stats,
                         checkpoints=None if folder is None else lambda index: trial_checkpoint(
                             folder, members[index].trial, members[index].repeats,
                             metric=run.metric))
    for member, result in zip(members, results):
        member.ended = result


def _train_folds(run: _Run, member: _Member) -> None:
    config, k = member.config, run.settings.cv
    assert config is not None
    try:
        _record(run, member, RunInfo(population=1, speed=run.speed))
        folds = run.data.folds(config.dataset, k=k, split_seed=config.split_seed)
        member.ended = train_folds(
            config, folds, metric=run.metric, device=run.device, speed=run.speed,
            on_fold=lambda done, mean: _step(run, member, mean, done, of=k, unit="fold"),
            record_init_stats=run.settings.spec.record_init_stats)
    except Exception as e:  # noqa: BLE001 - the trial fails alone, with its reason
        raise_if_interrupted(e)  # a stop signal a library wrapped is a stop, not a failure
        if isinstance(e, torch.OutOfMemoryError) and run.device.type == "cuda":
            torch.cuda.empty_cache()
        member.ended = e


def _step(run: _Run, member: _Member, value: float, step: int, *, of: int, unit: str) -> bool:
    """Report a member's value at `step` (epoch or folds done); True stops its training: its
    pruner said so, or another worker has taken the trial over."""
    raise_swallowed_interrupt()
    trial = member.trial
    if run.on_progress is not None:
        run.on_progress(Progress(trial.number, step, of, unit))
    if run.settings.spec.multi_objective:
        return False  # Optuna neither stores intermediate values nor prunes with several objectives
    try:
        trial.report(value, step)
    except optuna.exceptions.UpdateFinishedTrialError:
        member.taken_over = True
        return True
    # NopPruner's verdict is always no; skipping the call saves a read of the trial per report
    # (about 0.1 ms on SQLite with Optuna's cache, measured by benchmarks/bench_trainer.py).
    if isinstance(run.study.pruner, optuna.pruners.NopPruner):
        return False
    return trial.should_prune()


def _conclude(run: _Run, member: _Member) -> TrialOutcome:
    """Classify how a member ended and tell it."""
    ended = member.ended
    if member.taken_over or isinstance(ended, optuna.exceptions.UpdateFinishedTrialError):
        return taken_over(member.trial)
    if isinstance(ended, Exception):
        # A stop signal that a library turned into its own error (psycopg, mid-commit) stops
        # the worker: _interrupt tells this trial and the rest of the batch interrupted.
        raise_if_interrupted(ended)
        if id(ended) not in run.logged and not isinstance(ended, (torch.OutOfMemoryError,
                                                                   HPSearchError)):
            run.logged.add(id(ended))  # a stack's members share one error: one traceback
            logger.warning("trial %d raised", member.trial.number, exc_info=ended)
        return _tell(run, member, None, state=TrialState.FAIL, outcome=FAILED,
                     reason=error_reason(ended, run.device), error=True)
    assert ended is not None
    state, outcome, reason = classify(ended)
    return _tell(run, member, ended, state=state, outcome=outcome, reason=reason)


def _interrupt(run: _Run, members: list[_Member], e: KeyboardInterrupt) -> None:
    """Tell every member not yet told interrupted, and queue its parameters again."""
    for member in members:
        if member.outcome is not None:
            continue
        member.outcome = _tell(run, member, None, state=TrialState.FAIL, outcome=INTERRUPTED,
                               reason=interrupt_reason(e))
        if member.outcome.outcome != TAKEN_OVER:
            requeue(run.study, run.handle.storage.get_trial(trial_id(member.trial)))


def _tell(
    run: _Run, member: _Member, result: Result | None, *, state: TrialState, outcome: str,
    reason: str | None, error: bool = False,
) -> TrialOutcome:
    """Store a member's result and outcome and tell Optuna: the one place a trial is told."""
    trial = member.trial
    values = None
    if result is not None and state == TrialState.COMPLETE:
        values = trial_values(result, run.settings.spec.metrics)  # one per objective
    try:
        _store_result(trial, result, outcome=outcome, reason=reason,
                      complete=state == TrialState.COMPLETE)
        # skip_if_finished: taken over between the attributes above and the tell.
        told = run.study.tell(trial, values[0] if values and len(values) == 1 else values,
                              state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return taken_over(trial)
    if told.state != state:
        return taken_over(trial)
    if outcome in (FAILED, INTERRUPTED):
        logger.warning("trial %d %s: %s", trial.number, outcome, reason)
    else:
        logger.info("trial %d %s%s", trial.number, outcome, f": {reason}" if reason else "")
    if run.checkpoint_dir is not None and outcome in COUNTED:  # interrupted: its repeat resumes
        remove_checkpoints(run.checkpoint_dir, run.study.study_name,
                           [*member.repeats, trial.number])
    return TrialOutcome(number=trial.number, outcome=outcome, value=values[0] if values else None,
                        reason=reason, seconds=result.seconds if result else 0.0, error=error,
                        values=tuple(values or ()))


def _store_result(trial: optuna.Trial, result: Result | None, *, outcome: str,
                  reason: str | None, complete: bool) -> None:
    if complete and isinstance(result, CrossValResult):
        _report_cross_validation_scores(trial, result.values)
    set_attrs(trial, finished_attrs(outcome, reason, result))


def _report_cross_validation_scores(trial: optuna.Trial, scores: list[float]) -> None:
    """Store the fold values where Optuna's Terminator (CrossValidationErrorEvaluator) reads them.

    Optuna 4.9 deprecated the `optuna.terminator` module (to be removed in 6.0) and warns on every
    call; the values are also in the trial's `cv` attribute, which does not depend on it.
    """
    try:
        from optuna.terminator import report_cross_validation_scores
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        report_cross_validation_scores(trial, scores)


