"""Data sets by name, split deterministically and kept as tensors where the work is.

A loader returns the *official* train and test sets as CPU tensors (`RawData`). `make_splits`
turns them into the splits a run needs: during a search, train and validation carved from the
official training set (the test set is not even loaded into the result); for the final
evaluation, the whole official training set and the official test set. Standardisation is
fitted on the training split only. `make_folds` gives the k splits of a cross-validated search,
each standardised on its own training part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.data.files import (
    combined_sha256,
    extract_tar_safely,
    file_sha256,
    idx_sha256,
    unpack_once,
)
from hpsearch.errors import DataError, choices_hint

logger = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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


@dataclasses.dataclass(frozen=True)
class RawData:
    """Official train and test sets, on the CPU, before any split or scaling."""

    train_x: torch.Tensor  # (N, C, H, W) images or (N, F) features, any real dtype
    train_y: torch.Tensor  # (N,) int64 class indices
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    # Parity asks whether a network can represent the function at all, so every pattern is
    # in train, validation and test alike.
    memorise: bool = False
    source: DataSource | None = None  # None from a registered loader; load_raw fills it in


@dataclasses.dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclasses.dataclass(frozen=True)
class Splits:
    """What the trainer sees: standardised float32 inputs and int64 labels."""

    name: str
    train: Split
    val: Split | None  # None in the final evaluation, which trains on train + validation
    test: Split | None  # None during a search, which must never look at the test set
    classes: tuple[str, ...]
    source: DataSource | None = None

    def provenance(self) -> dict[str, Any]:
        """What a trial or a final run records about its data: the source and the split sizes."""
        sizes = {"train": len(self.train), "val": len(self.val) if self.val is not None else None,
                 "test": len(self.test) if self.test is not None else None}
        return {**(self.source.to_dict() if self.source else {}), "sizes": sizes}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device) -> Splits:
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device) if self.val is not None else None,
            test=self.test.to(device) if self.test is not None else None,
        )


Loader = Callable[[Path, bool], RawData]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Add a loader `(data_dir, download) -> RawData` under `name` (also how tests add tiny sets)."""

    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    return sorted(_LOADERS) + ["parity-N (N = 2..20)"]


def check_dataset_name(name: str) -> None:
    if name not in _LOADERS and _parity_bits(name) is None:
        raise DataError(choices_hint(name, dataset_names(), "data set"))


def default_data_dir() -> Path:
    return Path(os.environ.get("HPSEARCH_DATA_DIR", Path.home() / ".cache" / "hpsearch"))


def download_allowed() -> bool:
    """Tests and air-gapped machines set HPSEARCH_DOWNLOAD=0 to fail fast instead of trying."""
    return os.environ.get("HPSEARCH_DOWNLOAD", "1") not in ("0", "false", "no")


def load_raw(name: str, data_dir: Path | None = None) -> RawData:
    bits = _parity_bits(name)
    if bits is not None:
        return _with_tensor_source(_parity(bits), f"generated {name}")
    check_dataset_name(name)
    loader = _LOADERS[name]
    raw = loader(Path(data_dir) if data_dir else default_data_dir(), download_allowed())
    if raw.source is None:
        raw = _with_tensor_source(raw, f"loader {loader.__module__}.{loader.__qualname__}")
    return raw


def _with_tensor_source(raw: RawData, location: str) -> RawData:
    """Data made in memory is fingerprinted by its tensors (shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for t in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return dataclasses.replace(raw, source=DataSource("built-in", location, digest.hexdigest()))


def make_splits(
    raw: RawData, *, name: str, val_fraction: float, split_seed: int, final: bool = False
) -> Splits:
    """Search splits (train/val from the official train set) or final splits (train/test)."""
    if raw.memorise:
        train = val = test = Split(raw.train_x, raw.train_y)
    elif final:
        train, val, test = Split(raw.train_x, raw.train_y), None, Split(raw.test_x, raw.test_y)
    else:
        train, val = _split_off_validation(raw, val_fraction, split_seed)
        test = None
    return _standardised(name, raw.classes, train, val, test, final=final, source=raw.source)


# Cross-validation is for sets where one validation split is too small to rank trials: under
# this many official training examples (iris 120, digits 1,437), a study's `CV = k` applies.
CV_MAX_TRAIN = 2000


def make_folds(raw: RawData, *, name: str, k: int, split_seed: int) -> list[Splits]:
    """The k search splits of stratified k-fold cross-validation of the official training set.

    Every training example is in exactly one fold's validation part; each fold is standardised
    on its own training part, so no fold's validation data leaks into its scaling.
    """
    from sklearn.model_selection import StratifiedKFold

    check_folds(raw, name=name, k=k)
    folder = StratifiedKFold(n_splits=k, shuffle=True, random_state=split_seed)
    folds = []
    for train_idx, val_idx in folder.split(np.zeros(len(raw.train_y)), raw.train_y.numpy()):
        train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        train = Split(raw.train_x[train_idx], raw.train_y[train_idx])
        val = Split(raw.train_x[val_idx], raw.train_y[val_idx])
        folds.append(_standardised(name, raw.classes, train, val, None, final=False,
                                   source=raw.source))
    return folds


def check_folds(raw: RawData, *, name: str, k: int) -> None:
    """Refuse k-fold cross-validation that cannot be stratified or does not apply."""
    if raw.memorise:
        raise DataError(
            f"data set {name!r} is memorised (train = validation = test), so cross-validation "
            "does not apply; run it with --cv 0"
        )
    n, smallest = int(raw.train_y.shape[0]), int(torch.bincount(raw.train_y).min())
    if not 2 <= k <= smallest:
        raise DataError(
            f"{k}-fold cross-validation of {name!r}: its {n} training examples have {smallest} "
            f"in the smallest class, so stratified folds need k from 2 to {smallest}; pass "
            f"--cv K in that range, or --cv 0 for one validation split"
        )


def _standardised(
    name: str, classes: tuple[str, ...], train: Split, val: Split | None, test: Split | None, *,
    final: bool, source: DataSource | None,
) -> Splits:
    mean, std = _standardisation(train.x)

    def scale(split: Split | None) -> Split | None:
        if split is None:
            return None
        return Split(((split.x.float() - mean) / std).contiguous(), split.y.long())

    scaled_train = scale(train)
    assert scaled_train is not None
    return Splits(
        name=name,
        train=scaled_train,
        val=None if final else scale(val),
        test=scale(test) if final else None,
        classes=classes,
        source=source,
    )


class DataCache:
    """Per-worker memory of loaded splits, so a data set is read and moved once, not per trial."""

    def __init__(self, data_dir: Path | None, device: torch.device) -> None:
        self.data_dir = data_dir
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


def _split_off_validation(raw: RawData, val_fraction: float, split_seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    n, n_classes = int(raw.train_y.shape[0]), len(raw.classes)
    n_val = round(n * val_fraction)
    if n_val < n_classes or n - n_val < n_classes:
        raise DataError(
            f"val_fraction={val_fraction} leaves {n_val} validation and {n - n_val} training "
            f"examples out of {n}, too few for {n_classes} classes; choose a "
            "val_fraction between 0.05 and 0.5"
        )
    # Stratified, so tiny sets such as Iris keep every class in both splits.
    train_idx, val_idx = train_test_split(
        np.arange(n), test_size=n_val, random_state=split_seed, stratify=raw.train_y.numpy()
    )
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return (
        Split(raw.train_x[train_idx], raw.train_y[train_idx]),
        Split(raw.train_x[val_idx], raw.train_y[val_idx]),
    )


def _standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel statistics for images, per-feature for tables, from the training split."""
    x = x.float()
    if x.dim() == 4:
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    else:
        mean, std = x.mean(dim=0, keepdim=True), x.std(dim=0, keepdim=True)
    # A constant feature (a blank border pixel, say) carries nothing; leave it at zero.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean, std


# --- built-in data sets -------------------------------------------------------------------


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


def _sklearn_split(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], *, what: str) -> RawData:
    """scikit-learn's toy sets have no official test set; hold out 20%, stratified, seed 0."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    import sklearn

    raw = RawData(
        torch.as_tensor(x_train, dtype=torch.float32),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
        classes=classes,
    )
    return _with_tensor_source(raw, f"scikit-learn {sklearn.__version__} {what}")


@register_dataset("iris")
def _iris(data_dir: Path, download: bool) -> RawData:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return _sklearn_split(bunch.data, bunch.target, tuple(bunch.target_names), what="load_iris")


@register_dataset("digits")
def _digits(data_dir: Path, download: bool) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    return _sklearn_split(images, bunch.target, tuple(str(c) for c in bunch.target_names),
                          what="load_digits")


# The four IDX files and their number of dimensions (images N x 28 x 28, labels N).
_IDX_FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}


def _load_mnist_style(
    name: str, dataset_cls: type, data_dir: Path, download: bool, extra_dirs: tuple[Path, ...],
    source: str,
) -> RawData:
    """Read the four IDX files with torchvision, from the folder the user names.

    torchvision reads `<root>/<Class>/raw/<file>` (its own download layout), used as it is when
    the data folder holds it. Files kept flat (`<dir>/<file>` or `<file>.gz`, as distributed and
    as Debian installs them) are unpacked into that layout under the cache folder
    (HPSEARCH_DATA_DIR), in an entry named by their content, leaving the user's folder untouched:
    a folder named with --data-dir is the only place looked at, and no cached copy of other
    files can stand in for it. Without --data-dir, `extra_dirs` are looked at too.
    """
    cache = default_data_dir()
    layout = f"{dataset_cls.__name__}/raw"
    fix = (f"replace it with a complete copy (source: {source}), or pass --data-dir DIR where DIR "
           "holds the four files")
    named = data_dir.resolve() != cache.resolve()
    looked_in = [data_dir / layout, data_dir, *(() if named else extra_dirs)]
    found = _find_idx(looked_in)
    kind = "download" if found and found[0] == data_dir / layout and not named else "folder"
    download_note = " Downloading is off (HPSEARCH_DOWNLOAD=0)."
    if found is None and download:
        try:
            dataset_cls(str(data_dir), train=True, download=True)
            found, kind = _find_idx([data_dir / layout]), "download"
        except (RuntimeError, OSError) as e:
            download_note = f" Downloading with torchvision failed: {str(e).splitlines()[0]}."
    if found is None:
        places = ", ".join(str(p) for p in looked_in)
        raise DataError(
            f"data set {name!r} not found: looked for {', '.join(_IDX_FILES)} (or .gz) in "
            f"{places}.{download_note} Fix: pass --data-dir DIR where DIR holds those four "
            f"files, or run once on a machine with internet access (torchvision downloads them "
            f"into --data-dir); source: {source}"
        )
    folder, files = found
    hashes = _checked_idx_hashes(files, fix=fix)
    sha = combined_sha256(hashes)
    if folder == data_dir / layout:
        root = data_dir
    else:
        root = unpack_once(files, cache=cache / dataset_cls.__name__, layout=layout, key=sha[:16])
        unpacked = {f: root / layout / f for f in _IDX_FILES}
        if combined_sha256(_checked_idx_hashes(unpacked, fix=f"delete {root} and run again")) != sha:
            raise DataError(f"the data cache entry {root} does not hold the files it was made "
                            f"from ({folder}); delete {root} and run again")
    train = dataset_cls(str(root), train=True, download=False)
    test = dataset_cls(str(root), train=False, download=False)
    return RawData(
        train.data.unsqueeze(1),
        train.targets.long(),
        test.data.unsqueeze(1),
        test.targets.long(),
        classes=tuple(train.classes),
        source=DataSource(kind, str(folder.absolute()), sha, hashes),
    )


def _find_idx(folders: list[Path]) -> tuple[Path, dict[str, Path]] | None:
    """The first folder holding all four IDX files, and their paths.

    torchvision's own layout (the first folder) must hold them unpacked; flat folders may hold
    each one unpacked or as `.gz`. Anything at a file's name counts, so a directory or an
    unreadable file there is reported by name rather than passed over.
    """
    for i, folder in enumerate(folders):
        files = {}
        for name in _IDX_FILES:
            candidates = (folder / name,) if i == 0 else (folder / name, folder / f"{name}.gz")
            files[name] = next((c for c in candidates if c.exists()), None)
        if all(files.values()):
            return folder, {k: v for k, v in files.items() if v is not None}
    return None


def _checked_idx_hashes(files: Mapping[str, Path], *, fix: str) -> dict[str, str]:
    """Each file's content hash, after checking its header, and that images and labels agree."""
    hashes, counts = {}, {}
    for name, path in files.items():
        hashes[name], counts[name] = idx_sha256(path, ndim=_IDX_FILES[name], fix=fix)
    for prefix in ("train", "t10k"):
        images, labels = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
        if counts[images] != counts[labels]:
            raise DataError(f"{files[images]} holds {counts[images]} images but {files[labels]} "
                            f"holds {counts[labels]} labels; {fix}")
    return hashes


@register_dataset("mnist")
def _mnist(data_dir: Path, download: bool) -> RawData:
    from torchvision.datasets import MNIST

    return _load_mnist_style(
        "mnist", MNIST, data_dir, download, (), "http://yann.lecun.com/exdb/mnist/"
    )


@register_dataset("fashion-mnist")
def _fashion_mnist(data_dir: Path, download: bool) -> RawData:
    from torchvision.datasets import FashionMNIST

    return _load_mnist_style(
        "fashion-mnist", FashionMNIST, data_dir, download, (DEBIAN_FASHION_MNIST,),
        "https://github.com/zalandoresearch/fashion-mnist (or Debian's dataset-fashion-mnist)",
    )


@register_dataset("cifar10")
def _cifar10(data_dir: Path, download: bool) -> RawData:
    from torchvision.datasets import CIFAR10

    folder = data_dir / CIFAR10.base_folder
    archive = data_dir / CIFAR10.filename
    fix = (f"pass --data-dir DIR where DIR holds cifar-10-python.tar.gz or its unpacked "
           f"{CIFAR10.base_folder}/ folder (from https://www.cs.toronto.edu/~kriz/cifar.html), "
           "or run once with internet access")
    kind = "folder" if folder.is_dir() or archive.is_file() else "download"
    if not folder.is_dir() and archive.is_file():
        # Before torchvision sees the archive: its extract_archive has no member filter.
        extract_tar_safely(archive, data_dir, keep=CIFAR10.base_folder, fix=fix)
    try:
        train = CIFAR10(str(data_dir), train=True, download=download and not folder.is_dir())
        test = CIFAR10(str(data_dir), train=False, download=False)
    except (RuntimeError, OSError) as e:
        raise DataError(
            f"data set 'cifar10' not found or damaged: looked for {folder} (the five "
            f"data_batch_N files, test_batch and batches.meta) and {archive}. "
            f"torchvision said: {str(e).splitlines()[0]}. Fix: {fix}"
        ) from e
    names = [n for n, _ in (*CIFAR10.train_list, *CIFAR10.test_list)] + [CIFAR10.meta["filename"]]
    hashes = {n: file_sha256(folder / n, fix=fix) for n in names}

    def images(ds: CIFAR10) -> torch.Tensor:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW

    return RawData(
        images(train),
        torch.as_tensor(train.targets, dtype=torch.long),
        images(test),
        torch.as_tensor(test.targets, dtype=torch.long),
        classes=tuple(train.classes),
        source=DataSource(kind, str(folder.absolute()), combined_sha256(hashes), hashes),
    )
