"""Headless Chromium for the tests that check what a person sees: a page's DOM after its
scripts ran, a screenshot, and the messages its scripts logged to the console.

`make test` installs Debian's `chromium` where it is missing, so CI runs these; a plain `pytest`
on a machine without it fails them with the command that installs it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Let the page's scripts fetch from the API and render before the DOM is dumped.
    "--virtual-time-budget=15000",
    # The page's console messages go to stderr as `CONSOLE(line)] "text", source: url`.
    "--enable-logging=stderr", "--v=0",
]
# Headless Chromium logs every console message at INFO, console.error included, so errors are
# told apart by their text: uncaught exceptions, resources that failed to load, named Errors.
_CONSOLE = re.compile(r':[A-Z]+:CONSOLE[^\]]*\] "(?P<text>.*)", source: (?P<source>\S*)')
_ERROR = re.compile(r"^Uncaught|^Failed to load resource|\b\w*Error\b")


@dataclasses.dataclass(frozen=True)
class Page:
    dom: str  # the DOM after the page's scripts ran (empty when only a screenshot was asked)
    console: list[str]  # every console message the page logged
    stderr: str

    @property
    def errors(self) -> list[str]:
        """Console messages that are errors: uncaught exceptions, failed loads, named Errors."""
        return [m for m in self.console if _ERROR.search(m)]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return found


def load(url: str, *, screenshot: Path | None = None, window: str = "1400,1000",
         timeout: float = 120) -> Page:
    """Open `url` in headless Chromium: its DOM (or a PNG screenshot) and console messages."""
    with tempfile.TemporaryDirectory() as profile:
        action = [f"--screenshot={screenshot}", f"--window-size={window}"] if screenshot else ["--dump-dom"]
        result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *action, url],
                                capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    console = []
    for line in result.stderr.splitlines():
        match = _CONSOLE.search(line)
        if match:
            console.append(f"{match['text']} (source: {match['source']})")
    if screenshot is not None:
        assert screenshot.is_file() and screenshot.stat().st_size > 0, result.stderr[-2000:]
    return Page(dom=result.stdout if screenshot is None else "", console=console, stderr=result.stderr)
