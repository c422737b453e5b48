"""hpsearch: hyperparameter studies of PyTorch models on Optuna.

From Python (a notebook), `import hpsearch` gives the functions of `hpsearch.api`:
`run_study`, `train`, `final_evaluation`, `export_best`, `trials_dataframe`, `trend_table`,
`figures`, `answer`, `write_report`, `load_study`. They are imported on first use, so
`import hpsearch` stays light (no torch, Optuna or plotly until one is called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.config import TrainConfig
from hpsearch.errors import HPSearchError

if TYPE_CHECKING:
    from hpsearch.api import (
        FinalEvaluation,
        answer,
        export_best,
        figures,
        final_evaluation,
        load_study,
        run_study,
        train,
        trend_table,
        trials_dataframe,
        write_report,
    )

__version__ = "0.1.0"

_API = ("FinalEvaluation", "answer", "export_best", "figures", "final_evaluation", "load_study",
        "run_study", "train", "trend_table", "trials_dataframe", "write_report")

__all__ = ["FinalEvaluation", "HPSearchError", "TrainConfig", "__version__", "answer",
           "export_best", "figures", "final_evaluation", "load_study", "run_study", "train",
           "trend_table", "trials_dataframe", "write_report"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from hpsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
