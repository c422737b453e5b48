"""What every command shares, on click's `ctx.obj` (click's examples/repo/repo.py): the storage
named with `--storage` and how to open it, and what the environment says at the edge."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from hpsearch.cli.options import DATA_DIR_HELP
from hpsearch.data import DataDirs, default_cache_dir
from hpsearch.search.runs import Prepared, StudyOptions, prepare_run
from hpsearch.search.storage import (
    DEFAULT_DB_RETRY_SECONDS,
    DEFAULT_HEARTBEAT,
    DEFAULT_STORAGE,
    StorageHandle,
    open_existing_storage,
    open_storage,
)


@dataclasses.dataclass
class CliState:
    """What this invocation read from its options and environment: where its data come from,
    and its storage, opened here and nowhere else in the CLI."""

    heartbeat: int = DEFAULT_HEARTBEAT  # env HPSEARCH_HEARTBEAT_SECONDS
    db_retry_seconds: float = DEFAULT_DB_RETRY_SECONDS  # env HPSEARCH_DB_RETRY_SECONDS
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)  # env HPSEARCH_DATA_DIR
    download: bool = True  # env HPSEARCH_DOWNLOAD
    storage_url: str = DEFAULT_STORAGE
    # Named on the command line (not the default, nor HPSEARCH_STORAGE), so a printed `next:`
    # line must repeat it.
    storage_named: bool = False

    def data_dirs(self, data_dir: Path | None) -> DataDirs:
        """Where a command's data come from: its --data-dir, this invocation's cache, and whether
        it may download."""
        return DataDirs(data_dir=data_dir, cache_dir=self.cache_dir, download=self.download)

    def open_storage(self, *, heartbeat: bool = True) -> StorageHandle:
        """The storage for a command that writes (run, worker, launch) or watches (dashboard)."""
        return open_storage(self.storage_url, heartbeat=self.heartbeat if heartbeat else None,
                            db_retry_seconds=self.db_retry_seconds)

    def open_existing_storage(self) -> StorageHandle:
        """The storage for a command that only reads (best, status, report, export, rerun):
        a SQLite or journal file that does not exist is an error, not a new empty file."""
        url = self.storage_url
        return open_existing_storage(url, db_retry_seconds=self.db_retry_seconds, hint=(
            "give the file your study was run into with --storage or HPSEARCH_STORAGE (paths are "
            f"relative to the current folder, {Path.cwd()}), or create a study first with "
            f"`hpsearch run STUDY --storage {url}`"))

    def prepare(self, options: StudyOptions) -> Prepared:
        """`prepare_run` with this invocation's storage, cache folder and download setting."""
        return prepare_run(options, open_storage=self.open_storage, cache_dir=self.cache_dir,
                           download=self.download)

    def worker_env(self) -> dict[str, str]:
        """The environment that gives a worker process this state: the storage by environment,
        not argument, so a password stays out of `ps`."""
        return {"HPSEARCH_STORAGE": self.storage_url,
                "HPSEARCH_HEARTBEAT_SECONDS": str(self.heartbeat),
                "HPSEARCH_DB_RETRY_SECONDS": str(self.db_retry_seconds),
                "HPSEARCH_DATA_DIR": str(self.cache_dir),
                "HPSEARCH_DOWNLOAD": "1" if self.download else "0"}


pass_state = click.make_pass_decorator(CliState, ensure=True)


def _remember_storage(ctx: click.Context, param: click.Parameter, value: str) -> str:
    state = ctx.ensure_object(CliState)
    state.storage_url = value
    source = ctx.get_parameter_source(param.name or "storage")
    state.storage_named = source not in (ParameterSource.DEFAULT, ParameterSource.ENVIRONMENT)
    return value


def storage_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--storage`, the one declaration: it lands on `ctx.obj`, which the command receives."""
    option = click.option(
        "--storage", envvar="HPSEARCH_STORAGE", default=DEFAULT_STORAGE, show_default=True,
        expose_value=False, callback=_remember_storage,
        help="sqlite:///FILE.db, journal:FILE.log or postgresql://USER@HOST/DB (env HPSEARCH_STORAGE).")
    return option(pass_state(func))


def _data_dirs(ctx: click.Context, param: click.Parameter, value: Path | None) -> DataDirs:
    return ctx.ensure_object(CliState).data_dirs(value)


def data_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--data-dir` for the commands that load data outside a study (`final`, `rerun`): the
    command gets `DataDirs`, with this invocation's cache and download setting."""
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                        callback=_data_dirs, help=DATA_DIR_HELP)(func)


def invoked_as() -> str:
    """How to run hpsearch again the way this process was started, for printed `next:` lines:
    plain `hpsearch` only when that name on PATH is this very installation (an activated venv);
    otherwise the script's path as typed (`.venv/bin/hpsearch`) or `PYTHON -m hpsearch`."""
    on_path = shutil.which("hpsearch")
    # Compare folders without following links: a venv's python links to the system's.
    if on_path and Path(on_path).absolute().parent == Path(sys.executable).absolute().parent:
        return "hpsearch"
    script = sys.argv[0]
    if Path(script).name == "hpsearch":
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m hpsearch"
