"""How a trial ended, said one way everywhere, and stored as strictly valid JSON."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from hpsearch.cli import main

# Trial 0 diverges (lr 1e6 with SGD): its val_loss reaches NaN before the training loss does.
DIVERGING_STUDY = '''"""lr 1e6 diverges."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="iris", hidden=(8,), optimizer="sgd", epochs=3)
PRUNER = "none"

def suggest(trial, base):
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return base.replace(lr=1e6 if trial.number == 0 else 0.01)
'''


def _reject_constant(name: str) -> None:
    raise ValueError(f"bare {name} in stored JSON")


def test_a_diverged_trial_is_stored_as_strict_json(cli: CliRunner, tmp_path: Path) -> None:
    module = tmp_path / "diverging.py"
    module.write_text(DIVERGING_STUDY)
    db = tmp_path / "d.db"
    made = cli.invoke(main, ["run", str(module), "--trials", "2", "--storage", f"sqlite:///{db}",
                             "--device", "cpu"])
    assert made.exit_code == 0, made.output
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT t.number, a.key, a.value_json FROM trial_user_attributes a "
            "JOIN trials t USING (trial_id)").fetchall()
    assert {key for _, key, _ in rows} >= {"config", "run", "result", "history"}
    for number, key, raw in rows:
        json.loads(raw, parse_constant=_reject_constant)  # raises on NaN, Infinity, -Infinity
    history = {n: json.loads(raw) for n, key, raw in rows if key == "history"}
    assert history[0]["val_loss"][-1] is None  # the diverged epoch's NaN, stored as null
    assert all(v is not None for v in history[1]["val_loss"])
    # Readers take the null: rerun prints it as "-" beside the rerun's value.
    rerun = cli.invoke(main, ["rerun", "diverging", "0", "--storage", f"sqlite:///{db}"])
    assert rerun.exit_code == 0, rerun.output
    assert "trial 0 of diverging (failed)" in rerun.output
