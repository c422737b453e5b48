"""The options of the study-running commands (`run`, `worker`, `launch`), gathered once by click
into one frozen `StudyOptions` (hpsearch/search/runs.py, which the Python API builds too) and
passed down; `launch` and `slurm-script` turn it back into a worker's argv (`worker_argv`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from hpsearch.devices import DEVICE_HELP, parse_device
from hpsearch.errors import HPSearchError
from hpsearch.search.convergence import DEFAULT_MIN_TRIALS
from hpsearch.search.launch import parse_gpus
from hpsearch.search.registry import PRUNERS, SAMPLERS
from hpsearch.search.runs import StudyOptions


class DeviceType(click.ParamType):
    """`auto|cpu|cuda|cuda:N|mps`, spelled right; whether this machine has it is decided when
    the device is resolved (`resolve_device`), so `--device cuda` reads the same on any machine."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_device(str(value))
        except HPSearchError as e:
            self.fail(str(e), param, ctx)


class GpuList(click.ParamType):
    """`0,1,3`: distinct indices of GPUs this process can see, as CUDA_VISIBLE_DEVICES values."""

    name = "gpus"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            chosen = parse_gpus(str(value))
        except HPSearchError:
            self.fail(f"{value!r}: give distinct GPU indices separated by commas, like 0,1",
                      param, ctx)
        if not torch.cuda.is_available():  # say it once here, not once per worker
            self.fail(f"{value!r}: this machine has no CUDA GPU (torch {torch.__version__}); leave "
                      "out --gpus to run CPU workers", param, ctx)
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            return tuple(chosen)
        # Indices count within what this process may see, as torch numbers them.
        if any(int(g) >= len(visible) for g in chosen):
            self.fail(f"{value!r}: CUDA_VISIBLE_DEVICES shows only {len(visible)} GPU(s)", param, ctx)
        return tuple(visible[int(g)] for g in chosen)


class EnvOption(click.Option):
    """An option read from an environment variable too, whose errors name that variable: the
    user may never have typed the option."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return f"{super().get_error_hint(ctx)} (env {self.envvar})"


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


ALLOW_OTHER_DATA_HELP = (
    "Go on when the data's content hash differs from the one the study (or export file, or "
    "trial) recorded; it is refused otherwise, since results on other data do not compare.")
allow_other_data_option = click.option("--allow-other-data", is_flag=True, help=ALLOW_OTHER_DATA_HELP)
DATA_DIR_HELP = ("Folder holding the data files, the only one looked at [the cache: hpsearch "
                 "--cache-dir, env HPSEARCH_DATA_DIR].")


# Each field but `study`: its flag and click's attributes. `worker_argv` reads the same table,
# so an option added here reaches `launch`'s workers without another line.
def _opt(flag: str, **attrs: Any) -> tuple[str, dict[str, Any]]:
    return flag, attrs


_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "trials": _opt("--trials", type=click.IntRange(min=1), help="Finished trials the study should hold [module's default]."),
    "timeout": _opt("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop starting trials after this many seconds."),
    "study_name": _opt("--study-name", help="Name in the storage [STUDY, or STUDY-DATASET off its default data set]."),
    "dataset": _opt("--dataset", help="Data set to run on [the module's default]."),
    "data_dir": _opt("--data-dir", type=click.Path(file_okay=False, path_type=Path), help=DATA_DIR_HELP),
    "epochs": _opt("--epochs", type=click.IntRange(min=1), help="Maximum epochs per trial [module's default]."),
    "device": _opt("--device", type=DeviceType(), default="auto", show_default=True, help=DEVICE_HELP),
    "seed": _opt("--seed", type=int, default=0, show_default=True, help="Seeds the sampler and each trial (seed + trial number; a trial queued again keeps the seed of the one it repeats)."),
    "sampler": _opt("--sampler", type=click.Choice(SAMPLERS), help="[module's default, usually tpe]"),
    "pruner": _opt("--pruner", type=click.Choice(PRUNERS), help="[module's default]"),
    "cv": _opt("--cv", type=click.IntRange(min=0), help=(
        "Score each trial by its mean validation value over K stratified folds (K trainings per "
        "trial; 0 or 1: one validation split) [module's CV, on data sets under 2,000 training "
        "examples].")),
    "allow_other_data": _opt("--allow-other-data", is_flag=True, help=ALLOW_OTHER_DATA_HELP),
    "population": _opt("--population", type=click.IntRange(min=1), default=1, show_default=True, help=(
        "Ask for up to K trials at a time and train those of one shape together as one "
        "stacked computation (MLPs without batch norm, LeNet-5, AlexNet-CIFAR; 1: one trial "
        "at a time).")),
    "compile": _opt("--compile", is_flag=True, help=(
        "torch.compile the training step (CUDA graphs on CUDA); pays off over many trials.")),
    "bf16": _opt("--bf16", is_flag=True, help=(
        "bfloat16 autocast for trials trained alone (results differ from float32, so not the "
        "default).")),
    "allow_mixed_precision": _opt("--allow-mixed-precision", is_flag=True, help=(
        "Let bf16 and float32 trials share one study (refused otherwise: its comparisons assume "
        "one precision).")),
    "stop_when_converged": _opt("--stop-when-converged", is_flag=True, help=(
        "Stop starting trials, in every worker of the study, once Optuna's Terminator finds that "
        "what more trials could gain (a regret bound) is below the validation noise of the best "
        "trial, sqrt(e(1-e)/n); for studies of val_error or val_accuracy.")),
    "stop_min_trials": _opt("--stop-min-trials", type=click.IntRange(min=2), default=DEFAULT_MIN_TRIALS,
                            show_default=True, help=(
        "With --stop-when-converged: complete trials before the first look.")),
    "checkpoint_dir": _opt("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), help=(
        "Save each trial that trains alone after every epoch in this folder (one all workers "
        "can reach), so that a trial queued again after its worker died or was interrupted "
        "resumes from its last epoch; removed when the trial ends [off].")),
}
assert list(_OPTIONS) == [f.name for f in dataclasses.fields(StudyOptions)][1:]


def worker_argv(options: StudyOptions) -> list[str]:
    """The `hpsearch worker` arguments that parse back into these very options."""
    argv = [options.study]
    for name, (flag, attrs) in _OPTIONS.items():
        value = getattr(options, name)
        if attrs.get("is_flag"):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def study_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Declare STUDY and the `StudyOptions` options; the command gets them as one object, its
    first argument, followed by its own options."""

    @functools.wraps(func)
    def gathered(**params: Any) -> Any:
        options = StudyOptions.from_params(params)
        return func(options, **params)

    command: Callable[..., Any] = gathered
    for name, (flag, attrs) in reversed(_OPTIONS.items()):
        command = click.option(flag, name, **attrs)(command)
    return click.argument("study")(command)


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
