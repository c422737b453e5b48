"""Official sets to the splits a run needs: train/validation, final train/test, k folds."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from hpsearch.data.source import DataSource
from hpsearch.errors import DataError


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

