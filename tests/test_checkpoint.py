"""--checkpoint-dir: a trial saved after each epoch resumes, after its worker died, from there.

The resumed run must equal an uninterrupted one exactly on the CPU (history and weights); a
corrupt, truncated or foreign checkpoint is ignored with a warning and the trial starts again
from epoch 1; the checkpoints go once the trial is over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, Splits
from hpsearch.search.checkpoints import ATTR_RESUMED, checkpoint_file
from hpsearch.search.optuna_private import trial_id
from hpsearch.search.outcomes import trial_outcome
from hpsearch.search.record import History
from hpsearch.search.registry import load_study, suggest_config
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import ATTR_REPEATS, open_storage, requeue
from hpsearch.search.study import open_study
from hpsearch.search.worker import WorkerOptions, run_worker
from hpsearch.training import EpochRecord, RunCheckpoint, TrainResult, train

CPU = torch.device("cpu")
FIELDS = ("train_loss", "val_loss", "val_accuracy", "val_error", "val_f1", "lr")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Train as a worker with OMP_NUM_THREADS=n does, so that the floats compare exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread, as the workers here train (OMP_NUM_THREADS=1), for exact comparisons
    and a quick test on a shared 2-core machine."""
    with _threads(1):
        yield


def _values(history: list) -> list[tuple[float | None, ...]]:  # type: ignore[type-arg]
    return [tuple(getattr(r, f) for f in FIELDS) for r in history]


def _stored(trial: optuna.trial.FrozenTrial) -> list[tuple[float | None, ...]]:
    history = History.from_trial(trial)
    return list(zip(*(history.metric(f) for f in FIELDS)))


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _interrupted_at(config: TrainConfig, epoch: int, checkpoint: RunCheckpoint) -> None:
    """Train `config` with `checkpoint` and stop it as a kill would, while in `epoch`."""

    def stop(record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise KeyboardInterrupt

    data = DataCache(None, CPU).get(config.dataset, val_fraction=config.val_fraction,
                                    split_seed=config.split_seed)
    with pytest.raises(KeyboardInterrupt):
        train(config, data, device=CPU, on_epoch=stop, checkpoint=checkpoint)


# Dropout (its own stream), SGD with momentum and a step schedule, early stopping whose best
# epoch comes before the interruption: each is state a resumed run must take back.
CONFIGS = {
    "sgd-step-dropout-early": TrainConfig(
        dataset="digits", hidden=(48,), epochs=7, dropout=0.3, optimizer="sgd", lr=0.8, batch_size=64,
        momentum=0.9, schedule="step", step_size=2, gamma=0.5, stopping="early", patience=3,
        seed=11),
    "adam-cosine": TrainConfig(dataset="digits", hidden=(32, 32), epochs=5, optimizer="adam",
                               lr=3e-3, schedule="cosine", seed=4),
}


def _stopped_early_before(
    config: TrainConfig, data: Splits, epoch: int
) -> tuple[TrainConfig, TrainResult]:
    """`config` at the first seed, from its own on, whose run stops early after `epoch` + 1 with
    its best epoch before `epoch`: the run resumed after `epoch` - 1 must restore a best state it
    did not see, and saves once more under its own name before its last epoch.

    SGD at lr 0.8 with momentum is chaotic: which seed does that differs between CPUs, whose
    float kernels round differently (seed 11 stopped at epoch 5 on one machine and ran all 7
    epochs on another), so the test looks for one instead of naming it."""
    for seed in range(config.seed, config.seed + 30):
        candidate = config.replace(seed=seed)
        whole = train(candidate, data, device=CPU)
        if whole.stop_reason == "early_stopping" and whole.best_epoch < epoch < len(whole.history):
            return candidate, whole
    pytest.fail(f"no seed in {config.seed}..{config.seed + 29} stops {config} early after epoch {epoch + 1}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one_exactly(
    name: str, tmp_path: Path
) -> None:
    config = CONFIGS[name]
    data = DataCache(None, CPU).get("digits", val_fraction=config.val_fraction,
                                    split_seed=config.split_seed)
    if config.stopping == "early":
        config, whole = _stopped_early_before(config, data, 4)
    else:
        whole = train(config, data, device=CPU)
    first = checkpoint_file(tmp_path, "s", 0)
    _interrupted_at(config, 4, RunCheckpoint(save_to=first))  # saved after epoch 3
    seen: list[int] = []
    resumed = train(config, data, device=CPU, checkpoint=RunCheckpoint(
        save_to=checkpoint_file(tmp_path, "s", 1), resume_from=[first],
        on_resume=lambda source, history: seen.append(len(history))))
    assert seen == [3]
    assert _values(resumed.history) == _values(whole.history)
    assert (resumed.best_epoch, resumed.stop_reason) == (whole.best_epoch, whole.stop_reason)
    assert resumed.model is not None and whole.model is not None
    for (key, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    # The resumed run went on saving under its own name, and the last epoch saves nothing.
    assert checkpoint_file(tmp_path, "s", 1).path.exists()


# --- the search layer: the link from a re-queued trial, what it resumes from, the clean-up ----


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "population"), [
    ("none", 1), ("none", 2), ("corrupt", 1), ("truncated", 1), ("another trial's", 1)])
def test_a_requeued_trial_resumes_from_the_checkpoint_of_the_trial_it_repeats(
    damage: str, population: int, tmp_path: Path, sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = resolve_settings(load_study("quickstart"), epochs=3, pruner="none")
    handle = open_storage(sqlite_url, heartbeat=None)
    study = open_study(handle, settings)
    folder = tmp_path / "ckpt"
    # Trial 0 ran two epochs on a worker that died: its checkpoint, failed, queued again.
    lost = study.ask()
    config = suggest_config(settings.spec, lost, settings.base_config(lost.number))
    path = checkpoint_file(folder, "quickstart", 0).path
    if damage == "another trial's":  # trial 7's own file, under trial 0's name
        _interrupted_at(config, 3, RunCheckpoint(save_to=checkpoint_file(folder, "quickstart", 7)))
        (folder / "quickstart" / "trial-7.ckpt").rename(path)
    else:
        _interrupted_at(config, 3, RunCheckpoint(save_to=checkpoint_file(folder, "quickstart", 0)))
    {"corrupt": _corrupt, "truncated": _truncate}.get(damage, lambda p: None)(path)
    handle.storage.set_trial_state_values(trial_id(lost), state=TrialState.FAIL)
    requeue(study, handle.storage.get_trial(trial_id(lost)))

    with caplog.at_level(logging.INFO):
        # With --population 2 it is asked with a new trial of its shape, and trains alone.
        report = run_worker(handle, settings, WorkerOptions(
            trials=population, device=CPU, population=population, checkpoint_dir=folder))
    assert [o.outcome for o in report.outcomes] == ["complete"] * population
    repeat = study.get_trials()[1]
    assert repeat.system_attrs[ATTR_REPEATS] == [0]
    assert repeat.user_attrs["config"] == config.to_dict()  # its first attempt's seed
    whole = train(config, DataCache(None, CPU).get("digits", val_fraction=0.1, split_seed=0), device=CPU)
    assert _stored(repeat) == _values(whole.history)
    assert sorted(repeat.intermediate_values) == [1, 2, 3]
    if damage == "none":
        assert repeat.user_attrs[ATTR_RESUMED] == {"trial": 0, "epoch": 2}
        assert "trial 1 resumes after epoch 2 from the checkpoint of trial 0" in caplog.text
    else:
        assert ATTR_RESUMED not in repeat.user_attrs
        why = {"corrupt": "checksum", "truncated": "truncated",
               "another trial's": "trial 7, not 0"}[damage]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(str(path) in m and why in m for m in warned), warned
    assert _files(folder) == []  # removed once the trial is over


def test_stacked_trials_save_no_checkpoint(tmp_path: Path, journal_url: str) -> None:
    settings = resolve_settings(load_study("quickstart"), epochs=2, pruner="none")
    handle = open_storage(journal_url, heartbeat=None)
    saved: list[Path] = []
    original = RunCheckpoint.save

    def spy(self: RunCheckpoint, config: TrainConfig, state: dict) -> None:  # type: ignore[type-arg]
        saved.append(self.save_to.path)
        original(self, config, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunCheckpoint, "save", spy)
        run_worker(handle, settings, WorkerOptions(trials=3, device=CPU, population=3,
                                                   checkpoint_dir=tmp_path))
        assert saved == []
        run_worker(handle, settings, WorkerOptions(trials=4, device=CPU, checkpoint_dir=tmp_path))
    assert [p.name for p in saved] == ["trial-3.ckpt"]  # alone: after epoch 1 of 2
    assert _files(tmp_path / "quickstart") == []


# --- a worker killed with SIGKILL mid-trial, and the worker that resumes its trial -------------

SLOW = '''"""Digits, six epochs with dropout."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(64,), batch_size=64, epochs=6, dropout=0.2)
PRUNER = "none"

def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-2, log=True))
'''


# `hpsearch`, whose worker waits a second after each checkpoint: epochs take milliseconds, and
# the kill must land between two of them however fast the machine.
PAUSE_AFTER_SAVE = (
    "import time; from hpsearch.training import RunCheckpoint; save = RunCheckpoint.save; "
    "RunCheckpoint.save = lambda self, *args: (save(self, *args), time.sleep(1)); "
    "from hpsearch.cli import main; main(prog_name='hpsearch')")


def test_a_worker_killed_at_epoch_k_leaves_a_trial_that_resumes_at_k_plus_1_and_ends_as_if_never_killed(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = tmp_path / "slow_digits.py"
    module.write_text(SLOW)
    folder = tmp_path / "ckpt"
    victim = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_SAVE, "--heartbeat-seconds", "1", "worker", str(module),
         "--trials", "1", "--storage", sqlite_url, "--checkpoint-dir", str(folder)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    k = 3
    deadline = time.monotonic() + 120
    database = sqlite_url.removeprefix("sqlite:///")
    while True:  # trial 0's epochs reported, read with one cheap query (Optuna's own table)
        assert victim.poll() is None and time.monotonic() < deadline, "no epoch 3 in time"
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(database)) as db:
            if db.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0] >= k:
                break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = optuna.load_study(study_name="slow_digits", storage=sqlite_url).trials[0]
    reported = len(killed.intermediate_values)
    assert killed.state == TrialState.RUNNING and (folder / "slow_digits" / "trial-0.ckpt").exists()

    # Another worker (here in this process, one thread as the victim trained) takes it over.
    settings = resolve_settings(load_study(str(module)))
    with caplog.at_level(logging.INFO):
        report = run_worker(open_storage(sqlite_url, heartbeat=1), settings,
                            WorkerOptions(trials=1, device=CPU, checkpoint_dir=folder))
    assert [o.outcome for o in report.outcomes] == ["complete"]
    lost, repeat = optuna.load_study(study_name="slow_digits", storage=sqlite_url).trials
    assert trial_outcome(lost) == "lost"
    assert repeat.state == TrialState.COMPLETE and repeat.system_attrs[ATTR_REPEATS] == [0]
    # The last epoch saved: the one reported, or the one before when killed between the two.
    saved = repeat.user_attrs[ATTR_RESUMED]["epoch"]
    assert repeat.user_attrs[ATTR_RESUMED]["trial"] == 0 and saved in (reported - 1, reported)
    assert saved >= k - 1 and saved < 6
    assert f"trial 1 resumes after epoch {saved} from the checkpoint of trial 0" in caplog.text
    assert sorted(repeat.intermediate_values) == list(range(1, 7))
    config = TrainConfig.from_dict(repeat.user_attrs["config"])
    whole: TrainResult = train(config, DataCache(None, CPU).get("digits", val_fraction=0.1, split_seed=0), device=CPU)
    assert _stored(repeat) == _values(whole.history)
    assert [repeat.intermediate_values[e] for e in range(1, 7)] == [
        r.val_error for r in whole.history]
    assert _files(folder) == []
