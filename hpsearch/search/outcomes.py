"""One word for how each trial ended, the one place `status`, `report`, the CLI and the budget
read it, and the attributes that show it in optuna-dashboard.

Optuna has four end states and hpsearch five outcomes. Its FAIL state holds three of them, which
optuna-dashboard shows alike as "Fail"; the outcome tells them apart:

| outcome | Optuna state | counts toward --trials | what happened |
| --- | --- | --- | --- |
| complete | COMPLETE | yes | trained to its end |
| pruned | PRUNED | yes | the pruner stopped it |
| failed | FAIL | yes | its config failed: diverged, out of memory, invalid, a bug (reason stored) |
| interrupted | FAIL | no, queued again | SIGINT (Ctrl-C, `launch` stopping) or SIGTERM (named) |
| lost | FAIL | no, queued again | its worker died (killed, a missed heartbeat) |

A trial still RUNNING or WAITING (queued) has no outcome yet and is named by its state.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.record import Outcome

COMPLETE, PRUNED, FAILED, INTERRUPTED, LOST = "complete", "pruned", "failed", "interrupted", "lost"
RUNNING, WAITING = "running", "waiting"
# Not a stored outcome: a worker's view of a trial that another worker failed as lost while this
# one ran it (a pause past the heartbeat grace); the study holds it as lost, queued again.
TAKEN_OVER = "taken over"
ORDER = (COMPLETE, PRUNED, FAILED, INTERRUPTED, LOST, RUNNING, WAITING)  # how counts are listed
COUNTED = (COMPLETE, PRUNED, FAILED)  # outcomes that use up the study's budget

_BY_STATE = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED,
             TrialState.RUNNING: RUNNING, TrialState.WAITING: WAITING}


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) turned into KeyboardInterrupt, so that the running trial
    is told interrupted and queued again, with the signal named in its reason."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


def interrupt_on_signals() -> None:
    """Make SIGINT and SIGTERM raise `Interrupted`, naming the signal.

    `docker stop`, Kubernetes and batch schedulers send SIGTERM. A process started in the
    background by a non-interactive shell inherits SIGINT as ignored (and Python then keeps it
    ignored), so the handler is installed for both explicitly.
    """

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    _swallowed.clear()
    if not isinstance(sys.unraisablehook, _KeepInterrupts):
        sys.unraisablehook = _KeepInterrupts(sys.unraisablehook)


# Stop signals whose KeyboardInterrupt was raised where Python cannot propagate it.
_swallowed: list[KeyboardInterrupt] = []


class _KeepInterrupts:
    """`sys.unraisablehook` that keeps a KeyboardInterrupt raised inside a finalizer or weakref
    callback, which Python prints as "Exception ignored in ..." and drops. The garbage collector
    runs those at any allocation, so a signal can land there: seen with SQLAlchemy's weakref
    callbacks, where a Slurm task's SIGTERM left its worker training until SIGKILL, its trial
    RUNNING. `raise_swallowed_interrupt` raises it again where the worker can act on it."""

    def __init__(self, previous: object) -> None:
        self.previous = previous

    def __call__(self, unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _swallowed.append(unraisable.exc_value)
        else:
            self.previous(unraisable)  # type: ignore[operator]


def raise_swallowed_interrupt() -> None:
    """Raise a stop signal that a finalizer swallowed (`_KeepInterrupts`), once: the trial path
    asks at every report and the worker before every trial."""
    if _swallowed:
        interrupt = _swallowed[0]
        _swallowed.clear()
        raise interrupt


def interrupt_reason(error: BaseException) -> str:
    """The stored reason of a trial stopped by `error`: Python's own Ctrl-C handler raises a
    plain KeyboardInterrupt on SIGINT."""
    name = error.signal_name if isinstance(error, Interrupted) else "SIGINT"
    return f"interrupted by {name}"


def outcome_attrs(outcome: str, reason: str | None) -> dict[str, Any]:
    """The attributes a told trial gets, beside hpsearch's `result` record (`record.Outcome`'s,
    for one of the stored outcomes)."""
    assert outcome in (COMPLETE, PRUNED, FAILED, INTERRUPTED, LOST), outcome
    return Outcome(outcome, reason).to_attrs()


def trial_outcome(trial: FrozenTrial) -> str:
    """The one word for `trial`: its outcome once it ended, else its state (running, waiting).

    A FAIL trial without a recorded outcome was failed by something other than its worker
    (Optuna's heartbeat check, after the worker stopped beating): it is lost.
    """
    if trial.state in _BY_STATE:
        return _BY_STATE[trial.state]
    recorded = Outcome.from_trial(trial).outcome
    return recorded if recorded in (FAILED, INTERRUPTED, LOST) else LOST


def outcome_reason(trial: FrozenTrial) -> str | None:
    """Why the trial ended as it did, as stored; None for complete, running or waiting ones."""
    if trial.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
        return None
    reason = Outcome.from_trial(trial).reason
    if reason is None and trial.state == TrialState.FAIL:
        return "no outcome recorded: its worker stopped (failed by Optuna's heartbeat check)"
    return reason


def outcome_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome, each trial once, in `ORDER`; outcomes with no trial left out."""
    counts = Counter(trial_outcome(t) for t in trials)
    return {word: counts[word] for word in ORDER if counts[word]}


def describe_counts(counts: dict[str, int]) -> str:
    """`3 complete, 1 interrupted`, the one way the CLI lists outcome counts."""
    return ", ".join(f"{n} {word}" for word, n in counts.items() if n) or "no trials yet"
