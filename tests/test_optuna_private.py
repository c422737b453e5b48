"""Each piece of Optuna's private API that hpsearch uses (all in hpsearch/search/optuna_private.py) still
exists in the installed Optuna with the shape hpsearch relies on; a failure names the piece and
the Optuna version, so an Optuna upgrade that breaks one is found here and not in a worker."""

from __future__ import annotations

import importlib
from pathlib import Path

import optuna
import pytest

PRIVATE_IMPORTS = [
    ("optuna.storages._heartbeat", "BaseHeartbeat"),
    ("optuna.storages.journal._file", "BaseJournalFileLock"),
    ("optuna.storages", "_CachedStorage"),
]


def _changed(name: str, what: str) -> str:
    return (f"Optuna {optuna.__version__}: {name} {what}; update hpsearch/search/optuna_private.py "
            "(the only module that uses it) for this Optuna")


@pytest.mark.parametrize(("module", "name"), PRIVATE_IMPORTS)
def test_every_private_name_hpsearch_imports_exists(module: str, name: str) -> None:
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.fail(_changed(f"{module}.{name}", f"is gone ({e})"))
    assert isinstance(found, type), _changed(f"{module}.{name}", "is no longer a class")


def test_trial_id_is_the_storage_id_of_asked_and_frozen_trials() -> None:
    from hpsearch.search.optuna_private import trial_id

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.ask()
    trial = study.ask()
    for one in (trial, study.get_trials(deepcopy=False)[1]):
        try:
            tid = trial_id(one)
        except AttributeError as e:
            pytest.fail(_changed(f"{type(one).__name__}._trial_id", f"is gone ({e})"))
        assert isinstance(tid, int), _changed(f"{type(one).__name__}._trial_id", f"is a {type(tid)}")
        assert storage.get_trial(tid).number == 1, _changed(
            f"{type(one).__name__}._trial_id", "is no longer the id storage calls take")


def test_cached_storage_wraps_an_rdb_storage_with_the_heartbeat(tmp_path: Path) -> None:
    from hpsearch.search.optuna_private import BaseHeartbeat, cached_storage, trial_id

    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=10)
    cached = cached_storage(rdb)
    assert isinstance(cached, optuna.storages.BaseStorage) and isinstance(cached, BaseHeartbeat), \
        _changed("optuna.storages._CachedStorage", "is no longer a BaseStorage and BaseHeartbeat")
    study = optuna.create_study(storage=cached, study_name="s")
    trial = study.ask()
    cached.record_heartbeat(trial_id(trial))
    study.tell(trial, 1.0)
    # What was written through the cache is in the database behind it.
    assert [t.value for t in rdb.get_all_trials(rdb.get_study_id_from_name("s"))] == [1.0], \
        _changed("optuna.storages._CachedStorage", "no longer writes through to the RDBStorage")


def test_base_heartbeat_declares_record_heartbeat_and_rdb_storage_implements_it() -> None:
    from hpsearch.search.optuna_private import BaseHeartbeat

    assert "record_heartbeat" in BaseHeartbeat.__abstractmethods__, \
        _changed("optuna.storages._heartbeat.BaseHeartbeat", "no longer declares record_heartbeat")
    assert issubclass(optuna.storages.RDBStorage, BaseHeartbeat), \
        _changed("optuna.storages._heartbeat.BaseHeartbeat", "is no longer a base of RDBStorage")


def test_base_journal_file_lock_is_the_lock_interface_of_the_file_backend(tmp_path: Path) -> None:
    from hpsearch.search.journal import FlockLock
    from hpsearch.search.optuna_private import BaseJournalFileLock

    assert BaseJournalFileLock.__abstractmethods__ == {"acquire", "release"}, _changed(
        "optuna.storages.journal._file.BaseJournalFileLock",
        f"has the abstract methods {sorted(BaseJournalFileLock.__abstractmethods__)}")
    path = str(tmp_path / "j.log")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path, lock_obj=FlockLock(path)))
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: 1.0, n_trials=1)
    assert len(optuna.load_study(storage=storage, study_name="s").trials) == 1


def test_every_suggest_goes_through_the_method_the_benchmark_times(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch.search.optuna_private import TRIAL_SUGGEST

    name = f"optuna.Trial.{TRIAL_SUGGEST}"
    original = getattr(optuna.Trial, TRIAL_SUGGEST, None)
    assert callable(original), _changed(name, "is gone")
    calls = []

    def counted(self: optuna.Trial, *args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Trial, TRIAL_SUGGEST, counted)
    trial = optuna.create_study().ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_int("units", 1, 8)
    trial.suggest_categorical("act", ["relu", "tanh"])
    assert calls == ["lr", "units", "act"], _changed(name, "is no longer where suggest_* goes")
