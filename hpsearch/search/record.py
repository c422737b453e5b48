"""What hpsearch stores with a study and its trials, and the one place that reads it back.

A trial's record is a few user attributes, each a JSON object (one storage round-trip each, so
few on purpose): its resolved config, its run record (what re-runs it besides the config), its
per-epoch history, its result summary, its outcome with the reason, and for some trials their
cross-validation record and initialisation statistics. Each part is a frozen dataclass here,
written with `to_attrs()` and read with `from_trial()`; no other module parses them by key.

Readers are tolerant: a trial stored by an earlier hpsearch (a key it did not write yet, or no
record at all because it failed before writing one) reads with defaults, never with KeyError.
The keys and JSON shapes stay as they are: optuna-dashboard shows them, and old studies hold them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from hpsearch.config import TrainConfig
from hpsearch.errors import StudyError
from hpsearch.search.convergence import Estimate, StopRecord, stored_estimates
from hpsearch.search.provenance import ATTR_DATA, ATTR_RUN, RunRecord, as_mapping

if TYPE_CHECKING:
    from hpsearch.search.storage import StorageHandle

__all__ = [  # the run record's names are provenance's, the convergence ones convergence's
    "ATTR_CONFIG", "ATTR_CV", "ATTR_DATA", "ATTR_HISTORY", "ATTR_INIT_STATS", "ATTR_METRIC",
    "ATTR_OUTCOME", "ATTR_REASON", "ATTR_RESULT", "ATTR_RUN", "DEFAULT_METRIC", "CrossValRecord",
    "Estimate", "History", "InitStats", "Outcome", "ResultSummary", "RunRecord", "StopRecord",
    "StudyMetric", "StudyRecord", "TrialRecord", "config_attrs", "finished_attrs", "finite_json",
    "load_existing_study", "set_attr", "set_attrs", "stored_estimates", "study_metric",
]

ATTR_CONFIG = "config"  # the resolved TrainConfig, as a dict
ATTR_RESULT = "result"  # outcome, reason, stop reason, best epoch, seconds, parameter count
ATTR_HISTORY = "history"  # per-epoch train/val loss, accuracy, error, F1, lr, seconds
ATTR_INIT_STATS = "init_stats"
ATTR_CV = "cv"  # cross-validated trials: k, each fold's value, best epoch and metric per epoch
# Top-level copies of the outcome, so optuna-dashboard's trial view lists it as a word (it lists
# user attributes as they are) and not only Optuna's FAIL.
ATTR_OUTCOME = "outcome"
ATTR_REASON = "outcome_reason"
ATTR_METRIC = "metric"  # on the study: the TrainResult metric its trials' values are
DEFAULT_METRIC = "val_error"  # a study module's METRIC when it declares none


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf) as None: Python's json writes them as
    bare `NaN` and `Infinity`, which PostgreSQL's jsonb, JavaScript's JSON.parse and other strict
    readers reject with the whole attribute (a diverged trial's history holds them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Every trial user attribute hpsearch writes goes through here, as strict JSON."""
    trial.set_user_attr(key, finite_json(value))


def set_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """`set_attr` for each of `attrs`, in order (a `to_attrs()` result)."""
    for key, value in attrs.items():
        set_attr(trial, key, value)


# --- the study --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """A study's settings as hpsearch stored them (one study user attribute each); None for one
    the study lacks (stored by an older hpsearch, or a study hpsearch did not create)."""

    cv: int | None = None  # written first: a study with settings but no "cv" predates it
    study_module: str | None = None
    dataset: str | None = None
    metric: str | None = None
    objectives: list[str] | None = None  # a multi-objective study's metrics, in order
    epochs: int | None = None
    seed: int | None = None
    sampler: str | None = None
    pruner: str | None = None
    source_hash: str | None = None
    precision: str | None = None  # "bf16" or "float32", set by the study's first worker
    data: Mapping[str, Any] | None = None  # `Splits.provenance()` of the study's data

    def to_attrs(self) -> dict[str, Any]:
        """The settings it holds, in the order written."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyRecord:
        attrs = study.user_attrs
        return cls(**{f.name: attrs.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class StudyMetric:
    """What a study's values are, which way is better: the first objective's, and all of them."""

    name: str
    direction: str  # "minimize" or "maximize"
    names: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def multi_objective(self) -> bool:  # trials hold `values`; the answer is a Pareto front
        return len(self.directions) > 1


def study_metric(study: optuna.Study) -> StudyMetric:
    """The one rule for a study's metrics: those hpsearch stored, else the names Optuna keeps
    (written first, so a creator stopped midway left them), else "value" (`value_0`, ...)."""
    stored, directions = StudyRecord.from_study(study), tuple(d.name.lower() for d in study.directions)
    names = [stored.metric] if len(directions) == 1 and isinstance(stored.metric, str) else (
        stored.objectives or study.metric_names or [])
    if len(names) != len(directions):
        names = ["value"] if len(directions) == 1 else [f"value_{i}" for i in range(len(directions))]
    return StudyMetric(str(names[0]), directions[0], tuple(map(str, names)), directions)


def load_existing_study(handle: StorageHandle, study_name: str) -> optuna.Study:
    """A study that must already exist; the error lists the ones that do."""
    summaries = optuna.get_all_study_summaries(handle.storage, include_best_trial=False)
    names = [s.study_name for s in summaries]
    if study_name not in names:
        known = ", ".join(sorted(names)) or "none yet; create one with `hpsearch run STUDY`"
        raise StudyError(f"no study {study_name!r} in {handle.url}; studies there: {known}")
    return optuna.load_study(study_name=study_name, storage=handle.storage)


# --- what training left: history, result, cross-validation, outcome ---------------------------


class _Trained(Protocol):
    """What `ResultSummary.of` reads of a TrainResult or CrossValResult."""

    stop_reason: str
    best_epoch: int
    history: Any
    seconds: float
    n_params: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a trial ended (`hpsearch.search.outcomes`'s word) and why; None before it ended."""

    outcome: str | None = None
    reason: str | None = None

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_OUTCOME: self.outcome, **({ATTR_REASON: self.reason} if self.reason else {})}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> Outcome:
        """The top-level outcome, or for trials stored before it existed the result's."""
        attrs = trial.user_attrs
        if ATTR_OUTCOME in attrs:
            return cls(attrs[ATTR_OUTCOME], attrs.get(ATTR_REASON))
        result = ResultSummary.from_trial(trial)
        return cls(result.outcome, result.reason)


@dataclasses.dataclass(frozen=True)
class ResultSummary:
    """How a trial's training ended (user attribute `result`). The training fields are None for
    a trial that failed or was interrupted before it trained (or lost by its worker)."""

    outcome: str | None = None
    reason: str | None = None
    stop_reason: str | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    seconds: float | None = None
    n_params: int | None = None

    @classmethod
    def of(cls, outcome: str, reason: str | None, result: _Trained | None = None) -> ResultSummary:
        if result is None:
            return cls(outcome, reason)
        return cls(outcome, reason, stop_reason=result.stop_reason, best_epoch=result.best_epoch,
                   epochs_run=len(result.history), seconds=round(result.seconds, 3),
                   n_params=result.n_params)

    @property
    def trained(self) -> bool:
        return self.epochs_run is not None

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"outcome": self.outcome, "reason": self.reason}
        if self.trained:
            summary.update(stop_reason=self.stop_reason, best_epoch=self.best_epoch,
                           epochs_run=self.epochs_run, seconds=self.seconds,
                           n_params=self.n_params)
        return summary

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_RESULT: self.to_dict()}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> ResultSummary:
        raw = as_mapping(trial.user_attrs.get(ATTR_RESULT))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclasses.dataclass(frozen=True)
class CrossValRecord:
    """A cross-validated trial's per-fold record (user attribute `cv`)."""

    k: int = 0
    metric: str | None = None
    values: list[float] = dataclasses.field(default_factory=list)  # each fold's kept value
    best_epochs: list[int] = dataclasses.field(default_factory=list)
    epochs_run: list[int] = dataclasses.field(default_factory=list)
    stop_reasons: list[str] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    # The metric per epoch of each fold: what `rerun` compares, fold by fold.
    history: list[list[float | None]] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, result: Any) -> CrossValRecord:
        """The record of a `CrossValResult`."""
        folds = result.folds
        return cls(
            k=result.k, metric=result.metric, values=list(result.values),
            best_epochs=[fold.best_epoch for fold in folds],
            epochs_run=[len(fold.history) for fold in folds],
            stop_reasons=[fold.stop_reason for fold in folds],
            seconds=[round(fold.seconds, 3) for fold in folds],
            history=[[r.metric(result.metric) for r in fold.history] for fold in folds],
        )

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_CV: dataclasses.asdict(self)}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> CrossValRecord | None:
        """None for a trial trained on one validation split."""
        raw = trial.user_attrs.get(ATTR_CV)
        if not isinstance(raw, Mapping):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch values by name (user attribute `history`): `val_error`: [epoch 1, 2, ...]; an
    epoch whose value was not finite (a diverged loss) holds None."""

    values: Mapping[str, list[float | None]] = dataclasses.field(default_factory=dict)

    def metric(self, name: str) -> list[float | None]:
        return list(self.values.get(name, []))

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_HISTORY: {k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> History:
        return cls(dict(as_mapping(trial.user_attrs.get(ATTR_HISTORY))))


@dataclasses.dataclass(frozen=True)
class InitStats:
    """Statistics of the initial weights, per layer (user attribute `init_stats`), for study
    modules that ask for them."""

    values: Mapping[str, list[float]] = dataclasses.field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_INIT_STATS: dict(self.values)}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> InitStats | None:
        raw = trial.user_attrs.get(ATTR_INIT_STATS)
        return cls(dict(raw)) if isinstance(raw, Mapping) else None


def config_attrs(config: TrainConfig) -> dict[str, Any]:
    return {ATTR_CONFIG: config.to_dict()}


def finished_attrs(outcome: str, reason: str | None, result: Any | None) -> dict[str, Any]:
    """Everything a trial stores when it is told `outcome`, in the order written: what training
    left (history, init stats, cross-validation record), the result summary, the outcome."""
    attrs: dict[str, Any] = {}
    if result is not None:
        attrs.update(History(result.history_dict()).to_attrs())
        if result.init_stats is not None:
            attrs.update(InitStats(result.init_stats).to_attrs())
        if hasattr(result, "folds"):
            attrs.update(CrossValRecord.of(result).to_attrs())
    attrs.update(ResultSummary.of(outcome, reason, result).to_attrs())
    attrs.update(Outcome(outcome, reason).to_attrs())
    return attrs


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """Everything hpsearch stored with one trial, read back."""

    number: int
    stored_config: Mapping[str, Any] | None  # as stored; None if the trial has none
    run: RunRecord
    history: History
    result: ResultSummary
    outcome: Outcome
    cv: CrossValRecord | None = None
    init_stats: InitStats | None = None

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        stored = trial.user_attrs.get(ATTR_CONFIG)
        return cls(
            number=trial.number,
            stored_config=dict(stored) if isinstance(stored, Mapping) else None,
            run=RunRecord.from_trial(trial),
            history=History.from_trial(trial),
            result=ResultSummary.from_trial(trial),
            outcome=Outcome.from_trial(trial),
            cv=CrossValRecord.from_trial(trial),
            init_stats=InitStats.from_trial(trial),
        )

    def config(self, *, where: str, why: str) -> TrainConfig:
        """The trial's resolved config; StudyError saying `why` it is needed if it has none."""
        if self.stored_config is None:
            raise StudyError(
                f"trial {self.number} of {where} has no stored config (user attribute "
                f"{ATTR_CONFIG!r}): {why}"
            )
        return TrainConfig.from_dict(self.stored_config)
