from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hpsearch.data import DataCache, DataDirs, load_raw, make_splits
from hpsearch.errors import DataError
from tests.conftest import write_idx


def test_iris_split_is_stratified_deterministic_and_standardised_on_train_only() -> None:
    raw = load_raw("iris")
    a = make_splits(raw, name="iris", val_fraction=0.2, split_seed=3)
    b = make_splits(raw, name="iris", val_fraction=0.2, split_seed=3)
    c = make_splits(raw, name="iris", val_fraction=0.2, split_seed=4)
    assert len(raw.train_y) == 120 and len(raw.test_y) == 30
    assert len(a.train) == 96 and len(a.val) == 24 and a.test is None
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.bincount(a.val.y).tolist() == [8, 8, 8]  # every class in validation
    assert a.train.x.mean(dim=0).abs().max() < 1e-5  # fitted on train...
    assert a.val.x.mean(dim=0).abs().max() > 1e-3  # ...so validation is not exactly centred


def test_final_splits_train_on_everything_and_test_on_the_official_test_set() -> None:
    raw = load_raw("digits")
    final = make_splits(raw, name="digits", val_fraction=0.1, split_seed=0, final=True)
    assert final.val is None
    assert len(final.train) == len(raw.train_y) and len(final.test) == len(raw.test_y)
    assert final.input_shape == (1, 8, 8) and final.num_classes == 10


def test_parity_holds_every_pattern_with_its_parity() -> None:
    raw = load_raw("parity-4")
    assert raw.train_x.shape == (16, 4)
    assert torch.equal(raw.train_y, raw.train_x.sum(dim=1).long() % 2)
    splits = make_splits(raw, name="parity-4", val_fraction=0.1, split_seed=0)
    assert len(splits.train) == len(splits.val) == 16


def test_mnist_files_are_read_from_a_flat_data_dir(mnist_dir: Path) -> None:
    raw = load_raw("mnist", mnist_dir)
    assert raw.train_x.shape == (600, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert raw.test_y.shape == (200,)
    assert not (mnist_dir / "MNIST").exists()  # the user's folder is left as it was
    splits = make_splits(raw, name="mnist", val_fraction=0.1, split_seed=0)
    assert len(splits.val) == 60


def test_uncompressed_idx_files_work_too(tmp_path: Path) -> None:
    folder = write_idx(tmp_path / "plain", n_train=100, n_test=50, compress=False)
    assert load_raw("fashion-mnist", folder).train_x.shape == (100, 1, 28, 28)


def test_missing_files_name_what_was_looked_for_where_and_the_fix(
    tmp_path: Path, offline: Callable[[Path | None], DataDirs]
) -> None:
    with pytest.raises(DataError) as info:
        load_raw("mnist", offline(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    assert "--data-dir" in message and "HPSEARCH_DOWNLOAD=0" in message


def test_missing_cifar_says_which_files(tmp_path: Path, offline: Callable[[Path | None], DataDirs]) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_raw("cifar10", offline(tmp_path))


def test_unknown_data_set_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="fashion-mnist.*parity-N"):
        load_raw("imagenet")
    with pytest.raises(DataError, match="2 to 20 bits"):
        load_raw("parity-40")


def test_cache_loads_a_split_once() -> None:
    cache = DataCache(None, torch.device("cpu"))
    first = cache.get("iris", val_fraction=0.1, split_seed=0)
    assert cache.get("iris", val_fraction=0.1, split_seed=0) is first
    assert cache.get("iris", val_fraction=0.1, split_seed=1) is not first
