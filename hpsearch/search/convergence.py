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

Optuna 4.9 deprecated `optuna.terminator` (removal planned for 6.0) and marks its evaluators
experimental: search/terminator.py asks it, silences both warnings, and is imported only with
`--stop-when-converged`, which says what to install if it is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import StudyError
from hpsearch.search.provenance import RunRecord, as_mapping

if TYPE_CHECKING:
    from hpsearch.search.registry import StudySpec
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


def check_metric(metric: str) -> bool:
    """Whether the metric is an accuracy (else an error); StudyError if it is no proportion."""
    if metric not in PROPORTIONS:
        raise StudyError(
            f"--stop-when-converged compares the room left against the binomial noise of a "
            f"proportion of validation examples, and this study's metric is {metric!r}; it "
            f"works with {' or '.join(PROPORTIONS)}: leave out --stop-when-converged")
    return PROPORTIONS[metric]


def stop_reason(found: Estimate) -> str:
    return (f"converged after {found.complete} complete trials (trial #{found.trial}): the regret "
            f"bound on what more trials could gain, {found.improvement:.4g}, is below the "
            f"validation noise of the best trial, {found.noise:.4g}")


def check_stoppable(spec: StudySpec) -> None:
    """Refuse --stop-when-converged from the study module alone, before any storage is opened or
    study created: several objectives, or a metric that is not a proportion."""
    if spec.multi_objective:
        raise StudyError(
            f"--stop-when-converged: study module {spec.name!r} has {len(spec.metrics)} "
            f"objectives ({', '.join(spec.metrics)}), and the Terminator's regret bound is defined "
            "for one; leave out --stop-when-converged (or stop it with --trials or --timeout)")
    check_metric(spec.metric)


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
        check_metric(metric)  # before the first trial
        try:
            from hpsearch.search import terminator
        except ImportError as e:
            raise StudyError(
                f"--stop-when-converged needs optuna.terminator, which this Optuna "
                f"({optuna.__version__}) lacks ({e}); install optuna>=5,<6 or leave out the flag"
            ) from e
        self.estimate = terminator.estimate
        self.study, self.handle, self.metric, self.min_trials = study, handle, metric, min_trials
        self.complete = -1  # complete trials at this worker's last estimate

    def stopped(self) -> str | None:
        """The stored reason, once some worker of the study found it converged."""
        record = StopRecord.from_study(self.study)
        return record.reason if record is not None else None

    def look(self) -> Estimate | None:
        """Estimate now; store it, and the stop when it says so (the next `stopped` sees it).
        Nothing to do while no trial has completed since the last look (only pruned or failed
        ones, which the bound does not use), nor before `min_trials` complete ones."""
        complete = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if complete == self.complete or complete < self.min_trials:
            return None
        self.complete = complete
        found = self.estimate(self.study, metric=self.metric, min_trials=self.min_trials)
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
