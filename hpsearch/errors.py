"""Errors a user can fix: each message names the bad value and what to do instead."""

from __future__ import annotations


class HPSearchError(Exception):
    """Base of every error hpsearch raises on purpose; the CLI prints these without a traceback."""


class ConfigError(HPSearchError):
    """A training config or a study module's output is invalid."""


class DataError(HPSearchError):
    """A data set is unknown, missing or malformed."""


class DeviceError(HPSearchError):
    """The requested device does not exist on this machine."""


class StorageError(HPSearchError):
    """A storage URL is malformed or the storage cannot be reached."""


class StudyError(HPSearchError):
    """A study module is unknown or broken, or a stored study does not match the request."""


def choices_hint(value: object, valid: tuple[str, ...] | list[str], what: str) -> str:
    """The standard wording for 'not one of the names we know'."""
    return f"unknown {what} {value!r}; valid names: {', '.join(valid)}"


def interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a stop signal) that `error` was raised while handling, if any.

    A signal arriving inside a database call can be replaced by the library's own error: psycopg
    fails to reset a connection left mid-transaction and SQLAlchemy and Optuna wrap that, with the
    interrupt only as the `__context__`. Whoever catches Exception to fail one trial asks this
    first, so that a stop still stops the worker instead of failing a trial and going on.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def raise_if_interrupted(error: Exception) -> None:
    """Re-raise the stop signal behind `error` (`interrupt_in`), if there is one, so that the
    caller's handler for KeyboardInterrupt runs instead of its handler for one failed trial."""
    interrupt = interrupt_in(error)
    if interrupt is not None:
        raise interrupt from error
