"""Where a data set came from, fingerprinted by content, and the check that two runs saw one."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpsearch.errors import DataError

if TYPE_CHECKING:
    from hpsearch.data.splits import RawData


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a data set came from and a fingerprint of its content, to tell two apart."""

    kind: str  # "folder", "download" (torchvision's, in its own layout) or "built-in"
    location: str  # the folder read, or what generated the data
    sha256: str  # of the files' content (decompressed) in a fixed order, or of the tensors
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name: SHA-256

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "sha256": self.sha256,
                "files": dict(self.files)}

    @staticmethod
    def from_dict(record: Any) -> DataSource | None:
        """The source in a stored record, or None for records written before there was one."""
        if not isinstance(record, Mapping) or not isinstance(record.get("sha256"), str):
            return None
        return DataSource(kind=str(record.get("kind")), location=str(record.get("location")),
                          sha256=record["sha256"], files=dict(record.get("files") or {}))

    def describe(self) -> str:
        return f"{self.kind} {self.location} (sha256 {self.sha256[:16]})"


def describe_data(record: Any) -> str:
    """One line for a stored data record (`Splits.provenance`): source, hash and sizes."""
    source = DataSource.from_dict(record)
    if source is None:
        return "not recorded (stored before hpsearch recorded its data)"
    sizes = record.get("sizes") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sizes.items() if v is not None)
    if shown and record.get("folds"):
        shown += f" in each of {record['folds']} folds"
    return f"{source.describe()}" + (f"; {shown}" if shown else "")


def check_same_data(
    recorded: Any,
    now: DataSource,
    *,
    recorded_by: str,
    allow_other_data: bool,
    now_by: str = "the data loaded now",
    fix: str = "pass --data-dir with the data it recorded",
) -> str | None:
    """Refuse to mix data: `recorded` (a stored data record) must have `now`'s content hash.

    Returns a note for the output when they differ and `allow_other_data` permits it, or when
    nothing was recorded; None when they agree.
    """
    stored = DataSource.from_dict(recorded)
    if stored is None:
        return f"{recorded_by} records no data fingerprint (made before hpsearch recorded one); not checked"
    if stored.sha256 == now.sha256:
        return None
    difference = (f"{recorded_by} recorded data with sha256 {stored.sha256} ({stored.kind} "
                  f"{stored.location}), but {now_by} has sha256 {now.sha256} ({now.kind} "
                  f"{now.location})")
    if not allow_other_data:
        raise DataError(f"{difference}; {fix}, or --allow-other-data to go on anyway (results on "
                        "other data do not compare)")
    return f"{difference}; going on because of --allow-other-data"



def with_tensor_source(raw: RawData, location: str) -> RawData:
    """Data made in memory is fingerprinted by its tensors (shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for t in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return dataclasses.replace(raw, source=DataSource("built-in", location, digest.hexdigest()))

