"""What a `run` or `worker` command asks of a study, resolved against its study module, and
the sampler and pruner that follow from it."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import (
    CV_MAX_TRAIN,
    DataCache,
    DataPlace,
    check_dataset_name,
    check_folds,
    load_raw,
)
from hpsearch.errors import StudyError
from hpsearch.search.registry import StudySpec, check_multi_objective

logger = logging.getLogger(__name__)


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
    data_dir: DataPlace = None  # a folder (--data-dir), or DataDirs with the cache and download
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
    data_dir: DataPlace = None,
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
    pruner = pruner or spec.pruner
    if spec.multi_objective:
        check_multi_objective(spec.name, sampler=sampler, pruner=pruner, where="--pruner")
    return RunSettings(
        spec=spec,
        study_name=study_name or default_study_name(spec, dataset),
        dataset=dataset,
        epochs=epochs or spec.base.epochs,
        seed=seed,
        sampler=sampler,
        pruner=pruner,
        data_dir=data_dir,
        cv=resolve_cv(spec, dataset, requested=cv, data_dir=data_dir),
        allow_other_data=allow_other_data,
    )


def resolve_cv(
    spec: StudySpec, dataset: str, *, requested: int | None, data_dir: DataPlace
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
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed)
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


def data_record(settings: RunSettings, config: TrainConfig, data: DataCache) -> dict[str, Any]:
    """`Splits.provenance()` of what a trial trains on: its validation split, or its first fold
    and the number of folds under cross-validation."""
    if settings.cv:
        folds = data.folds(config.dataset, k=settings.cv, split_seed=config.split_seed)
        return {**folds[0].provenance(), "folds": settings.cv}
    return data.get(config.dataset, val_fraction=config.val_fraction,
                    split_seed=config.split_seed).provenance()
