"""Kernel `flock` on a sidecar file: the one lock hpsearch's file storages use.

The kernel drops a `flock` when its holder exits, however it exits, so a worker killed while
holding one stalls nobody.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def lock_file(path: str | Path, *, blocking: bool) -> int:
    """Create `path` if needed and take its exclusive `flock`; the descriptor to `unlock_file`.

    Raises `BlockingIOError` if `blocking` is false and another holder has it, and `OSError` if
    the file cannot be opened or created.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock_file(fd: int) -> None:
    # Unlock before closing: a process forked while the lock was held shares the open file, and
    # closing this descriptor alone would leave the lock held by the child's copy.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def flock(path: str | Path, *, blocking: bool) -> Iterator[None]:
    """Hold the exclusive `flock` of `path` (created if needed) inside the block."""
    fd = lock_file(path, blocking=blocking)
    try:
        yield
    finally:
        unlock_file(fd)
