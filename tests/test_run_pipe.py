"""`hpsearch run ... | cat`: one line per finished trial as it finishes, not all at the end.

The study module holds trial 4 back until the test has read the first four trials' lines from a
real pipe, so output held in a buffer until the end fails the test instead of passing late.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODULE = '''"""Digits, one tiny layer; trial 4 waits for the test's gate file."""
import time
from pathlib import Path
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="digits", hidden=(8,), epochs=1)
TRIALS = 6
SAMPLER = "random"
PRUNER = "none"
GATE = Path({gate!r})


def suggest(trial, base):
    if trial.number >= 4:
        deadline = time.monotonic() + 600
        while not GATE.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
'''


class _Lines:
    """Lines from a pipe as they arrive, with a deadline (no reader-side buffering)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd, self.buffer, self.lines = proc.stdout.fileno(), b"", []  # type: list[str]

    def until(self, done: int, *, seconds: float) -> list[str]:
        """Read until `done` trial lines have come (or the pipe closes); fail past `seconds`."""
        deadline = time.monotonic() + seconds
        while len(self.trials()) < done:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"no line within {seconds} s; got so far: {self.lines}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            *complete, self.buffer = (self.buffer + chunk).split(b"\n")
            self.lines += [line.decode() for line in complete]
        return self.trials()

    def trials(self) -> list[str]:
        return [line for line in self.lines if line.startswith("trial ")]


@pytest.mark.parametrize("population", [1, 4])
def test_piped_run_prints_each_trial_as_it_finishes(population: int, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    module = tmp_path / "gated.py"
    module.write_text(MODULE.format(gate=str(gate)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(module), "--trials", "6", "--population",
         str(population), "--storage", f"sqlite:///{tmp_path / 'pipe.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        lines = _Lines(proc)
        first = lines.until(4, seconds=240)  # before trial 4 may even start
        assert [line.split()[1] for line in first] == ["0", "1", "2", "3"], lines.lines
        gate.touch()
        every = lines.until(6, seconds=240)
        assert proc.wait(timeout=120) == 0, lines.lines
    finally:
        proc.kill()
        proc.wait()
    assert [line.split()[1:3] for line in every] == [[str(n), "complete"] for n in range(6)]
    assert every[-1].endswith("study: 6/6 finished")
