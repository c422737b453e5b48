"""Optuna's journal file, kept readable through a full disk, a killed writer and read-only media.

Optuna's `JournalFileBackend` works around three faults here, each without patching Optuna:
- A write cut short (a full disk, a crash mid-append) leaves a torn last line. Optuna's readers
  skip a torn *last* line, but the next append lands after it and glues the two into one line
  that no reader, Optuna's included, can parse again. `JournalFile` never appends after a torn
  line: it sets the file aside as a backup and cuts the tail back to the last complete record,
  and it undoes its own partial writes. A file already glued that way is mended on opening.
- Optuna's default lock is a symlink with a 30 s grace period, so a writer SIGKILLed while
  holding it stalls every other writer for 30 s. `FlockLock` is a kernel `flock`, freed the
  moment its holder dies.
- Optuna's backend creates the file for append when it is opened, so a read-only journal cannot
  even be read. `JournalFileReader` only reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from optuna.storages.journal import JournalFileBackend

from hpsearch.errors import StorageError
from hpsearch.search.locks import lock_file, unlock_file
from hpsearch.search.optuna_private import BaseJournalFileLock

logger = logging.getLogger(__name__)

# Beside the journal; not Optuna's `PATH.lock` (its symlink lock), nor hpsearch's study lock
# (`PATH.hpsearch-lock`), which is held around appends and would deadlock against this one.
APPEND_LOCK_SUFFIX = ".hpsearch-append-lock"
# Space set aside beside the journal and given back when the disk fills, so that the worker whose
# write failed can still record its trial as failed instead of leaving it RUNNING with no owner.
RESERVE_SUFFIX = ".hpsearch-reserve"
RESERVE_BYTES = 64 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class FlockLock(BaseJournalFileLock):
    """The journal's append lock as a kernel `flock` on a sidecar file.

    The kernel drops the lock when the holding process exits, however it exits, so a writer
    killed mid-append stalls nobody (Optuna's symlink lock waits out a 30 s grace period).
    Every writer of one journal must use this lock: Optuna's own client (`optuna create-study`,
    say) takes the symlink lock instead and is not excluded by it.
    """

    def __init__(self, journal: str) -> None:
        self.path = journal + APPEND_LOCK_SUFFIX
        # Optuna serialises a process's storage calls, but the descriptor is per thread anyway so
        # that two threads appending at once exclude each other like two processes would.
        self._held = threading.local()

    def acquire(self) -> bool:
        self._held.fd = lock_file(self.path, blocking=True)
        return True

    def release(self) -> None:
        fd = getattr(self._held, "fd", None)
        if fd is None:
            raise RuntimeError(f"{self.path} is not locked by this thread")
        self._held.fd = None
        unlock_file(fd)


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend that never appends after a torn line.

    On opening and before every append (both under the append lock) a torn last line is set
    aside: the whole file is copied to a backup beside it, then cut back to the last complete
    record. A failed append (a full disk) is cut back to where it started and raised as one
    `StorageError`, so the file stays readable and the next writer finds no torn tail.
    """

    def __init__(self, path: str) -> None:
        self._create(path)
        super().__init__(path, lock_obj=FlockLock(path))
        self._reserve = Path(path + RESERVE_SUFFIX)
        with self._locked():
            cut_torn_tail(Path(path))
            _set_aside(self._reserve)

    @staticmethod
    def _create(path: str) -> None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666))
            # The lock file must be creatable too, or the first append would fail instead.
            os.close(os.open(path + APPEND_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError as e:
            raise write_error(path, e, "open") from e

    @contextlib.contextmanager
    def _locked(self) -> Any:
        try:
            self._lock.acquire()
        except OSError as e:
            raise write_error(self._file_path, e, "lock") from e
        try:
            yield
        finally:
            self._lock.release()

    def mend(self) -> Path | None:
        """Mend lines glued together by an older writer (see `mend_glued_lines`), under the lock."""
        with self._locked():
            return mend_glued_lines(Path(self._file_path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # The same encoding as Optuna's own `append_logs`, so either can read what the other wrote.
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        with self._locked():
            # Another writer may have died mid-append since we looked (cheap: one byte is read).
            cut_torn_tail(Path(self._file_path), quick=True)
            try:
                fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as e:
                raise write_error(self._file_path, e, "append") from e
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as e:
                    # Undo the partial record; shrinking a file needs no free space.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    if e.errno in _DISK_FULL:
                        with contextlib.suppress(OSError):
                            self._reserve.unlink()
                    raise write_error(self._file_path, e, "append") from e
            finally:
                os.close(fd)


class JournalFileReader(JournalFileBackend):
    """Optuna's journal file backend for reading only: it creates, locks and repairs nothing, so
    it reads a journal on read-only media or in a folder it may not write. (A torn last line is
    skipped by Optuna's reader.)"""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise StorageError(f"storage journal:{path}: no such journal file; check the path")
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise StorageError(
                f"storage journal:{path}: cannot read it ({e.strerror}); check its permissions"
            ) from e
        # With an existing file, Optuna's constructor only records the path and the lock object.
        super().__init__(path, lock_obj=FlockLock(path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise StorageError(f"storage journal:{self._file_path} was opened read-only")


def _set_aside(reserve: Path) -> None:
    """Create the space reserve if it is missing; a disk too full for it goes without."""
    if reserve.exists():
        return
    try:
        with open(reserve, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            reserve.unlink()


def write_error(path: str, error: OSError, doing: str) -> StorageError:
    """One clear error for a journal that cannot be written, naming the file and the fix."""
    where = Path(path).resolve().parent
    if error.errno in _DISK_FULL:
        return StorageError(
            f"storage journal:{path}: the disk is full ({error.strerror}) on {where}; every "
            "complete record is kept and the file stays readable. Free some space (or move the "
            "journal elsewhere) and run the same command again to resume"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(
            f"storage journal:{path}: cannot {doing} it ({error.strerror}); workers need to write "
            f"the journal and files beside it in {where}: pick a writable folder, or fix its "
            "permissions (status, best, report and export only read it)"
        )
    return StorageError(f"storage journal:{path}: cannot {doing} it ({error.strerror})")


def cut_torn_tail(path: Path, *, quick: bool = False) -> Path | None:
    """Set aside a torn tail: back up the file beside it, then cut it back to its last complete
    record. Returns the backup, or None when the file ends with a complete record.

    The caller holds the append lock. `quick` only checks the final newline, enough between our
    own appends; otherwise the last line must also be valid JSON. Cutting the tail is safe for
    readers in other processes: Optuna's reader never records the offset of a torn line.
    """
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            cut = _torn_tail(f, size, quick=quick)
            if cut is None:
                return None
            backup = _backup(path)
            try:
                shutil.copy2(path, backup)
            except OSError as e:
                with contextlib.suppress(OSError):
                    backup.unlink()
                raise StorageError(
                    f"storage journal:{path} ends with an incomplete record (a disk that was "
                    f"full, or a writer killed mid-write), and no backup could be written before "
                    f"removing it ({e.strerror}); free space on {path.resolve().parent} and run "
                    "again"
                ) from e
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(str(path), e, "repair") from e
    logger.warning(
        "journal %s ended with an incomplete record (%d bytes; a disk that was full, or a writer "
        "killed mid-write): removed it, keeping every complete record; the file as it was is "
        "saved as %s", path, size - cut, backup)
    return backup


def mend_glued_lines(path: Path) -> Path | None:
    """Repair a journal in which a record was appended after a torn line (by Optuna's writer, or
    hpsearch before it checked): the torn fragment is dropped and the complete record glued to
    its end kept. Returns the backup of the file as it was, or None if no line needed mending.

    The caller holds the append lock. The mended file replaces the old one by rename; Optuna's
    readers in other processes could not read past the damaged line, so none holds an offset
    beyond it.
    """
    try:
        lines = path.read_bytes().splitlines(keepends=True)
        mended: list[bytes] = []
        dropped = 0
        for line in lines:
            if line.endswith(b"\n") and _parses(line):
                mended.append(line)
                continue
            dropped += 1
            start = line.rfind(b'{"op_code":')
            while start > 0 and not (line.endswith(b"\n") and _parses(line[start:])):
                start = line.rfind(b'{"op_code":', 0, start)
            if start > 0:
                mended.append(line[start:])
        if not dropped:
            return None
        backup = _backup(path)
        shutil.copy2(path, backup)
        fresh = path.with_name(path.name + ".mending")
        with open(fresh, "wb") as f:
            f.write(b"".join(mended))
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, fresh)
        os.replace(fresh, path)
    except OSError as e:
        raise write_error(str(path), e, "repair") from e
    logger.warning(
        "journal %s had %d damaged line(s) (a record appended after an incomplete one, by an "
        "older writer): removed the incomplete parts, keeping every complete record; the file as "
        "it was is saved as %s", path, dropped, backup)
    return backup


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _torn_tail(f: BinaryIO, size: int, *, quick: bool) -> int | None:
    """Where the first torn line at the end of the file starts, or None if there is none."""
    end = size
    while end > 0:
        f.seek(end - 1)
        if f.read(1) != b"\n":
            end = _line_start(f, end)
            continue
        if quick:
            break
        start = _line_start(f, end - 1)
        f.seek(start)
        try:
            json.loads(f.read(end - start))
            break
        except ValueError:
            end = start
    return None if end == size else end


def _line_start(f: BinaryIO, end: int) -> int:
    """The offset just after the last newline before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        chunk = f.read(step)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def _backup(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n else ""))
        if not candidate.exists():
            return candidate
    raise StorageError(f"storage journal:{path}: too many backups beside it; remove old ones")
