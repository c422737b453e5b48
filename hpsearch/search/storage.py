"""Storage URLs to Optuna storages, and the one place their errors are translated.

Three backends, all Optuna's own:
- `sqlite:///path.db` (the default, `sqlite:///hpsearch.db`): one worker on one machine.
- `journal:path.log`: Optuna's journal file, for several workers on one machine without a server.
- `postgresql://user@host/db` (driver psycopg 3): many workers on many machines.
"""


from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages.journal import JournalStorage
from sqlalchemy.engine import URL, make_url

from hpsearch.errors import StorageError
from hpsearch.search.journal import JournalFile, JournalFileReader
from hpsearch.search.locks import flock
from hpsearch.search.rdb import (
    ATTR_BEAT,
    ATTR_REPEATS,
    MAX_RETRIES,
    open_rdb,
    repeats,
    requeue,
    translate_sqlite_errors,
)
from hpsearch.search.retrying import DEFAULT_DB_RETRY_SECONDS, RetryingStorage

__all__ = [
    "ATTR_BEAT", "ATTR_REPEATS", "DEFAULT_DB_RETRY_SECONDS", "DEFAULT_HEARTBEAT", "DEFAULT_STORAGE",
    "MAX_RETRIES", "STORAGE_FORMS", "RetryingStorage", "StorageHandle", "open_storage", "repeats", "requeue",
    "storage_file",
]

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_FORMS = (
    "sqlite:///PATH.db (one worker), journal:PATH.log (several workers on one machine), "
    "postgresql://USER@HOST:PORT/DB (several machines)"
)
# Seconds between heartbeats of a running trial; the CLI reads HPSEARCH_HEARTBEAT_SECONDS.
DEFAULT_HEARTBEAT = 10


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


def open_storage(
    url: str | None, *, heartbeat: int | None = DEFAULT_HEARTBEAT, readonly: bool = False,
    db_retry_seconds: float = DEFAULT_DB_RETRY_SECONDS,
) -> StorageHandle:
    """Open (creating tables or files as needed) the storage behind `url`.

    `heartbeat` (seconds, None for none) turns on Optuna's heartbeat for RDB storages, so a trial
    whose worker died is failed after 3 missed beats and its parameters queued again (hpsearch
    beats on the journal itself). `readonly` opens a journal file without creating or locking
    anything, so it reads from read-only media. A PostgreSQL storage retries its calls for
    `db_retry_seconds` while the server is unreachable.
    """
    if heartbeat is not None and heartbeat < 1:
        raise StorageError(f"heartbeat {heartbeat!r}: give a whole number of seconds >= 1")
    url = (url or DEFAULT_STORAGE).strip()
    if url.startswith("journal:"):
        handle = _open_journal(url, readonly=readonly)
        handle.journal_heartbeat = heartbeat
        return handle
    parsed = _parse(url)
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path: Path | None = _sqlite_path(parsed, shown)
        # Wait for a lock rather than fail at once when the dashboard reads while a worker writes.
        engine_kwargs: dict[str, object] = {"connect_args": {"timeout": 60}}
    elif backend == "postgresql":
        parsed, path = _postgres_url(parsed, shown), None
        # pre_ping replaces connections the server dropped (a restart, an idle timeout).
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 1800}
    else:
        raise StorageError(f"storage {shown!r}: unsupported backend {backend!r}; use one of: {STORAGE_FORMS}")
    storage = _open_rdb_storage(parsed, shown, engine_kwargs, heartbeat)
    if backend == "sqlite":
        translate_sqlite_errors(storage.engine, shown)
        return StorageHandle(url=shown, kind="sqlite", storage=storage, path=path)
    # (mypy cannot see the methods that the loop below RetryingStorage fills in.)
    retrying = RetryingStorage(storage, what=shown,  # type: ignore[abstract]
                               retry_seconds=db_retry_seconds)
    return StorageHandle(url=shown, kind="postgresql", storage=retrying)


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(f"cannot parse storage URL {_mask(url)!r}; use one of: {STORAGE_FORMS}") from e
    except ValueError as e:  # SQLAlchemy reads the port with int()
        raise StorageError(
            f"storage URL {_mask(url)!r}: the port is not a number ({e}); use "
            "postgresql://USER@HOST:PORT/DB with a numeric PORT, or leave :PORT out for 5432"
        ) from e


def _sqlite_path(parsed: URL, shown: str) -> Path:
    path = Path(parsed.database or "")
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError(f"storage {shown!r} keeps nothing; give a file: sqlite:///hpsearch.db")
    if not path.parent.resolve().is_dir():
        raise StorageError(
            f"storage {shown!r}: folder {path.parent} does not exist; create it or pick "
            "another path (sqlite:///relative.db or sqlite:////absolute/path.db)"
        )
    return path


def _postgres_url(parsed: URL, shown: str) -> URL:
    if not parsed.database:
        # libpq would fall back to a database named after the OS user and create Optuna's
        # tables in it.
        raise StorageError(
            f"storage {shown!r} names no database; give one: postgresql://USER@HOST:PORT/DB "
            "(create it first, e.g. `createdb DB`)"
        )
    if parsed.get_driver_name() in ("psycopg2", "") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 ships with hpsearch
    return parsed


def _open_rdb_storage(
    parsed: URL, shown: str, engine_kwargs: dict[str, object], heartbeat: int | None
) -> optuna.storages.RDBStorage:
    postgres = parsed.get_backend_name() == "postgresql"
    try:
        with warnings.catch_warnings():
            # Heartbeats and their retry callback are marked experimental since Optuna 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            full_url = parsed.render_as_string(hide_password=False)
            return open_rdb(full_url, engine_kwargs, heartbeat, postgres=postgres)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError) as e:
        cause = e.__cause__ or e
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        hint = (
            "check that the server is running and the user, host, port and database are right"
            if postgres
            else "check that the file is a SQLite database you can write"
        )
        raise StorageError(f"cannot open storage {shown!r}: {reason}; {hint}") from e
    except RuntimeError as e:  # Optuna's schema-version check
        raise StorageError(
            f"storage {shown!r}: {e}; upgrade it with `optuna storage upgrade --storage URL`"
        ) from e


def _mask(url: str) -> str:
    """`url` with its password hidden, for a URL SQLAlchemy could not parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)



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


def open_existing_storage(
    url: str, *, hint: str, db_retry_seconds: float = DEFAULT_DB_RETRY_SECONDS,
) -> StorageHandle:
    """The storage for a reader (best, status, report, export, the API's loaders), read-only: a
    SQLite or journal file that does not exist is an error (`hint` says what to do), not a new
    empty file."""
    path = storage_file(url)
    if path is not None and not path.exists():
        raise StorageError(f"storage {url!r}: {path} does not exist (nothing was created); {hint}")
    return open_storage(url, heartbeat=None, readonly=True, db_retry_seconds=db_retry_seconds)


def server_url(url: str | None, *, for_what: str) -> str:
    """`url` checked, without connecting, as a PostgreSQL URL fit to write into a file that
    workers on other machines read (`for_what` says which): a SQLite or journal file lives on
    one machine, and a password would sit in that file (and in the job's environment)."""
    url = (url or DEFAULT_STORAGE).strip()
    parsed = _parse(url) if not url.startswith("journal:") else None
    shown = parsed.render_as_string(hide_password=True) if parsed is not None else url
    if parsed is None or parsed.get_backend_name() != "postgresql":
        raise StorageError(
            f"storage {shown!r}: {for_what} run on other machines, which cannot share a SQLite "
            "or journal file; give the PostgreSQL they all reach: --storage "
            "postgresql://USER@HOST:PORT/DB (or HPSEARCH_STORAGE)")
    _postgres_url(parsed, shown)  # names a database
    if parsed.password is not None:
        raise StorageError(
            f"storage {shown!r}: the password would be written into the file that starts "
            f"{for_what}; give the URL without it and put the password in ~/.pgpass on the nodes (libpq reads it: "
            "HOST:PORT:DB:USER:PASSWORD, mode 600)")
    return url
