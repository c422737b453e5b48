"""hpsearch from Python, for notebooks: the service the command line gives, as functions.

    import hpsearch
    study = hpsearch.run_study("iris_mlp", trials=8, epochs=30, cv=0, storage="sqlite:///nb.db")
    hpsearch.trials_dataframe(study)            # one row per trial, config.* columns flattened
    hpsearch.trend_table(study)                 # best and median metric per parameter value
    hpsearch.figures(study)["importances"]      # plotly figures, displayed inline
    hpsearch.export_best(study, "best.yaml", top=2)
    hpsearch.final_evaluation("best.yaml", seeds=3)   # test error with intervals, comparisons
    hpsearch.train(hpsearch.TrainConfig(dataset="digits", epochs=5))  # one config, its history

Each runs what the command of the same purpose runs (`run`, `export`, `final`, `report`):
`run_study` goes through `StudyOptions`, `prepare_run` and `run_study` of search/runs.py, the
worker loop and the one trial path. Progress shows as `tqdm.auto` bars (a widget in Jupyter) or,
when stderr is a log file, one line per finished trial. Interrupting the kernel (or Ctrl-C)
stops the study as it stops `hpsearch run`: the running trial is stored as interrupted and
queued again, and calling `run_study` again with the same arguments resumes it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.analysis.export import export_document, load_exported, write_document
from hpsearch.analysis.final import markdown, run_final
from hpsearch.analysis.pareto import first_objective_view
from hpsearch.analysis.report import Report, build_report, level_parameters, parameter_table
from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, DataDirs
from hpsearch.devices import resolve_device
from hpsearch.errors import StudyError
from hpsearch.search.outcomes import interrupt_reason, outcome_reason, trial_outcome
from hpsearch.search.record import TrialRecord, load_existing_study, study_metric
from hpsearch.search.reports import Progress, TrialOutcome, describe, finished_line
from hpsearch.search.runs import StudyOptions, prepare_run
from hpsearch.search.runs import run_study as _run_study
from hpsearch.search.storage import DEFAULT_STORAGE, open_existing_storage, open_storage
from hpsearch.search.worker import BudgetState
from hpsearch.training import EpochRecord, TrainResult
from hpsearch.training import train as _train

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["FinalEvaluation", "answer", "export_best", "figures", "final_evaluation",
           "load_study", "run_study", "train", "trend_table", "trials_dataframe", "write_report"]

def run_study(
    study: str, *, storage: str = DEFAULT_STORAGE, progress: bool = True,
    cache_dir: Path | None = None, download: bool = True, **options: Any,
) -> optuna.Study:
    """Create or resume the study of module `study` (a built-in name, or a path to your own
    module) and run trials until it holds `trials` finished ones; return the `optuna.Study`.

    `options` are those of `hpsearch run`, as keywords: trials, timeout, study_name, dataset,
    data_dir, epochs, device, seed, sampler, pruner, cv, allow_other_data, population, compile,
    bf16, allow_mixed_precision, checkpoint_dir (a folder: a trial whose run was interrupted
    resumes from its last epoch). `cache_dir` is where downloads go (~/.cache/hpsearch).
    Interrupted (KeyboardInterrupt), the running trial is queued again and the interrupt raised
    again; call `run_study` with the same arguments to resume.
    """
    unknown = sorted(set(options) - set(StudyOptions.__dataclass_fields__))
    if unknown:
        valid = ", ".join(list(StudyOptions.__dataclass_fields__)[1:])
        raise StudyError(f"unknown option(s) {', '.join(unknown)}; valid ones: {valid}")
    chosen = StudyOptions(study=str(study), **options)
    chosen.check()
    dirs = _dirs(None, cache_dir, download)
    run = prepare_run(chosen, cache_dir=dirs.cache_dir, download=download,
                      open_storage=lambda: open_storage(storage))
    bar = _TrialBar(run.budget, name=run.settings.study_name, enabled=progress)
    try:
        with _quiet_optuna(progress):
            _run_study(run, chosen, sampler_seed=chosen.seed, on_trial=bar.on_trial,
                       on_progress=bar.on_progress)
    except KeyboardInterrupt as e:
        print(f"{interrupt_reason(e)}: finished trials are kept in {run.handle.url}; the running "
              "trial is queued again. Call run_study again to resume.", file=sys.stderr)
        raise
    finally:
        bar.close()
    return load_existing_study(run.handle, run.settings.study_name)


def train(
    config: TrainConfig, *, device: str = "auto", data_dir: Path | None = None,
    cache_dir: Path | None = None, download: bool = True, test: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train one config on its data set's search split (train and validation) with the trainer
    every trial uses; the result holds the per-epoch `history`. With `test=True`, train on the
    whole official training set and evaluate the test set (`result.test`), as `final` does
    (the config then needs `stopping="fixed"`)."""
    torch_device = resolve_device(device)
    dirs = _dirs(data_dir, cache_dir, download)
    splits = DataCache(dirs, torch_device).get(
        config.dataset, val_fraction=config.val_fraction, split_seed=config.split_seed, final=test)
    from tqdm.auto import tqdm

    with tqdm(total=config.epochs, desc=f"{config.dataset}/{config.model}", unit="epoch",
              disable=not progress or not _interactive()) as bar:
        def on_epoch(record: EpochRecord) -> None:
            bar.update(1)
            bar.set_postfix(train_loss=record.train_loss, val_error=record.val_error)

        return _train(config, splits, device=torch_device, on_epoch=on_epoch, evaluate_test=test)


class FinalEvaluation:
    """What `hpsearch final` writes, from Python: `document` is its JSON; `configs` and
    `comparisons` are tables of it; a notebook shows the Markdown tables `final` prints."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @property
    def markdown(self) -> str:
        return markdown(self.document)

    def _repr_markdown_(self) -> str:
        return self.markdown

    def configs(self) -> pd.DataFrame:
        """One row per config: mean test error over seeds with its 95% t-interval, and the
        error of the seeds' vote with its 95% Wilson interval."""
        import pandas as pd

        rows = []
        for c in self.document["configs"]:
            s = c["summary"] or {}
            low, high = s.get("error_t_ci") or (None, None)
            vote_low, vote_high = s.get("vote_error_ci") or (None, None)
            rows.append({"config": c["label"], "dataset": c["dataset"],
                         "seeds_ok": s.get("seeds_ok", 0), "mean_error": s.get("mean_error"),
                         "error_ci_low": low, "error_ci_high": high, "mean_f1": s.get("mean_f1"),
                         "vote_error": s.get("vote_error"), "vote_ci_low": vote_low,
                         "vote_ci_high": vote_high})
        return pd.DataFrame(rows)

    def comparisons(self) -> pd.DataFrame:
        """Each pair: exact McNemar p-value, Holm-corrected, and the verdict."""
        import pandas as pd

        keys = ("a", "b", "only_a_correct", "only_b_correct", "p_value", "p_holm", "verdict")
        return pd.DataFrame([{k: p[k] for k in keys} for p in self.document["comparisons"]],
                            columns=list(keys))


def final_evaluation(
    export_file: str | Path, *, seeds: int = 5, device: str = "auto", data_dir: Path | None = None,
    cache_dir: Path | None = None, download: bool = True, allow_other_data: bool = False,
) -> FinalEvaluation:
    """Train each config of an export file (`export_best`, `hpsearch export`) `seeds` times on
    the whole official training set and test it, with intervals and pairwise comparisons."""
    if seeds < 1:
        raise StudyError(f"seeds={seeds!r}: train each config at least once")
    path = Path(export_file)
    dirs = _dirs(data_dir, cache_dir, download)
    return FinalEvaluation(run_final(load_exported(path), seeds=seeds, device=resolve_device(device),
                                     data_dir=dirs, export_path=path,
                                     allow_other_data=allow_other_data))


def load_study(study: optuna.Study | str, *, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """A stored study by name (read-only), or `study` itself when it is one already."""
    return _load(study, storage)[0]


def _load(study: optuna.Study | str, storage: str) -> tuple[optuna.Study, str]:
    """The study and the (masked) storage URL it was read from, for provenance."""
    if isinstance(study, optuna.Study):
        return study, ""
    handle = open_existing_storage(storage, hint=(
        f"give the storage your study was run into (paths are relative to {Path.cwd()}), or "
        "create a study first with hpsearch.run_study(STUDY, storage=...)"))
    return load_existing_study(handle, study), handle.url


def export_best(
    study: optuna.Study | str, path: str | Path, *, top: int | None = 3,
    storage: str = DEFAULT_STORAGE, allow_other_data: bool = False, by: str | None = None,
) -> Path:
    """Write the best `top` configs, ready for `final_evaluation`, as `hpsearch export` does: of
    a multi-objective study the first `top` of its Pareto front (`top=None`: all of it), or the
    `top` best by the metric `by`."""
    loaded, url = _load(study, storage)
    write_document(export_document(loaded, top=top, storage_url=url, by=by,
                                   allow_other_data=allow_other_data), Path(path))
    return Path(path)


def trials_dataframe(study: optuna.Study | str, *, storage: str = DEFAULT_STORAGE) -> pd.DataFrame:
    """One row per trial: Optuna's columns (number, value, state, params_*, times), the outcome
    and its reason, and each resolved config field as a `config.*` column (nested ones dotted)."""
    import pandas as pd

    loaded = load_study(study, storage=storage)
    frame = loaded.trials_dataframe(attrs=("number", "value", "state", "params",
                                           "datetime_start", "datetime_complete", "duration"))
    if frame.empty:
        return frame
    trials = loaded.get_trials(deepcopy=False)
    metric = study_metric(loaded).name  # Optuna names it value, or value_<metric> once named
    frame = frame.rename(columns={"value": metric, f"value_{metric}": metric})
    frame.insert(3, "outcome", [trial_outcome(t) for t in trials])
    frame.insert(4, "reason", [outcome_reason(t) for t in trials])
    configs = pd.json_normalize([dict(TrialRecord.from_trial(t).stored_config or {})
                                 for t in trials]).add_prefix("config.")
    return pd.concat([frame, configs.set_index(frame.index)], axis=1)


def trend_table(study: optuna.Study | str, *, storage: str = DEFAULT_STORAGE) -> pd.DataFrame:
    """The report's trend tables in one frame: per value of each categorical (or few-valued)
    parameter, completed trials, best and median metric, pruned and failed counts."""
    import pandas as pd

    loaded = load_study(study, storage=storage)
    if study_metric(loaded).multi_objective:  # ranked by the first objective, as the report does
        loaded = first_objective_view(loaded, study_metric(loaded))
    trials, metric = loaded.get_trials(deepcopy=False), study_metric(loaded)
    rows = [(name, *row) for name, values in level_parameters(trials).items()
            for row in parameter_table(trials, name, values, maximize=metric.maximize)]
    return pd.DataFrame(rows, columns=["parameter", "value", "completed", f"best {metric.name}",
                                       f"median {metric.name}", "pruned", "failed"])


def figures(study: optuna.Study | str, *, storage: str = DEFAULT_STORAGE) -> dict[str, go.Figure]:
    """The report's figures as plotly objects, by key: `grid`, `init_stats`, `learning_curves`
    (those the study has data for), then Optuna's `history`, `importances`,
    `parallel_coordinate`, `slice`, `contour`, `intermediate_values` (those it could draw)."""
    report = _report(study, storage)
    return {f.key: f.plot for f in [*report.answer.figures, *report.figures] if f.plot is not None}


def answer(study: optuna.Study | str, *, storage: str = DEFAULT_STORAGE) -> str:
    """The report's one-line answer to the study's question, computed from its trials."""
    return _report(study, storage).answer.line


def write_report(study: optuna.Study | str, path: str | Path, *,
                 storage: str = DEFAULT_STORAGE) -> Path:
    """The self-contained HTML report of `hpsearch report`."""
    Path(path).write_text(_report(study, storage).html, encoding="utf-8")
    return Path(path)


def _report(study: optuna.Study | str, storage: str) -> Report:
    loaded, url = _load(study, storage)
    return build_report(loaded, storage_url=url)


def _dirs(data_dir: Path | None, cache_dir: Path | None, download: bool) -> DataDirs:
    """Where data are read: `data_dir` only when given, else the cache (~/.cache/hpsearch)."""
    if cache_dir is None:
        return DataDirs(data_dir=data_dir, download=download)
    return DataDirs(data_dir=data_dir, cache_dir=Path(cache_dir), download=download)


def _interactive() -> bool:
    """A notebook kernel or a terminal: draw bars. Otherwise (a log file) print lines."""
    return "ipykernel" in sys.modules or sys.stderr.isatty()


class _TrialBar:
    """Finished trials of the study as a `tqdm.auto` bar, the running trial's epoch (or fold) as
    its postfix; in a log file, one line per finished trial, as `hpsearch run` prints."""

    def __init__(self, total: int, *, name: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.total, self.enabled = total, enabled
        self.bar = tqdm(total=total, desc=name, unit="trial", disable=not (enabled and _interactive()))

    def on_trial(self, outcome: TrialOutcome, state: BudgetState) -> None:
        self.bar.update(min(state.done, self.total) - self.bar.n)
        self.bar.set_postfix_str(describe(outcome))
        if self.enabled and self.bar.disable:
            print(finished_line(outcome, done=state.done, budget=self.total), file=sys.stderr,
                  flush=True)

    def on_progress(self, progress: Progress) -> None:
        self.bar.set_postfix_str(describe(progress))

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _quiet_optuna(quiet: bool) -> Iterator[None]:
    """Optuna logs each told trial at INFO; a progress bar says the same, so hold those back."""
    level = optuna.logging.get_verbosity()
    if quiet:
        optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
