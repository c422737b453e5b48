"""Opening a study: create it, or load it and check that it asks the same question of the same
data with the same settings (a resume), and the study-level settings hpsearch stores on it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from hpsearch.data import DataSource, check_same_data
from hpsearch.errors import StudyError
from hpsearch.search.record import ATTR_DATA, StudyRecord
from hpsearch.search.settings import RunSettings, make_pruner, make_sampler, resume_seed
from hpsearch.search.storage import StorageHandle

logger = logging.getLogger(__name__)


# Optuna's `studies.study_name` column is VARCHAR(512); SQLite does not enforce it, PostgreSQL does.
MAX_STUDY_NAME_POSTGRESQL = 512


def open_study(
    handle: StorageHandle,
    settings: RunSettings,
    *,
    sampler_seed: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create the study, or load it and check that it is the same question on the same data.

    Creation and the study's settings (user attributes, written one at a time by Optuna) happen
    under the study lock, so workers started together create one study and each sees all of its
    settings; a study whose creator died midway is completed by the next worker. `data` is the
    provenance of the data this process loaded (`Splits.provenance`): stored on a new study, and
    compared by content hash with what an existing study stored.
    """
    if handle.kind == "postgresql" and len(settings.study_name) > MAX_STUDY_NAME_POSTGRESQL:
        raise StudyError(
            f"study name {settings.study_name[:40]!r}... is {len(settings.study_name)} characters; "
            f"PostgreSQL storage keeps at most {MAX_STUDY_NAME_POSTGRESQL} (Optuna's column); "
            "choose a shorter --study-name"
        )
    with handle.lock(settings.study_name):
        try:
            study = optuna.create_study(
                storage=handle.storage,
                study_name=settings.study_name,
                directions=settings.spec.directions,
                sampler=make_sampler(settings, seed=sampler_seed),
                pruner=make_pruner(settings),
                load_if_exists=True,
            )
        except ValueError as e:  # an existing study with another direction
            raise StudyError(
                f"study {settings.study_name!r} in {handle.url} cannot be resumed: {e}; choose "
                "another --study-name"
            ) from e
        n_existing = len(study.get_trials(deepcopy=False))
        if sampler_seed is not None and n_existing:
            # A resumed or extended study must not replay the stream it already drew: re-seeding
            # with the same seed proposes the same points again (8 of 8 with the random sampler,
            # and TPE's random start-up trials likewise). A fresh study keeps the plain seed, so
            # it stays reproducible; a resume continues from a stream keyed by how far it got.
            study.sampler = make_sampler(settings, seed=resume_seed(sampler_seed, n_existing))
        _settle_study_attrs(study, handle, settings, n_existing=n_existing)
        _settle_study_data(study, handle, settings, data, n_existing=n_existing)
    return study


def _settle_study_data(
    study: optuna.Study, handle: StorageHandle, settings: RunSettings,
    data: Mapping[str, Any] | None, *, n_existing: int,
) -> None:
    """Record the data on a study that has no trials yet, or check that it is the study's."""
    source = DataSource.from_dict(data)
    if source is None:
        return
    recorded = StudyRecord.from_study(study).data
    if recorded is None and not n_existing:
        study.set_user_attr(ATTR_DATA, dict(data or {}))
        return
    note = check_same_data(recorded, source, allow_other_data=settings.allow_other_data,
                           recorded_by=f"study {settings.study_name!r} in {handle.url}")
    if note:
        logger.warning("%s", note)


def _settle_study_attrs(
    study: optuna.Study, handle: StorageHandle, settings: RunSettings, *, n_existing: int
) -> None:
    expected = study_attrs(settings)
    attrs = study.user_attrs
    where = f"study {settings.study_name!r} in {handle.url}"
    if (attrs and not set(attrs) & set(expected)) or (not attrs and n_existing):
        # Someone else's study (Optuna's own CLI, a script): adding trials of another search
        # space, metric or data set to it would spoil both.
        raise StudyError(
            f"{where} was not created by hpsearch (it has {n_existing} trial(s) and no hpsearch "
            "settings), so hpsearch will not add trials to it; choose another --study-name NAME"
        )
    if attrs and "cv" not in attrs:
        # Made before cross-validation existed ("cv" is the first setting written): its trials
        # hold single-split values.
        attrs = {**attrs, "cv": 0}
    for key in ("cv", "study_module", "dataset"):
        if key in attrs and attrs[key] != expected[key]:
            same = f"--cv {attrs[key]}" if key == "cv" else f"the same {key}"
            raise StudyError(
                f"study {settings.study_name!r} in {handle.url} was created with {key}="
                f"{attrs[key]!r}, not {expected[key]!r}; resume it with {same} or start a new "
                "one with --study-name NAME"
            )
    _check_objectives(study, attrs, settings, where=where)
    check_resume(attrs, settings, where=where)
    missing = {key: value for key, value in expected.items() if key not in attrs}
    if not missing:
        return
    if attrs:
        logger.warning("study %r lacks the settings %s (its creator stopped midway); completing "
                       "them from this run", settings.study_name, ", ".join(missing))
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(settings.spec.metrics))  # the dashboard's labels
    for key, value in missing.items():
        study.set_user_attr(key, value)


def _check_objectives(
    study: optuna.Study, attrs: dict[str, Any], settings: RunSettings, *, where: str
) -> None:
    """Refuse to resume a study with other objectives: Optuna loads a stored study with its own
    directions whatever `create_study` is given, and values of other metrics do not compare."""
    directions = [d.name.lower() for d in study.directions]
    stored, given = attrs.get("objectives"), study_attrs(settings).get("objectives")
    if len(directions) == 1 and not settings.spec.multi_objective:
        return  # a single-objective study: checked as before, by its module and settings
    if directions == settings.spec.directions and stored in (None, given):
        return
    was = stored or attrs.get("metric") or f"{len(directions)} objective(s)"
    raise StudyError(
        f"{where} was created with metrics {was} ({', '.join(directions)}), not "
        f"{list(settings.spec.metrics)} ({', '.join(settings.spec.directions)}); resume it with "
        "a study module that declares the same METRICS or start a new study with --study-name NAME"
    )


# What a resume must repeat, and the option that sets it. Another epoch budget makes the trials
# incomparable; another seed or sampler would start a different search in the same study.
# (cv, study module and data set are checked above, one at a time.)
RESUME_KEYS = {"epochs": "--epochs", "seed": "--seed", "sampler": "--sampler"}


def check_resume(attrs: dict[str, Any], settings: RunSettings, *, where: str) -> None:
    """Refuse to resume a study with settings other than those it was created with."""
    given = study_attrs(settings)
    # A key the stored study lacks (an older hpsearch) is not checked.
    changed = [key for key in RESUME_KEYS if key in attrs and attrs[key] != given[key]]
    if not changed:
        return
    listed = ", ".join(f"{key}={attrs[key]!r} (given {given[key]!r})" for key in changed)
    same = " ".join(f"{RESUME_KEYS[key]} {attrs[key]}" for key in changed)
    raise StudyError(
        f"{where} was created with {listed}; resume it with the same settings ({same}) or start "
        "a new study with --study-name NAME"
    )


def study_attrs(settings: RunSettings) -> dict[str, Any]:
    """The settings a study of `settings` stores, in the order written (cv first)."""
    return StudyRecord(
        cv=settings.cv, study_module=settings.spec.name, dataset=settings.dataset,
        metric=settings.spec.metric,
        objectives=list(settings.spec.metrics) if settings.spec.multi_objective else None,
        epochs=settings.epochs, seed=settings.seed,
        sampler=settings.sampler, pruner=settings.pruner, source_hash=settings.spec.source_hash,
    ).to_attrs()
