"""Bad input ends in one `Error:` line that names the value and the fix, and changes nothing stored.

Each row sets up its input in a fresh folder holding a copy of one small study, runs one command,
and checks the message, the absence of a traceback, and every file's bytes before and after.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import studies
from hpsearch.cli import main

GOOD_CONFIG = {"dataset": "iris", "hidden": [8], "epochs": 1, "stopping": "fixed"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 2-trial quickstart study in study.db, made once for the whole table."""
    folder = tmp_path_factory.mktemp("template")
    result = CliRunner().invoke(main, ["run", "quickstart", "--trials", "2", "--epochs", "1",
                                       "--storage", f"sqlite:///{folder / 'study.db'}"])
    assert result.exit_code == 0, result.output
    return folder


def _export(tmp: Path, entry: dict[str, object]) -> str:
    (tmp / "best.yaml").write_text(yaml.safe_dump({"configs": [entry]}))
    return "best.yaml"


def _module(tmp: Path, body: str) -> str:
    path = tmp / "my_study.py"
    path.write_text('"""A study."""\n' + body + "\ndef suggest(trial, base):\n    return base\n")
    return str(path)


def _nested(tmp: Path) -> str:
    (tmp / "deep.yaml").write_text("configs: " + "[" * 20000 + "]" * 20000 + "\n")
    return "deep.yaml"


Setup = Callable[[Path], list[str]]
DB = "sqlite:///study.db"

CASES: dict[str, tuple[Setup, str]] = {
    # outputs are checked before any work (final would otherwise train every seed first)
    "report -o in a missing folder": (
        lambda tmp: ["report", "quickstart", "--storage", DB, "-o", "nodir/report.html"],
        ("Invalid value for '-o' / '--output': folder 'nodir' does not exist; create it "
         "(mkdir -p nodir) or write elsewhere")),
    "export -o in a missing folder": (
        lambda tmp: ["export", "quickstart", "--storage", DB, "-o", "nodir/best.yaml"],
        "folder 'nodir' does not exist"),
    "final -o in a missing folder": (
        lambda tmp: ["final", _export(tmp, {"config": GOOD_CONFIG}), "-o", "nodir/final.json"],
        "folder 'nodir' does not exist"),
    "final -o a folder": (
        lambda tmp: ["final", _export(tmp, {"config": GOOD_CONFIG}), "-o", str(tmp)],
        "is a directory"),
    # study modules declare what the registry can read
    "module TRIALS = 'many'": (
        lambda tmp: ["run", _module(tmp, 'TRIALS = "many"'), "--storage", DB],
        "TRIALS = 'many' must be a whole number of trials of at least 1, e.g. TRIALS = 20"),
    "module DATASETS = ()": (
        lambda tmp: ["run", _module(tmp, "DATASETS = ()"), "--storage", DB],
        "DATASETS = () must be a non-empty tuple of data set names, the default first"),
    "module DATASETS = 'digits'": (
        lambda tmp: ["run", _module(tmp, 'DATASETS = "digits"'), "--storage", DB],
        "DATASETS = 'digits' must be a non-empty tuple"),
    "module TRIALS = 0": (
        lambda tmp: ["run", _module(tmp, "TRIALS = 0"), "--storage", DB],
        "TRIALS = 0 must be a whole number of trials of at least 1, e.g. TRIALS = 20"),
    # export files are validated entry by entry
    "final: trial: abc": (
        lambda tmp: ["final", _export(tmp, {"trial": "abc", "config": GOOD_CONFIG})],
        "export file best.yaml, entry 1: trial='abc' is not valid: expected a trial number"),
    "final: value: high": (
        lambda tmp: ["final", _export(tmp, {"value": "high", "config": GOOD_CONFIG})],
        "entry 1: value='high' is not valid: expected a number"),
    "final: epochs: 1.5": (
        lambda tmp: ["final", _export(tmp, {"config": {**GOOD_CONFIG, "epochs": 1.5}})],
        "export file best.yaml, entry 1: epochs=1.5 is not valid: expected a whole number"),
    "final: lr: '0.1'": (
        lambda tmp: ["final", _export(tmp, {"config": {**GOOD_CONFIG, "lr": "0.1"}})],
        "lr='0.1' is not valid: expected a number"),
    "final: deeply nested YAML": (
        lambda tmp: ["final", _nested(tmp)],
        "export file deep.yaml is nested too deeply to be an export file"),
    # commands that only read never create the file they are pointed at
    **{f"{command} on a missing SQLite file": (
        lambda tmp, command=command: [command, "quickstart", "--storage", "sqlite:///missing.db"],
        "storage 'sqlite:///missing.db': missing.db does not exist (nothing was created)")
       for command in ("best", "status", "report", "export")},
    "rerun on a missing journal file": (
        lambda tmp: ["rerun", "quickstart", "0", "--storage", "journal:missing.log"],
        "storage 'journal:missing.log': missing.log does not exist (nothing was created)"),
    # a run that fails for missing data leaves no new storage file behind
    "run without its data": (
        lambda tmp: ["run", "mnist_mlp", "--storage", "sqlite:///new.db", "--data-dir",
                     str(tmp / "no-data")],
        "data set 'mnist' not found"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_error_and_changes_nothing(
    case: str, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(template / "study.db", tmp_path / "study.db")
    monkeypatch.chdir(tmp_path)
    setup, message = CASES[case]
    args = setup(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert sum(line.startswith("Error: ") for line in result.output.splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_one_broken_study_module_does_not_hide_the_others(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "zz_broken.py").write_text('"""Broken."""\nimport no_such_package\n')
    monkeypatch.setattr(studies, "__path__", [*studies.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "studies.zz_broken", raising=False)
    result = cli.invoke(main, ["studies"])
    assert result.exit_code == 1
    assert "quickstart" in result.output and "mnist_mlp" in result.output
    assert ("Error: study module 'zz_broken' failed to import: ModuleNotFoundError(\"No module "
            "named 'no_such_package'\")") in result.output
    assert "Traceback" not in result.output
