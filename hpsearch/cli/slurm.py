"""`hpsearch slurm-script`: an sbatch script whose job array runs `hpsearch worker`s of one study
against one PostgreSQL, each seeded by its array index, requeued when preempted."""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hpsearch.cli.options import study_options, worker_argv
from hpsearch.cli.parallel import fetch_data
from hpsearch.cli.state import CliState, storage_option
from hpsearch.search.runs import StudyOptions
from hpsearch.search.storage import server_url

# sbatch's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What each task of the array asks Slurm for."""

    array: int
    partition: str | None = None
    time: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int = 1
    mem: str | None = None


def _pattern(pattern: re.Pattern[str], example: str) -> Callable[..., str | None]:
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not pattern.fullmatch(value):
            raise click.BadParameter(f"{value!r} is not a form sbatch takes; write it like {example}")
        return value
    return check


_SLURM_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "array": ("--array", {"type": click.IntRange(min=1), "required": True, "help": (
        "Tasks in the array, one worker each (array indices 0..N-1); they share the study's "
        "--trials.")}),
    "partition": ("--partition", {"help": "Slurm partition [the cluster's default]."}),
    "time": ("--time", {"callback": _pattern(_TIME, "90, 4:00:00 or 1-12:00"), "help": (
        "Time limit of each task, in sbatch's form [the partition's].")}),
    "gpus_per_task": ("--gpus-per-task", {"type": click.IntRange(min=1), "help": (
        "GPUs for each worker; its trials run on CUDA [none: CPU workers].")}),
    "cpus_per_task": ("--cpus-per-task", {"type": click.IntRange(min=1), "default": 1,
                                          "show_default": True,
                                          "help": "CPU cores (torch threads) per worker."}),
    "mem": ("--mem", {"callback": _pattern(_MEM, "8G or 16000M"), "help": (
        "Memory per task, like 8G [the partition's default].")}),
}
assert list(_SLURM_OPTIONS) == [f.name for f in dataclasses.fields(SlurmOptions)]


def slurm_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Declare the `SlurmOptions` options; the command gets them as one object, `slurm`."""

    @functools.wraps(func)
    def gathered(*args: Any, **params: Any) -> Any:
        slurm = SlurmOptions(**{name: params.pop(name) for name in _SLURM_OPTIONS})
        return func(*args, slurm=slurm, **params)

    command: Callable[..., Any] = gathered
    for name, (flag, attrs) in reversed(_SLURM_OPTIONS.items()):
        command = click.option(flag, name, **attrs)(command)
    return command


@click.command("slurm-script")
@study_options
@storage_option
@slurm_options
def slurm_script_command(state: CliState, options: StudyOptions, slurm: SlurmOptions) -> None:
    """Print an sbatch script running STUDY as a Slurm job array of `hpsearch worker`s.

    Save and submit it: `hpsearch slurm-script STUDY --array 8 ... > job.sh && sbatch job.sh`.
    Every task joins one study on the PostgreSQL named by --storage (all nodes must reach it) and
    the tasks share its --trials. A task that is cancelled, preempted or hits its time limit
    tells its running trial interrupted and queues it again for another task; a preempted task
    is requeued and rejoins the study.
    """
    storage = server_url(state.storage_url, for_what="a Slurm job array's workers")
    settings = options.settings(cache_dir=state.cache_dir, download=state.download)
    fetch_data(settings)  # into the cache the tasks read: a missing data set fails here, once
    workers = options.resolved(settings, device="cuda" if slurm.gpus_per_task else options.device)
    env = {**state.worker_env(), "HPSEARCH_STORAGE": storage}
    click.echo(render_script(_absolute(workers), slurm, env=env), nl=False)


def _absolute(options: StudyOptions) -> StudyOptions:
    """Paths as the tasks must see them wherever sbatch starts them: absolute."""
    study = options.study
    is_path = study.endswith(".py") or "/" in study  # as `load_study` tells them apart
    return dataclasses.replace(
        options, study=str(Path(study).absolute()) if is_path else study,
        data_dir=options.data_dir.absolute() if options.data_dir else None,
        checkpoint_dir=options.checkpoint_dir.absolute() if options.checkpoint_dir else None)


_SIGNALS = (
    "# scancel, preemption and the time limit send SIGTERM, and SIGKILL KillWait seconds later",
    "# (30 by default): the worker tells its running trial interrupted and queues it again for",
    "# another task. A requeued task rejoins the study, its sampler seeded apart from its earlier runs.",
)


def render_script(options: StudyOptions, slurm: SlurmOptions, *, env: dict[str, str]) -> str:
    """The sbatch script: #SBATCH lines, the workers' environment, and the one worker command."""
    name = f"hpsearch-{options.study_name}"
    directives = [
        f"--job-name={name}", f"--array=0-{slurm.array - 1}", "--ntasks=1",
        f"--cpus-per-task={slurm.cpus_per_task}",
        *([f"--gpus-per-task={slurm.gpus_per_task}"] if slurm.gpus_per_task else []),
        *([f"--mem={slurm.mem}"] if slurm.mem else []),
        *([f"--time={slurm.time}"] if slurm.time else []),
        *([f"--partition={slurm.partition}"] if slurm.partition else []),
        # A preempted task (or one on a node that failed) goes back in the queue and starts
        # again; its log goes on in the same file.
        "--requeue", "--open-mode=append", f"--output={name}-%A_%a.out",
    ]
    exports = {**env, "OMP_NUM_THREADS": str(slurm.cpus_per_task)}
    python = shlex.quote(str(Path(sys.executable).absolute()))
    worker = " ".join(shlex.quote(arg) for arg in worker_argv(options))
    return "\n".join([
        "#!/bin/bash",
        (f"# {slurm.array} hpsearch workers of {options.study_name} sharing {options.trials} "
         "trials; submit with: sbatch FILE"),
        *(f"#SBATCH {d}" for d in directives),
        "",
        *_SIGNALS,
        *(f"export {key}={shlex.quote(value)}" for key, value in exports.items()),
        (f"export HPSEARCH_WORKER_INDEX=$(( SLURM_ARRAY_TASK_ID + {slurm.array} * "
         "${SLURM_RESTART_COUNT:-0} ))"),
        # exec: the worker itself is the batch step, so Slurm's SIGTERM reaches it directly.
        f"exec {python} -m hpsearch worker {worker}",
        "",
    ])
