"""The built-in data sets: scikit-learn's toy sets, MNIST-style IDX files and CIFAR-10."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from hpsearch.data.files import (
    combined_sha256,
    extract_tar_safely,
    file_sha256,
    idx_sha256,
    unpack_once,
)
from hpsearch.data.loading import DataDirs, register_cached_dataset, register_dataset
from hpsearch.data.source import DataSource, with_tensor_source
from hpsearch.data.splits import RawData
from hpsearch.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
    return with_tensor_source(raw, f"scikit-learn {sklearn.__version__} {what}")


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
    name: str, dataset_cls: type, dirs: DataDirs, extra_dirs: tuple[Path, ...], source: str,
) -> RawData:
    """Read the four IDX files with torchvision, from the folder the user names.

    torchvision reads `<root>/<Class>/raw/<file>` (its own download layout), used as it is when
    the data folder holds it. Files kept flat (`<dir>/<file>` or `<file>.gz`, as distributed and
    as Debian installs them) are unpacked into that layout under the cache folder
    (`dirs.cache_dir`, HPSEARCH_DATA_DIR), in an entry named by their content, leaving the user's folder untouched:
    a folder named with --data-dir is the only place looked at, and no cached copy of other
    files can stand in for it. Without --data-dir, `extra_dirs` are looked at too.
    """
    cache, data_dir, download = dirs.cache_dir, dirs.folder, dirs.download
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


@register_cached_dataset("mnist")
def _mnist(dirs: DataDirs) -> RawData:
    from torchvision.datasets import MNIST

    return _load_mnist_style("mnist", MNIST, dirs, (), "http://yann.lecun.com/exdb/mnist/")


@register_cached_dataset("fashion-mnist")
def _fashion_mnist(dirs: DataDirs) -> RawData:
    from torchvision.datasets import FashionMNIST

    return _load_mnist_style(
        "fashion-mnist", FashionMNIST, dirs, (DEBIAN_FASHION_MNIST,),
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
