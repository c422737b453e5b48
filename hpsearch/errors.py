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
