"""One trial, from an Optuna trial to a told outcome, and the study it belongs to.

This is the only module that connects Optuna to the trainer: it turns a trial into a
`TrainConfig` through the study module, trains with a per-epoch callback that reports and asks
the pruner, records what re-runs the trial, and tells Optuna one of four named outcomes:
complete, pruned, failed (diverged, out of memory, bad config, a bug) or interrupted (the words
are `hpsearch.search.outcomes`'s).

A cross-validated trial (`RunSettings.cv` = k) trains once per fold (`crossval.train_folds`) and
reports after each fold the running mean of the fold values, at step = folds done (1..k), which
is what its pruner compares between trials; its value is the mean over the k folds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import (
    CV_MAX_TRAIN,
    DataCache,
    DataSource,
    check_dataset_name,
    check_folds,
    check_same_data,
    load_raw,
)
from hpsearch.devices import device_name
from hpsearch.errors import HPSearchError, StudyError
from hpsearch.search.optuna_private import BaseHeartbeat, trial_id
from hpsearch.search.outcomes import (  # the words are re-exported here, where callers import them
    COMPLETE,
    FAILED,
    INTERRUPTED,
    LOST,  # noqa: F401
    PRUNED,
    TAKEN_OVER,
    interrupt_reason,
    outcome_attrs,
)
from hpsearch.search.provenance import package_versions, worker_identity
from hpsearch.search.record import (
    ATTR_CONFIG,
    ATTR_CV,
    ATTR_DATA,
    ATTR_HISTORY,
    ATTR_INIT_STATS,
    ATTR_RESULT,
    ATTR_RUN,
    set_attr,
)
from hpsearch.search.registry import StudySpec, suggest_config
from hpsearch.search.storage import ATTR_BEAT, StorageHandle, requeue
from hpsearch.training import (
    CrossValResult,
    EpochRecord,
    SpeedOptions,
    TrainResult,
    train,
    train_folds,
)

logger = logging.getLogger(__name__)

# Optuna's `studies.study_name` column is VARCHAR(512); SQLite does not enforce it, PostgreSQL does.
MAX_STUDY_NAME_POSTGRESQL = 512


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a `run` or `worker` command asked for, resolved against the study module."""

    spec: StudySpec
    study_name: str
    dataset: str
    epochs: int
    seed: int
    sampler: str
    pruner: str
    data_dir: Path | None = None
    cv: int = 0  # k of k-fold cross-validation, 0: one validation split
    allow_other_data: bool = False  # resume on data whose hash differs from the study's

    def base_config(self, trial_number: int) -> TrainConfig:
        return self.spec.base.replace(
            dataset=self.dataset, epochs=self.epochs, seed=self.seed + trial_number
        )


def resolve_settings(
    spec: StudySpec,
    *,
    study_name: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
    pruner: str | None = None,
    data_dir: Path | None = None,
    cv: int | None = None,
    allow_other_data: bool = False,
) -> RunSettings:
    dataset = dataset or spec.default_dataset
    check_dataset_name(dataset)
    if dataset not in spec.datasets and not dataset.startswith("parity-"):
        logger.warning("study %s lists %s; running it on %s anyway", spec.name, spec.datasets, dataset)
    sampler = sampler or spec.sampler
    if sampler == "grid" and not spec.grid:
        raise StudyError(f"study {spec.name!r} declares no GRID, so --sampler grid cannot run it")
    return RunSettings(
        spec=spec,
        study_name=study_name or default_study_name(spec, dataset),
        dataset=dataset,
        epochs=epochs or spec.base.epochs,
        seed=seed,
        sampler=sampler,
        pruner=pruner or spec.pruner,
        data_dir=data_dir,
        cv=resolve_cv(spec, dataset, requested=cv, data_dir=data_dir),
        allow_other_data=allow_other_data,
    )


def resolve_cv(
    spec: StudySpec, dataset: str, *, requested: int | None, data_dir: Path | None
) -> int:
    """k of k-fold cross-validation for this run, or 0 for one validation split.

    `--cv K` is taken as given (0 or 1: off), on any data set that can be split into K stratified
    folds. A study module's `CV = k` applies only to data sets with fewer than CV_MAX_TRAIN
    training examples, where one validation split is too small to rank trials, and never to
    memorised sets (parity), whose validation set is their training set.
    """
    k = spec.cv if requested is None else requested
    if k < 2:
        return 0
    raw = load_raw(dataset, data_dir)
    n_train = int(raw.train_y.shape[0])
    if requested is None and (raw.memorise or n_train >= CV_MAX_TRAIN):
        why = "is memorised" if raw.memorise else f"has {n_train} training examples"
        logger.info("study %s declares CV = %d, but %s %s: one validation split", spec.name, k,
                    dataset, why)
        return 0
    check_folds(raw, name=dataset, k=k)
    if n_train >= CV_MAX_TRAIN:
        logger.warning("--cv %d on %s (%d training examples): every trial trains %d times", k,
                       dataset, n_train, k)
    return k


def default_study_name(spec: StudySpec, dataset: str) -> str:
    """`mnist_mlp` on its default data set, `mnist_mlp-fashion-mnist` on another."""
    return spec.name if dataset == spec.default_dataset else f"{spec.name}-{dataset}"


def make_sampler(settings: RunSettings, *, seed: int | None) -> optuna.samplers.BaseSampler:
    name = settings.sampler
    if name == "tpe":
        # The constant liar makes parallel workers avoid what the others are still evaluating.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    assert name == "grid" and settings.spec.grid
    # The seed shuffles the grid, and a trial's grid point is an index into that order: every
    # worker must share one order, or two workers' indices would name the same point.
    return AskTellGridSampler(dict(settings.spec.grid), seed=settings.seed)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without the `study.stop()` it calls once the last point is told.

    `Study.stop` works only inside `Study.optimize`; with ask/tell it raises RuntimeError from
    `study.tell` (after storing the trial's state; Optuna documents this, issues #4121, #5141).
    hpsearch asks and tells itself and stops a grid study on its own count (`grid_size`), and
    stopping is all that `GridSampler.after_trial` does, so it is left out rather than caught.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass


def resume_seed(seed: int, n_trials: int) -> int:
    """The sampler seed of a study that already holds `n_trials` trials: a new stream per
    resume point, the same one for the same seed and point (so a resumed run is reproducible)."""
    digest = hashlib.sha256(f"{seed}:{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_pruner(settings: RunSettings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if settings.pruner == "hyperband":
        # A cross-validated trial's steps are its folds, not its epochs.
        return optuna.pruners.HyperbandPruner(min_resource=1,
                                              max_resource=settings.cv or settings.epochs)
    return optuna.pruners.NopPruner()


def grid_size(settings: RunSettings) -> int | None:
    if settings.sampler != "grid" or not settings.spec.grid:
        return None
    size = 1
    for values in settings.spec.grid.values():
        size *= len(values)
    return size


def open_study(
    handle: StorageHandle,
    settings: RunSettings,
    *,
    sampler_seed: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create the study, or load it and check that it is the same question on the same data.

    Creation and the study's settings (user attributes, written one at a time by Optuna) happen
    under the study lock, so workers started together create one study and each sees all of its
    settings; a study whose creator died midway is completed by the next worker. `data` is the
    provenance of the data this process loaded (`Splits.provenance`): stored on a new study, and
    compared by content hash with what an existing study stored.
    """
    if handle.kind == "postgresql" and len(settings.study_name) > MAX_STUDY_NAME_POSTGRESQL:
        raise StudyError(
            f"study name {settings.study_name[:40]!r}... is {len(settings.study_name)} characters; "
            f"PostgreSQL storage keeps at most {MAX_STUDY_NAME_POSTGRESQL} (Optuna's column); "
            "choose a shorter --study-name"
        )
    with handle.lock(settings.study_name):
        try:
            study = optuna.create_study(
                storage=handle.storage,
                study_name=settings.study_name,
                direction=settings.spec.direction,
                sampler=make_sampler(settings, seed=sampler_seed),
                pruner=make_pruner(settings),
                load_if_exists=True,
            )
        except ValueError as e:  # an existing study with another direction
            raise StudyError(
                f"study {settings.study_name!r} in {handle.url} cannot be resumed: {e}; choose "
                "another --study-name"
            ) from e
        n_existing = len(study.get_trials(deepcopy=False))
        if sampler_seed is not None and n_existing:
            # A resumed or extended study must not replay the stream it already drew: re-seeding
            # with the same seed proposes the same points again (8 of 8 with the random sampler,
            # and TPE's random start-up trials likewise). A fresh study keeps the plain seed, so
            # it stays reproducible; a resume continues from a stream keyed by how far it got.
            study.sampler = make_sampler(settings, seed=resume_seed(sampler_seed, n_existing))
        _settle_study_attrs(study, handle, settings, n_existing=n_existing)
        _settle_study_data(study, handle, settings, data, n_existing=n_existing)
    return study


def _settle_study_data(
    study: optuna.Study, handle: StorageHandle, settings: RunSettings,
    data: Mapping[str, Any] | None, *, n_existing: int,
) -> None:
    """Record the data on a study that has no trials yet, or check that it is the study's."""
    source = DataSource.from_dict(data)
    if source is None:
        return
    recorded = study.user_attrs.get(ATTR_DATA)
    if recorded is None and not n_existing:
        study.set_user_attr(ATTR_DATA, dict(data or {}))
        return
    note = check_same_data(recorded, source, allow_other_data=settings.allow_other_data,
                           recorded_by=f"study {settings.study_name!r} in {handle.url}")
    if note:
        logger.warning("%s", note)


def _settle_study_attrs(
    study: optuna.Study, handle: StorageHandle, settings: RunSettings, *, n_existing: int
) -> None:
    expected = study_attrs(settings)
    attrs = study.user_attrs
    where = f"study {settings.study_name!r} in {handle.url}"
    if (attrs and not set(attrs) & set(expected)) or (not attrs and n_existing):
        # Someone else's study (Optuna's own CLI, a script): adding trials of another search
        # space, metric or data set to it would spoil both.
        raise StudyError(
            f"{where} was not created by hpsearch (it has {n_existing} trial(s) and no hpsearch "
            "settings), so hpsearch will not add trials to it; choose another --study-name NAME"
        )
    if attrs and "cv" not in attrs:
        # Made before cross-validation existed ("cv" is the first setting written): its trials
        # hold single-split values.
        attrs = {**attrs, "cv": 0}
    for key in ("cv", "study_module", "dataset"):
        if key in attrs and attrs[key] != expected[key]:
            same = f"--cv {attrs[key]}" if key == "cv" else f"the same {key}"
            raise StudyError(
                f"study {settings.study_name!r} in {handle.url} was created with {key}="
                f"{attrs[key]!r}, not {expected[key]!r}; resume it with {same} or start a new "
                "one with --study-name NAME"
            )
    check_resume(attrs, settings, where=where)
    missing = {key: value for key, value in expected.items() if key not in attrs}
    if not missing:
        return
    if attrs:
        logger.warning("study %r lacks the settings %s (its creator stopped midway); completing "
                       "them from this run", settings.study_name, ", ".join(missing))
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([settings.spec.metric])  # the dashboard's label for the value
    for key, value in missing.items():
        study.set_user_attr(key, value)


# What a resume must repeat, and the option that sets it. Another epoch budget makes the trials
# incomparable; another seed or sampler would start a different search in the same study.
# (cv, study module and data set are checked above, one at a time.)
RESUME_KEYS = {"epochs": "--epochs", "seed": "--seed", "sampler": "--sampler"}


def check_resume(attrs: dict[str, Any], settings: RunSettings, *, where: str) -> None:
    """Refuse to resume a study with settings other than those it was created with."""
    given = study_attrs(settings)
    # A key the stored study lacks (an older hpsearch) is not checked.
    changed = [key for key in RESUME_KEYS if key in attrs and attrs[key] != given[key]]
    if not changed:
        return
    listed = ", ".join(f"{key}={attrs[key]!r} (given {given[key]!r})" for key in changed)
    same = " ".join(f"{RESUME_KEYS[key]} {attrs[key]}" for key in changed)
    raise StudyError(
        f"{where} was created with {listed}; resume it with the same settings ({same}) or start "
        "a new study with --study-name NAME"
    )


def study_attrs(settings: RunSettings) -> dict[str, Any]:
    return {
        "cv": settings.cv,  # first: a study holding settings but no "cv" predates it
        "study_module": settings.spec.name,
        "dataset": settings.dataset,
        "metric": settings.spec.metric,
        "epochs": settings.epochs,
        "seed": settings.seed,
        "sampler": settings.sampler,
        "pruner": settings.pruner,
        "source_hash": settings.spec.source_hash,
    }


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    number: int
    outcome: str
    value: float | None
    reason: str | None
    seconds: float
    error: bool = False  # failed by an exception (bad config, out of memory, a bug), not divergence


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far the running trial has got: `step` of `of` epochs (or folds, under
    cross-validation); for a progress display, which the trainer knows nothing about."""

    trial: int
    step: int
    of: int
    unit: str  # "epoch" or "fold"


OnProgress = Callable[[Progress], None]


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    settings: RunSettings,
    *,
    handle: StorageHandle,
    device: torch.device,
    data: DataCache,
    on_progress: OnProgress | None = None,
) -> TrialOutcome:
    """Train one trial and tell Optuna how it ended; only KeyboardInterrupt propagates."""
    spec = settings.spec
    result: TrainResult | CrossValResult | None = None

    def finish(state: TrialState, outcome: str, reason: str | None, error: bool = False) -> TrialOutcome:
        return _finish(study, trial, result, state=state, outcome=outcome, reason=reason,
                       metric=spec.metric, error=error)

    try:
        with heartbeat(handle, trial_id(trial)):
            config = suggest_config(spec, trial, settings.base_config(trial.number))
            set_attr(trial, ATTR_CONFIG, config.to_dict())
            set_attr(trial, ATTR_RUN, run_record(settings, config, device,
                                                 data=data_record(settings, config, data)))
            result = train_trial(trial, config, settings, device=device, data=data,
                                 on_progress=on_progress)
    except KeyboardInterrupt as e:
        if finish(TrialState.FAIL, INTERRUPTED, interrupt_reason(e)).outcome != TAKEN_OVER:
            retry(study, handle.storage.get_trial(trial_id(trial)))
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        return taken_over(trial)
    except torch.OutOfMemoryError as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return finish(TrialState.FAIL, FAILED, error_reason(e, [trial.number], device), True)
    except Exception as e:  # noqa: BLE001 - the trial fails alone; error_reason logs the traceback
        return finish(TrialState.FAIL, FAILED, error_reason(e, [trial.number], device), True)

    return tell_result(study, trial, result, metric=spec.metric)


def train_trial(
    trial: optuna.Trial,
    config: TrainConfig,
    settings: RunSettings,
    *,
    device: torch.device,
    data: DataCache,
    speed: SpeedOptions | None = None,
    on_progress: OnProgress | None = None,
) -> TrainResult | CrossValResult:
    """Train one trial's config alone, on its validation split or on each of its `settings.cv`
    folds, reporting to the trial and stopping when its pruner says so; shared by `run_trial`
    and the trials of a population that train alone."""
    metric = settings.spec.metric
    # NopPruner's verdict is always no; skipping the call saves a read of the trial per report.
    ask_pruner = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)
    if settings.cv:
        folds = data.folds(config.dataset, k=settings.cv, split_seed=config.split_seed)

        def on_fold(done: int, running_mean: float) -> bool:
            if on_progress is not None:
                on_progress(Progress(trial.number, done, settings.cv, "fold"))
            if not report(trial, running_mean, done):
                return True
            return ask_pruner and trial.should_prune()

        return train_folds(config, folds, metric=metric, device=device, on_fold=on_fold,
                           record_init_stats=settings.spec.record_init_stats, speed=speed)
    splits = data.get(config.dataset, val_fraction=config.val_fraction,
                      split_seed=config.split_seed)

    def on_epoch(record: EpochRecord) -> bool:
        if on_progress is not None:
            on_progress(Progress(trial.number, record.epoch, config.epochs, "epoch"))
        if not report(trial, record.metric(metric), record.epoch):
            return True
        return ask_pruner and trial.should_prune()

    return train(config, splits, device=device, on_epoch=on_epoch, speed=speed,
                 record_init_stats=settings.spec.record_init_stats)


def report(trial: optuna.Trial, value: float, step: int) -> bool:
    """Report an intermediate value; False once another worker has taken the trial over, when
    training should stop (`_finish` then drops the trial)."""
    try:
        trial.report(value, step)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def data_record(settings: RunSettings, config: TrainConfig, data: DataCache) -> dict[str, Any]:
    """`Splits.provenance()` of what a trial trains on: its validation split, or its first fold
    and the number of folds under cross-validation."""
    if settings.cv:
        folds = data.folds(config.dataset, k=settings.cv, split_seed=config.split_seed)
        return {**folds[0].provenance(), "folds": settings.cv}
    return data.get(config.dataset, val_fraction=config.val_fraction,
                    split_seed=config.split_seed).provenance()


def tell_result(
    study: optuna.Study, trial: optuna.Trial, result: TrainResult | CrossValResult, *, metric: str
) -> TrialOutcome:
    """Tell the outcome of a training run that ended by itself: failed (diverged), pruned or
    complete; shared by single, cross-validated and stacked trials."""
    if result.failure is not None:
        state, outcome, reason = TrialState.FAIL, FAILED, result.failure
    elif result.stop_reason == "stopped":
        where = (f"fold {len(result.folds)} of {result.k}" if isinstance(result, CrossValResult)
                 else f"epoch {len(result.history)}")
        state, outcome, reason = TrialState.PRUNED, PRUNED, f"pruned after {where}"
    else:
        state, outcome, reason = TrialState.COMPLETE, COMPLETE, None
    return _finish(study, trial, result, state=state, outcome=outcome, reason=reason,
                   metric=metric, error=False)


def error_reason(e: Exception, numbers: list[int], device: torch.device) -> str:
    """The stored reason of trials that failed by an exception: out of memory, a bad config
    (hpsearch's own errors, which say what to fix), or a bug, with where it was raised."""
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory on {device}: {_first_line(e)}"
    if isinstance(e, HPSearchError):
        return str(e)
    where = traceback.extract_tb(e.__traceback__)[-1]
    logger.warning("trial(s) %s raised", numbers, exc_info=e)
    return f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def run_record(
    settings: RunSettings,
    config: TrainConfig,
    device: torch.device,
    *,
    speed: SpeedOptions | None = None,
    population: int = 1,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What re-runs a trial besides its config: with `speed`, the options the trial actually
    trained with, `population`, how many trials trained in its stack (1: alone), and `data`,
    `Splits.provenance()` of the data it trained on."""
    return {
        ATTR_DATA: dict(data) if data is not None else None,
        "speed": (speed or SpeedOptions()).to_dict(),
        "population": population,
        "seed": config.seed,
        "dataset": config.dataset,
        "split": {"val_fraction": config.val_fraction, "split_seed": config.split_seed,
                  "cv_folds": settings.cv},
        "device": str(device),
        "device_name": device_name(device),
        "worker": worker_identity(),
        "versions": package_versions(),
        "study_module": settings.spec.name,
        "source_hash": settings.spec.source_hash,
    }


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    result: TrainResult | CrossValResult | None,
    *,
    state: TrialState,
    outcome: str,
    reason: str | None,
    metric: str,
    error: bool,
) -> TrialOutcome:
    summary: dict[str, Any] = {"outcome": outcome, "reason": reason}
    value = None
    if result is not None:
        summary.update(
            stop_reason=result.stop_reason,
            best_epoch=result.best_epoch,
            epochs_run=len(result.history),
            seconds=round(result.seconds, 3),
            n_params=result.n_params,
        )
        if isinstance(result, CrossValResult):
            if state == TrialState.COMPLETE:
                value = result.value
        elif state == TrialState.COMPLETE:
            value = result.final.metric(metric)
    try:
        if result is not None:
            set_attr(trial, ATTR_HISTORY, result.history_dict())
            if result.init_stats is not None:
                set_attr(trial, ATTR_INIT_STATS, result.init_stats)
            if isinstance(result, CrossValResult):
                set_attr(trial, ATTR_CV, result.to_attrs())
                if state == TrialState.COMPLETE:
                    _report_cross_validation_scores(trial, result.values)
        set_attr(trial, ATTR_RESULT, summary)
        for key, shown in outcome_attrs(outcome, reason).items():
            set_attr(trial, key, shown)
        # skip_if_finished: taken over between the attributes above and the tell.
        told = study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return taken_over(trial)
    if told.state != state:
        return taken_over(trial)
    if outcome in (FAILED, INTERRUPTED):
        logger.warning("trial %d %s: %s", trial.number, outcome, reason)
    return TrialOutcome(
        number=trial.number,
        outcome=outcome,
        value=value,
        reason=reason,
        seconds=result.seconds if result else 0.0,
        error=error,
    )


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


def taken_over(trial: optuna.Trial) -> TrialOutcome:
    """The outcome of a trial that another worker failed as lost (and queued again) while this
    worker still ran it: nothing more is written to it."""
    reason = ("another worker declared it lost (its heartbeat or its process looked dead, e.g. during "
              "a long pause) and queued it again")
    logger.warning("trial %d was taken over: %s; dropping it and going on", trial.number, reason)
    return TrialOutcome(number=trial.number, outcome=TAKEN_OVER, value=None, reason=reason, seconds=0.0)


def retry(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue the parameters of a trial that did not finish through no fault of its own."""
    requeue(study, failed)


@contextlib.contextmanager
def heartbeat(handle: StorageHandle, trial_id: int | Sequence[int]) -> Iterator[None]:
    """Record the trial's (or trials') heartbeat while it runs, so a worker that dies is noticed.

    Optuna beats only inside `Study.optimize`; hpsearch drives ask/tell itself, so it keeps the
    beat with the storage's public `record_heartbeat`, and on the journal, which has no
    heartbeat, with a trial system attribute (`ATTR_BEAT`). A failed beat (the database restarting)
    is logged and tried again at the next interval rather than ending the trial. One thread beats
    for all the trials of a population, so their beats do not contend for the database.
    """
    trial_ids = [trial_id] if isinstance(trial_id, int) else list(trial_id)
    interval = handle.heartbeat_interval
    if interval is None:
        yield
        return
    storage = handle.storage
    stop = threading.Event()

    def record(one: int) -> None:
        if handle.kind == "journal":
            # Optuna's journal has no heartbeat; this beat is read by `worker.recover_lost_trials`.
            storage.set_trial_system_attr(one, ATTR_BEAT, round(time.time(), 3))
        else:
            assert isinstance(storage, BaseHeartbeat)
            storage.record_heartbeat(one)

    def beat() -> None:
        while True:
            for one in list(trial_ids):
                try:
                    record(one)
                except optuna.exceptions.UpdateFinishedTrialError:
                    trial_ids.remove(one)  # taken over by another worker; the trainer finds out
                except Exception as e:  # noqa: BLE001 - keep beating through transient errors
                    logger.warning("heartbeat of trial id %d failed: %s", one, e)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_ids[0]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
