"""Storage URLs to Optuna storages, and the one place their errors are translated.

Three backends, all Optuna's own:
- `sqlite:///path.db` (the default, `sqlite:///hpsearch.db`): one worker on one machine.
- `journal:path.log`: Optuna's journal file, for several workers on one machine without a server.
- `postgresql://user@host/db` (driver psycopg 3): many workers on many machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_FORMS = (
    "sqlite:///PATH.db (one worker), journal:PATH.log (several workers on one machine), "
    "postgresql://USER@HOST:PORT/DB (several machines)"
)
DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial (RDB storages)
MAX_RETRIES = 2  # a trial whose worker keeps dying (killed for memory, say) is given up after this


@dataclasses.dataclass
class StorageHandle:
    """An opened storage and what hpsearch needs to know about it."""

    url: str  # as the user gave it, password hidden
    kind: str  # "sqlite", "postgresql" or "journal"
    storage: optuna.storages.BaseStorage
    path: Path | None = None  # the file behind sqlite and journal storages

    @property
    def heartbeat_interval(self) -> int | None:
        if isinstance(self.storage, optuna.storages.RDBStorage):
            return self.storage.heartbeat_interval
        return None

    @contextlib.contextmanager
    def lock(self, study_name: str) -> Iterator[None]:
        """Mutual exclusion between workers of one study, for count-then-ask.

        PostgreSQL uses an advisory lock, which the server frees if the holder dies; the file
        backends use `flock` on a sidecar file, which the kernel frees likewise.
        """
        if self.kind == "postgresql":
            assert isinstance(self.storage, optuna.storages.RDBStorage)
            key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
            with self.storage.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
        else:
            assert self.path is not None
            with open(f"{self.path}.hpsearch-lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str | None, *, heartbeat: int | None = DEFAULT_HEARTBEAT) -> StorageHandle:
    """Open (creating tables or files as needed) the storage behind `url`.

    `heartbeat` (seconds) turns on Optuna's heartbeat for RDB storages, so a trial whose worker
    died is failed after 3 missed beats and its parameters queued again.
    """
    url = (url or DEFAULT_STORAGE).strip()
    if url.startswith("journal:"):
        return _open_journal(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(f"cannot parse storage URL {url!r}; use one of: {STORAGE_FORMS}") from e
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
            storage = _rdb_storage(parsed.render_as_string(hide_password=False), engine_kwargs, heartbeat)
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
    return StorageHandle(url=shown, kind=kind, storage=storage, path=path if kind == "sqlite" else None)


def _rdb_storage(url: str, engine_kwargs: dict[str, object], heartbeat: int | None) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat,
        grace_period=3 * heartbeat if heartbeat else None,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            if heartbeat
            else None
        ),
    )


def _open_journal(url: str) -> StorageHandle:
    raw = url[len("journal:") :]
    path = Path(raw[2:] if raw.startswith("//") else raw)
    if not raw or str(path) in ("", "."):
        raise StorageError(f"storage {url!r} names no file; use journal:PATH.log")
    if not path.parent.resolve().is_dir():
        raise StorageError(
            f"storage {url!r}: folder {path.parent} does not exist; create it or pick another path"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"storage {url!r}: cannot read and write {path}; check its permissions")
    backend = JournalFileBackend(str(path))
    try:
        storage = JournalStorage(backend)
    except (ValueError, OSError) as e:
        raise StorageError(f"storage {url!r}: {path} is not an Optuna journal file ({e})") from e
    return StorageHandle(url=f"journal:{path}", kind="journal", storage=storage, path=path)
