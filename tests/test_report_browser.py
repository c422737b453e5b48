"""A report generated from a real study, opened in headless Chromium as a reader opens it: the
page draws offline (its one inlined plotly.js), logs no console error, and says its answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpsearch.cli import main
from tests import browser


@pytest.mark.browser
def test_a_real_init_report_draws_offline_with_its_answer(cli: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'init.db'}"
    # 4 of the 18 grid points: enough for an answer, a grid with cells not run, init statistics.
    result = cli.invoke(main, ["run", "init", "--dataset", "digits", "--epochs", "1",
                               "--trials", "4", "--storage", url])
    assert result.exit_code == 0, result.output
    report = tmp_path / "report.html"
    result = cli.invoke(main, ["report", "init-digits", "--storage", url, "-o", str(report)])
    assert result.exit_code == 0, result.output

    shot = tmp_path / "report.png"
    drawn = browser.load(report.as_uri(), screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert drawn.errors == [], drawn.console
    page = browser.load(report.as_uri())
    assert page.errors == [], page.console
    answer = re.search(r'<p class="answer"><strong>Answer:</strong> (best: [^<]+)</p>', page.dom)
    assert answer is not None and "val_error" in answer[1], page.dom[:2000]
    # plotly.js ran in the page (offline, from the file itself): it builds each figure's SVG.
    assert page.dom.count('class="main-svg"') >= 2 * 6
    assert "not run" in page.dom  # the grid marks the 14 cells this run left out
