"""The `hpsearch` command line. Devices, seeds and storages are resolved here, at the edge."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import optuna
import yaml
from click.core import ParameterSource

from hpsearch import __version__
from hpsearch.analysis.dashboard import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    EXPOSED_WARNING,
    dashboard_url,
    is_loopback,
    make_dashboard_server,
)
from hpsearch.analysis.export import export_document, load_exported, write_document
from hpsearch.analysis.final import markdown, run_final
from hpsearch.analysis.report import write_report
from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli.options import (
    RUN_THREADS,
    OutputFile,
    allow_other_data_option,
    describe,
    invoked_as,
    open_existing_storage,
    prepare_run,
    set_threads,
    speed_from,
    speed_options,
    storage_option,
    study_options,
    threads_option,
)
from hpsearch.cli.parallel import (
    launch_command,
    status_command,
    worker_command,
)
from hpsearch.data import describe_data
from hpsearch.devices import DEVICE_HELP, device_name, resolve_device
from hpsearch.errors import DeviceError, HPSearchError, StudyError
from hpsearch.search.outcomes import FAILED, describe_counts, interrupt_on_signals, interrupt_reason
from hpsearch.search.record import (
    ResultSummary,
    RunRecord,
    TrialRecord,
    load_existing_study,
    study_metric,
)
from hpsearch.search.registry import load_study, study_names
from hpsearch.search.reports import Progress, TrialOutcome
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import BudgetState, WorkerOptions, run_worker
from hpsearch.training import CrossValResult, SpeedOptions


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
def main(verbose: int) -> None:
    """Hyperparameter studies of PyTorch models on Optuna."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    optuna.logging.set_verbosity(level)


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
            f"{spec.sampler} sampler, {spec.pruner} pruner, metric {spec.metric}"
            + (f", {spec.cv}-fold cross-validation on small sets" if spec.cv else "")
        )
    for message in broken:
        click.echo(f"Error: {message}", err=True)
    if broken:
        sys.exit(1)


@main.command("run")
@study_options
@speed_options
@threads_option(default=RUN_THREADS)
def run_command(study: str, trials: int | None, timeout: float | None, storage: str, study_name: str | None,
                dataset: str | None, data_dir: Path | None, epochs: int | None, device: str, seed: int,
                sampler: str | None, pruner: str | None, cv: int | None, allow_other_data: bool,
                population: int, compile_: bool, bf16: bool, allow_mixed_precision: bool,
                threads: int) -> None:
    """Create or resume STUDY and run trials until it holds --trials finished ones.

    STUDY is a built-in module (see `hpsearch studies`) or a path to your own. Interrupt with
    Ctrl-C at any time: finished trials stay, and running the same command again resumes.
    """
    interrupt_on_signals()  # also when started in the background, where SIGINT is ignored
    set_threads(threads)
    settings, torch_device, handle, budget, data = prepare_run(
        study, storage=storage, device=device, trials=trials, study_name=study_name,
        dataset=dataset, epochs=epochs, seed=seed, sampler=sampler, pruner=pruner,
        data_dir=data_dir, cv=cv, allow_other_data=allow_other_data)
    spec = settings.spec
    folds = f", {settings.cv}-fold cross-validation" if settings.cv else ""
    click.echo(f"study {settings.study_name} ({spec.name} on {settings.dataset}, {settings.epochs} "
               f"epochs max{folds}) on {torch_device}, storage {handle.url}")
    started = time.monotonic()
    interactive = sys.stdout.isatty()  # the bar draws only on a terminal
    with click.progressbar(length=budget, label="trials", show_pos=True,
                           item_show_func=describe) as bar:
        def on_trial(outcome: TrialOutcome, state: BudgetState) -> None:
            bar.current_item = outcome
            bar.update(min(state.done, budget) - bar.pos)
            if not interactive:  # a log file: one line per finished trial, as `worker` prints
                click.echo(f"{describe(outcome)} ({outcome.seconds:.1f} s); study: "
                           f"{state.done}/{budget} finished")

        def on_progress(progress: Progress) -> None:
            # A CPU trial can take minutes: redraw with the running trial's epoch.
            bar.current_item = progress
            bar.render_progress()

        try:
            options = WorkerOptions(trials=budget, device=torch_device, timeout=timeout,
                                    sampler_seed=seed, population=population,
                                    speed=speed_from(compile_, bf16) or SpeedOptions(),
                                    allow_mixed_precision=allow_mixed_precision)
            report = run_worker(handle, settings, options, on_trial=on_trial,
                                on_progress=on_progress, data=data)
        except KeyboardInterrupt as e:
            click.echo(f"\n{interrupt_reason(e)}: finished trials are kept in {handle.url}; the running trial "
                       "is queued again. Run the same command to resume.", err=True)
            sys.exit(130)
    elapsed = time.monotonic() - started
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
    else:
        click.echo(f"ran no trials: the study already holds its {report.budget}; raise --trials "
                   "to run more")
    for outcome in report.outcomes:
        if outcome.outcome == FAILED:
            click.echo(f"  trial {outcome.number} failed: {outcome.reason}")
    _print_best(load_existing_study(handle, settings.study_name), brief=True)
    # The masked URL: a password never goes to the terminal (nor into shell history by copy).
    # A storage from HPSEARCH_STORAGE needs no --storage to be found again.
    source = click.get_current_context().get_parameter_source("storage")
    from_user = source not in (ParameterSource.DEFAULT, ParameterSource.ENVIRONMENT)
    storage_arg = f" --storage {shlex.quote(handle.url)}" if from_user else ""
    click.echo(f"\nnext: {invoked_as()} best {shlex.quote(settings.study_name)}{storage_arg}")


main.add_command(worker_command)
main.add_command(launch_command)
main.add_command(status_command)


@main.command("best")
@click.argument("study_name")
@storage_option
def best_command(study_name: str, storage: str) -> None:
    """Print the best trial of STUDY_NAME and its full training config."""
    study = load_existing_study(open_existing_storage(storage), study_name)
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

@main.command("dashboard")
@storage_option
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to bind; anything but loopback exposes a dashboard without login.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port).")
def dashboard_command(storage: str, host: str, port: int) -> None:
    """Serve optuna-dashboard over the storage (Ctrl-C to stop)."""
    handle = open_storage(storage, heartbeat=None)  # may watch a storage before its first run
    server = make_dashboard_server(handle, host=host, port=port)
    url = dashboard_url(server, host)
    if not is_loopback(host):
        click.secho("WARNING: " + EXPOSED_WARNING.format(url=url, port=server.server_address[1]),
                    fg="red", bold=True, err=True)
    click.echo(f"optuna-dashboard for {handle.url} at {url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("dashboard stopped")
    finally:
        server.server_close()


@main.command("report")
@click.argument("study_name")
@storage_option
@click.option("-o", "--output", type=OutputFile(),
               default=Path("report.html"), show_default=True, help="HTML file to write.")
def report_command(study_name: str, storage: str, output: Path) -> None:
    """Write one self-contained HTML page of figures and trend tables for STUDY_NAME."""
    handle = open_existing_storage(storage)
    study = load_existing_study(handle, study_name)
    report = write_report(study, output, storage_url=handle.url)
    drawn = sum(f.html is not None for f in report.figures)
    click.echo(f"wrote {output} ({report.n_trials} trials, {drawn} of {len(report.figures)} "
               f"figures drawn, {output.stat().st_size / 1e6:.1f} MB)")
    for figure in report.figures:
        if figure.html is None:
            click.echo(f"  {figure.title}: {figure.caption}")


@main.command("export")
@click.argument("study_name")
@storage_option
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the best completed trials to export.")
@click.option("-o", "--output", type=OutputFile(),
               default=Path("best.yaml"), show_default=True, help="YAML file, or JSON by extension.")
@allow_other_data_option
def export_command(study_name: str, storage: str, top: int, output: Path,
                   allow_other_data: bool) -> None:
    """Write the best configs of STUDY_NAME, ready for `hpsearch final`."""
    handle = open_existing_storage(storage)
    document = export_document(load_existing_study(handle, study_name), top=top,
                               storage_url=handle.url, allow_other_data=allow_other_data)
    write_document(document, output)
    click.echo(f"wrote {len(document['configs'])} config(s) to {output}")
    for entry in document["configs"]:
        search = entry["search"]
        click.echo(f"  {entry['rank']}. trial {entry['trial']}: {entry['metric']} = "
                   f"{entry['value']:.6g}; final run: {entry['config']['epochs']} epochs "
                   f"(search: stopping={search['stopping']}, best epoch {search['best_epoch']} "
                   f"of {search['epochs_run']})")


@main.command("final")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Training runs per config; seed k is the config's seed + k.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding data files (env HPSEARCH_DATA_DIR).")
@click.option("-o", "--output", type=OutputFile(),
               default=Path("final.json"), show_default=True,
               help="JSON file; the Markdown tables go beside it (.md).")
@allow_other_data_option
def final_command(export_file: Path, seeds: int, device: str, data_dir: Path | None,
                  output: Path, allow_other_data: bool) -> None:
    """Train each exported config on the full training set and test it, with intervals."""
    entries = load_exported(export_file)
    torch_device = resolve_device(device)
    click.echo(f"{len(entries)} config(s) x {seeds} seed(s) on {torch_device}: training on the "
               "official training set, testing on the official test set")

    def on_run(label: str, run: dict[str, Any]) -> None:
        if run.get("error") is None:
            click.echo(f"  {label} seed {run['seed']}: failed: {run['failure']}")
            return
        low, high = run["error_ci"]
        click.echo(f"  {label} seed {run['seed']}: test error {100 * run['error']:.2f}% "
                   f"(95% CI {100 * low:.2f}-{100 * high:.2f}%), {run['epochs']} epochs, "
                   f"{run['seconds']:.1f} s")

    def on_data(label: str, data: dict[str, Any], note: str | None) -> None:
        click.echo(f"  {label}: data {describe_data(data)}")
        if note:
            click.echo(f"  note: {note}")

    document = run_final(entries, seeds=seeds, device=torch_device, data_dir=data_dir,
                         export_path=export_file, on_run=on_run, on_data=on_data,
                         allow_other_data=allow_other_data)
    table = markdown(document)
    output.write_text(json.dumps(document) + "\n")
    output.with_suffix(".md").write_text(table)
    click.echo("")
    click.echo(table)
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")


@main.command("rerun")
@click.argument("study_name")
@click.argument("trial", type=click.IntRange(min=0))
@storage_option
@click.option("--device", default=None,
              help=f"{DEVICE_HELP} [the device the trial ran on, if this machine has it]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding data files (env HPSEARCH_DATA_DIR).")
@allow_other_data_option
def rerun_command(study_name: str, trial: int, storage: str, device: str | None,
                  data_dir: Path | None, allow_other_data: bool) -> None:
    """Train trial TRIAL of STUDY_NAME again from its stored config and compare the metric."""
    study = load_existing_study(open_existing_storage(storage), study_name)
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
