"""Data files read safely: content hashes, IDX checks, a content-keyed unpack cache, tar extraction.

Every file a data set is read from is hashed once per process (SHA-256 of its content,
decompressed if it is a `.gz`), so a trial can record exactly what it trained on and two sources
never share an unpacked copy. Files are checked before anything reads them as data, so a
truncated download ends in an error that names the file, not in torchvision's `ValueError` or in
gzip's `EOFError` (which click reports as a bare "Aborted!").
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from hpsearch.errors import DataError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# IDX type codes (the third byte of the magic number) and their element sizes in bytes.
_IDX_ELEMENT_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
# Hashes by (path, inode, size, mtime): a file is read once per process, and a file changed
# under the same path since then is read again.
_HASHES: dict[tuple[str, int, int, int], tuple[str, int]] = {}


def combined_sha256(files: Mapping[str, str]) -> str:
    """One hash for a set of files: of their names and hashes, in the given order."""
    digest = hashlib.sha256()
    for name, sha in files.items():
        digest.update(f"{name}:{sha}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path, *, fix: str) -> str:
    """SHA-256 of a file's bytes (decompressed for `.gz`), computed once per process."""
    return _hash(path, fix=fix, idx_dims=None)[0]


def idx_sha256(path: Path, *, ndim: int, fix: str) -> tuple[str, int]:
    """SHA-256 of an IDX file's content (decompressed for `.gz`) and its first dimension (the
    number of images or labels), after checking its header against its length."""
    return _hash(path, fix=fix, idx_dims=ndim)


def _hash(path: Path, *, fix: str, idx_dims: int | None) -> tuple[str, int]:
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = _read(path, fix=fix, idx_dims=idx_dims)
        return _HASHES[key]
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; it and EOFError (a cut-off download) must not reach
        # click, which reports an EOFError as a bare "Aborted!".
        raise DataError(f"{path} is not a complete gzip file ({e or type(e).__name__}); {fix}") from e
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}; make it a readable file "
            f"(e.g. chmod a+r {path}), or {fix}"
        ) from e


def _read(path: Path, *, fix: str, idx_dims: int | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    head = b""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if len(head) < 64:
                head += chunk[:64]
            digest.update(chunk)
            length += len(chunk)
    first = _check_idx(path, head, length, ndim=idx_dims, fix=fix) if idx_dims is not None else 0
    return digest.hexdigest(), first


def _check_idx(path: Path, head: bytes, length: int, *, ndim: int, fix: str) -> int:
    """Check an IDX header (magic number, dimensions) against the content's length."""
    what = f"{path} is not a valid IDX file"
    header_length = 4 + 4 * ndim
    if length < header_length:
        raise DataError(f"{what}: it holds {length} bytes, less than its {header_length}-byte "
                        f"header (a cut-off copy?); {fix}")
    zero, type_code, dims_found = struct.unpack(">HBB", head[:4])
    if zero != 0 or type_code not in _IDX_ELEMENT_SIZE or dims_found != ndim:
        raise DataError(f"{what}: magic number 0x{head[:4].hex()}, expected 0x000008{ndim:02x} "
                        f"(unsigned bytes, {ndim} dimension(s)); {fix}")
    dims = struct.unpack(f">{ndim}I", head[4:header_length])
    expected = header_length + _IDX_ELEMENT_SIZE[type_code] * _product(dims)
    if length != expected:
        shape = "x".join(str(d) for d in dims)
        raise DataError(f"{what}: its header promises {shape} values ({expected} bytes) but it "
                        f"holds {length} bytes (cut off or padded); {fix}")
    return dims[0]


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def unpack_once(files: Mapping[str, Path], *, cache: Path, layout: str, key: str) -> Path:
    """A folder holding `layout/<name>` for each file, decompressed, under `cache/key`.

    The entry is named by the content it holds (`key`), so two sources never share one, and it
    is written under a temporary name and renamed whole: a crash or a full disk leaves no
    partial entry to be found later. Returns the folder to hand to torchvision as its root.
    """
    entry = cache / key
    if all((entry / layout / name).is_file() for name in files):
        return entry
    fix = (f"set HPSEARCH_DATA_DIR to a writable folder with free space (hpsearch unpacks "
           f"data files there), or unpack the files into {layout}/ under --data-dir yourself")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    except OSError as e:
        raise DataError(f"cannot write the data cache {cache}: {e.strerror or e}; {fix}") from e
    try:
        from torchvision.datasets.utils import extract_archive

        (staging / layout).mkdir(parents=True)
        for name, source in files.items():
            if source.suffix == ".gz":
                extract_archive(str(source), str(staging / layout))
            else:
                shutil.copyfile(source, staging / layout / name)
        try:
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():  # not another process that unpacked the same content first
                raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot unpack into the data cache {cache}: {getattr(e, 'strerror', None) or e}; "
                        f"{fix}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked %s into %s", ", ".join(str(p) for p in files.values()), entry)
    return entry


class _UnsafeMember(Exception):
    """A member the `data` filter would refuse, found by `_checked_members` on older Pythons."""


_REFUSED: tuple[type[Exception], ...] = (
    (tarfile.FilterError, _UnsafeMember) if hasattr(tarfile, "FilterError") else (_UnsafeMember,)
)


def extract_tar_safely(archive: Path, destination: Path, *, keep: str, fix: str) -> None:
    """Extract the folder `keep` of a tar archive into `destination`, refusing any member that
    would land outside it (absolute paths, `..`, links out), with tarfile's `data` filter.

    torchvision's `extract_archive` calls `extractall` without a filter, so a crafted archive
    could write anywhere. Members go to a temporary folder first, so a refused or damaged archive
    leaves nothing half-extracted.
    """
    try:
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination))
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {destination}: {e.strerror or e}; {fix}") from e
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.10.12 / 3.11.4 onwards
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging, members=_checked_members(tar))
        if not (staging / keep).is_dir():
            raise DataError(f"{archive} holds no {keep}/ folder; {fix}")
        os.rename(staging / keep, destination / keep)
    except _REFUSED as e:
        # The filter's own message names the staging folder; the member's name says more.
        member = getattr(e, "tarinfo", None)
        why = f"its member {member.name!r} is unsafe ({type(e).__name__})" if member else str(e)
        raise DataError(f"{archive} was refused: {why}; an archive must not write outside its "
                        f"folder, so nothing was extracted; {fix}") from e
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is damaged ({e or type(e).__name__}); {fix}") from e
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {destination}: {e.strerror or e}; {fix}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The `data` filter's main rules, for Pythons without it: regular files and folders only,
    every path (and link target) relative and inside the destination."""
    members = tar.getmembers()
    for m in members:
        target = os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname)) if m.issym() else m.linkname
        for name in (m.name, target) if m.issym() or m.islnk() else (m.name,):
            if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
                raise _UnsafeMember(f"its member {m.name!r} would be written outside the folder")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _UnsafeMember(f"its member {m.name!r} is a special file")
    return members
