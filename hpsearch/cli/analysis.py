"""`hpsearch report`, `export` and `final`: what a study found, read and shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hpsearch.analysis.export import export_document, load_exported, write_document
from hpsearch.analysis.final import markdown, run_final
from hpsearch.analysis.report import write_report
from hpsearch.cli.options import DeviceType, OutputFile, allow_other_data_option
from hpsearch.cli.state import CliState, data_dir_option, storage_option
from hpsearch.data import DataDirs, describe_data
from hpsearch.devices import DEVICE_HELP, resolve_device
from hpsearch.search.objectives import format_value
from hpsearch.search.record import load_existing_study


@click.command("report")
@click.argument("study_name")
@storage_option
@click.option("-o", "--output", type=OutputFile(),
               default=Path("report.html"), show_default=True, help="HTML file to write.")
def report_command(state: CliState, study_name: str, output: Path) -> None:
    """Write one self-contained HTML page of figures and trend tables for STUDY_NAME."""
    handle = state.open_existing_storage()
    study = load_existing_study(handle, study_name)
    report = write_report(study, output, storage_url=handle.url)
    drawn = sum(f.html is not None for f in report.figures)
    click.echo(f"wrote {output} ({report.n_trials} trials, {drawn} of {len(report.figures)} "
               f"figures drawn, {output.stat().st_size / 1e6:.1f} MB)")
    for figure in report.figures:
        if figure.html is None:
            click.echo(f"  {figure.title}: {figure.caption}")


@click.command("export")
@click.argument("study_name")
@storage_option
@click.option("--top", type=click.IntRange(min=1), default=None, show_default="3; a multi-objective "
              "study's whole Pareto front", help="How many of the best completed trials to export.")
@click.option("--by", metavar="METRIC", help="Rank by this metric of a multi-objective study "
              "instead of exporting its Pareto front [the study's metric].")
@click.option("-o", "--output", type=OutputFile(),
               default=Path("best.yaml"), show_default=True, help="YAML file, or JSON by extension.")
@allow_other_data_option
def export_command(state: CliState, study_name: str, top: int | None, by: str | None,
                   output: Path, allow_other_data: bool) -> None:
    """Write the best configs of STUDY_NAME, ready for `hpsearch final`: the Pareto-optimal ones
    of a study with several objectives, or the --top best by one metric (--by)."""
    handle = state.open_existing_storage()
    document = export_document(load_existing_study(handle, study_name), top=top, by=by,
                               storage_url=handle.url, allow_other_data=allow_other_data)
    write_document(document, output)
    click.echo(f"wrote {len(document['configs'])} config(s) to {output}"
               + (f": {document['selection']}" if "selection" in document else ""))
    for entry in document["configs"]:
        search = entry["search"]
        values = ", ".join(f"{k} = {format_value(k, v)}" for k, v in entry.get("values", {}).items())
        values = values or f"{entry['metric']} = {entry['value']:.6g}"
        click.echo(f"  {entry['rank']}. trial {entry['trial']}: {values}; final run: {entry['config']['epochs']} epochs "
                   f"(search: stopping={search['stopping']}, best epoch {search['best_epoch']} "
                   f"of {search['epochs_run']})")


@click.command("final")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Training runs per config; seed k is the config's seed + k.")
@click.option("--device", type=DeviceType(), default="auto", show_default=True, help=DEVICE_HELP)
@data_dir_option
@click.option("-o", "--output", type=OutputFile(),
               default=Path("final.json"), show_default=True,
               help="JSON file; the Markdown tables go beside it (.md).")
@allow_other_data_option
def final_command(export_file: Path, seeds: int, device: str, data_dir: DataDirs,
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


ANALYSIS_COMMANDS = (report_command, export_command, final_command)
