"""Workers under faults: started together, paused, killed on other hosts or namespaces."""

from __future__ import annotations

import threading

import optuna
import pytest
import torch

from hpsearch.registry import load_study
from hpsearch.runner import open_study, resolve_settings, study_attrs
from hpsearch.storage import open_storage
from hpsearch.worker import budget_state, run_worker

CPU = torch.device("cpu")


def _quickstart(**kwargs: object):  # type: ignore[no-untyped-def]
    return resolve_settings(load_study("quickstart"), epochs=1, pruner="none", **kwargs)  # type: ignore[arg-type]


def test_workers_opening_a_fresh_postgres_database_together_all_get_the_whole_study(
    postgres_url: str,
) -> None:
    settings = _quickstart()
    n = 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            open_study(open_storage(postgres_url, heartbeat=None), settings)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    study = optuna.load_study(study_name="quickstart", storage=postgres_url)
    assert study.user_attrs == study_attrs(settings)
    assert study.metric_names == ["val_error"]
    assert len(optuna.get_all_study_summaries(postgres_url)) == 1


def test_a_study_whose_creator_died_midway_is_completed_by_the_next_worker(postgres_url: str) -> None:
    settings = _quickstart()
    # What a creator killed after its first attribute leaves behind: the next worker used to stop
    # with "created with dataset=None".
    partial = optuna.create_study(study_name="quickstart", storage=postgres_url)
    for key, value in list(study_attrs(settings).items())[:1]:
        partial.set_user_attr(key, value)
    handle = open_storage(postgres_url, heartbeat=None)
    report = run_worker(handle, settings, trials=1, device=CPU)
    study = optuna.load_study(study_name="quickstart", storage=postgres_url)
    assert study.user_attrs.items() >= study_attrs(settings).items()
    assert len(report.outcomes) == 1 and budget_state(study).done == 1
