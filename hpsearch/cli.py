"""The `hpsearch` command line. Devices, seeds and storages are resolved here, at the edge."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import optuna
import yaml

from hpsearch import __version__
from hpsearch.devices import DEVICE_HELP, resolve_device
from hpsearch.errors import HPSearchError
from hpsearch.registry import PRUNERS, SAMPLERS, list_studies, load_study
from hpsearch.runner import (
    ATTR_CONFIG,
    ATTR_RESULT,
    COMPLETE,
    FAILED,
    PRUNED,
    TrialOutcome,
    load_existing_study,
    resolve_settings,
)
from hpsearch.storage import DEFAULT_STORAGE, open_storage
from hpsearch.worker import BudgetState, run_worker


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


storage_option = click.option(
    "--storage",
    envvar="HPSEARCH_STORAGE",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="sqlite:///FILE.db, journal:FILE.log or postgresql://USER@HOST/DB (env HPSEARCH_STORAGE).",
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command("studies")
def studies_command() -> None:
    """List the built-in study modules."""
    for spec in list_studies():
        click.echo(f"{spec.name:12} {spec.description}")
        click.echo(
            f"{'':12} data: {', '.join(spec.datasets)}; {spec.trials} trials, "
            f"{spec.sampler} sampler, {spec.pruner} pruner, metric {spec.metric}"
        )


@main.command("run")
@study_options
def run_command(study: str, trials: int | None, timeout: float | None, storage: str, study_name: str | None,
                dataset: str | None, data_dir: Path | None, epochs: int | None, device: str, seed: int,
                sampler: str | None, pruner: str | None) -> None:
    """Create or resume STUDY and run trials until it holds --trials finished ones.

    STUDY is a built-in module (see `hpsearch studies`) or a path to your own. Interrupt with
    Ctrl-C at any time: finished trials stay, and running the same command again resumes.
    """
    spec = load_study(study)
    settings = resolve_settings(spec, study_name=study_name, dataset=dataset, epochs=epochs,
                                seed=seed, sampler=sampler, pruner=pruner, data_dir=data_dir)
    torch_device = resolve_device(device)
    handle = open_storage(storage)
    budget = trials or spec.trials
    click.echo(f"study {settings.study_name} ({spec.name} on {settings.dataset}, {settings.epochs} "
               f"epochs max) on {torch_device}, storage {handle.url}")
    started = time.monotonic()
    with click.progressbar(length=budget, label="trials", show_pos=True,
                           item_show_func=_describe) as bar:
        def on_trial(outcome: TrialOutcome, state: BudgetState) -> None:
            bar.current_item = outcome
            bar.update(min(state.done, budget) - bar.pos)

        try:
            report = run_worker(handle, settings, trials=budget, device=torch_device,
                                timeout=timeout, sampler_seed=seed, on_trial=on_trial)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: finished trials are kept in {handle.url}; the running trial "
                       "is queued again. Run the same command to resume.", err=True)
            sys.exit(130)
    elapsed = time.monotonic() - started
    if report.already_done:
        click.echo(f"resumed: {report.already_done} trials were already finished")
    click.echo(f"ran {len(report.outcomes)} trials in {elapsed:.1f} s: {report.count(COMPLETE)} complete, "
               f"{report.count(PRUNED)} pruned, {report.count(FAILED)} failed"
               + (" (stopped by --timeout)" if report.stopped == "timeout" else ""))
    for outcome in report.outcomes:
        if outcome.outcome == FAILED:
            click.echo(f"  trial {outcome.number} failed: {outcome.reason}")
    _print_best(load_existing_study(handle, settings.study_name), brief=True)
    storage_arg = "" if storage == DEFAULT_STORAGE else f" --storage {storage}"
    click.echo(f"\nnext: hpsearch best {settings.study_name}{storage_arg}")


def _describe(outcome: TrialOutcome | None) -> str:
    if outcome is None:
        return ""
    value = f" {outcome.value:.4f}" if outcome.value is not None else ""
    return f"trial {outcome.number} {outcome.outcome}{value}"


@main.command("best")
@click.argument("study_name")
@storage_option
def best_command(study_name: str, storage: str) -> None:
    """Print the best trial of STUDY_NAME and its full training config."""
    study = load_existing_study(open_storage(storage, heartbeat=None), study_name)
    _print_best(study, brief=False)


def _print_best(study: optuna.Study, *, brief: bool) -> None:
    metric = study.user_attrs.get("metric", "value")
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
        reasons = {str(t.user_attrs.get(ATTR_RESULT, {}).get("reason")) for t in failed}
        raise HPSearchError(
            f"study {study.study_name!r} has no completed trial yet"
            + (f"; failures: {'; '.join(sorted(reasons))}" if failed else "")
        )
    best = study.best_trial
    click.echo(f"best trial of {study.study_name}: #{best.number}, {metric} = {best.value:.6g}")
    click.echo(f"  parameters: {best.params}")
    if not brief:
        click.echo("config:")
        click.echo(yaml.safe_dump(best.user_attrs.get(ATTR_CONFIG, {}), sort_keys=False).rstrip())
        result = best.user_attrs.get(ATTR_RESULT, {})
        click.echo(f"trained {result.get('epochs_run')} epochs (best epoch {result.get('best_epoch')}) "
                   f"in {result.get('seconds')} s, {result.get('n_params')} parameters")


if __name__ == "__main__":
    main()
