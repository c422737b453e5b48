"""Storage URLs to Optuna storages, and the one place their errors are translated.

Three backends, all Optuna's own:
- `sqlite:///path.db` (the default, `sqlite:///hpsearch.db`): one worker on one machine.
- `journal:path.log`: Optuna's journal file, for several workers on one machine without a server.
- `postgresql://user@host/db` (driver psycopg 3): many workers on many machines.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalStorage
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.search.journal import JournalFile, JournalFileReader
from hpsearch.search.locks import flock
from hpsearch.search.optuna_private import BaseHeartbeat, cached_storage

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_FORMS = (
    "sqlite:///PATH.db (one worker), journal:PATH.log (several workers on one machine), "
    "postgresql://USER@HOST:PORT/DB (several machines)"
)
DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial (RDB storages)
MAX_RETRIES = 2  # a trial whose worker keeps dying (killed for memory, say) is given up after this
# How long a PostgreSQL worker keeps retrying while the server is unreachable (a restart, a
# failover) before it gives up; env HPSEARCH_DB_RETRY_SECONDS.
DEFAULT_DB_RETRY_SECONDS = 300.0

T = TypeVar("T")


@dataclasses.dataclass
class StorageHandle:
    """An opened storage and what hpsearch needs to know about it."""

    url: str  # as the user gave it, password hidden
    kind: str  # "sqlite", "postgresql" or "journal"
    storage: optuna.storages.BaseStorage
    path: Path | None = None  # the file behind sqlite and journal storages
    # Seconds between hpsearch's own beats on the journal, which has no heartbeat of its own.
    journal_heartbeat: int | None = None

    @property
    def rdb(self) -> optuna.storages.RDBStorage | None:
        """The RDBStorage underneath, for SQLite and PostgreSQL."""
        storage = self.storage.inner if isinstance(self.storage, RetryingStorage) else self.storage
        return storage if isinstance(storage, optuna.storages.RDBStorage) else None

    @property
    def heartbeat_interval(self) -> int | None:
        """Seconds between beats of a running trial; a trial silent for 3 of them is lost."""
        return self.rdb.heartbeat_interval if self.rdb is not None else self.journal_heartbeat

    def parallel_hint(self) -> str:
        """Where to go from a SQLite file when several workers should share a study."""
        journal = self.path.with_suffix(".log") if self.path else Path("hpsearch.log")
        return (f"For parallel workers use a journal file (--storage journal:{journal}) on one "
                "machine, or PostgreSQL (--storage postgresql://USER@HOST/DB) across machines")

    @contextlib.contextmanager
    def single_writer(self) -> Iterator[None]:
        """Refuse a second worker on one SQLite file, which would end in "database is locked".

        The `flock` is released by the kernel when the worker exits, however it exits. Readers
        (the dashboard, `status`, `report`) do not take it.
        """
        if self.kind != "sqlite":
            yield
            return
        assert self.path is not None
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(flock(f"{self.path}.hpsearch-worker", blocking=False))
            except BlockingIOError as e:
                raise StorageError(
                    f"another worker is already writing {self.url}; SQLite takes one writer at a "
                    f"time. {self.parallel_hint()}"
                ) from e
            except OSError as e:
                raise StorageError(
                    f"storage {self.url}: cannot create {self.path}.hpsearch-worker beside it "
                    f"({e.strerror}); a worker needs to write the database and its folder: pick a "
                    "writable folder or fix its permissions (status, best, report and export only "
                    "read)"
                ) from e
            yield

    @contextlib.contextmanager
    def lock(self, study_name: str) -> Iterator[None]:
        """Mutual exclusion between workers of one study, for count-then-ask.

        PostgreSQL uses an advisory lock, which the server frees if the holder dies; the file
        backends use `flock` on a sidecar file, which the kernel frees likewise.
        """
        if self.kind == "postgresql":
            assert self.rdb is not None and isinstance(self.storage, RetryingStorage)
            key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
            engine = self.rdb.engine

            def acquire() -> sqlalchemy.Connection:
                conn = engine.connect()
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                except BaseException:
                    conn.close()
                    raise
                return conn

            conn = self.storage.retrying(acquire, "pg_advisory_lock")
            try:
                yield
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except sqlalchemy.exc.SQLAlchemyError as e:
                    # The server dropped the session, and its advisory locks with it.
                    logger.warning("releasing the study lock failed (%s); the server released it", e)
                finally:
                    conn.close()
        else:
            assert self.path is not None
            with flock(f"{self.path}.hpsearch-lock", blocking=True):
                yield


def default_heartbeat() -> int:
    """Seconds between heartbeats: DEFAULT_HEARTBEAT, or env HPSEARCH_HEARTBEAT_SECONDS."""
    raw = os.environ.get("HPSEARCH_HEARTBEAT_SECONDS", "")
    if not raw:
        return DEFAULT_HEARTBEAT
    if not raw.isdigit() or int(raw) < 1:
        raise StorageError(f"HPSEARCH_HEARTBEAT_SECONDS={raw!r}: give a whole number of seconds >= 1")
    return int(raw)


def open_storage(
    url: str | None, *, heartbeat: int | None | str = "default", readonly: bool = False
) -> StorageHandle:
    """Open (creating tables or files as needed) the storage behind `url`.

    `heartbeat` (seconds) turns on Optuna's heartbeat for RDB storages, so a trial whose worker
    died is failed after 3 missed beats and its parameters queued again. `readonly` opens a
    journal file without creating or locking anything, so it reads from read-only media.
    """
    if heartbeat == "default":
        heartbeat = default_heartbeat()
    assert heartbeat is None or isinstance(heartbeat, int)
    url = (url or DEFAULT_STORAGE).strip()
    if url.startswith("journal:"):
        handle = _open_journal(url, readonly=readonly)
        handle.journal_heartbeat = heartbeat
        return handle
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(f"cannot parse storage URL {_mask(url)!r}; use one of: {STORAGE_FORMS}") from e
    except ValueError as e:  # SQLAlchemy reads the port with int()
        raise StorageError(
            f"storage URL {_mask(url)!r}: the port is not a number ({e}); use "
            "postgresql://USER@HOST:PORT/DB with a numeric PORT, or leave :PORT out for 5432"
        ) from e
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise StorageError(f"storage {shown!r} keeps nothing; give a file: sqlite:///hpsearch.db")
        if not path.parent.resolve().is_dir():
            raise StorageError(
                f"storage {shown!r}: folder {path.parent} does not exist; create it or pick "
                "another path (sqlite:///relative.db or sqlite:////absolute/path.db)"
            )
        # Wait for a lock rather than fail at once when the dashboard reads while a worker writes.
        engine_kwargs: dict[str, object] = {"connect_args": {"timeout": 60}}
        kind = "sqlite"
    elif backend == "postgresql":
        if not parsed.database:
            # libpq would fall back to a database named after the OS user and create Optuna's
            # tables in it.
            raise StorageError(
                f"storage {shown!r} names no database; give one: postgresql://USER@HOST:PORT/DB "
                "(create it first, e.g. `createdb DB`)"
            )
        if parsed.get_driver_name() in ("psycopg2", "") and "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 ships with hpsearch
        # pre_ping replaces connections the server dropped (a restart, an idle timeout).
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 1800}
        kind, path = "postgresql", None
    else:
        raise StorageError(f"storage {shown!r}: unsupported backend {backend!r}; use one of: {STORAGE_FORMS}")
    try:
        with warnings.catch_warnings():
            # Heartbeats and their retry callback are marked experimental since Optuna 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            full_url = parsed.render_as_string(hide_password=False)
            storage = _open_rdb(full_url, engine_kwargs, heartbeat, postgres=kind == "postgresql")
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError) as e:
        cause = e.__cause__ or e
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        hint = (
            "check that the server is running and the user, host, port and database are right"
            if kind == "postgresql"
            else "check that the file is a SQLite database you can write"
        )
        raise StorageError(f"cannot open storage {shown!r}: {reason}; {hint}") from e
    except RuntimeError as e:  # Optuna's schema-version check
        raise StorageError(
            f"storage {shown!r}: {e}; upgrade it with `optuna storage upgrade --storage URL`"
        ) from e
    if kind == "sqlite":
        _translate_sqlite_errors(storage.engine, shown)
    if kind == "postgresql":
        # (mypy cannot see the methods that the loop below the class fills in.)
        retrying = RetryingStorage(storage, what=shown)  # type: ignore[abstract]
        return StorageHandle(url=shown, kind=kind, storage=retrying)
    return StorageHandle(url=shown, kind=kind, storage=storage, path=path)


OPEN_RETRY_SECONDS = 30.0


def _mask(url: str) -> str:
    """`url` with its password hidden, for a URL SQLAlchemy could not parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _open_rdb(
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
            if not postgres or not _server_went_away(e):
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


def _translate_sqlite_errors(engine: sqlalchemy.Engine, shown: str) -> None:
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


def _open_journal(url: str, *, readonly: bool) -> StorageHandle:
    raw = url[len("journal:") :]
    path = Path(raw.removeprefix("//"))
    if not raw or str(path) in ("", "."):
        raise StorageError(f"storage {url!r} names no file; use journal:PATH.log")
    if not path.parent.resolve().is_dir():
        raise StorageError(
            f"storage {url!r}: folder {path.parent} does not exist; create it or pick another path"
        )
    # Optuna's own file backend, with a kernel lock, torn-tail repair and read-only opening
    # (see hpsearch.search.journal for the Optuna faults each works around).
    backend = JournalFileReader(str(path)) if readonly else JournalFile(str(path))
    try:
        storage = JournalStorage(backend)
    except (ValueError, OSError) as e:
        # A line that does not parse: mend it if an older writer glued a record to a torn one,
        # then read again with a fresh backend (Optuna's caches offsets per line).
        if readonly or not isinstance(backend, JournalFile) or backend.mend() is None:
            fix = "; a writing command (run, worker) mends a journal whose record was glued to " \
                  "an incomplete one" if readonly else ""
            raise StorageError(f"storage {url!r}: {path} is not an Optuna journal file ({e}){fix}") from e
        try:
            storage = JournalStorage(JournalFile(str(path)))
        except (ValueError, OSError) as e2:
            raise StorageError(f"storage {url!r}: {path} is not an Optuna journal file ({e2})") from e2
    return StorageHandle(url=f"journal:{path}", kind="journal", storage=storage, path=path)


def storage_file(url: str | None) -> Path | None:
    """The file behind a SQLite or journal URL (None for a server, or a URL `open_storage`
    will reject with its own message); lets read-only commands check it exists first."""
    url = (url or DEFAULT_STORAGE).strip()
    if url.startswith("journal:"):
        raw = url[len("journal:") :].removeprefix("//")
        return Path(raw) if raw else None
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(str(parsed.database))
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from (Optuna and SQLAlchemy wrap the driver's)."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        orig = seen.orig if isinstance(seen, sqlalchemy.exc.DBAPIError) else None
        seen = seen.__cause__ or seen.__context__ or orig


def _transient(error: BaseException) -> bool:
    """A dropped connection or an unreachable server, as opposed to a bad query or bad data."""
    for seen in _causes(error):
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if type(seen).__module__.startswith("psycopg") and type(seen).__name__ in (
            "OperationalError", "InterfaceError"
        ):
            return True
    return False


def _server_went_away(error: BaseException) -> bool:
    """PostgreSQL dropped this session or refuses connections for now (a restart, a shutdown,
    crash recovery), as opposed to a wrong host, port, user or database, which should fail at
    once with its reason."""
    import psycopg  # here, not at the top: only PostgreSQL storages get this far

    for seen in _causes(error):
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True  # SQLAlchemy's disconnect check: psycopg found the session broken
        if isinstance(seen, (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown,
                             psycopg.errors.CannotConnectNow)):
            return True  # SQLSTATE class 57 (operator intervention) on an open session
        if isinstance(seen, psycopg.OperationalError) and seen.pgconn is not None:
            # A refused connection attempt has no SQLSTATE (libpq keeps only the message), so ask
            # libpq's PQping, as `pg_isready` does: REJECT is a server up but not taking
            # connections (SQLSTATE 57P03); NO_RESPONSE a wrong address or a server down; OK a
            # server that is fine, so the user, password or database was wrong.
            options = {o.keyword.decode(): o.val.decode() for o in seen.pgconn.info if o.val is not None}
            conninfo = psycopg.conninfo.make_conninfo(**options)
            return psycopg.pq.PGconn.ping(conninfo.encode()) == psycopg.pq.Ping.REJECT
    return False


def db_retry_seconds() -> float:
    raw = os.environ.get("HPSEARCH_DB_RETRY_SECONDS", "")
    try:
        return float(raw) if raw else DEFAULT_DB_RETRY_SECONDS
    except ValueError as e:
        raise StorageError(f"HPSEARCH_DB_RETRY_SECONDS={raw!r} is not a number of seconds") from e


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's PostgreSQL storage, retried while the server restarts or drops connections.

    Every storage call is one transaction in Optuna (its `_create_scoped_session`), rolled back
    on error, so repeating a call that failed on a lost connection is safe; the one exception is
    a `create_new_trial` whose commit reached the server just before the connection died, which
    would leave one extra RUNNING trial that the heartbeat later fails. `pool_pre_ping` on the
    engine replaces pooled connections the restart killed.
    """

    def __init__(self, inner: optuna.storages.RDBStorage, *, what: str) -> None:
        # Optuna's cache of finished trials sits inside the retrying layer.
        self._cached = cached_storage(inner)
        self.inner = inner
        self._what = what
        self.retry_seconds = db_retry_seconds()

    def retrying(self, call: Callable[[], T], name: str) -> T:
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.5
        while True:
            try:
                return call()
            except Exception as e:
                if not _transient(e) or time.monotonic() + pause > deadline:
                    if _transient(e):
                        raise StorageError(
                            f"storage {self._what} unreachable for {self.retry_seconds:.0f} s "
                            f"(last error in {name}: {e.__cause__ or e}); finished trials are "
                            "kept; start the worker again once the server is back"
                        ) from e
                    raise
                logger.warning("storage %s: %s failed (%s); retrying in %.1f s", self._what,
                               name, type(e.__cause__ or e).__name__, pause)
                time.sleep(pause)
                pause = min(2 * pause, 10.0)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self._cached, name)
        return self.retrying(lambda: target(*args, **kwargs), name)

    method.__name__ = name
    return method


# Every abstract storage and heartbeat method goes through the retry; listing them from the base
# classes keeps the wrapper complete when Optuna adds one.
for _name in sorted(BaseStorage.__abstractmethods__ | BaseHeartbeat.__abstractmethods__
                    | {"get_trial", "get_best_trial", "get_n_trials", "get_study_name_from_id",
                       "get_trial_id_from_study_id_trial_number", "check_trial_is_updatable",
                       "get_trial_number_from_id", "get_trial_params", "get_trial_user_attrs",
                       "get_trial_system_attrs", "get_failed_trial_callback",
                       "get_heartbeat_stale_trial_callback"}):
    setattr(RetryingStorage, _name, _delegate(_name))
RetryingStorage.__abstractmethods__ = frozenset()
