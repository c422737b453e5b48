"""A run saved after each epoch, and resumed from there: the file format and its checks.

What a run is (model, optimizer, generators, history, best state, stopping rule) belongs to the
engine and the control loop; where its file lies and whose run it is are the caller's: it
passes a `RunCheckpoint` naming the file to write (`save_to`) and the files of the run this one
repeats (`resume_from`, newest first), each with the `owner` its header must name (a study and a
trial, for the search layer).

A file is one line of magic, one line of JSON header (the format, the owner, the SHA-256 of the
run's config, the SHA-256 and length of the payload) and the payload, the state as `torch.save`
writes it. It is written to a temporary file in the same folder, flushed to disk and renamed
over the old one (`os.replace`), so a reader sees the previous epoch's file or this one, never a
half-written one. A file that is truncated, corrupt, of another format, or whose header names
another owner or another config is ignored with a warning: the run starts from epoch 1, and no
state of another run is ever loaded (the payload is read only once the header and its checksum
agree).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hpsearch.config import TrainConfig
from hpsearch.training.results import EpochRecord

logger = logging.getLogger(__name__)

MAGIC = b"HPSEARCH-CHECKPOINT\n"
FORMAT = 1
_MAX_HEADER = 64 * 1024


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the run starts from its first epoch instead."""


def config_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CheckpointFile:
    """One run's file, and the owner (e.g. study and trial) its header names."""

    path: Path
    owner: Mapping[str, Any]

    def header(self, config: TrainConfig) -> dict[str, Any]:
        return {"format": FORMAT, **self.owner, "config_sha256": config_hash(config)}

    def write(self, config: TrainConfig, state: Mapping[str, Any]) -> None:
        """Replace the file by `state`, atomically."""
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        payload = buffer.getbuffer()
        header = {**self.header(config), "payload_sha256": hashlib.sha256(payload).hexdigest(),
                  "payload_bytes": len(payload)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own (not mkstemp's, whose mode 0600 would hide the file from workers
        # running as other users of a shared folder): the umask decides, as for any file.
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(MAGIC + json.dumps(header).encode() + b"\n")
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())  # the rename must not land before the data on a crash
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def read(self, config: TrainConfig) -> dict[str, Any]:
        """The saved state, once the header names this owner and config and the payload is
        whole; CheckpointError otherwise."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read it ({e.strerror})") from e
        if not data.startswith(MAGIC):
            raise CheckpointError("not an hpsearch checkpoint")
        line_end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
        if line_end < 0:
            raise CheckpointError("its header is cut off")
        try:
            header = json.loads(data[len(MAGIC):line_end])
        except ValueError as e:
            raise CheckpointError(f"its header does not parse ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError("its header is not a mapping")
        wanted = self.header(config)
        differs = {k: header.get(k) for k, v in wanted.items() if header.get(k) != v}
        if differs:
            raise CheckpointError(f"it belongs to another run ({_describe(differs, wanted)})")
        payload = memoryview(data)[line_end + 1:]
        if len(payload) != header.get("payload_bytes"):
            raise CheckpointError(f"it is truncated ({len(payload)} of "
                                  f"{header.get('payload_bytes')} bytes)")
        if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
            raise CheckpointError("its content does not match its checksum")
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as e:  # whatever torch makes of bad bytes
            raise CheckpointError(f"torch cannot load it ({e})") from e
        if not isinstance(state, dict):
            raise CheckpointError("its payload is not a mapping")
        return state


def _describe(differs: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v!r}, not {wanted[k]!r}" for k, v in differs.items())


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """Where a run saves itself after each epoch, and the files it may resume from.

    `on_resume` is called with the restored epochs' records once a run resumes (the search
    layer reports them to the new trial).
    """

    save_to: CheckpointFile
    resume_from: Sequence[CheckpointFile] = ()
    on_resume: Callable[[CheckpointFile, list[EpochRecord]], None] | None = None

    def resumable(self) -> bool:
        """Whether a file to resume from exists (whether it is usable is known on loading)."""
        return any(f.path.exists() for f in self.resume_from)

    def load(self, config: TrainConfig) -> tuple[CheckpointFile, dict[str, Any]] | None:
        """The newest usable state to resume from, with its file; None (warning about each
        unusable one) when there is none."""
        for candidate in self.resume_from:
            if not candidate.path.exists():
                continue
            try:
                return candidate, candidate.read(config)
            except CheckpointError as e:
                logger.warning("checkpoint %s ignored: %s; the run starts from epoch 1 unless an "
                               "older one serves", candidate.path, e)
        return None

    def save(self, config: TrainConfig, state: Mapping[str, Any]) -> None:
        """Write the state; a failure (a full disk) costs the resume point, not the run."""
        try:
            self.save_to.write(config, state)
        except OSError as e:
            logger.warning("checkpoint %s not written (%s); training goes on", self.save_to.path, e)
