"""What `run`, `worker`, `launch` and the Python API ask of a study (`StudyOptions`), and the one
way they prepare it (settings, device, data, storage) and run it through `run_worker`.

The command line gathers `StudyOptions` from its options (hpsearch/cli/options.py); the Python
API (hpsearch/api.py) builds it from keyword arguments. Both then call `prepare_run` and
`run_study`, so a study runs the same way from a shell and from a notebook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpsearch.data import DataCache, DataDirs
from hpsearch.devices import parse_device, resolve_device
from hpsearch.errors import StudyError
from hpsearch.search.convergence import DEFAULT_MIN_TRIALS, check_stoppable
from hpsearch.search.registry import PRUNERS, SAMPLERS, load_study
from hpsearch.search.reports import OnProgress
from hpsearch.search.settings import RunSettings, resolve_settings
from hpsearch.search.storage import StorageHandle
from hpsearch.search.worker import OnTrial, WorkerOptions, WorkerReport, run_worker
from hpsearch.training import SpeedOptions


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """What `run`, `worker` and `launch` were asked to do: which study, on what, and how."""

    study: str
    trials: int | None = None
    timeout: float | None = None
    study_name: str | None = None
    dataset: str | None = None
    data_dir: Path | None = None
    epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    sampler: str | None = None
    pruner: str | None = None
    cv: int | None = None
    allow_other_data: bool = False
    # How a worker trains, not what: these never change a trial's config or the search space.
    population: int = 1
    compile: bool = False
    bf16: bool = False
    allow_mixed_precision: bool = False
    # When to stop: Optuna's Terminator against the validation noise (search/convergence.py).
    stop_when_converged: bool = False
    stop_min_trials: int = DEFAULT_MIN_TRIALS
    # Where trials trained alone save after each epoch, to resume after a lost worker.
    checkpoint_dir: Path | None = None

    def settings(self, *, cache_dir: Path, download: bool) -> RunSettings:
        """The study module named in `study`, resolved against these options, its data read
        from `data_dir` or `cache_dir` (HPSEARCH_DATA_DIR), downloaded only if `download`."""
        data = DataDirs(data_dir=self.data_dir, cache_dir=cache_dir, download=download)
        spec = load_study(self.study)
        if self.stop_when_converged:  # refused before a storage or study is made for nothing
            check_stoppable(spec)
        return resolve_settings(
            spec, study_name=self.study_name, dataset=self.dataset,
            epochs=self.epochs, seed=self.seed, sampler=self.sampler, pruner=self.pruner,
            data_dir=data, cv=self.cv, allow_other_data=self.allow_other_data)

    def check(self) -> None:
        """What the command line's option types check, for callers from Python: each bad value
        is a StudyError naming it (a 0 would otherwise read as 'the module's default')."""
        for name, low in (("trials", 1), ("epochs", 1), ("cv", 0), ("population", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise StudyError(f"{name}={value!r}: give a whole number of at least {low}")
        if self.timeout is not None and not self.timeout > 0:
            raise StudyError(f"timeout={self.timeout!r}: give a number of seconds above 0")
        for name, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, name) not in (None, *valid):
                raise StudyError(f"{name}={getattr(self, name)!r}: use one of {', '.join(valid)}")
        parse_device(self.device)

    @property
    def speed(self) -> SpeedOptions:
        return SpeedOptions(compile=self.compile, bf16=self.bf16)

    def resolved(self, settings: RunSettings, *, device: str) -> StudyOptions:
        """These options with what `settings` resolved written out, for workers started
        elsewhere (`launch`, a Slurm array): they agree on the study whatever defaults they
        would pick themselves, and each runs on `device`."""
        return dataclasses.replace(
            self, trials=self.trials or settings.spec.trials, study_name=settings.study_name,
            dataset=settings.dataset, epochs=settings.epochs, sampler=settings.sampler,
            pruner=settings.pruner, cv=settings.cv, device=device)

    @staticmethod
    def from_params(params: dict[str, Any]) -> StudyOptions:
        """Take this object's fields out of `params` (a command's parsed parameters, or the
        API's keyword arguments); the rest stay there."""
        names = [f.name for f in dataclasses.fields(StudyOptions)]
        return StudyOptions(**{name: params.pop(name) for name in names if name in params})


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a study run resolves before training."""

    settings: RunSettings
    device: torch.device
    handle: StorageHandle
    budget: int
    data: DataCache


def prepare_run(
    options: StudyOptions, *, open_storage: Callable[[], StorageHandle], cache_dir: Path,
    download: bool,
) -> Prepared:
    """Settings, device, storage, budget and the loaded data. The data come first, and the
    storage is opened (`open_storage()`) only then: a missing data set must not leave a new,
    empty storage file behind."""
    settings = options.settings(cache_dir=cache_dir, download=download)
    device = resolve_device(options.device)
    data = DataCache(settings.data_dir, device)
    base = settings.base_config(0)
    data.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
    return Prepared(settings, device, open_storage(), options.trials or settings.spec.trials,
                    data)


def run_study(
    run: Prepared, options: StudyOptions, *, sampler_seed: int | None, on_trial: OnTrial | None,
    on_progress: OnProgress | None = None,
) -> WorkerReport:
    """The one call into the worker loop that `run`, `worker` (and so `launch`'s workers) and
    the Python API share."""
    worker = WorkerOptions(trials=run.budget, device=run.device, timeout=options.timeout,
                           sampler_seed=sampler_seed, population=options.population,
                           speed=options.speed,
                           allow_mixed_precision=options.allow_mixed_precision,
                           stop_when_converged=options.stop_when_converged,
                           stop_min_trials=options.stop_min_trials,
                           checkpoint_dir=options.checkpoint_dir)
    return run_worker(run.handle, run.settings, worker, on_trial=on_trial,
                      on_progress=on_progress, data=run.data)
