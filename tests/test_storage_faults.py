"""Storage files under faults: a full disk, a torn journal, a killed lock holder, read-only media.

Root ignores permission bits, so the default tests simulate the kernel's answers: a full disk as
an `fsync` that fails after part of the record landed (where ENOSPC surfaces on many file
systems), SQLite's own limits (`max_page_count` gives the same SQLITE_FULL as a full disk,
`query_only` the same SQLITE_READONLY as a read-only file), and a read-only folder as `open`
failing with EROFS or EACCES. `test_real_*` (marker `mount`, in the default run) do it for real
on a tmpfs and a read-only bind mount, and skip where mounting is not permitted.
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner, Result
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.journal import FlockLock
from hpsearch.search.storage import open_storage

RUN = ["run", "quickstart", "--epochs", "1", "--pruner", "none", "--sampler", "random"]


def optuna_trials(path: Path, name: str = "quickstart") -> list[optuna.trial.FrozenTrial]:
    """The trials as Optuna's own journal reader sees them (not through hpsearch)."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage).trials


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: "), result.output
    return line


def fail_journal_fsync(monkeypatch: pytest.MonkeyPatch, path: Path, *, at: int) -> None:
    """The disk fills on the `at`-th write to the journal: part of the record has landed."""
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        st = os.fstat(fd)
        if path.exists() and os.path.samestat(st, os.stat(path)):
            calls += 1
            if calls >= at:
                os.ftruncate(fd, st.st_size - 9)  # the tail of the record never reached the disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


# --- item 1: a torn last line is never appended to -------------------------------------------


def _journal_of_three_trials(path: Path) -> bytes:
    """A journal holding study "s" with three complete trials; its bytes."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}").storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return path.read_bytes()


@pytest.mark.parametrize("tail", [
    b'{"op_code":8,"worker_id":"w","trial_id":2,"user_attr":{"run":{"se',  # cut mid-record
    b'{"op_code":8,"worker_id":"w","tri{"op_code":4,"worker_id":"w"}\n',  # glued by an older writer
], ids=["torn", "glued"])
def test_a_torn_last_line_is_set_aside_and_appends_go_after_the_last_record(
    tail: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "study.log"
    good = _journal_of_three_trials(path)
    path.write_bytes(good + tail)

    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}").storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)

    trials = optuna_trials(path, "s")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert path.read_bytes().startswith(good) and path.read_bytes().endswith(b"\n")
    backups = list(tmp_path.glob("study.log.torn-*"))
    assert [b.read_bytes() for b in backups] == [good + tail]
    assert f"saved as {backups[0]}" in caplog.text and "keeping every complete record" in caplog.text


def test_a_record_glued_to_a_torn_line_by_an_older_writer_is_mended(
    cli: CliRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "study.log"
    good = _journal_of_three_trials(path)
    damaged = (good + b'{"op_code":8,"worker_id":"w","trial_id":2,"user_attr":{"run":{"se'
               + b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"note":"glued"}}\n'
               + b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"more":"after"}}\n')
    path.write_bytes(damaged)
    # Optuna's reader, and so hpsearch's read-only commands, cannot read it; they say what mends it.
    line = one_error_line(cli.invoke(main, ["status", "s", "--storage", f"journal:{path}"]))
    assert "a writing command (run, worker) mends" in line and path.read_bytes() == damaged

    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}").storage)
    assert study.user_attrs == {"note": "glued", "more": "after"} and len(study.trials) == 3
    assert [b.read_bytes() for b in tmp_path.glob("study.log.torn-*")] == [damaged]
    assert "had 1 damaged line(s)" in caplog.text
    assert len(optuna_trials(path, "s")) == 3  # Optuna's own reader


def test_a_full_disk_mid_run_is_one_error_and_the_next_run_resumes(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "study.log"
    url = f"journal:{path}"
    # A process of its own, as a user's would be: the next run recovers the trial it was running
    # by seeing that its process is gone.
    script = textwrap.dedent(f"""
        import errno, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import pytest
        from test_storage_faults import fail_journal_fsync
        from hpsearch.cli import main
        fail_journal_fsync(pytest.MonkeyPatch(), Path({str(path)!r}), at=40)
        main(sys.argv[1:])
    """)
    first = subprocess.run([sys.executable, "-c", script, *RUN, "--trials", "8", "--storage", url],
                           check=False, capture_output=True, text=True, timeout=240,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    line = first.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: storage {url}: the disk is full (No space left on device)")
    assert "run the same command again" in line
    before = optuna_trials(path)
    done = [t for t in before if t.state == TrialState.COMPLETE]
    assert 1 <= len(done) < 8

    result = cli.invoke(main, [*RUN, "--trials", "8", "--storage", url])
    assert result.exit_code == 0, result.output
    after = optuna_trials(path)
    assert after[: len(done)] == done  # every complete record kept as it was
    assert sum(t.state == TrialState.COMPLETE for t in after) == 8
    assert not [t for t in after if t.state == TrialState.RUNNING]


# --- item 7: the journal's lock dies with its holder ------------------------------------------


def test_a_writer_killed_while_holding_the_journal_lock_stalls_nobody(tmp_path: Path) -> None:
    path = tmp_path / "study.log"
    handle = open_storage(f"journal:{path}")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from hpsearch.search.storage import open_storage
            open_storage("journal:{path}").storage._backend._lock.acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        optuna.create_study(study_name="after", storage=handle.storage)  # an append
        waited = time.monotonic() - started
    finally:
        holder.kill()
    assert waited < 1.0, f"the next append waited {waited:.1f} s for a dead holder's lock"
    assert isinstance(handle.storage._backend._lock, FlockLock)
    assert [s.study_name for s in optuna_trials_studies(path)] == ["after"]


def optuna_trials_studies(path: Path) -> list[optuna.study.StudySummary]:
    return optuna.get_all_study_summaries(JournalStorage(JournalFileBackend(str(path))))


def test_the_journal_lock_excludes_other_processes(tmp_path: Path) -> None:
    lock = FlockLock(str(tmp_path / "study.log"))
    lock.acquire()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
                                    "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"), lock.path],
            check=False, capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    finally:
        lock.release()


# --- item 12 and 13: read-only media, unwritable folders, full disks ------------------------


def refuse_writes(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """What the kernel answers a non-root user in an unwritable folder (EACCES) or anyone on a
    read-only file system (EROFS): reading works, creating or writing anything fails."""
    def inside(file: Any) -> bool:
        try:
            return Path(os.fsdecode(file)).resolve().is_relative_to(folder.resolve())
        except (TypeError, ValueError):
            return False

    def refuse(file: Any) -> None:
        raise OSError(code, os.strerror(code), os.fsdecode(file))

    real_open, real_os_open, real_access = builtins.open, os.open, os.access
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(file) and flags & writing:
            refuse(file)
        return real_os_open(file, flags, *args, **kwargs)

    def access(file: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if inside(file) and mode & os.W_OK:
            return False
        return real_access(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "access", access)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_read_only_commands_read_a_journal_they_cannot_write(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    url = f"journal:{folder / 'study.log'}"
    assert cli.invoke(main, [*RUN, "--trials", "2", "--storage", url]).exit_code == 0
    stored = snapshot(folder)
    refuse_writes(monkeypatch, folder, errno.EROFS)

    for args in (["status"], ["best"], ["export", "-o", str(tmp_path / "best.yaml")],
                 ["report", "-o", str(tmp_path / "report.html")]):
        result = cli.invoke(main, [*args, "quickstart", "--storage", url])
        assert result.exit_code == 0, (args, result.output)
    assert "2 complete" in cli.invoke(main, ["status", "quickstart", "--storage", url]).output
    assert (tmp_path / "best.yaml").exists() and (tmp_path / "report.html").exists()
    assert snapshot(folder) == stored  # no lock file, no reserve, no repair


SqlitePragma = Callable[[sqlalchemy.engine.interfaces.DBAPIConnection], None]


@pytest.fixture
def sqlite_pragma() -> Iterator[Callable[[Path, SqlitePragma], None]]:
    """Run a PRAGMA on every new SQLite connection to one file (SQLite's own fault switches)."""
    listeners = []

    def install(path: Path, pragma: SqlitePragma) -> None:
        def on_connect(dbapi_connection: Any, record: Any) -> None:
            names = [row[2] for row in dbapi_connection.execute("PRAGMA database_list")]
            if str(path) in names:
                pragma(dbapi_connection)

        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", on_connect)
        listeners.append(on_connect)

    yield install
    for listener in listeners:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", listener)


def _journal_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _: Any) -> tuple[str, str]:
    folder = tmp_path / "locked"
    folder.mkdir()
    refuse_writes(monkeypatch, folder, errno.EACCES)
    return f"journal:{folder / 'new.log'}", "cannot open it (Permission denied); workers need to write"


def _journal_read_only_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _: Any) -> tuple[str, str]:
    refuse_writes(monkeypatch, tmp_path, errno.EROFS)
    return f"journal:{tmp_path / 'study.log'}", "cannot open it (Read-only file system)"


def _journal_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _: Any) -> tuple[str, str]:
    fail_journal_fsync(monkeypatch, tmp_path / "study.log", at=1)
    return f"journal:{tmp_path / 'study.log'}", "the disk is full (No space left on device)"


def _sqlite_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pragma: Any) -> tuple[str, str]:
    pragma(tmp_path / "study.db", lambda c: c.execute("PRAGMA query_only = ON"))
    return f"sqlite:///{tmp_path / 'study.db'}", "attempt to write a readonly database; the file"


def _sqlite_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pragma: Any) -> tuple[str, str]:
    def full(c: Any) -> None:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count = {pages}")

    pragma(tmp_path / "study.db", full)
    return f"sqlite:///{tmp_path / 'study.db'}", "database or disk is full; free some space"


@pytest.mark.parametrize("fault", [_journal_unwritable_folder, _journal_read_only_fs,
                                   _journal_disk_full, _sqlite_read_only, _sqlite_disk_full],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_storage_that_cannot_be_written_is_one_error_and_nothing_stored_changes(
    fault: Callable[..., tuple[str, str]], cli: CliRunner, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, sqlite_pragma: Any,
) -> None:
    for url in (f"journal:{tmp_path / 'study.log'}", f"sqlite:///{tmp_path / 'study.db'}"):
        assert cli.invoke(main, [*RUN, "--trials", "2", "--storage", url]).exit_code == 0
    stored = snapshot(tmp_path)
    stored_trials = {url: finished(stored_url_trials(url))
                     for url in (f"journal:{tmp_path / 'study.log'}", f"sqlite:///{tmp_path / 'study.db'}")}
    with monkeypatch.context() as m:
        url, message = fault(tmp_path, m, sqlite_pragma)
        line = one_error_line(cli.invoke(main, [*RUN, "--trials", "4", "--storage", url]))
    assert url in line and message in line
    after = snapshot(tmp_path)
    assert {n for n in after if ".torn-" in n} == set()
    if "disk_full" in fault.__name__:
        # Trials may have been added before the disk filled; the earlier ones are as they were.
        for url, trials in stored_trials.items():
            assert finished(stored_url_trials(url))[: len(trials)] == trials
    else:  # byte for byte as they were
        assert {n: after[n] for n in STORES} == {n: stored[n] for n in STORES}


STORES = ("study.log", "study.db")


def stored_url_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    if url.startswith("journal:"):
        return optuna_trials(Path(url.removeprefix("journal:")))
    return optuna.load_study(study_name="quickstart", storage=url).trials


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state.is_finished()]


# --- the same for real: a full tmpfs and a read-only bind mount (root only) ------------------


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(options..., source=...) -> a fresh mount point, unmounted afterwards."""
    points: list[Path] = []

    def do(*options: str, source: str = "tmpfs") -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        try:
            done = subprocess.run(["mount", *options, source, str(point)], capture_output=True,
                                  text=True, check=False)
        except FileNotFoundError:
            pytest.skip("no mount(8) here")
        if done.returncode != 0:
            pytest.skip(f"cannot mount here: {done.stderr.strip() or done.returncode}")
        points.append(point)
        return point

    yield do
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)


def hpsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], capture_output=True, text=True,
                          timeout=240, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.mount
def test_real_full_disk_on_a_journal_then_more_space(mount: Callable[..., Path]) -> None:
    tiny = mount("-t", "tmpfs", "-o", "size=80k")
    url = f"journal:{tiny / 'full.log'}"
    first = hpsearch(*RUN, "--trials", "400", "--storage", url)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith(f"Error: storage {url}: the disk is full")
    done = sum(t.state == TrialState.COMPLETE for t in optuna_trials(tiny / "full.log"))
    assert done >= 5

    subprocess.run(["mount", "-o", "remount,size=5m", str(tiny)], check=True)
    # A trial left running when the disk filled (its end could not be stored, and it never beat)
    # is recovered once its start is 3 heartbeats old: 30 s by default, 6 s here.
    second = hpsearch("--heartbeat-seconds", "2", *RUN, "--trials", str(done + 5), "--storage", url)
    assert second.returncode == 0, second.stderr
    trials = optuna_trials(tiny / "full.log")
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= done + 4  # one may have failed on the full disk
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.mount
def test_real_read_only_mount_is_read_and_refused_for_writing(
    cli: CliRunner, tmp_path: Path, mount: Callable[..., Path]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for url in (f"journal:{source / 'study.log'}", f"sqlite:///{source / 'study.db'}"):
        assert cli.invoke(main, [*RUN, "--trials", "2", "--storage", url]).exit_code == 0
    ro = mount("--bind", source=str(source))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    stored = snapshot(ro)

    for store in (f"journal:{ro / 'study.log'}", f"sqlite:///{ro / 'study.db'}"):
        status = cli.invoke(main, ["status", "quickstart", "--storage", store])
        assert status.exit_code == 0 and "2 complete" in status.output, status.output
        line = one_error_line(cli.invoke(main, [*RUN, "--trials", "4", "--storage", store]))
        assert store in line and "Read-only file system" in line
    line = one_error_line(cli.invoke(main, [*RUN, "--storage", f"journal:{ro / 'new.log'}"]))
    assert "new.log: cannot open it (Read-only file system)" in line
    assert snapshot(ro) == stored
