"""`hpsearch worker`, `launch` and `status`: many workers on one study."""

from __future__ import annotations

import datetime
import os
import socket
import sys

import click
import torch

from hpsearch.analysis.cost import cost_lines
from hpsearch.analysis.status import MAX_REASON_TRIALS, RECENT_SECONDS, StudyStatus, study_status
from hpsearch.analysis.stopping import convergence_lines
from hpsearch.cli.options import (
    GpuList,
    StudyOptions,
    set_threads,
    study_options,
    threads_option,
    worker_argv,
)
from hpsearch.cli.state import CliState, storage_option
from hpsearch.data import DataCache, describe_data
from hpsearch.devices import resolve_device
from hpsearch.errors import StorageError
from hpsearch.search.convergence import ConvergenceWatch
from hpsearch.search.launch import launch, plan_workers
from hpsearch.search.outcomes import describe_counts, interrupt_on_signals, interrupt_reason
from hpsearch.search.record import RunRecord, load_existing_study
from hpsearch.search.reports import TrialOutcome, finished_line
from hpsearch.search.runs import run_study
from hpsearch.search.settings import RunSettings, data_record
from hpsearch.search.storage import StorageHandle
from hpsearch.search.study import open_study
from hpsearch.search.worker import BudgetState, check_precision


@click.command("worker")
@study_options
@storage_option
@click.option("--worker-index", type=click.IntRange(min=0), envvar="HPSEARCH_WORKER_INDEX",
              help="This worker's number (env HPSEARCH_WORKER_INDEX); seeds its sampler apart "
                   "from the others' [a random sampler seed].")
@threads_option
def worker_command(state: CliState, options: StudyOptions, worker_index: int | None,
                   threads: int | None) -> None:
    """Join STUDY (creating it if needed) and run trials until it holds --trials finished ones.

    Start as many workers as you like, on one machine or many, against one storage: --trials is
    the budget of the study, shared by all of them. Use PostgreSQL across machines, a journal
    file on one machine; SQLite takes a single worker.
    """
    # SIGINT and SIGTERM stop a worker as Ctrl-C does: the running trial is told interrupted
    # (naming the signal) and queued again, not left RUNNING.
    interrupt_on_signals()
    set_threads(threads)
    run = state.prepare(options)
    name = f"w{worker_index}" if worker_index is not None else f"{socket.gethostname()}:{os.getpid()}"
    # Workers with one sampler seed would draw the same startup points; spread them by index.
    sampler_seed = options.seed * 10_007 + worker_index if worker_index is not None else None
    click.echo(f"[{name}] study {run.settings.study_name} on {run.device}, storage "
               f"{run.handle.url}, budget {run.budget} trials")

    def on_trial(outcome: TrialOutcome, state: BudgetState) -> None:
        click.echo(f"[{name}] {finished_line(outcome, done=state.done, budget=run.budget)}, "
                   f"{state.running} running")

    try:
        report = run_study(run, options, sampler_seed=sampler_seed, on_trial=on_trial)
    except KeyboardInterrupt as e:
        click.echo(f"[{name}] {interrupt_reason(e)}: its running trial is queued again", err=True)
        sys.exit(130)
    if report.precision_note:
        click.echo(f"[{name}] note: {report.precision_note}")
    click.echo(f"[{name}] done ({report.stopped}): ran {len(report.outcomes)} trials: "
               f"{describe_counts(report.counts())}")
    if report.stop_reason:
        click.echo(f"[{name}] stopped starting trials: {report.stop_reason}")


@click.command("launch")
@study_options
@storage_option
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes [one per GPU slot, or 1 on a machine without GPUs].")
@click.option("--gpus", type=GpuList(), help="GPU indices to use, like 0,1,2 [every visible GPU].")
@click.option("--per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers sharing each GPU.")
def launch_command(state: CliState, options: StudyOptions, workers: int | None,
                   gpus: tuple[str, ...] | None, per_gpu: int) -> None:
    """Start local workers of STUDY, one per GPU (or CPU workers), and wait for them.

    Ctrl-C stops every worker; their running trials are marked interrupted and queued again.
    """
    interrupt_on_signals()
    settings = options.settings(cache_dir=state.cache_dir, download=state.download)
    gpu_list = _launch_gpus(gpus, options.device)
    plans = plan_workers(workers=workers, gpus=gpu_list, per_gpu=per_gpu,
                         cpu_count=len(os.sched_getaffinity(0)))
    handle, study_name = _create_study(state, options, settings, workers=len(plans))
    budget = options.trials or settings.spec.trials
    where = ", ".join(f"GPU {p.gpu}" if p.gpu is not None else f"CPU x{p.threads} threads"
                      for p in plans)
    click.echo(f"launching {len(plans)} worker(s) of {settings.study_name} ({where}), budget "
               f"{budget} trials, storage {handle.url}")
    # Every worker gets what this launcher resolved, so they agree on the study, and the device
    # `cuda` under its own CUDA_VISIBLE_DEVICES (CPU workers have CUDA hidden, so `auto` finds
    # MPS or the CPU).
    for_workers = options.resolved(settings, device="cuda" if gpu_list else options.device)
    result = launch(plans, worker_argv(for_workers), env=state.worker_env())
    click.echo(f"\nworkers exited with {result.exit_codes} after {result.seconds:.1f} s"
               + (" (interrupted)" if result.interrupted else ""))
    _print_status(study_status(load_existing_study(handle, study_name)))
    if result.interrupted:
        sys.exit(130)
    if any(code != 0 for code in result.exit_codes):
        sys.exit(1)


def _create_study(
    state: CliState, options: StudyOptions, settings: RunSettings, *, workers: int
) -> tuple[StorageHandle, str]:
    """Open the storage and create the study once, not K times; each worker checks its own
    data against it again. The data are loaded first: a missing data set leaves no new storage
    file behind."""
    base, cache = settings.base_config(0), fetch_data(settings)
    handle = state.open_storage()
    if handle.kind == "sqlite" and workers > 1:
        raise StorageError(
            f"{workers} workers cannot share the SQLite file {handle.url} (SQLite takes one "
            f"writer; the rest would fail with 'database is locked'). {handle.parallel_hint()}"
        )
    study = open_study(handle, settings, sampler_seed=options.seed,
                       data=data_record(settings, base, cache))
    # Refuse a precision the study does not keep here, once, not in each worker.
    check_precision(study, options.speed,
                    allow_mixed=options.allow_mixed_precision)
    if options.stop_when_converged:  # and --stop-when-converged where it has no meaning
        ConvergenceWatch(study, handle, metric=settings.spec.metric,
                         min_trials=options.stop_min_trials)
    return handle, study.study_name


def fetch_data(settings: RunSettings) -> DataCache:
    """Load the study's data once, on the CPU, before starting workers that load it again
    themselves: a missing data set is one error here, not one per worker, and a download
    happens once, into the cache the workers read."""
    base = settings.base_config(0)
    cache = DataCache(settings.data_dir, torch.device("cpu"))
    cache.get(base.dataset, val_fraction=base.val_fraction, split_seed=base.split_seed)
    return cache


def _launch_gpus(gpus: tuple[str, ...] | None, device: str) -> list[str]:
    """GPU indices for `launch`, as CUDA_VISIBLE_DEVICES values of the workers."""
    if gpus is not None:
        return list(gpus)
    if device in ("auto", "cuda") and torch.cuda.is_available():
        chosen = [str(k) for k in range(torch.cuda.device_count())]
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        # Indices count within what this process may see, as torch numbers them.
        return [visible[int(g)] for g in chosen] if "CUDA_VISIBLE_DEVICES" in os.environ else chosen
    if device.startswith("cuda"):
        resolve_device(device)  # the clear error when there is no CUDA
        raise click.BadParameter(f"{device!r}: with launch, pick GPUs with --gpus 0,1,...",
                                 param_hint="--device")
    return []


MAX_FRONT_SHOWN = 12  # Pareto-front trial numbers `status` names; `best` lists them all


@click.command("status")
@click.argument("study_name")
@storage_option
def status_command(state: CliState, study_name: str) -> None:
    """Trials of STUDY_NAME by state, the best so far, and the workers seen recently."""
    study = load_existing_study(state.open_existing_storage(), study_name)
    _print_status(study_status(study))


def _print_status(status: StudyStatus) -> None:
    click.echo(f"study {status.study_name}: {describe_counts(status.states)}")
    click.echo(f"data: {describe_data(status.data)}")
    if status.on_other_data:
        click.echo(f"  {status.on_other_data} trial(s) ran on other data (--allow-other-data)")
    for reason, numbers in status.reasons.items():
        shown = ", ".join(f"#{n}" for n in numbers[:MAX_REASON_TRIALS])
        more = f" and {len(numbers) - MAX_REASON_TRIALS} more" if len(numbers) > MAX_REASON_TRIALS else ""
        click.echo(f"  {reason}: trial{'s' if len(numbers) > 1 else ''} {shown}{more}")
    if status.objectives:
        shown = ", ".join(f"#{t.number}" for t in status.pareto[:MAX_FRONT_SHOWN])
        unnamed = len(status.pareto) - MAX_FRONT_SHOWN
        click.echo(f"Pareto front ({', '.join(status.objectives)}): {len(status.pareto)} trial(s)"
                   + (f": {shown}" if shown else "") + (f" and {unnamed} more" if unnamed > 0 else "")
                   + f"; `hpsearch best {status.study_name}` lists them")
    if status.best is not None:
        click.echo(f"best: trial #{status.best.number}, {status.metric} = {status.best.value:.6g}, "
                   f"{status.best.params}")
    if status.cost is not None:
        for line in cost_lines(status.cost):
            click.echo(line)
    for line in convergence_lines(status.estimates, status.stopped):
        click.echo(line)
    now = datetime.datetime.now()
    for t in status.running:
        run = RunRecord.from_trial(t)
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        # A cross-validated trial reports once per fold (its running mean), not per epoch.
        folds = run.cv_folds
        steps = f"{len(t.intermediate_values)} of {folds} folds" if folds > 1 else (
            f"{len(t.intermediate_values)} epoch(s)")
        click.echo(f"  running: trial #{t.number} on {run.worker.label}, "
                   f"{age:.0f} s, {steps} reported")
    if status.workers:
        click.echo(f"workers seen in the last {RECENT_SECONDS / 60:.0f} min:")
        for w in status.workers:
            click.echo(f"  {w.worker}: {w.trials} trial(s), {w.running} running, last "
                       f"{w.last_seen:%H:%M:%S}")
