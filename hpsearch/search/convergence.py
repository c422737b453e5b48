"""When more trials stop being worth it: Optuna's Terminator, with the validation set's own noise.

A validation error e measured on n examples has a binomial standard error of about
sqrt(e(1-e)/n): two configs whose errors differ by less than that are not told apart by this
validation set. Optuna's Terminator (Makarova et al. 2022, "Automatic termination for
hyperparameter optimization") stops a study once the room left for improvement, bounded by a
Gaussian process fitted to the best trials (`RegretBoundEvaluator`), falls below the error of
the objective itself. hpsearch gives it that binomial error, computed from the best trial's
stored validation size (`BinomialErrorEvaluator`): `--stop-when-converged` then stops starting
trials once a better config could not be told from the best one anyway.

Each estimate is stored on the study (user attribute `convergence`, one entry per evaluation,
appended under the study's lock) and the decision to stop too (`stopped`), so every worker of
the study stops, and `status` and the report show the estimate against the noise over the trials.

Optuna 4.9 deprecated `optuna.terminator` (removal planned for 6.0; pyproject keeps optuna<6)
and marks its evaluators experimental: both warnings are silenced here, where they are expected.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.terminator import (
    BaseErrorEvaluator,
    BaseImprovementEvaluator,
    RegretBoundEvaluator,
    Terminator,
)
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import StudyError
from hpsearch.search.provenance import RunRecord, as_mapping

if TYPE_CHECKING:
    from hpsearch.search.storage import StorageHandle

logger = logging.getLogger(__name__)

ATTR_CONVERGENCE = "convergence"  # study attribute: every estimate, in the order computed
ATTR_STOPPED = "stopped"  # study attribute: why the study stopped starting trials
PROPORTIONS = {"val_error": False, "val_accuracy": True}  # metric: whether it is 1 - error
DEFAULT_MIN_TRIALS = 20  # Optuna's Terminator default (DEFAULT_MIN_N_TRIALS)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One look at a study: what more trials could still gain, against the validation noise."""

    trial: int  # the last trial told before this estimate
    complete: int  # complete trials it was computed from
    improvement: float  # the regret bound: how much better the optimum may be than the best
    noise: float  # the binomial standard error of the best trial's validation value
    seconds: float  # what computing it cost

    @property
    def converged(self) -> bool:
        return self.improvement < self.noise  # Terminator.should_terminate's rule

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Estimate:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class StopRecord:
    """Why a study stopped starting trials (user attribute `stopped`), and at which estimate."""

    reason: str
    estimate: Estimate

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_STOPPED: {"reason": self.reason, **self.estimate.to_dict()}}

    @classmethod
    def from_study(cls, study: optuna.Study) -> StopRecord | None:
        raw = study.user_attrs.get(ATTR_STOPPED)
        if not isinstance(raw, Mapping):
            return None
        return cls(str(raw.get("reason")), Estimate.from_dict(raw))


def stored_estimates(study: optuna.Study) -> list[Estimate]:
    """Every estimate stored on `study`, in trial order; [] for a study run without the flag."""
    raw = study.user_attrs.get(ATTR_CONVERGENCE)
    rows = [Estimate.from_dict(r) for r in raw if isinstance(r, Mapping)] if isinstance(raw, list) else []
    return sorted(rows, key=lambda e: (e.trial, e.complete))


def validation_size(trial: FrozenTrial) -> int | None:
    """How many examples the trial's value was measured on: its validation split, or under
    k-fold cross-validation every training example once (the mean over folds)."""
    data = RunRecord.from_trial(trial).data
    sizes = as_mapping(as_mapping(data).get("sizes"))
    val, train = sizes.get("val"), sizes.get("train")
    if not isinstance(val, int):
        return None
    if as_mapping(data).get("folds") and isinstance(train, int):
        return train + val
    return val


def binomial_noise(value: float, n: int, *, accuracy: bool) -> float:
    """sqrt(e(1-e)/n) for the error e behind `value`; an error of 0 (or 1) of n is read as half
    an example off, so that a perfect score still has a noise to compare against."""
    error = 1.0 - value if accuracy else value
    error = min(max(error, 0.5 / n), 1.0 - 0.5 / n)
    return math.sqrt(error * (1.0 - error) / n)


class BinomialErrorEvaluator(BaseErrorEvaluator):
    """The Terminator's error: the binomial standard error of the best trial's validation value."""

    def __init__(self, metric: str) -> None:
        if metric not in PROPORTIONS:
            raise StudyError(
                f"--stop-when-converged compares the room left against the binomial noise of a "
                f"proportion of validation examples, and this study's metric is {metric!r}; it "
                f"works with {' or '.join(PROPORTIONS)}: leave out --stop-when-converged")
        self.accuracy = PROPORTIONS[metric]

    def evaluate(self, trials: list[FrozenTrial], study_direction: StudyDirection) -> float:
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        sign = -1.0 if study_direction == StudyDirection.MAXIMIZE else 1.0
        best = min(complete, key=lambda t: sign * t.value)  # type: ignore[operator]
        n = validation_size(best)
        if n is None:
            raise StudyError(f"trial {best.number} has no stored validation size (run.data); "
                             "--stop-when-converged needs it to tell the noise")
        assert best.value is not None
        return binomial_noise(best.value, n, accuracy=self.accuracy)


class _Kept(BaseImprovementEvaluator, BaseErrorEvaluator):
    """An evaluator that keeps what it returned, so the Terminator's numbers can be stored."""

    def __init__(self, inner: BaseImprovementEvaluator | BaseErrorEvaluator) -> None:
        self.inner = inner
        self.value: float | None = None

    def evaluate(self, trials: list[FrozenTrial], study_direction: StudyDirection) -> float:
        self.value = float(self.inner.evaluate(trials, study_direction))
        return self.value


def estimate(study: optuna.Study, *, metric: str, min_trials: int) -> Estimate | None:
    """Ask Optuna's Terminator about `study`; None while it has fewer than `min_trials` complete
    trials (the Terminator does not look then) or when no bound can be fitted (logged)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the module's deprecation, see above
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        improvement = _Kept(RegretBoundEvaluator(seed=complete))  # repeatable for a given study
        noise = _Kept(BinomialErrorEvaluator(metric))
        terminator = Terminator(improvement_evaluator=improvement, error_evaluator=noise,
                                min_n_trials=min_trials)
        started = time.perf_counter()
        try:
            terminator.should_terminate(study)
        except ValueError as e:  # e.g. no searched parameter in common: no bound to fit
            logger.warning("no convergence estimate for %s: %s", study.study_name, e)
            return None
    if improvement.value is None or noise.value is None:
        return None
    last = max((t.number for t in trials if t.state.is_finished()), default=-1)
    return Estimate(trial=last, complete=complete, improvement=improvement.value,
                    noise=noise.value, seconds=time.perf_counter() - started)


def stop_reason(found: Estimate) -> str:
    return (f"converged after {found.complete} complete trials (trial #{found.trial}): the regret "
            f"bound on what more trials could gain, {found.improvement:.4g}, is below the "
            f"validation noise of the best trial, {found.noise:.4g}")


def check_multi_objective(study: optuna.Study) -> None:
    if len(study.directions) > 1:
        raise StudyError(
            f"--stop-when-converged: study {study.study_name!r} has {len(study.directions)} "
            "objectives, and the Terminator's regret bound is defined for one; leave out "
            "--stop-when-converged (or stop it with --trials or --timeout)")


class ConvergenceWatch:
    """A worker's `--stop-when-converged`: after each batch it asks the Terminator and stores the
    estimate; before each ask it reads whether any worker of the study found it converged."""

    def __init__(self, study: optuna.Study, handle: StorageHandle, *, metric: str,
                 min_trials: int) -> None:
        check_multi_objective(study)
        BinomialErrorEvaluator(metric)  # refuses a metric that is not a proportion, before a trial
        self.study, self.handle, self.metric, self.min_trials = study, handle, metric, min_trials

    def stopped(self) -> str | None:
        """The stored reason, once some worker of the study found it converged."""
        record = StopRecord.from_study(self.study)
        return record.reason if record is not None else None

    def look(self) -> Estimate | None:
        """Estimate now; store it, and the stop when it says so (the next `stopped` sees it)."""
        found = estimate(self.study, metric=self.metric, min_trials=self.min_trials)
        if found is None:
            return None
        logger.info("convergence after trial %d: improvement %.4g, noise %.4g (%.2f s)",
                    found.trial, found.improvement, found.noise, found.seconds)
        # Read, append, write under the lock every worker of the study counts under.
        with self.handle.lock(self.study.study_name):
            stored = self.study.user_attrs.get(ATTR_CONVERGENCE)
            rows = list(stored) if isinstance(stored, list) else []
            self.study.set_user_attr(ATTR_CONVERGENCE, [*rows, found.to_dict()])
            if found.converged and StopRecord.from_study(self.study) is None:
                for key, value in StopRecord(stop_reason(found), found).to_attrs().items():
                    self.study.set_user_attr(key, value)
        return found
