"""Optuna's Terminator asked about a study, with the binomial noise of its validation set as the
error. `optuna.terminator` is deprecated since Optuna 4.9 (to be removed in 6.0), so this module
is imported only when `--stop-when-converged` is given (search/convergence.py)."""

from __future__ import annotations

import logging
import time
import warnings

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
from hpsearch.search.convergence import Estimate, binomial_noise, check_metric, validation_size

logger = logging.getLogger(__name__)


class BinomialErrorEvaluator(BaseErrorEvaluator):
    """The Terminator's error: the binomial standard error of the best trial's validation value."""

    def __init__(self, metric: str) -> None:
        self.accuracy = check_metric(metric)

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
