"""Data sets by name, split deterministically and kept as tensors where the work is.

A loader returns the *official* train and test sets as CPU tensors (`RawData`). `make_splits`
turns them into the splits a run needs: during a search, train and validation carved from the
official training set (the test set is not even loaded into the result); for the final
evaluation, the whole official training set and the official test set. Standardisation is
fitted on the training split only. `make_folds` gives the k splits of a cross-validated search,
each standardised on its own training part.
"""

from __future__ import annotations

# Importing the built-in loaders registers them.
from hpsearch.data import builtin as _builtin  # noqa: F401
from hpsearch.data.builtin import DEBIAN_FASHION_MNIST
from hpsearch.data.loading import (
    DataCache,
    DataDirs,
    DataPlace,
    Loader,
    check_dataset_name,
    data_dirs,
    dataset_names,
    default_cache_dir,
    load_raw,
    register_cached_dataset,
    register_dataset,
)
from hpsearch.data.source import DataSource, check_same_data, describe_data
from hpsearch.data.splits import (
    CV_MAX_TRAIN,
    RawData,
    Split,
    Splits,
    check_folds,
    make_folds,
    make_splits,
)

__all__ = [
    "CV_MAX_TRAIN", "DEBIAN_FASHION_MNIST", "DataCache", "DataDirs", "DataPlace", "DataSource",
    "Loader", "RawData", "Split", "Splits", "check_dataset_name", "check_folds", "check_same_data",
    "data_dirs", "dataset_names", "default_cache_dir", "describe_data", "load_raw", "make_folds",
    "make_splits", "register_cached_dataset", "register_dataset",
]
