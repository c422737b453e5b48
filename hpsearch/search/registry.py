"""Study modules: finding them by name or path, and reading what they declare.

A study module is a small Python file (see `studies/`) with:
- a docstring whose first line says what question it answers;
- `suggest(trial, base) -> TrainConfig`, the search space: it returns `base` with the searched
  fields replaced (`base` carries the run's data set, epochs and seed);
- optionally `BASE` (a `TrainConfig` with the fixed parts), `DATASETS` (accepted by `--dataset`,
  first is the default), `METRIC`, `TRIALS`, `PRUNER`, `SAMPLER`, `GRID` (the search space as
  lists, for `SAMPLER = "grid"`), `RECORD_INIT_STATS` and `CV` (k of k-fold cross-validation
  on small data sets, 0 for one validation split; see `settings.resolve_cv`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import studies
from hpsearch.config import TrainConfig
from hpsearch.errors import ConfigError, StudyError, choices_hint
from hpsearch.search.objectives import natural_direction, read_objectives
from hpsearch.training import METRICS

SAMPLERS = ("tpe", "random", "gp", "cmaes", "grid", "nsga2", "nsga3")
PRUNERS = ("median", "hyperband", "none")

Suggest = Callable[[Any, TrainConfig], TrainConfig]


@dataclasses.dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    suggest: Suggest
    base: TrainConfig
    datasets: tuple[str, ...]
    metric: str  # the first objective
    trials: int
    pruner: str
    sampler: str
    grid: Mapping[str, Sequence[Any]] | None
    record_init_stats: bool
    cv: int  # k of k-fold cross-validation on small data sets; 0: one validation split
    path: Path
    source_hash: str  # sha256 of the module file, recorded with every trial
    objectives: tuple[str, ...] = ()  # every metric a trial is told, in order; () = (metric,)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "maximize" if METRICS[self.metric] else "minimize"

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.objectives or (self.metric,)

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        return [natural_direction(name) for name in self.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def default_dataset(self) -> str:
        return self.datasets[0]


def study_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(studies.__path__) if not m.name.startswith("_"))


def list_studies() -> list[StudySpec]:
    return [load_study(name) for name in study_names()]


def load_study(name_or_path: str) -> StudySpec:
    """A built-in study by name (`mnist_mlp`) or a user's module by path (`./my_study.py`)."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise StudyError(f"study module file {name_or_path!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"hpsearch_user_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise StudyError(f"study module {path} failed to import: {e!r}") from e
        return _read_module(module, path.stem, path)
    names = study_names()
    if name_or_path not in names:
        raise StudyError(
            f"{choices_hint(name_or_path, names, 'study')} (or give a path to your own module, "
            "e.g. ./my_study.py; `hpsearch studies` lists them)"
        )
    try:
        module = importlib.import_module(f"studies.{name_or_path}")
    except Exception as e:
        raise StudyError(f"study module {name_or_path!r} failed to import: {e!r}; fix "
                         f"studies/{name_or_path}.py") from e
    return _read_module(module, name_or_path, Path(inspect.getfile(module)))


def _read_module(module: ModuleType, name: str, path: Path) -> StudySpec:
    suggest = getattr(module, "suggest", None)
    if not callable(suggest):
        raise StudyError(
            f"study module {name!r} ({path}) has no search space: define "
            "`def suggest(trial, base: TrainConfig) -> TrainConfig` returning "
            "base.replace(<field>=trial.suggest_...(...), ...)"
        )
    base = getattr(module, "BASE", TrainConfig())
    if not isinstance(base, TrainConfig):
        raise StudyError(f"study module {name!r}: BASE must be a TrainConfig, got {type(base).__name__}")
    datasets = getattr(module, "DATASETS", (base.dataset,))
    if (isinstance(datasets, str) or not isinstance(datasets, Sequence) or not datasets
            or not all(isinstance(d, str) for d in datasets)):
        raise StudyError(
            f"study module {name!r} ({path}): DATASETS = {datasets!r} must be a non-empty tuple of "
            "data set names, the default first, e.g. DATASETS = (\"digits\", \"mnist\")"
        )
    datasets = tuple(datasets)
    trials = getattr(module, "TRIALS", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise StudyError(
            f"study module {name!r} ({path}): TRIALS = {trials!r} must be a whole number of trials "
            "of at least 1, e.g. TRIALS = 20"
        )
    objectives = _read_metrics(module, name)
    metric = objectives[0]
    sampler = getattr(module, "SAMPLER", "tpe")
    # Optuna prunes no multi-objective trial, so such a module prunes with none by default.
    pruner = getattr(module, "PRUNER", "median" if len(objectives) == 1 else "none")
    grid = getattr(module, "GRID", None)
    _check_choice(name, "SAMPLER", sampler, SAMPLERS)
    _check_choice(name, "PRUNER", pruner, PRUNERS)
    if sampler == "grid" and not grid:
        raise StudyError(f"study module {name!r}: SAMPLER = 'grid' needs GRID = {{param: [values]}}")
    if len(objectives) > 1:
        check_multi_objective(name, sampler=sampler, pruner=pruner, where="PRUNER")
    cv = getattr(module, "CV", 0)
    if not isinstance(cv, int) or isinstance(cv, bool) or cv < 0:
        raise StudyError(f"study module {name!r}: CV = {cv!r}; give the number of folds (e.g. "
                         "CV = 5), or 0 for one validation split")
    doc = (module.__doc__ or "").strip()
    return StudySpec(
        name=name,
        description=doc.splitlines()[0] if doc else "(no description)",
        suggest=suggest,
        base=base.replace(dataset=datasets[0]),
        datasets=datasets,
        metric=metric,
        trials=trials,
        pruner=pruner,
        sampler=sampler,
        grid=grid,
        record_init_stats=bool(getattr(module, "RECORD_INIT_STATS", False)),
        cv=cv,
        path=path,
        source_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
        objectives=objectives if len(objectives) > 1 else (),
    )


def _read_metrics(module: ModuleType, name: str) -> tuple[str, ...]:
    """The module's objectives: `METRICS` (several, with directions) or `METRIC` (one)."""
    if hasattr(module, "METRICS"):
        if hasattr(module, "METRIC"):
            raise StudyError(f"study module {name!r} declares both METRIC and METRICS; keep one")
        return read_objectives(name, module.METRICS)
    metric = getattr(module, "METRIC", "val_error")
    if not isinstance(metric, str) or metric not in METRICS:
        raise StudyError(f"study module {name!r}: {choices_hint(metric, list(METRICS), 'metric')}")
    return (metric,)


def check_multi_objective(study: str, *, sampler: str, pruner: str, where: str) -> None:
    """Refuse what Optuna cannot do with several objectives: prune, or sample with CMA-ES."""
    if pruner != "none":
        raise StudyError(
            f"study {study!r} has several objectives, and Optuna does not prune multi-objective "
            f"trials (Trial.should_prune raises for them), so {where} {pruner!r} would never stop "
            f"a trial; leave it out or give {where} none"
        )
    if sampler == "cmaes":
        raise StudyError(f"study {study!r} has several objectives, which Optuna's CMA-ES sampler "
                         "cannot search; use nsga2, nsga3, tpe, gp, random or grid")


def _check_choice(study: str, field: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise StudyError(f"study module {study!r}: {field}: {choices_hint(value, valid, field.lower())}")


def suggest_config(spec: StudySpec, trial: Any, base: TrainConfig) -> TrainConfig:
    """Run a module's search space on a trial, naming the module if it returns something wrong."""
    try:
        config = spec.suggest(trial, base)
    except ConfigError as e:
        raise ConfigError(f"study module {spec.name!r} suggested an invalid config: {e}") from e
    if not isinstance(config, TrainConfig):
        raise StudyError(
            f"study module {spec.name!r}: suggest() returned {type(config).__name__}, "
            "expected a TrainConfig (return base.replace(...))"
        )
    return config
