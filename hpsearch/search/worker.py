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
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.data import DataCache
from hpsearch.errors import StudyError
from hpsearch.search.batch_worker import train_batch
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.outcomes import COUNTED, ORDER, TAKEN_OVER, outcome_attrs, trial_outcome
from hpsearch.search.runner import (
    ATTR_BEAT,
    ATTR_RESULT,
    ATTR_RUN,
    LOST,
    OnProgress,
    RunSettings,
    TrialOutcome,
    data_record,
    grid_size,
    open_study,
    retry,
    run_trial,
    worker_identity,
)
from hpsearch.search.storage import StorageHandle
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


def budget_state(study: optuna.Study) -> BudgetState:
    done = running = waiting = 0
    for t in study.get_trials(deepcopy=False):
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
    stopped: str = "budget"  # "budget", "timeout" or "interrupted"
    already_done: int = 0
    precision_note: str | None = None  # set when this worker mixes precisions on purpose

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    def counts(self) -> dict[str, int]:
        """This worker's trials by outcome, in `outcomes.ORDER`, then any taken over."""
        return {word: self.count(word) for word in (*ORDER, TAKEN_OVER) if self.count(word)}


OnTrial = Callable[[TrialOutcome, BudgetState], None]


def run_worker(
    handle: StorageHandle,
    settings: RunSettings,
    *,
    trials: int,
    device: torch.device,
    timeout: float | None = None,
    sampler_seed: int | None = None,
    on_trial: OnTrial | None = None,
    on_progress: OnProgress | None = None,
    poll_seconds: float = 1.0,
    population: int = 1,
    speed: SpeedOptions | None = None,
    allow_mixed_precision: bool = False,
    data: DataCache | None = None,
) -> WorkerReport:
    """Run trials of one study until it holds `trials` finished ones (or `timeout` passes).

    With `population` K > 1 the worker asks for up to K trials at once and trains those of one
    shape as one stacked computation (`batch_worker`); the budget count and the lost-trial check
    then happen once per batch. `speed` (compile, bf16) also goes through that path. A study
    keeps one precision (`check_precision`) unless `allow_mixed_precision`.
    """
    if trials < 1:
        raise StudyError(f"--trials {trials}: the study needs a budget of at least 1 trial")
    if population < 1:
        raise StudyError(f"--population {population}: train at least 1 trial at a time")
    if speed is not None and speed.bf16 and population > 1 and not allow_mixed_precision:
        raise StudyError(
            f"--bf16 with --population {population}: bf16 autocast applies to trials trained "
            "alone, and stacked trials train in float32, so the study would mix both precisions; "
            "drop one of the two options (or pass --allow-mixed-precision)"
        )
    grid = grid_size(settings)
    if grid is not None and trials > grid:
        logger.warning("the grid has %d points; running %d trials, not %d", grid, grid, trials)
        trials = grid
    with handle.single_writer():
        return _run_worker(handle, settings, trials=trials, device=device, timeout=timeout,
                           sampler_seed=sampler_seed, on_trial=on_trial, on_progress=on_progress,
                           poll_seconds=poll_seconds,
                           population=population, speed=speed,
                           allow_mixed_precision=allow_mixed_precision, data=data)


def _run_worker(
    handle: StorageHandle,
    settings: RunSettings,
    *,
    trials: int,
    device: torch.device,
    timeout: float | None,
    sampler_seed: int | None,
    on_trial: OnTrial | None,
    on_progress: OnProgress | None,
    poll_seconds: float,
    population: int,
    speed: SpeedOptions | None,
    allow_mixed_precision: bool,
    data: DataCache | None,
) -> WorkerReport:
    data = data or DataCache(settings.data_dir, device)  # the caller may have loaded it already
    base = settings.base_config(0)
    # Load the data before creating any trial: a missing data set is one error, not N failures.
    data.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
    study = open_study(handle, settings, sampler_seed=sampler_seed,
                       data=data_record(settings, base, data))
    mixed = check_precision(study, speed or SpeedOptions(), allow_mixed=allow_mixed_precision)
    report = WorkerReport(settings.study_name, trials, already_done=budget_state(study).done,
                          precision_note=mixed)
    deadline = time.monotonic() + timeout if timeout else None
    errors_in_a_row = 0

    while True:
        if deadline is not None and time.monotonic() > deadline:
            report.stopped = "timeout"
            break
        recover_lost_trials(study, handle)
        with handle.lock(settings.study_name):
            state = budget_state(study)
            if state.done >= trials:
                break
            # Asking a queued (WAITING) trial does not add to the planned count; a new one does.
            room = state.waiting + max(0, trials - state.planned)
            asked = [_ask(study) for _ in range(min(population, room))]
        if not asked:
            # The last trials are running elsewhere; wait for them, or for their workers to be
            # declared dead and their trials queued again.
            time.sleep(poll_seconds)
            continue
        try:
            if population == 1 and speed is None:
                outcomes = [run_trial(study, asked[0], settings, handle=handle, device=device,
                                      data=data, on_progress=on_progress)]
            else:
                outcomes = train_batch(study, asked, settings, handle=handle, device=device,
                                       data=data, speed=speed or SpeedOptions())
        except KeyboardInterrupt:
            report.stopped = "interrupted"
            raise
        state = budget_state(study)  # once per batch, not once per trial
        for outcome in outcomes:
            report.outcomes.append(outcome)
            if on_trial is not None:
                on_trial(outcome, state)
            errors_in_a_row = errors_in_a_row + 1 if outcome.error else 0
            if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                raise StudyError(
                    f"{errors_in_a_row} trials in a row failed with errors, the last with: "
                    f"{outcome.reason}; fix the study module or the config and run again (the "
                    "failed trials stay in the study with their reasons)"
                )
    return report


def check_precision(study: optuna.Study, speed: SpeedOptions, *, allow_mixed: bool) -> str | None:
    """Refuse to add trials of another precision (bf16, float32) to a study, unless allowed;
    return a note when they are mixed on purpose.

    A study's comparisons (the sampler's model, the pruner's medians, the best trial) assume one
    numeric setting. Its precision is the study attribute `precision`, written by the first
    worker; a study from before that attribute is read from its trials' run records.
    """
    wanted = speed.precision
    stored = study.user_attrs.get(ATTR_PRECISION)
    if stored is None:
        runs = [t.user_attrs.get(ATTR_RUN) for t in study.get_trials(deepcopy=False)]
        used = {"bf16" if (run.get("speed") or {}).get("bf16") else "float32"
                for run in runs if isinstance(run, dict)}
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
        # itself (runner.heartbeat), so the warning does not apply.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask()


def recover_lost_trials(study: optuna.Study, handle: StorageHandle) -> list[int]:
    """Fail, and queue again, running trials whose worker is gone; return their numbers.

    Three ways to know: Optuna's heartbeat (RDB storages: no beat for the grace period); on the
    journal, which has none, hpsearch's own beat (`runner.ATTR_BEAT`, a trial system attribute)
    older than 3 intervals, which needs the hosts' clocks to agree within that; and, for a worker
    whose pid is meaningful here (same host name, boot and PID namespace), a pid that no longer
    exists, which is noticed at once.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    me = worker_identity()
    interval = handle.heartbeat_interval if handle.kind == "journal" else None
    grace = 3 * interval if interval else None
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _lost_reason(t, me, grace=grace, now=time.time())
        if reason is None:
            continue
        try:
            handle.storage.set_trial_user_attr(trial_id(t), ATTR_RESULT, {"outcome": LOST, "reason": reason})
            for key, value in outcome_attrs(LOST, reason).items():
                handle.storage.set_trial_user_attr(trial_id(t), key, value)
            if not handle.storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker, or the heartbeat, got there first
        logger.warning("trial %d: %s; queued again", t.number, reason)
        retry(study, handle.storage.get_trial(trial_id(t)))
        lost.append(t.number)
    return lost


def _lost_reason(
    trial: optuna.trial.FrozenTrial, me: dict[str, Any], *, grace: float | None, now: float
) -> str | None:
    """Why the running `trial` has no live worker, or None while it may have one."""
    worker = trial.user_attrs.get(ATTR_RUN, {}).get("worker", {})
    if worker and worker.get("id") == me["id"]:
        return None
    who = f"{worker.get('host')}:{worker.get('pid')}"
    # kill(pid, 0) answers for this PID namespace only; elsewhere the same number is another
    # process, so a pid from another boot or namespace is left to the heartbeat.
    same_pids = all(worker.get(key) is not None and worker.get(key) == me[key]
                    for key in ("host", "boot_id", "pid_ns"))
    if same_pids and (worker.get("pid") == me["pid"] or not _process_alive(int(worker["pid"]))):
        return f"worker {who} died while running this trial"
    beat = trial.system_attrs.get(ATTR_BEAT)
    if not isinstance(beat, (int, float)) and trial.datetime_start is not None:
        # A worker that died between asking for the trial and its first beat (or a journal an
        # older hpsearch wrote, which has no beats) would otherwise hold the trial forever; the
        # first beat follows the ask within milliseconds, so the start time stands in for it.
        beat = trial.datetime_start.timestamp()
    if grace is not None and isinstance(beat, (int, float)) and now - beat > grace:
        return f"worker {who} sent no heartbeat for {now - beat:.0f} s (grace {grace:.0f} s)"
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child not yet reaped by its parent still answers signals; it is dead all the same.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True
