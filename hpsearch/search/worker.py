"""The worker loop: pull trials from a shared study until its budget of finished trials is met.

`--trials N` is the budget of the *study*: every worker counts the trials already finished or
under way and asks for a new one only while fewer than N are, under a lock shared by all
workers of the study, so N workers and one worker alike end with exactly N finished trials.
A trial counts once it is complete, pruned or failed through its own config (diverged, out of
memory, a bug); a trial whose worker died or was interrupted does not count, and its parameters
are queued again for whichever worker asks next.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.data import DataCache
from hpsearch.errors import StudyError
from hpsearch.search.checkpoints import prepare_directory
from hpsearch.search.convergence import DEFAULT_MIN_TRIALS, ConvergenceWatch
from hpsearch.search.liveness import recover_lost_trials
from hpsearch.search.outcomes import (
    COUNTED,
    ORDER,
    TAKEN_OVER,
    raise_swallowed_interrupt,
    trial_outcome,
)
from hpsearch.search.record import ATTR_RUN, RunRecord, StudyRecord
from hpsearch.search.reports import OnProgress, TrialOutcome
from hpsearch.search.settings import RunSettings, data_record, grid_size
from hpsearch.search.storage import StorageHandle
from hpsearch.search.study import open_study
from hpsearch.search.trials import run_trials
from hpsearch.training import SpeedOptions

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 5
ATTR_PRECISION = "precision"  # study attribute: "bf16" or "float32", set by its first worker


@dataclasses.dataclass(frozen=True)
class BudgetState:
    done: int  # complete, pruned, or failed through their own config
    running: int
    waiting: int  # queued, e.g. retries of trials whose worker died

    @property
    def planned(self) -> int:
        return self.done + self.running + self.waiting


def budget_state(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> BudgetState:
    """The study's count of trials done, running and waiting (from `trials` when just read)."""
    done = running = waiting = 0
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        if trial_outcome(t) in COUNTED:
            done += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
    return BudgetState(done, running, waiting)


@dataclasses.dataclass
class WorkerReport:
    study_name: str
    budget: int
    outcomes: list[TrialOutcome] = dataclasses.field(default_factory=list)
    stopped: str = "budget"  # "budget", "timeout", "converged" or "interrupted"
    stop_reason: str | None = None  # why the study converged (`--stop-when-converged`)
    already_done: int = 0
    precision_note: str | None = None  # set when this worker mixes precisions on purpose

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    def counts(self) -> dict[str, int]:
        """This worker's trials by outcome, in `outcomes.ORDER`, then any taken over."""
        return {word: self.count(word) for word in (*ORDER, TAKEN_OVER) if self.count(word)}


OnTrial = Callable[[TrialOutcome, BudgetState], None]


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs a study's trials, beside what the study asks (`RunSettings`).

    `population` K > 1 asks for up to K trials at once and trains those of one shape as one
    stacked computation; the budget count and the lost-trial check then happen once per batch.
    `speed` holds compile and bf16; a study keeps one precision (`check_precision`) unless
    `allow_mixed_precision`. `checkpoint_dir`: where trials trained alone save after each
    epoch, so that a repeated one resumes (`search.checkpoints`).
    """

    trials: int  # the study's budget of finished trials
    device: torch.device
    timeout: float | None = None  # seconds, after which no new trial is asked for
    sampler_seed: int | None = None
    population: int = 1
    speed: SpeedOptions = dataclasses.field(default_factory=SpeedOptions)
    allow_mixed_precision: bool = False
    poll_seconds: float = 1.0  # how often to look again while the last trials run elsewhere
    # Ask Optuna's Terminator after each batch, from this many complete trials on, and stop
    # starting trials once it finds the study converged (hpsearch.search.convergence).
    stop_when_converged: bool = False
    stop_min_trials: int = DEFAULT_MIN_TRIALS
    checkpoint_dir: Path | None = None

    def check(self) -> None:
        if self.trials < 1:
            raise StudyError(f"--trials {self.trials}: the study needs a budget of at least 1 trial")
        if self.population < 1:
            raise StudyError(f"--population {self.population}: train at least 1 trial at a time")
        if self.speed.bf16 and self.population > 1 and not self.allow_mixed_precision:
            raise StudyError(
                f"--bf16 with --population {self.population}: bf16 autocast applies to trials "
                "trained alone, and stacked trials train in float32, so the study would mix both "
                "precisions; drop one of the two options (or pass --allow-mixed-precision)"
            )


def run_worker(
    handle: StorageHandle,
    settings: RunSettings,
    options: WorkerOptions,
    *,
    on_trial: OnTrial | None = None,
    on_progress: OnProgress | None = None,
    data: DataCache | None = None,
) -> WorkerReport:
    """Run trials of one study until it holds `options.trials` finished ones (or its timeout
    passes). `data` is the data cache the caller may have loaded already."""
    options.check()
    if options.checkpoint_dir is not None:
        options = dataclasses.replace(options,
                                      checkpoint_dir=prepare_directory(options.checkpoint_dir))
    grid = grid_size(settings)
    if grid is not None and options.trials > grid:
        logger.warning("the grid has %d points; running %d trials, not %d", grid, grid,
                       options.trials)
        options = dataclasses.replace(options, trials=grid)
    with handle.single_writer():
        return _Worker(handle, settings, options, data=data, on_progress=on_progress).run(on_trial)


class _Worker:
    """One worker's study, data and count of errors in a row, for the loop of `run_worker`."""

    def __init__(self, handle: StorageHandle, settings: RunSettings, options: WorkerOptions, *,
                 data: DataCache | None, on_progress: OnProgress | None) -> None:
        self.handle, self.settings, self.options = handle, settings, options
        self.data = data or DataCache(settings.data_dir, options.device)
        self.on_progress = on_progress
        base = settings.base_config(0)
        # Load the data before creating any trial: a missing data set is one error, not N failures.
        self.data.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
        self.study = open_study(handle, settings, sampler_seed=options.sampler_seed,
                                data=data_record(settings, base, self.data))
        self.errors_in_a_row = 0

    def run(self, on_trial: OnTrial | None) -> WorkerReport:
        options = self.options
        mixed = check_precision(self.study, options.speed, allow_mixed=options.allow_mixed_precision)
        report = WorkerReport(self.settings.study_name, options.trials,
                              already_done=budget_state(self.study).done, precision_note=mixed)
        deadline = time.monotonic() + options.timeout if options.timeout else None
        watch = ConvergenceWatch(self.study, self.handle, metric=self.settings.spec.metric,
                                 min_trials=options.stop_min_trials) \
            if options.stop_when_converged else None  # off the path without the flag
        while True:
            raise_swallowed_interrupt()
            if deadline is not None and time.monotonic() > deadline:
                report.stopped = "timeout"
                return report
            if watch is not None and (reason := watch.stopped()) is not None:
                report.stopped, report.stop_reason = "converged", reason
                return report
            asked = self._ask_batch()
            if asked is None:
                return report
            if not asked:
                # The last trials are running elsewhere; wait for them, or for their workers to
                # be declared dead and their trials queued again.
                time.sleep(options.poll_seconds)
                continue
            try:
                outcomes = run_trials(self.study, asked, self.settings, handle=self.handle,
                                      device=options.device, data=self.data, speed=options.speed,
                                      on_progress=self.on_progress,
                                      checkpoint_dir=options.checkpoint_dir)
            except KeyboardInterrupt:
                report.stopped = "interrupted"
                raise
            self._count(report, outcomes, on_trial)
            if watch is not None:
                watch.look()

    def _ask_batch(self) -> list[optuna.Trial] | None:
        """Up to `population` trials, fewer near the end of the budget; None once it is met."""
        with self.handle.lock(self.settings.study_name):
            trials = self.study.get_trials(deepcopy=False)
            state = budget_state(self.study, trials)
            # Only a RUNNING trial can be lost: with none (a lone worker between its batches)
            # recovery is skipped, and otherwise it reuses this read (one read of the storage
            # per ask, not three; bench_trainer's split, part (d)).
            if state.running:
                recover_lost_trials(self.study, self.handle,
                                    running=[t for t in trials if t.state == TrialState.RUNNING])
                state = budget_state(self.study)
            if state.done >= self.options.trials:
                return None
            # Asking a queued (WAITING) trial does not add to the planned count; a new one does.
            room = state.waiting + max(0, self.options.trials - state.planned)
            return [_ask(self.study) for _ in range(min(self.options.population, room))]

    def _count(self, report: WorkerReport, outcomes: list[TrialOutcome],
               on_trial: OnTrial | None) -> None:
        state = budget_state(self.study)  # once per batch, not once per trial
        for outcome in outcomes:
            report.outcomes.append(outcome)
            if on_trial is not None:
                on_trial(outcome, state)
            self.errors_in_a_row = self.errors_in_a_row + 1 if outcome.error else 0
            if self.errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                raise StudyError(
                    f"{self.errors_in_a_row} trials in a row failed with errors, the last with: "
                    f"{outcome.reason}; fix the study module or the config and run again (the "
                    "failed trials stay in the study with their reasons)"
                )


def check_precision(study: optuna.Study, speed: SpeedOptions, *, allow_mixed: bool) -> str | None:
    """Refuse to add trials of another precision (bf16, float32) to a study, unless allowed;
    return a note when they are mixed on purpose.

    A study's comparisons (the sampler's model, the pruner's medians, the best trial) assume one
    numeric setting. Its precision is the study attribute `precision`, written by the first
    worker; a study from before that attribute is read from its trials' run records.
    """
    wanted = speed.precision
    stored = StudyRecord.from_study(study).precision
    if stored is None:
        used = {RunRecord.from_trial(t).precision for t in study.get_trials(deepcopy=False)
                if isinstance(t.user_attrs.get(ATTR_RUN), dict)}
        if len(used) > 1:
            stored = "mixed"
        elif used:
            stored = used.pop()
        else:
            study.set_user_attr(ATTR_PRECISION, wanted)
            return None
    if stored == wanted:
        return None
    if allow_mixed:
        note = f"mixing {wanted} trials into a {stored} study (--allow-mixed-precision)"
        logger.warning(note)
        return note
    raise StudyError(
        f"study {study.study_name!r} trains in {stored} and this run asks for {wanted} "
        f"({'--bf16' if speed.bf16 else 'no --bf16'}); its comparisons assume one precision. Run "
        f"it {'with' if stored == 'bf16' else 'without'} --bf16, start a new study with "
        "--study-name NAME, or pass --allow-mixed-precision to mix them"
    )


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize; this loop keeps the beat
        # itself (liveness.heartbeat), so the warning does not apply.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask()
