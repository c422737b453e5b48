"""`make gpu-check` on the CPU: the runner, its parts in their own processes, the files it writes.

The GPU itself is not here; these run benchmarks/gpu_check.py as `make gpu-check DEVICE=cpu`
does, on synthetic IDX files and the tiny profile, so that the command a GPU session runs is
known to work up to the device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import write_idx

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=280)


def test_gpu_check_on_the_cpu_writes_every_part_it_ran(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "idx", n_train=300, n_test=50)
    out = tmp_path / "out"
    done = _run("--device", "cpu", "--profile", "tiny", "--data-dir", str(data), "--out", str(out),
                "--parts", "notebook,study")  # the study stacks its 2 trials: --population 2
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert [(p["name"], p["status"]) for p in report["parts"]] == [
        ("notebook", "ok"), ("study", "ok")]
    rows = {r["variant"]: r for p in report["parts"] for r in p["rows"]}
    assert sorted(rows) == ["(a) notebook: DataLoader + ToTensor",
                            "(d) study hinton_mlp, 2 trials, --population 2"]
    for row in rows.values():
        # Each class of the synthetic images lights its own patch: one epoch learns them.
        assert row["s_per_trial"] > 0 and row["val_accuracy"] > 0.5, row
        assert row["peak_gpu_mib"] is None  # measured on CUDA only
    markdown = (out / "gpu-check.md").read_text()
    study = rows["(d) study hinton_mlp, 2 trials, --population 2"]
    notebook = rows["(a) notebook: DataLoader + ToTensor"]
    ratio = notebook["s_per_trial"] / study["s_per_trial"]
    assert f"| hinton | {study['variant']} | {study['s_per_trial']:.3f} |" in markdown
    assert f"| {ratio:.1f}x |" in markdown
    assert "| study | ok |" in markdown


def test_gpu_check_stops_a_part_at_the_budget_and_says_what_did_not_run(tmp_path: Path) -> None:
    """A 4 s budget: the first part is killed at 4 s (or, on a fast machine, ends within them)
    and the second is not started; the exit status and the report say so."""
    data = write_idx(tmp_path / "idx", n_train=300, n_test=50)
    out = tmp_path / "out"
    done = _run("--device", "cpu", "--profile", "tiny", "--data-dir", str(data), "--out", str(out),
                "--parts", "single,stacked", "--budget", "4")
    assert done.returncode == 1
    report = json.loads((out / "gpu-check.json").read_text())
    first, second = report["parts"]
    assert first["status"] in ("ok", "timeout after 4 s"), first
    assert second["status"] == "not run: the budget was spent"
    assert "not ok: " in done.stdout and "stacked" in done.stdout
    assert "| stacked | not run: the budget was spent |" in (out / "gpu-check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_2(tmp_path: Path) -> None:
    done = _run("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu-check: no CUDA device here; run `make gpu-check DEVICE=cpu` for the reduced CPU run"]
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_an_unknown_part(tmp_path: Path) -> None:
    done = _run("--device", "cpu", "--parts", "single,warp-drive", "--out", str(tmp_path))
    assert done.returncode == 2 and "unknown part(s) warp-drive" in done.stderr


def test_the_report_marks_the_issues_targets_met_or_not() -> None:
    from benchmarks.gpu_check_report import render

    def row(variant: str, seconds: float, accuracy: float, **extra: object) -> dict:
        return {"group": "hinton", "variant": variant, "s_per_trial": seconds,
                "val_accuracy": accuracy, "peak_gpu_mib": 512.0, **extra}

    rows = [row("(a) notebook: DataLoader + ToTensor", 60.0, 0.890),
            row("(b') single path, --compile", 1.2, 0.889),
            row("(c) stack of 256", 0.12, 0.884),
            row("(d) study hinton_mlp, 256 trials, --population 256", 0.5, 0.90, trials=256)]
    report = {"profile": "full", "device": "cuda", "data_dir": "d", "budget_s": 450, "wall_s": 400,
              "started": "now", "parts": [{"name": "all", "status": "ok", "rows": rows}]}
    markdown = render(report)
    assert "| (b') at least 40x (a) | 50.0x | yes |" in markdown
    assert "| (c) at 256: 0.15 s/trial or less | 0.120 ((c) stack of 256) | yes |" in markdown
    assert "| (d) under 120 s | 128 s | NO |" in markdown
    assert ("| (c) stack of 256: accuracy no more than 0.5 points below (a) | -0.60 points | NO |"
            in markdown)
    assert "| hinton | (c) stack of 256 | 0.120 | 0.8840 | 500.0x | 512 |" in markdown
