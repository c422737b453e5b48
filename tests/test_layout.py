"""The layout issue 10 settled on, checked so that it stays: one place tells Optuna, the analysis
layer never imports the trial path, training never imports Optuna, and every module, function
and command stays readable in one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest

from hpsearch.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
MAX_COMMAND_PARAMETERS = 6
TRIAL_PATH = "hpsearch.search.trials"  # the one module that runs and tells trials
GLOBAL_RNG_OWNERS = {"torch", "torch.cuda", "torch.mps", "torch.random"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_layers_exist() -> None:
    names = {_name(p) for p in MODULES}
    for package in ("hpsearch.training", "hpsearch.search", "hpsearch.analysis", "hpsearch.cli",
                    TRIAL_PATH, "hpsearch.search.record"):
        assert package in names, f"{package} is missing from the layout"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_read_in_one_sitting(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines (at most {MAX_MODULE_LINES})"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_functions_stay_short(path: Path) -> None:
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{_name(path)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{prefix}{name} "))
    return found


@pytest.mark.parametrize("name,command", _commands(main), ids=[n for n, _ in _commands(main)])
def test_commands_take_few_parameters(name: str, command: click.Command) -> None:
    # The parameters the command's function receives: click passes each option and argument
    # unless a decorator gathers them into one options object.
    callback = command.callback
    assert callback is not None
    code = getattr(callback, "__wrapped__", callback).__code__
    count = code.co_argcount + code.co_kwonlyargcount
    assert count <= MAX_COMMAND_PARAMETERS, (
        f"`hpsearch {name}` takes {count} parameters (at most {MAX_COMMAND_PARAMETERS})")


def test_optuna_is_told_from_one_place() -> None:
    sites = [f"{_name(p)}:{n}" for p in MODULES
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\.tell\(", line)]
    assert len(sites) == 1, f"study.tell is called from {sites}; the trial path is the one place"


def test_few_modules_import_the_trial_path() -> None:
    importers = sorted(_name(p) for p in MODULES if p.name != "trials.py"
                       and any(i == TRIAL_PATH or i.startswith(TRIAL_PATH + ".")
                               for i in _imports(p)))
    assert len(importers) <= 2, f"{importers} import {TRIAL_PATH}"
    assert not [m for m in importers if m.startswith(("hpsearch.analysis", "hpsearch.cli"))]


@pytest.mark.parametrize("path", [p for p in MODULES if "analysis" in p.parts], ids=_name)
def test_analysis_reads_records_not_the_trial_path(path: Path) -> None:
    forbidden = (TRIAL_PATH, "hpsearch.search.worker", "hpsearch.search.runner",
                 "hpsearch.search.batch_worker")
    bad = sorted(i for i in _imports(path) if i.startswith(forbidden))
    assert not bad, f"{_name(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if "training" in p.parts], ids=_name)
def test_training_never_imports_optuna(path: Path) -> None:
    bad = sorted(i for i in _imports(path)
                 if i == "optuna" or i.startswith(("optuna.", "hpsearch.search", "hpsearch.cli")))
    assert not bad, f"{_name(path)} imports {bad}: the trainer must not know the search"


@pytest.mark.parametrize("path", [p for p in MODULES if "cli" not in p.parts], ids=_name)
def test_environment_is_read_at_the_cli_edge(path: Path) -> None:
    text = path.read_text()
    reads = re.findall(r"os\.environ(?:\.get)?\(?\[?[\"'](HPSEARCH_\w+)", text)
    reads += re.findall(r"os\.getenv\([\"'](HPSEARCH_\w+)", text)
    assert not reads, f"{_name(path)} reads {reads}; read them in hpsearch/cli (click envvar=)"


def _global_seed_calls(path: Path) -> list[str]:
    """Calls of torch's global seeding (`torch.manual_seed`, `torch.cuda.manual_seed_all`, ...),
    not of a `torch.Generator`'s own `manual_seed`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner in GLOBAL_RNG_OWNERS and node.func.attr.startswith(("manual_seed", "seed")):
                found.append(f"{owner}.{node.func.attr} (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_global_seed(path: Path) -> None:
    calls = _global_seed_calls(path)
    assert not calls, f"{_name(path)} seeds torch's global generator: {calls}; use a torch.Generator"
