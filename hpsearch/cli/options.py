"""Options and small helpers shared by the study-running commands (`run`, `worker`, `launch`)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import torch

from hpsearch.data import DataCache
from hpsearch.devices import DEVICE_HELP, resolve_device
from hpsearch.errors import StorageError
from hpsearch.search.registry import PRUNERS, SAMPLERS, load_study
from hpsearch.search.reports import Progress, TrialOutcome
from hpsearch.search.settings import RunSettings, resolve_settings
from hpsearch.search.storage import DEFAULT_STORAGE, StorageHandle, open_storage, storage_file
from hpsearch.training import SpeedOptions

storage_option = click.option(
    "--storage",
    envvar="HPSEARCH_STORAGE",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="sqlite:///FILE.db, journal:FILE.log or postgresql://USER@HOST/DB (env HPSEARCH_STORAGE).",
)


class OutputFile(click.Path):
    """A file to write, checked when the command line is read, before any work: its folder must
    exist and be writable (a `final` that finds out after training loses every trained seed)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, writable=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        folder = Path(os.fsdecode(path)).parent
        if not folder.is_dir():
            self.fail(f"folder {str(folder)!r} does not exist; create it (mkdir -p "
                      f"{shlex.quote(str(folder))}) or write elsewhere", param, ctx)
        if not os.access(folder, os.W_OK | os.X_OK):
            self.fail(f"folder {str(folder)!r} is not writable; write elsewhere", param, ctx)
        return path


allow_other_data_option = click.option(
    "--allow-other-data", is_flag=True,
    help="Go on when the data's content hash differs from the one the study (or export file, or "
         "trial) recorded; it is refused otherwise, since results on other data do not compare.",
)


def study_options(func: Any) -> Any:
    """Options shared by `run` and `worker`: which study, on what data, on which device."""
    options = [
        click.argument("study"),
        click.option("--trials", type=click.IntRange(min=1), help="Finished trials the study should hold [module's default]."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop starting trials after this many seconds."),
        storage_option,
        click.option("--study-name", help="Name in the storage [STUDY, or STUDY-DATASET off its default data set]."),
        click.option("--dataset", help="Data set to run on [the module's default]."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder holding data files (env HPSEARCH_DATA_DIR)."),
        click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs per trial [module's default]."),
        click.option("--device", default="auto", show_default=True, help=DEVICE_HELP),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sampler and each trial (seed + trial number)."),
        click.option("--sampler", type=click.Choice(SAMPLERS), help="[module's default, usually tpe]"),
        click.option("--pruner", type=click.Choice(PRUNERS), help="[module's default]"),
        click.option("--cv", type=click.IntRange(min=0),
                     help="Score each trial by its mean validation value over K stratified folds "
                          "(K trainings per trial; 0 or 1: one validation split) [module's CV, "
                          "on data sets under 2,000 training examples]."),
        allow_other_data_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(study: str, **options: Any) -> RunSettings:
    """The study module named on the command line, resolved against `study_options`."""
    return resolve_settings(load_study(study), **options)


def prepare_run(
    study: str, *, storage: str, device: str, trials: int | None, **options: Any
) -> tuple[RunSettings, torch.device, StorageHandle, int, DataCache]:
    """What `run` and `worker` resolve before training: settings, device, storage, budget and
    the loaded data. The data come first: a missing data set must not leave a new, empty
    storage file behind."""
    settings = settings_from(study, **options)
    torch_device = resolve_device(device)
    data = DataCache(settings.data_dir, torch_device)
    base = settings.base_config(0)
    data.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
    return settings, torch_device, open_storage(storage), trials or settings.spec.trials, data


def open_existing_storage(url: str) -> StorageHandle:
    """The storage for a command that only reads (best, status, report, export, rerun):
    a SQLite or journal file that does not exist is an error, not a new empty file."""
    path = storage_file(url)
    if path is not None and not path.exists():
        raise StorageError(
            f"storage {url!r}: {path} does not exist (nothing was created); give the file your "
            "study was run into with --storage or HPSEARCH_STORAGE (paths are relative to the "
            f"current folder, {Path.cwd()}), or create a study first with `hpsearch run STUDY "
            f"--storage {url}`"
        )
    return open_storage(url, heartbeat=None, readonly=True)


# Measured on a 2-core VM at load 8.5, ms per training step with 1 and 2 torch threads: 3.1 and
# 7.7 for quickstart's MLP (batch 64), 35 and 55 for the Hinton MLP (batch 100). Small models
# gain nothing from more threads and lose much when cores are shared, so `run` defaults to one.
RUN_THREADS = 1


def threads_option(func: Any = None, *, default: int | None = None) -> Any:
    """`--threads`: torch's intra-op CPU threads (`worker` keeps torch's default, all cores or
    OMP_NUM_THREADS, which `launch` sets per worker; `run` passes RUN_THREADS)."""
    option = click.option(
        "--threads", type=click.IntRange(min=1), default=default, show_default=default is not None,
        help="CPU threads for torch" + (" (more can pay off for CNNs on an idle many-core CPU)."
                                        if default else " [all cores, or OMP_NUM_THREADS]."))
    return option if func is None else option(func)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def speed_options(func: Any) -> Any:
    """How a worker trains, not what: these never change a trial's config or the search space."""
    options = [
        click.option("--population", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Ask for up to K trials at a time and train same-shape MLP trials "
                          "together as one stacked computation (1: one trial at a time)."),
        click.option("--compile", "compile_", is_flag=True,
                     help="torch.compile the training step (CUDA graphs on CUDA); pays off over "
                          "many trials."),
        click.option("--bf16", is_flag=True,
                     help="bfloat16 autocast for trials trained alone (results differ from "
                          "float32, so not the default)."),
        click.option("--allow-mixed-precision", is_flag=True,
                     help="Let bf16 and float32 trials share one study (refused otherwise: its "
                          "comparisons assume one precision)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def speed_from(compile_: bool, bf16: bool) -> SpeedOptions | None:
    return SpeedOptions(compile=compile_, bf16=bf16) if compile_ or bf16 else None


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


def describe(outcome: TrialOutcome | Progress | None) -> str:
    if outcome is None:
        return ""
    if isinstance(outcome, Progress):  # the running trial
        return f"trial {outcome.trial}: {outcome.unit} {outcome.step}/{outcome.of}"
    value = f" {outcome.value:.4f}" if outcome.value is not None else ""
    return f"trial {outcome.number} {outcome.outcome}{value}"
