"""Optuna's RDBStorage (SQLite, PostgreSQL) opened the way hpsearch needs it.

Tables created under a PostgreSQL advisory lock, opening retried while the server restarts,
SQLite's write faults turned into one StorageError, and the heartbeat's stale-trial callback
(`requeue`), which the journal storage uses too.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import time
import warnings
from collections.abc import Iterator

import optuna
import sqlalchemy

from hpsearch.errors import StorageError
from hpsearch.search.retrying import server_went_away

logger = logging.getLogger(__name__)

MAX_RETRIES = 2  # a trial whose worker keeps dying (killed for memory, say) is given up after this
OPEN_RETRY_SECONDS = 30.0


def open_rdb(
    url: str, engine_kwargs: dict[str, object], heartbeat: int | None, *, postgres: bool
) -> optuna.storages.RDBStorage:
    deadline = time.monotonic() + OPEN_RETRY_SECONDS
    while True:
        try:
            if not postgres:
                return _rdb_storage(url, engine_kwargs, heartbeat)
            with _schema_lock(url):
                return _rdb_storage(url, engine_kwargs, heartbeat)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if not postgres or not server_went_away(e):
                raise
            if time.monotonic() > deadline:
                raise
            logger.warning("PostgreSQL went away while opening the storage; retrying")
            time.sleep(1.0)


# Any fixed key will do: advisory locks live in their database, and hpsearch's other key (the
# study lock) is a hash of a study name.
_SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"hpsearch: Optuna schema").digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates or checks its tables.

    Optuna's `RDBStorage` runs `CREATE TABLE` for a fresh database in every process that opens
    it; workers started together then collide in the catalog (a duplicate key on `pg_type`,
    "relation studies already exists") and all but one die. Serialised, the first creates the
    tables and the others find them. The server frees the lock if its holder dies.
    """
    # Its own unpooled connection, outside a transaction: closing it ends the session, which
    # releases the lock.
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            yield
    finally:
        engine.dispose()


def _rdb_storage(url: str, engine_kwargs: dict[str, object], heartbeat: int | None) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat,
        grace_period=3 * heartbeat if heartbeat else None,
        heartbeat_stale_trial_callback=requeue if heartbeat else None,
    )


# hpsearch's own heartbeat on the journal, which Optuna's storage lacks (a trial system attribute).
ATTR_BEAT = "hpsearch:heartbeat"
# A queued-again trial's link to the attempts it repeats: their numbers, oldest first, the last
# the one it was queued for (a trial system attribute). It trains with the first one's seed and
# resumes from the newest of their checkpoints (`search.checkpoints`).
ATTR_REPEATS = "hpsearch:repeats"


def repeats(system_attrs: dict[str, object]) -> list[int]:
    """The numbers of the attempts a trial repeats (oldest first), from its system attributes."""
    value = system_attrs.get(ATTR_REPEATS)
    return [int(n) for n in value] if isinstance(value, list) else []


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """Queue the parameters of a trial that did not finish through no fault of its own.

    Optuna's `RetryHeartbeatStaleTrialCallback` copies every user attribute into the queued
    trial; the copy would carry the stopped attempt's outcome and worker, so `status` and the
    dashboard would show a queued trial as interrupted, credit it to the worker that stopped, and
    the dead worker's pid could get the retry failed as lost before its new worker records itself.
    The queued trial gets the parameters and Optuna's retry history only. Used for the trials
    Optuna's heartbeat fails as well as for those hpsearch fails itself.
    """
    fresh = copy.deepcopy(failed)
    fresh.user_attrs = {}
    # Our journal beat too: the queued trial would look dead as soon as a worker asks for it.
    fresh.system_attrs.pop(ATTR_BEAT, None)
    fresh.system_attrs[ATTR_REPEATS] = [*repeats(failed.system_attrs), failed.number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, fresh)


# SQLite's messages for a file it cannot write: a full disk (or quota), a read-only file or
# file system, a folder where it cannot create its rollback journal, a failing disk.
_SQLITE_WRITE_FAULTS = {
    "database or disk is full": "free some space (or move the database) and run the same "
                                "command again to resume",
    "attempt to write a readonly database": "the file or its file system is read-only; copy it "
                                            "somewhere writable (status, best, report and export "
                                            "only read it)",
    "unable to open database file": "SQLite cannot create its journal beside the file; the "
                                    "folder must be writable too",
    "disk i/o error": "check the disk",
}


def translate_sqlite_errors(engine: sqlalchemy.Engine, shown: str) -> None:
    """Turn SQLite's write faults into one StorageError naming the file and the fix.

    SQLAlchemy's `handle_error` hook raises it in place of the driver's error; Optuna's session
    scope rolls back and re-raises errors that are not SQLAlchemy's unchanged, where it would
    wrap SQLAlchemy's own in a StorageInternalError about "invalid data in the commit". Nothing
    is half-written: SQLite rolls the transaction back.
    """

    def translate(context: sqlalchemy.engine.ExceptionContext) -> None:
        message = str(context.original_exception).lower()
        for fault, fix in _SQLITE_WRITE_FAULTS.items():
            if fault in message:
                raise StorageError(
                    f"storage {shown}: {context.original_exception}; {fix}"
                ) from context.sqlalchemy_exception

    sqlalchemy.event.listen(engine, "handle_error", translate)

