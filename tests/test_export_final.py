"""Export the best configs of a real study, then train and test them with `final`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.stats
import yaml

from hpsearch.analysis.export import export_document, load_exported
from hpsearch.analysis.final import compare_configs, markdown
from hpsearch.analysis.stats import wilson_interval
from hpsearch.cli import main
from hpsearch.errors import ConfigError, HPSearchError, StudyError
from hpsearch.search.registry import load_study
from hpsearch.search.storage import open_storage

# Early stopping with patience 1, so the export has a stopping rule to convert.
EARLY_STUDY = '''"""Early stopping on digits, for the export tests."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(32,), epochs=6, stopping="early", patience=1)
TRIALS = 3
PRUNER = "none"


def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 0.003, 0.3, log=True))
'''

DIGITS_TRAIN, DIGITS_TEST = 1437, 360  # scikit-learn's 1797 digits, 20% held out


def wilson_by_formula(errors: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval written out, to check hpsearch's call into scipy."""
    z = scipy.stats.norm.ppf(0.975)
    p = errors / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def t_by_formula(values: list[float]) -> tuple[float, float]:
    """Student's 95% t interval for the mean, mean +- t(0.975, n-1) * s / sqrt(n), cut to
    [0, 1] (an error rate's range)."""
    n = len(values)
    half = scipy.stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
    return max(float(np.mean(values) - half), 0.0), min(float(np.mean(values) + half), 1.0)


@pytest.fixture(scope="module")
def early_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A 3-trial study made by `hpsearch run`; returns its storage URL and module path."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("early-study")
    module = folder / "early.py"
    module.write_text(EARLY_STUDY)
    url = f"sqlite:///{folder / 'study.db'}"
    result = CliRunner().invoke(main, ["run", str(module), "--storage", url, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return url, module


def test_export_converts_stopping_and_records_provenance(early_study, cli, tmp_path: Path) -> None:
    url, module = early_study
    out = tmp_path / "best.yaml"
    result = cli.invoke(main, ["export", "early", "--storage", url, "--top", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    entries = document["configs"]
    assert [e["rank"] for e in entries] == [1, 2]

    study = optuna.load_study(study_name="early", storage=url)
    ranked = sorted((t for t in study.trials if t.value is not None), key=lambda t: (t.value, t.number))
    assert [e["trial"] for e in entries] == [t.number for t in ranked[:2]]
    for entry, trial in zip(entries, ranked):
        assert entry["value"] == trial.value
        assert entry["metric"] == "val_error"
        assert entry["source_hash"] == load_study(str(module)).source_hash
        assert entry["dataset"] == "digits" and entry["split"] == {"val_fraction": 0.1, "split_seed": 0}
        assert entry["seed"] == trial.number  # run seed 0 + trial number
        # The final run has no validation split: epochs become the epoch early stopping chose.
        best_epoch = trial.user_attrs["result"]["best_epoch"]
        assert entry["search"]["stopping"] == "early"
        assert entry["config"]["stopping"] == "fixed"
        assert entry["config"]["epochs"] == best_epoch
        assert {k: v for k, v in entry["config"].items() if k not in ("epochs", "stopping")} == {
            k: v for k, v in trial.user_attrs["config"].items() if k not in ("epochs", "stopping")
        }

    assert any(e["config"]["epochs"] < e["search"]["max_epochs"] for e in entries)

    # JSON by extension, same content.
    as_json = tmp_path / "best.json"
    assert cli.invoke(main, ["export", "early", "--storage", url, "--top", "2", "-o", str(as_json)]).exit_code == 0
    assert json.loads(as_json.read_text())["configs"] == entries


def test_export_then_final_without_the_study(early_study, cli, tmp_path: Path) -> None:
    url, _ = early_study
    export_file = tmp_path / "best.yaml"
    assert cli.invoke(main, ["export", "early", "--storage", url, "--top", "2", "-o", str(export_file)]).exit_code == 0
    # `final` reads the file alone: point the default storage somewhere empty.
    out = tmp_path / "final.json"
    result = cli.invoke(main, ["final", str(export_file), "--seeds", "3", "--device", "cpu", "-o", str(out)],
                        env={"HPSEARCH_STORAGE": f"sqlite:///{tmp_path / 'nothing.db'}"})
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    labels = document["test_labels"]["digits"]
    assert len(labels) == DIGITS_TEST
    exported = yaml.safe_load(export_file.read_text())["configs"]
    assert len(document["configs"]) == 2

    for config, entry in zip(document["configs"], exported):
        assert config["label"] == f"early#{entry['trial']}"
        runs = config["runs"]
        assert [r["seed"] for r in runs] == [entry["seed"] + k for k in range(3)]
        for run in runs:
            assert run["failure"] is None
            # The count behind the error rate is the predictions' own.
            wrong = sum(p != y for p, y in zip(run["predictions"], labels))
            assert run["errors"] == wrong and run["error"] == pytest.approx(wrong / DIGITS_TEST)
            low, high = run["error_ci"]
            assert (low, high) == pytest.approx(wilson_by_formula(wrong, DIGITS_TEST))
            assert run["accuracy_ci"] == pytest.approx([1 - high, 1 - low])
            assert sum(map(sum, run["confusion"])) == DIGITS_TEST
            assert run["accuracy"] > 0.5  # ten classes: far above chance
            assert run["epochs"] == entry["config"]["epochs"]
            record = run["rerun"]
            assert record["split"]["n_train"] == DIGITS_TRAIN  # the whole official training set
            assert record["config"]["seed"] == run["seed"]
            assert record["source_hash"] == entry["source_hash"]
            assert record["device_name"].startswith("CPU") and "torch" in record["versions"]
        summary = config["summary"]
        errors = [r["error"] for r in runs]
        assert summary["mean_error"] == pytest.approx(np.mean(errors))
        assert summary["error_t_ci"] == pytest.approx(t_by_formula(errors))

    # McNemar on the two configs' plurality votes, recounted here from the stored predictions.
    (pair,) = document["comparisons"]
    right_a, right_b = ([v == y for v, y in zip(c["summary"]["vote_predictions"], labels)]
                        for c in document["configs"])
    only_a = sum(a and not b for a, b in zip(right_a, right_b))
    only_b = sum(b and not a for a, b in zip(right_a, right_b))
    assert (pair["only_a_correct"], pair["only_b_correct"]) == (only_a, only_b)
    p_value = scipy.stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    assert pair["p_value"] == pytest.approx(p_value)
    assert pair["p_holm"] == pytest.approx(p_value)  # one pair: Holm leaves its p-value as it is
    better = pair["a"] if only_a > only_b else pair["b"]
    assert pair["verdict"] == ("tied" if p_value >= 0.05 else f"{better} better")
    table = out.with_suffix(".md").read_text()
    assert "| config | data | search value | test error: mean (95% t-CI)" in table
    assert "early#" in table and "McNemar p" in table
    assert table in result.output


def test_intervals_shrink_as_the_test_set_grows() -> None:
    """The same error rate on more test examples gives a narrower interval."""
    widths = [wilson_interval(n // 10, n)[1] - wilson_interval(n // 10, n)[0]
              for n in (DIGITS_TEST, 10 * DIGITS_TEST, 10000)]
    assert widths[0] > widths[1] > widths[2]


def _config(label: str, vote: list[int], mean_error: float) -> dict:
    return {"label": label, "dataset": "toy", "metric": "val_error", "search_value": 0.1,
            "runs": [{"seed": 0, "error": mean_error, "error_ci": [0, 1], "accuracy": 1 - mean_error,
                      "f1": 0.5, "epochs": 1, "seconds": 0.1}],
            "summary": {"mean_error": mean_error, "error_t_ci": None, "mean_f1": 0.5,
                        "vote_error": mean_error, "vote_error_ci": [0, 1],
                        "vote_predictions": vote}}


def test_comparison_verdicts_on_constructed_predictions() -> None:
    labels = [0] * 40
    perfect = _config("A", [0] * 40, 0.0)
    half_wrong = _config("B", [1] * 20 + [0] * 20, 0.5)
    one_wrong = _config("C", [1] + [0] * 39, 0.025)
    pairs = compare_configs([perfect, half_wrong, one_wrong], {"toy": labels})
    by_pair = {(p["a"], p["b"]): p for p in pairs}
    ab = by_pair[("A", "B")]
    assert (ab["only_a_correct"], ab["only_b_correct"]) == (20, 0)
    assert ab["p_value"] == pytest.approx(2 / 2**20)
    assert ab["p_holm"] == pytest.approx(3 * 2 / 2**20)
    assert ab["verdict"] == "A better"
    assert by_pair[("A", "C")]["verdict"] == "tied"  # 1 discordant example: p = 1
    assert by_pair[("B", "C")]["verdict"] == "C better"  # 19 vs 0
    document = {"configs": [perfect, half_wrong, one_wrong], "comparisons": pairs, "seeds": 1,
                "device_name": "CPU"}
    table = markdown(document)
    assert "| A | toy |" in table and "| best |" in table
    assert "tied (p=1)" in table and "A better" in table


def test_final_refuses_a_config_that_needs_validation(tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump({"configs": [{"config": {"dataset": "iris", "stopping": "early"}}]}))
    with pytest.raises(ConfigError, match="stopping: fixed"):
        load_exported(path)
    path.write_text("configs: []\n")
    with pytest.raises(HPSearchError, match="no `configs:` list"):
        load_exported(path)


def test_hand_written_entry_needs_only_a_config(tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump({"configs": [{"config": {"dataset": "iris", "epochs": 3}}]}))
    (entry,) = load_exported(path)
    assert entry.config.epochs == 3 and entry.study is None and entry.label == "iris/mlp"


def test_export_of_a_study_without_completed_trials(sqlite_url: str) -> None:
    handle = open_storage(sqlite_url, heartbeat=None)
    study = optuna.create_study(storage=handle.storage, study_name="empty")
    with pytest.raises(StudyError, match="no completed trial"):
        export_document(study, top=3, storage_url=sqlite_url)
