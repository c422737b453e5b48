"""`hpsearch dashboard` serves optuna-dashboard over studies made by `hpsearch run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from waitress import trigger

from hpsearch.analysis.dashboard import DashboardServer, is_loopback, make_dashboard_server
from hpsearch.cli import main
from hpsearch.search.storage import open_storage
from tests import browser

REPO = Path(__file__).resolve().parents[1]
TRIALS = 3


def run_quickstart(url: str) -> None:
    result = CliRunner().invoke(main, ["run", "quickstart", "--trials", str(TRIALS), "--epochs", "2",
                                       "--storage", url, "--device", "cpu"])
    assert result.exit_code == 0, result.output


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def check_api(base: str) -> None:
    """The study list and the study's trials, as the dashboard's page asks for them."""
    (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == "quickstart"
    attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
    assert attrs["study_module"] == "quickstart" and attrs["metric"] == "val_error"
    detail = get_json(f"{base}/api/studies/{summary['study_id']}")
    trials = detail["trials"]
    assert [t["number"] for t in trials] == list(range(TRIALS))
    assert all(t["state"] == "Complete" for t in trials)
    # Per-epoch values and the stored config reach the dashboard with no extra step.
    assert all(len(t["intermediate_values"]) == 2 for t in trials)
    assert all(any(a["key"] == "config" for a in t["user_attrs"]) for t in trials)


@pytest.fixture
def served(storage_url: str) -> Iterator[str]:
    """A study made by `hpsearch run`, and the dashboard serving it on a free loopback port."""
    run_quickstart(storage_url)
    server = make_dashboard_server(open_storage(storage_url, heartbeat=None), host="127.0.0.1", port=0)
    with server.in_background() as base:
        yield base


def test_dashboard_api_answers_on_every_storage(served: str) -> None:
    check_api(served)
    with urllib.request.urlopen(f"{served}/dashboard", timeout=30) as response:
        assert b"<html" in response.read().lower()


def test_dashboard_command_serves_a_study_made_by_run(sqlite_url: str) -> None:
    run_quickstart(sqlite_url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--storage", sqlite_url, "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/dashboard", line)
        assert match, f"no URL in {line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"  # type: ignore[union-attr]
        check_api(match.group(1))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "WARNING" not in process.stderr.read()  # type: ignore[union-attr]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")


def test_port_in_use_is_a_clear_error(sqlite_url: str) -> None:
    handle = open_storage(sqlite_url, heartbeat=None)
    first = make_dashboard_server(handle, host="127.0.0.1", port=0)
    try:
        result = CliRunner().invoke(main, ["dashboard", "--storage", sqlite_url,
                                           "--port", str(first.server_address[1])])
        assert result.exit_code == 1
        assert "choose another --port" in result.output
    finally:
        first.server_close()


@pytest.mark.browser
def test_study_page_renders_its_trials_in_chromium(served: str) -> None:
    def dump(page: str) -> str:
        return browser.load(f"{served}/dashboard/{page}").dom

    # Study ids are the storage's: 1 in a fresh database, 0 in a fresh journal file.
    (summary,) = get_json(f"{served}/api/studies")["study_summaries"]
    study_page = dump(f"studies/{summary['study_id']}")
    assert "quickstart" in study_page
    assert "Best Trial" in study_page or "number=" in study_page
    trials_page = dump(f"studies/{summary['study_id']}/trials")
    for number in range(TRIALS):
        assert f"Trial {number}" in trials_page
    assert "lr" in trials_page  # the searched parameter is shown


def slow_app(entered: threading.Event, release: threading.Event):
    def app(environ: dict, start_response) -> list[bytes]:
        entered.set()
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"answered"]
    return app


def test_a_new_server_is_ready_when_made() -> None:
    """Its worker threads all wait for work before its URL is shown. Without that, waitress
    counts them busy, and a first request that came early logged "Task queue depth is 1" (a
    fresh-clone CI run failed on it); a bare waitress server shows the race about once in three."""
    for _ in range(20):
        server = DashboardServer(lambda environ, start_response: [], host="127.0.0.1", port=0,
                                 threads=8)
        try:
            assert server._server.task_dispatcher.active_count == 0
        finally:
            server.shutdown()  # ends its threads; it never served, so nothing is waited for
            server.server_close()


def test_stopping_the_server_answers_the_request_in_flight_first() -> None:
    entered, release = threading.Event(), threading.Event()
    server = DashboardServer(slow_app(entered, release), host="127.0.0.1", port=0, threads=2)
    answers: list[bytes | Exception] = []

    def ask(url: str) -> None:
        try:
            answers.append(urllib.request.urlopen(url, timeout=20).read())
        except Exception as e:  # noqa: BLE001 (the assertion below shows it)
            answers.append(e)

    with server.in_background() as base:
        client = threading.Thread(target=ask, args=(base,))
        client.start()
        assert entered.wait(10)
        threading.Timer(0.5, release.set).start()  # still working when the server is stopped
    client.join(20)
    assert answers == [b"answered"]


def test_stopping_survives_a_trigger_closed_under_the_server(sqlite_url: str) -> None:
    """The CI failure this guards: the loop's wake-up pipe already closed at shutdown."""
    run_quickstart(sqlite_url)
    server = make_dashboard_server(open_storage(sqlite_url, heartbeat=None),
                                   host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wake = next(d for d in server._map.values() if isinstance(d, trigger.trigger))
    os.close(wake.trigger)
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive() and not server._map
    server.server_close()
