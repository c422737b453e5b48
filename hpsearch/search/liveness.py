"""How a running trial shows that its worker is alive, and how a dead worker's trials are found.

A worker beats for its running trials (`heartbeat`); any worker, before it asks for a trial,
fails and queues again the running trials whose worker is gone (`recover_lost_trials`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.optuna_private import BaseHeartbeat, trial_id
from hpsearch.search.outcomes import LOST
from hpsearch.search.provenance import RunRecord, WorkerIdentity
from hpsearch.search.record import finished_attrs
from hpsearch.search.storage import ATTR_BEAT, StorageHandle, requeue

logger = logging.getLogger(__name__)


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


def recover_lost_trials(
    study: optuna.Study, handle: StorageHandle, *, running: Sequence[FrozenTrial] | None = None,
) -> list[int]:
    """Fail, and queue again, running trials whose worker is gone; return their numbers.
    `running`: the study's RUNNING trials, when the caller has just read them (one read fewer).

    Three ways to know: Optuna's heartbeat (RDB storages: no beat for the grace period); on the
    journal, which has none, hpsearch's own beat (`storage.ATTR_BEAT`, a trial system attribute)
    older than 3 intervals, which needs the hosts' clocks to agree within that; and, for a worker
    whose pid is meaningful here (same host name, boot and PID namespace), a pid that no longer
    exists, which is noticed at once.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    me = WorkerIdentity.current()
    interval = handle.heartbeat_interval if handle.kind == "journal" else None
    grace = 3 * interval if interval else None
    lost = []
    if running is None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # A trial that fail_stale_trials has just failed may still be in `running`: marking it lost
    # raises UpdateFinishedTrialError below, and it is left to Optuna's callback.
    for t in running:
        reason = _lost_reason(t, me, grace=grace, now=time.time())
        if reason is None:
            continue
        try:
            for key, value in finished_attrs(LOST, reason, None).items():
                handle.storage.set_trial_user_attr(trial_id(t), key, value)
            if not handle.storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker, or the heartbeat, got there first
        logger.warning("trial %d: %s; queued again", t.number, reason)
        requeue(study, handle.storage.get_trial(trial_id(t)))
        lost.append(t.number)
    return lost


def _lost_reason(
    trial: FrozenTrial, me: WorkerIdentity, *, grace: float | None, now: float
) -> str | None:
    """Why the running `trial` has no live worker, or None while it may have one."""
    worker = RunRecord.from_trial(trial).worker
    if worker.id is not None and worker.id == me.id:
        return None
    # kill(pid, 0) answers for this PID namespace only; elsewhere the same number is another
    # process, so a pid from another boot or namespace is left to the heartbeat.
    same_pids = all(getattr(worker, key) is not None and getattr(worker, key) == getattr(me, key)
                    for key in ("host", "boot_id", "pid_ns"))
    if same_pids and worker.pid is not None and (worker.pid == me.pid
                                                 or not _process_alive(int(worker.pid))):
        return f"worker {worker.label} died while running this trial"
    beat = trial.system_attrs.get(ATTR_BEAT)
    if not isinstance(beat, (int, float)) and trial.datetime_start is not None:
        # A worker that died between asking for the trial and its first beat (or a journal an
        # older hpsearch wrote, which has no beats) would otherwise hold the trial forever; the
        # first beat follows the ask within milliseconds, so the start time stands in for it.
        beat = trial.datetime_start.timestamp()
    if grace is not None and isinstance(beat, (int, float)) and now - beat > grace:
        return f"worker {worker.label} sent no heartbeat for {now - beat:.0f} s (grace {grace:.0f} s)"
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
