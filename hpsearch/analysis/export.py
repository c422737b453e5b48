"""The best configs of a study as a file that `final` reads back without the study.

Each entry carries the full resolved `TrainConfig`, converted for a final run: a search stops on
the validation split (early stopping, a target error), and a final run has no validation split,
so the config is given the epoch count the study's stopping criterion chose (the trial's best
epoch) and `stopping="fixed"`. Next to it: where it came from (study, trial number, metric and
value, parameters), the data set, split and seed, package versions and the study module's
source hash, so the file alone says what to re-run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.config import TrainConfig
from hpsearch.data import DataSource, check_same_data
from hpsearch.errors import ConfigError, HPSearchError, StudyError
from hpsearch.search.objectives import pareto_front
from hpsearch.search.record import RunRecord, StudyRecord, TrialRecord, study_metric

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_TOP = 3  # trials exported by one metric when --top is not given


@dataclasses.dataclass(frozen=True)
class ExportedConfig:
    """One config to evaluate, and what it is known by."""

    config: TrainConfig  # ready for a final run: stopping="fixed", epochs as the search chose
    study: str | None = None
    trial: int | None = None
    metric: str | None = None
    value: float | None = None
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the rest of the entry

    @property
    def label(self) -> str:
        if self.study is not None and self.trial is not None:
            return f"{self.study}#{self.trial}"
        return f"{self.config.dataset}/{self.config.model}"


def final_config(config: TrainConfig, best_epoch: int) -> TrainConfig:
    """The search config turned into one a final run (no validation split) can train."""
    if best_epoch < 1:
        raise StudyError(f"a trial whose best epoch is {best_epoch} cannot be trained again")
    return config.replace(epochs=best_epoch, stopping="fixed")


def best_trials(study: optuna.Study, top: int | None, *, by: str | None = None) -> list[FrozenTrial]:
    """The `top` (default 3) best completed trials by the metric `by` (default: the study's
    first), best first, ties in trial order; of a multi-objective study without `by`, its Pareto
    front ordered by the first objective (the first `top` of it if given)."""
    metric = study_metric(study)
    if by is not None and by not in metric.names:
        raise StudyError(f"study {study.study_name!r} has no metric {by!r} to export by; its "
                         f"metrics: {', '.join(metric.names)}")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None]
    if not done:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial to export yet; run more trials "
            f"(`hpsearch run ...`) or check `hpsearch report` for why they failed"
        )
    if metric.multi_objective and by is None:
        return pareto_front(study)[:top]
    index = metric.names.index(by) if by is not None else 0
    sign = -1.0 if metric.directions[index] == "maximize" else 1.0
    done.sort(key=lambda t: (sign * t.values[index], t.number))
    return done[:top or DEFAULT_TOP]


def export_entry(
    study: optuna.Study, trial: FrozenTrial, *, rank: int, by: str | None = None
) -> dict[str, Any]:
    """A file entry for one trial, with its config converted for the final run."""
    record = TrialRecord.from_trial(trial)
    search_config = record.config(where=f"study {study.study_name!r}",
                                  why="only trials run by hpsearch can be exported")
    run, result = record.run, record.result
    best_epoch = result.best_epoch
    if not isinstance(best_epoch, int):
        if search_config.stopping != "fixed":
            raise StudyError(
                f"trial {trial.number} of {study.study_name!r} records no best epoch, so its "
                f"stopping={search_config.stopping!r} cannot be turned into a fixed epoch count"
            )
        best_epoch = search_config.epochs
    config = final_config(search_config, best_epoch)
    settings, metric = StudyRecord.from_study(study), study_metric(study)
    name = by or metric.name
    return {
        "rank": rank,
        "study": study.study_name,
        "trial": trial.number,
        "metric": name,
        "value": trial.values[metric.names.index(name)],
        # A multi-objective trial: every objective's value, and whether it is on the Pareto front.
        **(_objective_values(study, trial) if metric.multi_objective else {}),
        "study_module": run.study_module or settings.study_module,
        "source_hash": run.source_hash or settings.source_hash,
        "dataset": config.dataset,
        "data": run.data,  # source, content hash and sizes; `final` checks the hash
        "split": {"val_fraction": config.val_fraction, "split_seed": config.split_seed},
        "seed": config.seed,
        "params": dict(trial.params),
        "search": {
            "stopping": search_config.stopping,
            "max_epochs": search_config.epochs,
            "best_epoch": best_epoch,
            "epochs_run": result.epochs_run,
            "stop_reason": result.stop_reason,
            "seconds": result.seconds,
            "device_name": run.device_name,
            # k > 0: value is the mean over k folds and best_epoch the folds' mean best epoch.
            "cv_folds": run.cv_folds,
        },
        "versions": dict(run.versions),
        "config": config.to_dict(),
    }


def _objective_values(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    names = study_metric(study).names
    front = {t.number for t in study.best_trials}
    return {"values": dict(zip(names, trial.values)), "pareto_optimal": trial.number in front}


def _selection(study: optuna.Study, n: int, *, by: str | None) -> str:
    """Which trials a multi-objective export holds, in words."""
    if by is not None:
        return f"the best {n} by {by}"
    front = len(study.best_trials)
    return "the Pareto front" if n == front else (
        f"the first {n} of the {front}-trial Pareto front, by {study_metric(study).name}")


def export_document(
    study: optuna.Study, *, top: int | None, storage_url: str, allow_other_data: bool = False,
    by: str | None = None,
) -> dict[str, Any]:
    trials = best_trials(study, top, by=by)
    _check_trials_data(study, trials, allow_other_data=allow_other_data)
    metric = study_metric(study)
    if len(trials) < (top or DEFAULT_TOP) and not (metric.multi_objective and by is None):
        logger.warning("study %s has only %d completed trials; exporting those", study.study_name,
                       len(trials))
    multi = {"objectives": dict(zip(metric.names, metric.directions)),
             "selection": _selection(study, len(trials), by=by)}
    return {
        "hpsearch_export": FORMAT_VERSION,
        "study": study.study_name,
        "storage": storage_url,
        "direction": metric.direction,
        **(multi if metric.multi_objective else {}),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hpsearch_version": hpsearch.__version__,
        "note": "config is converted for the final run: epochs = the trial's best epoch, "
                "stopping = fixed (a final run has no validation split)",
        "configs": [export_entry(study, t, rank=i + 1, by=by) for i, t in enumerate(trials)],
    }


def _check_trials_data(
    study: optuna.Study, trials: Sequence[FrozenTrial], *, allow_other_data: bool
) -> None:
    """Refuse to export a trial that ran on other data than the study recorded (allowed by
    `--allow-other-data` on resume), since the file would put it beside the others."""
    recorded = StudyRecord.from_study(study).data
    if DataSource.from_dict(recorded) is None:
        return
    for t in trials:
        used = DataSource.from_dict(RunRecord.from_trial(t).data)
        if used is None:
            continue
        note = check_same_data(
            recorded, used, recorded_by=f"study {study.study_name!r}", now_by=f"its trial {t.number}",
            allow_other_data=allow_other_data, fix="export with --top to leave that trial out",
        )
        if note:
            logger.warning("%s", note)


def write_document(document: Mapping[str, Any], path: Path) -> None:
    """YAML unless the file name ends in .json."""
    if path.suffix.lower() == ".json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = yaml.safe_dump(dict(document), sort_keys=False, width=100)
    path.write_text(text)


def load_exported(path: Path) -> list[ExportedConfig]:
    """Read an export file (YAML or JSON). Entries need only `config`; the rest is provenance."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise HPSearchError(f"cannot read export file {path}: {e.strerror}") from e
    try:
        document = json.loads(text) if Path(path).suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise HPSearchError(f"export file {path} is not valid YAML/JSON: {e}") from e
    except RecursionError as e:  # both parsers recurse once per nesting level
        raise HPSearchError(f"export file {path} is nested too deeply to be an export file; "
                            "write one with `hpsearch export STUDY -o best.yaml`") from e
    entries = document.get("configs") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise HPSearchError(
            f"export file {path} has no `configs:` list; write one with "
            "`hpsearch export STUDY --storage URL -o best.yaml`"
        )
    return [_read_entry(entry, i, path) for i, entry in enumerate(entries)]


def _read_entry(entry: Any, index: int, path: Path) -> ExportedConfig:
    where = f"export file {path}, entry {index + 1}"
    if not isinstance(entry, dict) or "config" not in entry:
        raise HPSearchError(f"{where}: each entry needs a `config:` mapping of TrainConfig fields")
    try:
        config = TrainConfig.from_dict(entry["config"])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    if config.stopping != "fixed":
        raise ConfigError(
            f"{where}: stopping={config.stopping!r} needs a validation split, which a final run "
            "does not have; set stopping: fixed and epochs: N (hpsearch export does this)"
        )
    trial = entry.get("trial")
    value = entry.get("value")
    if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int)):
        raise HPSearchError(f"{where}: trial={trial!r} is not valid: expected a trial number")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise HPSearchError(f"{where}: value={value!r} is not valid: expected a number")
    for key in ("study", "metric"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise HPSearchError(f"{where}: {key}={entry[key]!r} is not valid: expected a name")
    return ExportedConfig(
        config=config,
        study=entry.get("study"),
        trial=int(trial) if trial is not None else None,
        metric=entry.get("metric"),
        value=float(value) if value is not None else None,
        source={k: v for k, v in entry.items() if k != "config"},
    )


def label_all(entries: Sequence[ExportedConfig]) -> list[str]:
    """Labels for a set of entries, made unique when two entries share one."""
    labels = [e.label for e in entries]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(labels)]
