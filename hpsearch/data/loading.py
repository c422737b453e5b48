"""Data sets by name: the loader registry, generated parity sets, and the per-worker cache."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from hpsearch.data.source import with_tensor_source
from hpsearch.data.splits import RawData, Splits, make_folds, make_splits
from hpsearch.errors import DataError, choices_hint

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where downloads and unpacked files go unless told otherwise (the CLI's HPSEARCH_DATA_DIR)."""
    return Path.home() / ".cache" / "hpsearch"


@dataclasses.dataclass(frozen=True)
class DataDirs:
    """Where data sets are read from and unpacked to, and whether they may be downloaded.

    The CLI fills it from --data-dir, HPSEARCH_DATA_DIR and HPSEARCH_DOWNLOAD; the library never
    reads the environment.
    """

    data_dir: Path | None = None  # --data-dir: when given, the only folder looked at
    # (A lambda, so that the default is looked up when a DataDirs is made, not at import.)
    cache_dir: Path = dataclasses.field(default_factory=lambda: default_cache_dir())
    download: bool = True  # False on machines without internet: fail at once with the fix

    @property
    def folder(self) -> Path:
        """The folder a loader reads: --data-dir, or the cache."""
        return Path(self.data_dir) if self.data_dir else self.cache_dir


# What a data set argument may be: a folder (the --data-dir of old callers), or everything.
DataPlace = DataDirs | Path | None


def data_dirs(place: DataPlace) -> DataDirs:
    return place if isinstance(place, DataDirs) else DataDirs(data_dir=place)


Loader = Callable[[Path, bool], RawData]  # (folder, download) -> the official sets
_LOADERS: dict[str, Callable[[DataDirs], RawData]] = {}  # all take DataDirs here
_NAMES: dict[str, str] = {}  # the loader's own name, which fingerprints data made in memory


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Add a loader `(folder, download) -> RawData` under `name` (also how tests add tiny sets)."""

    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = lambda dirs: loader(dirs.folder, dirs.download)
        _NAMES[name] = f"{loader.__module__}.{loader.__qualname__}"
        return loader

    return decorate


DirsLoader = Callable[[DataDirs], RawData]


def register_cached_dataset(name: str) -> Callable[[DirsLoader], DirsLoader]:
    """Add a loader that takes the whole `DataDirs`: the built-in IDX loaders unpack files
    from a named --data-dir into the cache."""

    def decorate(loader: DirsLoader) -> DirsLoader:
        _LOADERS[name] = loader
        _NAMES[name] = f"{loader.__module__}.{loader.__qualname__}"
        return loader

    return decorate


def dataset_names() -> list[str]:
    return sorted(_LOADERS) + ["parity-N (N = 2..20)"]


def check_dataset_name(name: str) -> None:
    if name not in _LOADERS and _parity_bits(name) is None:
        raise DataError(choices_hint(name, dataset_names(), "data set"))


def load_raw(name: str, data_dir: DataPlace = None) -> RawData:
    """The official sets of data set `name`, read from `data_dir` (a folder, or `DataDirs`)."""
    bits = _parity_bits(name)
    if bits is not None:
        return with_tensor_source(_parity(bits), f"generated {name}")
    check_dataset_name(name)
    raw = _LOADERS[name](data_dirs(data_dir))
    if raw.source is None:
        raw = with_tensor_source(raw, f"loader {_NAMES[name]}")
    return raw



def _parity_bits(name: str) -> int | None:
    match = re.fullmatch(r"parity-(\d+)", name)
    if match is None:
        return None
    bits = int(match.group(1))
    if not 2 <= bits <= 20:
        raise DataError(f"data set {name!r}: parity needs 2 to 20 bits, e.g. parity-8")
    return bits


def _parity(bits: int) -> RawData:
    patterns = torch.arange(2**bits).unsqueeze(1)
    x = ((patterns >> torch.arange(bits)) & 1).float()
    y = x.sum(dim=1).long() % 2
    return RawData(x, y, x, y, classes=("even", "odd"), memorise=True)



class DataCache:
    """Per-worker memory of loaded splits, so a data set is read and moved once, not per trial."""

    def __init__(self, data_dir: DataPlace, device: torch.device) -> None:
        self.data_dir = data_dirs(data_dir)
        self.device = device
        self._splits: dict[tuple[str, float, int, bool], Splits] = {}
        self._folds: dict[tuple[str, int, int], list[Splits]] = {}

    def get(self, name: str, *, val_fraction: float, split_seed: int, final: bool = False) -> Splits:
        key = (name, val_fraction, split_seed, final)
        if key not in self._splits:
            raw = load_raw(name, self.data_dir)
            splits = make_splits(
                raw, name=name, val_fraction=val_fraction, split_seed=split_seed, final=final
            )
            self._splits[key] = splits.to(self.device)
            logger.info("loaded %s (%d train examples) onto %s", name, len(splits.train), self.device)
        return self._splits[key]

    def folds(self, name: str, *, k: int, split_seed: int) -> list[Splits]:
        """The k cross-validation splits (`make_folds`), made and moved once per worker."""
        key = (name, k, split_seed)
        if key not in self._folds:
            folds = make_folds(load_raw(name, self.data_dir), name=name, k=k, split_seed=split_seed)
            self._folds[key] = [fold.to(self.device) for fold in folds]
            logger.info("made %d folds of %s onto %s", k, name, self.device)
        return self._folds[key]

