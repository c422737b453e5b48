"""Shared fixtures: storages (SQLite, journal file, real PostgreSQL), tiny data, a CLI runner."""

from __future__ import annotations

import gzip
import os
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from click.testing import CliRunner

from hpsearch.data import DataDirs, RawData, make_splits, register_dataset

# Where tests find PostgreSQL: an admin URL allowed to CREATE and DROP DATABASE.
POSTGRES_ADMIN = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
# Without a server the PostgreSQL tests skip, unless this is 1: `make test` (and so CI) sets it,
# so that a run without the server fails instead of passing with those tests left out.
REQUIRE_POSTGRES = "HPSEARCH_REQUIRE_POSTGRES"


@pytest.fixture(scope="session", autouse=True)
def _offline_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test downloads anything, and none reads or writes the user's data cache: the CLI (and
    the workers it starts) by its environment, the library by its default cache folder (a
    library call that may download passes `DataDirs(download=False)`, see `offline`).

    Session-scoped, so that it is in force before module-scoped fixtures load their data too (a
    function-scoped one let test_population's module fixture unpack into ~/.cache/hpsearch).
    """
    cache = tmp_path_factory.getbasetemp() / "data-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPSEARCH_DOWNLOAD", "0")
        patch.setenv("HPSEARCH_DATA_DIR", str(cache))
        patch.delenv("HPSEARCH_STORAGE", raising=False)
        patch.setattr("hpsearch.data.loading.default_cache_dir", lambda: cache)
        yield


@pytest.fixture
def offline(tmp_path: Path) -> Callable[[Path | None], DataDirs]:
    """`DataDirs` for a library call that must not download: --data-dir `folder`, a fresh cache."""

    def dirs(folder: Path | None) -> DataDirs:
        return DataDirs(data_dir=folder, cache_dir=tmp_path / "offline-cache", download=False)

    return dirs


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def journal_url(tmp_path: Path) -> str:
    return f"journal:{tmp_path / 'study.log'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the real server, dropped afterwards."""
    name = f"hpsearch_test_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_ADMIN.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(
                f"PostgreSQL is needed at {admin} ({REQUIRE_POSTGRES}=1; set HPSEARCH_TEST_POSTGRES "
                f"to another admin URL): {e}"
            )
        pytest.skip(f"no PostgreSQL at {admin}; set HPSEARCH_TEST_POSTGRES to an admin URL to run these")
    base = admin.rsplit("/", 1)[0]
    yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url" if request.param != "postgresql" else "postgres_url"))


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def synthetic_images(n: int, *, size: int = 28, channels: int = 1, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images a small net can learn: each class lights its own 6x6 patch, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    images = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, :, 2 + 6 * row : 8 + 6 * row, 2 + 6 * col : 8 + 6 * col] = 230
    return images, labels.astype(np.int64)


def write_idx(folder: Path, *, n_train: int = 600, n_test: int = 200, compress: bool = True) -> Path:
    """The four MNIST files in IDX format, as distributed (gzipped) or unpacked."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, seed=seed)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, 28, 28) + images[:, 0].tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes(),
        }
        for name, payload in files.items():
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return folder


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --data-dir holding tiny MNIST-format files (works for mnist and fashion-mnist)."""
    return write_idx(tmp_path_factory.mktemp("mnist-files"))


@register_dataset("tiny-cifar")
def _tiny_cifar(data_dir: Path, download: bool) -> RawData:
    """32x32 RGB stand-in for CIFAR-10, for the AlexNet path."""
    x_train, y_train = synthetic_images(300, size=32, channels=3, seed=2)
    x_test, y_test = synthetic_images(100, size=32, channels=3, seed=3)
    return RawData(
        torch.from_numpy(x_train), torch.from_numpy(y_train),
        torch.from_numpy(x_test), torch.from_numpy(y_test),
        classes=tuple(str(c) for c in range(10)),
    )


@pytest.fixture
def iris_splits():
    from hpsearch.data import load_raw

    return make_splits(load_raw("iris"), name="iris", val_fraction=0.2, split_seed=0)


def interrupted_once_study(*, trial: int, epochs: int) -> str:
    """A study module whose trial `trial` raises KeyboardInterrupt once (a stand-in for Ctrl-C or
    a kill); the retry of that trial and every other trial train normally."""
    return f'''
"""Trial {trial} is interrupted once (a stand-in for Ctrl-C or a kill)."""
from pathlib import Path
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), epochs={epochs})
PRUNER = "none"
FLAG = Path(__file__).with_suffix(".interrupted")

def suggest(trial, base):
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    if trial.number == {trial} and not FLAG.exists():
        FLAG.write_text("once")
        raise KeyboardInterrupt
    return base.replace(lr=lr)
'''
