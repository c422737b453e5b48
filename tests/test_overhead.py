"""What a trial costs outside training: the storage reads a worker makes around each trial.

The times are benchmarks/bench_trainer.py's (part (d), its split per trial); here only what
could regress without anyone timing it: how often a worker reads its study's trials.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.search.provenance import worker_identity
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, budget_state, run_worker

CPU = torch.device("cpu")


def _reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the worker's reads of a study's trials and Optuna's stale-trial checks."""
    counts = {"get_trials": 0, "fail_stale_trials": 0}
    get_trials, fail_stale = optuna.Study.get_trials, optuna.storages.fail_stale_trials

    def counted_get_trials(self: optuna.Study, *a: object, **kw: object) -> object:
        counts["get_trials"] += 1
        return get_trials(self, *a, **kw)  # type: ignore[arg-type]

    def counted_fail_stale(study: optuna.Study) -> None:
        counts["fail_stale_trials"] += 1
        fail_stale(study)

    monkeypatch.setattr(optuna.Study, "get_trials", counted_get_trials)
    monkeypatch.setattr(optuna.storages, "fail_stale_trials", counted_fail_stale)
    return counts


def _run(url: str, trials: int) -> None:
    settings = resolve_settings(load_study("quickstart"), epochs=1, pruner="none", sampler="random")
    run_worker(open_storage(url), settings, WorkerOptions(trials=trials, device=CPU))


def test_a_lone_worker_reads_its_trials_twice_per_trial_and_never_looks_for_lost_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _reads(monkeypatch)
    _run(f"sqlite:///{tmp_path / 'one.db'}", trials=1)
    one = dict(counts)
    _run(f"sqlite:///{tmp_path / 'two.db'}", trials=2)
    two = {key: counts[key] - one[key] for key in counts}
    # Per trial: one count under the lock before asking, one after (the progress line). Looking
    # for lost trials took two more reads per trial while none was running.
    assert two["get_trials"] - one["get_trials"] == 2
    assert counts["fail_stale_trials"] == 0


def test_a_trial_left_running_is_still_recovered_from_the_same_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _run(url, trials=1)
    study = optuna.load_study(study_name="quickstart", storage=url)
    # A trial whose worker died on this host: its pid is gone, so it is lost at once.
    child = subprocess.Popen(["true"])
    child.wait()
    left = study.ask()
    left.set_user_attr("run", {"worker": {**worker_identity(), "pid": child.pid, "id": "dead"}})
    counts = _reads(monkeypatch)
    _run(url, trials=2)
    states = [t.state for t in optuna.load_study(study_name="quickstart", storage=url).trials]
    assert states[left.number] == TrialState.FAIL
    assert counts["fail_stale_trials"] == 1  # the first ask saw it running; later ones did not
    assert budget_state(optuna.load_study(study_name="quickstart", storage=url)).done == 2
