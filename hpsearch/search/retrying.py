"""PostgreSQL storage calls retried while the server restarts or drops connections.

Which errors are worth a retry is decided on their types (SQLAlchemy's, psycopg's) and on the
server's state (libpq's ping), never on message text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage

from hpsearch.errors import StorageError
from hpsearch.search.optuna_private import BaseHeartbeat, cached_storage

logger = logging.getLogger(__name__)

# How long a PostgreSQL worker keeps retrying while the server is unreachable (a restart, a
# failover) before it gives up; the CLI reads HPSEARCH_DB_RETRY_SECONDS.
DEFAULT_DB_RETRY_SECONDS = 300.0

T = TypeVar("T")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from (Optuna and SQLAlchemy wrap the driver's)."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        orig = seen.orig if isinstance(seen, sqlalchemy.exc.DBAPIError) else None
        seen = seen.__cause__ or seen.__context__ or orig


def transient(error: BaseException) -> bool:
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


def server_went_away(error: BaseException) -> bool:
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


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's PostgreSQL storage, retried while the server restarts or drops connections.

    Every storage call is one transaction in Optuna (its `_create_scoped_session`), rolled back
    on error, so repeating a call that failed on a lost connection is safe; the one exception is
    a `create_new_trial` whose commit reached the server just before the connection died, which
    would leave one extra RUNNING trial that the heartbeat later fails. `pool_pre_ping` on the
    engine replaces pooled connections the restart killed.
    """

    def __init__(
        self, inner: optuna.storages.RDBStorage, *, what: str,
        retry_seconds: float = DEFAULT_DB_RETRY_SECONDS,
    ) -> None:
        # Optuna's cache of finished trials sits inside the retrying layer.
        self._cached = cached_storage(inner)
        self.inner = inner
        self._what = what
        self.retry_seconds = retry_seconds

    def retrying(self, call: Callable[[], T], name: str) -> T:
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.5
        while True:
            try:
                return call()
            except Exception as e:
                if not transient(e) or time.monotonic() + pause > deadline:
                    if transient(e):
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
