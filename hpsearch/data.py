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
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hpsearch.errors import DataError, choices_hint

logger = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
        return _parity(bits)
    check_dataset_name(name)
    return _LOADERS[name](Path(data_dir) if data_dir else default_data_dir(), download_allowed())


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
    return _standardised(name, raw.classes, train, val, test, final=final)


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
        folds.append(_standardised(name, raw.classes, train, val, None, final=False))
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
    final: bool,
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


def _sklearn_split(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> RawData:
    """scikit-learn's toy sets have no official test set; hold out 20%, stratified, seed 0."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return RawData(
        torch.as_tensor(x_train, dtype=torch.float32),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
        classes=classes,
    )


@register_dataset("iris")
def _iris(data_dir: Path, download: bool) -> RawData:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return _sklearn_split(bunch.data, bunch.target, tuple(bunch.target_names))


@register_dataset("digits")
def _digits(data_dir: Path, download: bool) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    return _sklearn_split(images, bunch.target, tuple(str(c) for c in bunch.target_names))


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _load_mnist_style(
    name: str, dataset_cls: type, data_dir: Path, download: bool, extra_dirs: tuple[Path, ...],
    source: str,
) -> RawData:
    """Read the four IDX files with torchvision, from wherever a user may keep them.

    torchvision reads `<root>/<Class>/raw/<file>` (its own download layout). Files kept flat
    (`<dir>/<file>` or `<file>.gz`, as distributed and as Debian installs them) are unpacked into
    that layout under the cache folder (HPSEARCH_DATA_DIR), leaving the user's folder untouched.
    """
    cache = default_data_dir()
    looked_in: list[Path] = []
    root = None
    for candidate in dict.fromkeys((data_dir, cache)):
        looked_in.append(candidate / dataset_cls.__name__ / "raw")
        if _has_idx(candidate / dataset_cls.__name__ / "raw", compressed=False):
            root = candidate
            break
    if root is None:
        for folder in (data_dir, *extra_dirs):
            looked_in.append(folder)
            if _has_idx(folder, compressed=True):
                _unpack_idx(folder, cache / dataset_cls.__name__ / "raw")
                root = cache
                break
    download_note = " Downloading is off (HPSEARCH_DOWNLOAD=0)."
    if root is None and download:
        try:
            dataset_cls(str(data_dir), train=True, download=True)
            root = data_dir
        except (RuntimeError, OSError) as e:
            download_note = f" Downloading with torchvision failed: {str(e).splitlines()[0]}."
    if root is None:
        places = ", ".join(str(p) for p in looked_in)
        raise DataError(
            f"data set {name!r} not found: looked for {', '.join(_IDX_FILES)} (or .gz) in "
            f"{places}.{download_note} Fix: pass --data-dir DIR where DIR holds those four "
            f"files, or run once on a machine with internet access (torchvision downloads them "
            f"into --data-dir); source: {source}"
        )
    train = dataset_cls(str(root), train=True, download=False)
    test = dataset_cls(str(root), train=False, download=False)
    return RawData(
        train.data.unsqueeze(1),
        train.targets.long(),
        test.data.unsqueeze(1),
        test.targets.long(),
        classes=tuple(train.classes),
    )


def _has_idx(folder: Path, *, compressed: bool) -> bool:
    if compressed:
        return all(_idx_file(folder, f) is not None for f in _IDX_FILES)
    return all((folder / f).is_file() for f in _IDX_FILES)


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _unpack_idx(source: Path, raw_dir: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    raw_dir.mkdir(parents=True, exist_ok=True)
    for name in _IDX_FILES:
        found = _idx_file(source, name)
        assert found is not None
        if found.suffix == ".gz":
            extract_archive(str(found), str(raw_dir))
        else:
            shutil.copyfile(found, raw_dir / name)
    logger.info("unpacked IDX files from %s into %s", source, raw_dir)


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
    from torchvision.datasets.utils import extract_archive

    folder = data_dir / CIFAR10.base_folder
    archive = data_dir / CIFAR10.filename
    if not folder.is_dir() and archive.is_file():
        extract_archive(str(archive), str(data_dir))
    try:
        train = CIFAR10(str(data_dir), train=True, download=download and not folder.is_dir())
        test = CIFAR10(str(data_dir), train=False, download=False)
    except (RuntimeError, OSError) as e:
        raise DataError(
            f"data set 'cifar10' not found or damaged: looked for {folder} (the five "
            f"data_batch_N files, test_batch and batches.meta) and {archive}. "
            f"torchvision said: {str(e).splitlines()[0]}. Fix: pass --data-dir DIR where DIR "
            f"holds cifar-10-python.tar.gz or its unpacked {CIFAR10.base_folder}/ folder "
            "(from https://www.cs.toronto.edu/~kriz/cifar.html), or run once with internet access"
        ) from e

    def images(ds: CIFAR10) -> torch.Tensor:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW

    return RawData(
        images(train),
        torch.as_tensor(train.targets, dtype=torch.long),
        images(test),
        torch.as_tensor(test.targets, dtype=torch.long),
        classes=tuple(train.classes),
    )
