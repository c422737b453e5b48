"""The `hpsearch` command line. Devices, seeds and storages are resolved here, at the edge."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import optuna
import yaml

from hpsearch import __version__
from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli.analysis import ANALYSIS_COMMANDS
from hpsearch.cli.dashboard import DASHBOARD_COMMANDS
from hpsearch.cli.options import (
    RUN_THREADS,
    DeviceType,
    EnvOption,
    StudyOptions,
    allow_other_data_option,
    set_threads,
    study_options,
    threads_option,
)
from hpsearch.cli.parallel import (
    launch_command,
    status_command,
    worker_command,
)
from hpsearch.cli.slurm import slurm_script_command
from hpsearch.cli.state import (
    CliState,
    data_dir_option,
    invoked_as,
    storage_option,
)
from hpsearch.data import DataDirs, default_cache_dir, describe_data
from hpsearch.devices import DEVICE_HELP, device_name, resolve_device
from hpsearch.errors import DeviceError, HPSearchError, StudyError
from hpsearch.search.objectives import format_value, pareto_front
from hpsearch.search.outcomes import FAILED, describe_counts, interrupt_on_signals, interrupt_reason
from hpsearch.search.record import (
    ResultSummary,
    RunRecord,
    TrialRecord,
    load_existing_study,
    study_metric,
)
from hpsearch.search.registry import load_study, study_names
from hpsearch.search.reports import Progress, TrialOutcome, describe, finished_line
from hpsearch.search.runs import run_study
from hpsearch.search.storage import DEFAULT_DB_RETRY_SECONDS, DEFAULT_HEARTBEAT
from hpsearch.search.worker import BudgetState, WorkerReport
from hpsearch.training import CrossValResult


class HPSearchGroup(click.Group):
    """Shows hpsearch's own errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HPSearchError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=HPSearchGroup)
@click.version_option(__version__, prog_name="hpsearch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--heartbeat-seconds", type=click.IntRange(min=1), default=DEFAULT_HEARTBEAT,
              show_default=True, envvar="HPSEARCH_HEARTBEAT_SECONDS", cls=EnvOption,
              help="Seconds between beats of a running trial; one silent for 3 beats is lost "
                   "(env HPSEARCH_HEARTBEAT_SECONDS).")
@click.option("--db-retry-seconds", type=click.FloatRange(min=0), default=DEFAULT_DB_RETRY_SECONDS,
              show_default=True, envvar="HPSEARCH_DB_RETRY_SECONDS", cls=EnvOption,
              help="How long to retry an unreachable PostgreSQL (env HPSEARCH_DB_RETRY_SECONDS).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              default=default_cache_dir, show_default="~/.cache/hpsearch", envvar="HPSEARCH_DATA_DIR",
              cls=EnvOption, help="Where downloads and unpacked data files go, and where data are "
                                  "looked for without --data-dir (env HPSEARCH_DATA_DIR).")
@click.option("--download/--no-download", default=True, envvar="HPSEARCH_DOWNLOAD", cls=EnvOption,
              help="Let torchvision download missing data sets (env HPSEARCH_DOWNLOAD=0: fail at "
                   "once, naming the files, on machines without internet).")
@click.pass_context
def main(ctx: click.Context, verbose: int, heartbeat_seconds: int, db_retry_seconds: float,
         cache_dir: Path, download: bool) -> None:
    """Hyperparameter studies of PyTorch models on Optuna."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    optuna.logging.set_verbosity(level)
    # What the environment says is read here, once, and passed down as plain arguments.
    ctx.obj = CliState(heartbeat=heartbeat_seconds, db_retry_seconds=db_retry_seconds,
                       cache_dir=cache_dir, download=download)


@main.command("studies")
def studies_command() -> None:
    """List the built-in study modules."""
    broken = []
    for name in study_names():
        # One broken module is named with its error; it does not hide the others.
        try:
            spec = load_study(name)
        except StudyError as e:
            broken.append(str(e))
            continue
        click.echo(f"{spec.name:12} {spec.description}")
        click.echo(
            f"{'':12} data: {', '.join(spec.datasets)}; {spec.trials} trials, "
            f"{spec.sampler} sampler, {spec.pruner} pruner, "
            + (f"metrics {', '.join(spec.metrics)} (a Pareto front)" if spec.multi_objective
               else f"metric {spec.metric}")
            + (f", {spec.cv}-fold cross-validation on small sets" if spec.cv else "")
        )
    for message in broken:
        click.echo(f"Error: {message}", err=True)
    if broken:
        sys.exit(1)


@main.command("run")
@study_options
@storage_option
@threads_option(default=RUN_THREADS)
def run_command(state: CliState, options: StudyOptions, threads: int) -> None:
    """Create or resume STUDY and run trials until it holds --trials finished ones.

    STUDY is a built-in module (see `hpsearch studies`) or a path to your own. Interrupt with
    Ctrl-C at any time: finished trials stay, and running the same command again resumes.
    """
    interrupt_on_signals()  # also when started in the background, where SIGINT is ignored
    set_threads(threads)
    run = state.prepare(options)
    settings, budget = run.settings, run.budget
    folds = f", {settings.cv}-fold cross-validation" if settings.cv else ""
    click.echo(f"study {settings.study_name} ({settings.spec.name} on {settings.dataset}, "
               f"{settings.epochs} epochs max{folds}) on {run.device}, storage {run.handle.url}")
    started = time.monotonic()
    interactive = sys.stdout.isatty()  # the bar draws only on a terminal
    with click.progressbar(length=budget, label="trials", show_pos=True,
                           item_show_func=describe) as bar:
        def on_trial(outcome: TrialOutcome, state: BudgetState) -> None:
            bar.current_item = outcome
            bar.update(min(state.done, budget) - bar.pos)
            if not interactive:  # a log file: one line per finished trial, as `worker` prints
                click.echo(finished_line(outcome, done=state.done, budget=budget))

        def on_progress(progress: Progress) -> None:
            # A CPU trial can take minutes: redraw with the running trial's epoch.
            bar.current_item = progress
            bar.render_progress()

        try:
            report = run_study(run, options, sampler_seed=options.seed, on_trial=on_trial,
                               on_progress=on_progress)
        except KeyboardInterrupt as e:
            click.echo(f"\n{interrupt_reason(e)}: finished trials are kept in {run.handle.url}; the "
                       "running trial is queued again. Run the same command to resume.", err=True)
            sys.exit(130)
    _print_run_report(report, time.monotonic() - started)
    _print_best(load_existing_study(run.handle, settings.study_name), brief=True)
    # The masked URL: a password never goes to the terminal (nor into shell history by copy).
    # A storage from HPSEARCH_STORAGE needs no --storage to be found again.
    storage_arg = f" --storage {shlex.quote(run.handle.url)}" if state.storage_named else ""
    click.echo(f"\nnext: {invoked_as()} best {shlex.quote(settings.study_name)}{storage_arg}")


def _print_run_report(report: WorkerReport, elapsed: float) -> None:
    if report.precision_note:
        click.echo(f"note: {report.precision_note}")
    if report.already_done:
        click.echo(f"resumed: {report.already_done} trials were already finished")
    if report.outcomes:
        click.echo(f"ran {len(report.outcomes)} trials in {elapsed:.1f} s: "
                   f"{describe_counts(report.counts())}"
                   + (" (stopped by --timeout)" if report.stopped == "timeout" else ""))
    elif report.stopped == "timeout":
        click.echo("ran no trials: --timeout passed before the first one could start")
    elif report.stopped != "converged":
        click.echo(f"ran no trials: the study already holds its {report.budget}; raise --trials "
                   "to run more")
    if report.stop_reason:
        click.echo(f"stopped starting trials (--stop-when-converged): {report.stop_reason}")
    for outcome in report.outcomes:
        if outcome.outcome == FAILED:
            click.echo(f"  trial {outcome.number} failed: {outcome.reason}")


main.add_command(worker_command)
main.add_command(launch_command)
main.add_command(status_command)
main.add_command(slurm_script_command)
for _command in (*DASHBOARD_COMMANDS, *ANALYSIS_COMMANDS):
    main.add_command(_command)


@main.command("best")
@click.argument("study_name")
@storage_option
def best_command(state: CliState, study_name: str) -> None:
    """Print the best trial of STUDY_NAME and its full training config (the Pareto front of a
    study with several objectives)."""
    study = load_existing_study(state.open_existing_storage(), study_name)
    _print_best(study, brief=False)


def _print_best(study: optuna.Study, *, brief: bool) -> None:
    metric = study_metric(study).name
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
        reasons = {str(ResultSummary.from_trial(t).reason) for t in failed}
        raise HPSearchError(
            f"study {study.study_name!r} has no completed trial yet"
            + (f"; failures: {'; '.join(sorted(reasons))}" if failed else "")
        )
    if study_metric(study).multi_objective:
        _print_front(study, len(completed), brief=brief)
        return
    best = study.best_trial
    click.echo(f"best trial of {study.study_name}: #{best.number}, {metric} = {best.value:.6g}")
    click.echo(f"  parameters: {best.params}")
    if not brief:
        record = TrialRecord.from_trial(best)
        click.echo("config:")
        click.echo(yaml.safe_dump(record.stored_config or {}, sort_keys=False).rstrip())
        result = record.result
        click.echo(f"trained {result.epochs_run} epochs (best epoch {result.best_epoch}) "
                   f"in {result.seconds} s, {result.n_params} parameters")

def _print_front(study: optuna.Study, n_completed: int, *, brief: bool) -> None:
    """A multi-objective study's answer: its Pareto front, one trial a line."""
    metric = study_metric(study)
    front = pareto_front(study)
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(metric.names, metric.directions))
    click.echo(f"Pareto front of {study.study_name}: {len(front)} of {n_completed} completed "
               f"trials, none beaten in every objective: {objectives}")
    click.echo(f"{'trial':>7}" + "".join(f"{name:>14}" for name in metric.names) + "  parameters")
    for t in front:
        values = "".join(f"{format_value(n, v):>14}" for n, v in zip(metric.names, t.values))
        click.echo(f"{'#' + str(t.number):>7}{values}  {t.params}")
    if not brief:
        click.echo(f"configs: hpsearch export {study.study_name} (the front), or --by METRIC --top K")


@main.command("rerun")
@click.argument("study_name")
@click.argument("trial", type=click.IntRange(min=0))
@storage_option
@click.option("--device", type=DeviceType(), default=None,
              help=f"{DEVICE_HELP} [the device the trial ran on, if this machine has it]")
@data_dir_option
@allow_other_data_option
def rerun_command(state: CliState, study_name: str, trial: int, device: str | None,
                  data_dir: DataDirs, allow_other_data: bool) -> None:
    """Train trial TRIAL of STUDY_NAME again from its stored config and compare the metric."""
    study = load_existing_study(state.open_existing_storage(), study_name)
    stored_device = next((RunRecord.from_trial(t).device for t in study.get_trials(deepcopy=False)
                          if t.number == trial), None)
    if device is None:
        try:
            torch_device = resolve_device(stored_device or "auto")
        except DeviceError:
            click.echo(f"the trial ran on {stored_device}, which this machine lacks; using auto")
            torch_device = resolve_device("auto")
    else:
        torch_device = resolve_device(device)
    rerun = rerun_trial(study, trial, device=torch_device, data_dir=data_dir,
                        allow_other_data=allow_other_data)
    stored = rerun.stored.run
    click.echo(f"trial {trial} of {study_name} ({rerun.stored.result.outcome or '?'}), seed "
               f"{rerun.config.seed}, {rerun.config.dataset}; stored on "
               f"{stored.device_name or '?'} in {stored.precision}, rerun on "
               f"{device_name(torch_device)} in {rerun.speed.precision}")
    click.echo(f"  data stored: {describe_data(stored.data)}")
    click.echo(f"  data now:    {describe_data(rerun.data)}")
    if rerun.data_note:
        click.echo(f"  note: {rerun.data_note}")
    for package, (before, now) in rerun.version_changes.items():
        click.echo(f"  note: {package} was {before}, is now {now}")
    for note in rerun.notes:
        click.echo(f"  note: {note}")
    if isinstance(rerun.result, CrossValResult):
        # One row per fold: its value at the epoch it kept; the epochs are compared below.
        stored_values = rerun.stored.cv.values if rerun.stored.cv is not None else []
        click.echo(f"{'fold':>5}  {'stored ' + rerun.metric:>18}  {'rerun ' + rerun.metric:>18}")
        for fold, new in enumerate(rerun.result.values, start=1):
            old = stored_values[fold - 1] if fold <= len(stored_values) else None
            shown = f"{old:.6f}" if old is not None else "-"
            click.echo(f"{fold:>5}  {shown:>18}  {new:>18.6f}")
    else:
        click.echo(f"{'epoch':>5}  {'stored ' + rerun.metric:>18}  {'rerun ' + rerun.metric:>18}")
        for epoch, new in enumerate(rerun.history, start=1):
            old = rerun.stored_history[epoch - 1] if epoch <= len(rerun.stored_history) else None
            shown = f"{old:.6f}" if old is not None else "-"
            click.echo(f"{epoch:>5}  {shown:>18}  {new:>18.6f}")
    value = rerun.value
    if rerun.stored_value is None or value is None:
        click.echo(f"{rerun.metric}: stored {rerun.stored_value}, rerun {value} "
                   f"({rerun.result.failure or 'the stored trial has no final value'})")
    else:
        diff = abs(value - rerun.stored_value)
        verdict = "identical" if diff == 0 else f"differs by {diff:.3g}"
        click.echo(f"{rerun.metric}: stored {rerun.stored_value:.6f}, rerun {value:.6f} ({verdict})")
    if rerun.max_epoch_difference is not None:
        click.echo(f"largest per-epoch difference: {rerun.max_epoch_difference:.3g}")


if __name__ == "__main__":
    main()
