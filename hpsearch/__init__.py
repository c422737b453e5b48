"""hpsearch: hyperparameter studies of PyTorch models on Optuna."""

from __future__ import annotations

from hpsearch.config import TrainConfig
from hpsearch.errors import HPSearchError

__version__ = "0.1.0"

__all__ = ["HPSearchError", "TrainConfig", "__version__"]
