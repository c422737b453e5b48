"""The one `flock` helper behind the SQLite single-writer lock, the study lock and the journal's
append lock."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hpsearch.errors import StorageError
from hpsearch.search.journal import FlockLock
from hpsearch.search.locks import flock
from hpsearch.search.storage import open_storage


def test_a_held_flock_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with flock(path, blocking=False), pytest.raises(BlockingIOError), flock(path, blocking=False):
        pass
    with flock(path, blocking=False):  # free again
        pass


@pytest.mark.parametrize("holder", ["flock", "journal"])
def test_a_lock_is_released_even_while_a_forked_child_still_holds_its_file(
    tmp_path: Path, holder: str
) -> None:
    """A worker that forks while holding a lock (a data-loading process, say) must not keep the
    lock held through the child's copy of the file after the worker lets go of it."""
    path = tmp_path / "study.log"
    lock = FlockLock(str(path))
    if holder == "flock":
        held = flock(lock.path, blocking=True)
        held.__enter__()
    else:
        lock.acquire()
    child = os.fork()
    if child == 0:  # the child keeps its copy of the open lock file until it is killed
        time.sleep(30)
        os._exit(0)
    try:
        if holder == "flock":
            held.__exit__(None, None, None)
        else:
            lock.release()
        with flock(lock.path, blocking=False):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_second_sqlite_writer_is_refused_by_the_same_lock(tmp_path: Path) -> None:
    handle = open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    sidecar = f"{tmp_path / 'h.db'}.hpsearch-worker"
    with (flock(sidecar, blocking=False),
          pytest.raises(StorageError, match="another worker is already writing"),
          handle.single_writer()):
        pass
    with handle.single_writer(), pytest.raises(BlockingIOError), flock(sidecar, blocking=False):
        pass
