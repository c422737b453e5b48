"""The only place hpsearch touches Optuna's private API, each use with the reason it is needed.

Optuna may rename or drop any of these in a minor release; tests/test_optuna_private.py checks
each one against the installed Optuna and names the one that changed.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage

# Declares `record_heartbeat`, the one way to beat a running trial outside `Study.optimize`
# (hpsearch drives ask/tell itself), and the heartbeat methods the retrying PostgreSQL storage
# must pass through. Not exported by `optuna.storages`.
from optuna.storages._heartbeat import BaseHeartbeat

# The interface of `JournalFileBackend(lock_obj=...)`, which hpsearch's kernel `flock` lock
# implements; documented as that argument's type but not exported by `optuna.storages.journal`.
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial

__all__ = ["TRIAL_SUGGEST", "BaseHeartbeat", "BaseJournalFileLock", "cached_storage", "trial_id"]

# The `optuna.Trial` method every `suggest_*` call goes through; benchmarks/bench_trainer.py times
# sampling by wrapping it.
TRIAL_SUGGEST = "_suggest"


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number), which every storage call takes.

    hpsearch calls the storage directly to beat, requeue and fail trials (its own or a dead
    worker's); Optuna keeps the id private, and the public way back from a number
    (`get_trial_id_from_study_id_trial_number`) needs the study's id, which is private too.
    """
    return trial._trial_id


def cached_storage(rdb: optuna.storages.RDBStorage) -> BaseStorage:
    """`rdb` behind Optuna's cache of finished trials, as `optuna.create_study` would wrap it.

    hpsearch puts its retrying layer in front of the RDBStorage, and Optuna adds the cache only to
    an `RDBStorage` it is given directly, so hpsearch adds it itself; without it every
    `study.trials` reloads every trial from the server.
    """
    return optuna.storages._CachedStorage(rdb)
