"""Who may do what on `hpsearch dashboard`: --read-only refuses every write with 403 and leaves
the storage as it was, --auth-file refuses strangers with 401, a non-loopback --host needs one
or an explicit --no-auth, and `dashboard-user add` keeps passwords out of argv and other eyes.
Real waitress servers on 127.0.0.1 over studies filled like benchmarks/bench_dashboard.py's."""

from __future__ import annotations

import base64
import json
import random
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest
from click.testing import CliRunner

from benchmarks.bench_dashboard import fill_study, synthetic_trial
from hpsearch.analysis.dashboard import READ_ROUTES, Access, DashboardServer, make_dashboard_server
from hpsearch.analysis.dashboard_auth import add_user, hash_password, read_users, verify_password
from hpsearch.cli import main
from hpsearch.search.storage import open_storage
from tests import browser

TRIALS = 4
PASSWORD = "correct horse battery"


@pytest.fixture
def study_url(tmp_path: Path) -> str:
    """A study of TRIALS completed trials (per-epoch values, hpsearch's user attributes) and one
    running trial, the kind `tell` acts on."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = fill_study(optuna.storages.RDBStorage(url), "shared", TRIALS, epochs=3)
    study.ask()
    return url


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    """alice's line at a low scrypt cost (read from the line, as a server reads any line), so
    that the wrong guesses below stay quick; `dashboard-user add` writes the full cost."""
    path = tmp_path / "users.txt"
    path.write_text(f"alice:{hash_password(PASSWORD, log2_n=10)}\n")
    path.chmod(0o600)
    return path


@contextmanager
def serving(url: str, access: Access) -> Iterator[str]:
    server = make_dashboard_server(open_storage(url, heartbeat=None), host="127.0.0.1", port=0,
                                   access=access, threads=4)
    with server.in_background() as base:
        yield base


def request(url: str, method: str = "GET", body: Any = None,
            user: tuple[str, str] | None = None, header: str | None = None) -> tuple[int, bytes, Any]:
    headers = {"Content-Type": "application/json"}
    if user is not None:
        header = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    if header is not None:
        headers["Authorization"] = header
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def snapshot(url: str) -> list[Any]:
    """Everything a write through the dashboard could change, as Optuna reads it back."""
    storage = optuna.storages.RDBStorage(url)
    found = []
    for study in storage.get_all_studies():
        found.append((study.study_name, study.user_attrs, study.system_attrs))
        found += [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs)
                  for t in storage.get_all_trials(study._study_id)]
    return found


def test_the_bulk_fill_reads_back_as_optunas_add_trials_writes(tmp_path: Path) -> None:
    bulk = f"sqlite:///{tmp_path / 'bulk.db'}"
    fill_study(optuna.storages.RDBStorage(bulk), "s", 3, epochs=2, chunk=2)
    added = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'api.db'}")
    rng = random.Random(0)
    added.add_trials([synthetic_trial(n, rng, epochs=2) for n in range(3)])

    def fields(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
        return (t.number, t.state, t.values, t.params, t.distributions, t.user_attrs,
                t.intermediate_values, t.datetime_start, t.datetime_complete)

    read = optuna.load_study(study_name="s", storage=bulk).trials
    assert [fields(t) for t in read] == [fields(t) for t in added.trials]


def writes(study_id: int, trial_id: int) -> list[tuple[str, str, Any]]:
    """One of each kind of write optuna-dashboard's API offers, each well-formed (the read-write
    server below accepts them), so a 403 can only come from the read-only layer."""
    return [
        ("PUT", f"/api/studies/{study_id}/note", {"version": 1, "body": "a note"}),
        ("PUT", f"/api/studies/{study_id}/0/note/", {"version": 1, "body": "a note"}),
        ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"k": 1}}),
        ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
        ("POST", f"/api/studies/{study_id}/rename", {"study_name": "renamed"}),  # a new id
        ("POST", f"/api/studies/{study_id}/0/skip", {}),
        ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
        ("POST", "/incompatible-rdb-schema", {}),
        ("DELETE", f"/api/studies/{study_id}", None),
    ]


def ids(url: str) -> tuple[int, int]:
    study = optuna.load_study(study_name="shared", storage=url)
    return study._study_id, study.trials[-1]._trial_id


def test_read_only_refuses_every_write_and_the_page_still_reads(study_url: str) -> None:
    study_id, running = ids(study_url)
    before = snapshot(study_url)
    with serving(study_url, Access(read_only=True)) as base:
        for method, path, body in writes(study_id, running):
            status, text, _ = request(base + path, method, body)
            assert status == 403, (method, path, status, text)
            assert "read-only" in json.loads(text)["reason"]
        # A read path asked with a writing method, and a path no route has, are refused too.
        assert request(f"{base}/api/studies/{study_id}", "POST", {})[0] == 403
        assert request(f"{base}/api/no-such-route")[0] == 403
        assert snapshot(study_url) == before
        # What the study page and its tabs read still answers.
        status, text, _ = request(f"{base}/api/studies/{study_id}?after=0")
        trials = json.loads(text)["trials"]
        assert status == 200 and len(trials) == TRIALS + 1
        assert len(trials[0]["intermediate_values"]) == 3
        for path in (f"/api/studies/{study_id}/param_importances",
                     f"/api/studies/{study_id}/plot/slice", f"/csv/{study_id}", "/api/meta",
                     "/api/studies", "/dashboard", f"/dashboard/studies/{study_id}/"):
            assert request(base + path)[0] == 200, path
    # The same requests on a read-write server change the storage: they were real writes.
    with serving(study_url, Access()) as base:
        for method, path, body in writes(study_id, running)[:5]:
            assert request(base + path, method, body)[0] in (200, 201, 204), (method, path)
    after = optuna.load_study(study_name="renamed", storage=study_url)
    assert after.trials[-1].state == optuna.trial.TrialState.FAIL
    assert after.trials[-1].user_attrs["k"] == 1


def test_read_routes_are_routes_of_the_installed_dashboard_and_only_read() -> None:
    app = optuna_dashboard.wsgi(optuna.storages.InMemoryStorage())
    table = {(route.method, route.rule) for route in app.routes}
    assert READ_ROUTES <= table
    assert {method for method, _ in READ_ROUTES} == {"GET"}
    # Every route left out is a write, or a GET deliberately not served (artifact downloads:
    # hpsearch configures no artifact store). A new GET route fails here until it is judged.
    left_out = {(m, r) for m, r in table - READ_ROUTES if m == "GET"}
    assert all(rule.startswith("/artifacts/") for _, rule in left_out), left_out


def test_a_missing_or_wrong_login_gets_401_and_changes_nothing(study_url: str,
                                                               auth_file: Path) -> None:
    study_id, _ = ids(study_url)
    before = snapshot(study_url)
    rename = f"/api/studies/{study_id}/rename"
    with serving(study_url, Access(auth_file=auth_file)) as base:  # read-write behind the login
        status, _, headers = request(f"{base}/dashboard")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
        for user in [("alice", "wrong"), ("mallory", PASSWORD), ("alice", ""), ("", "")]:
            assert request(f"{base}/api/studies", user=user)[0] == 401, user
            assert request(base + rename, "POST", {"study_name": "x"}, user=user)[0] == 401
        for header in ("Basic !!!", f"Bearer {PASSWORD}", "Basic " + base64.b64encode(b"alice").decode()):
            assert request(f"{base}/api/studies", header=header)[0] == 401, header
        assert snapshot(study_url) == before
        # The right login sees the same page and API, here with the trials.
        assert request(f"{base}/dashboard", user=("alice", PASSWORD))[0] == 200
        status, text, _ = request(f"{base}/api/studies/{study_id}", user=("alice", PASSWORD))
        assert status == 200 and len(json.loads(text)["trials"]) == TRIALS + 1
        # A user added while it serves logs in without a restart.
        add_user(auth_file, "bob", "another one")
        assert request(f"{base}/api/meta", user=("bob", "another one"))[0] == 200
        # A file spoiled while serving locks everyone out instead of failing open.
        auth_file.write_text("bob has no hash\n")
        assert request(f"{base}/api/meta", user=("bob", "another one"))[0] == 401


def invoke_dashboard(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def stop_at_once(self: DashboardServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(DashboardServer, "serve_forever", stop_at_once)
    return CliRunner().invoke(main, ["dashboard", "--port", "0", *args])


def test_non_loopback_needs_a_login_or_no_auth(study_url: str, auth_file: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    exposed = ["--storage", study_url, "--host", "0.0.0.0"]
    refused = invoke_dashboard(exposed, monkeypatch)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    for hint in ("--host 0.0.0.0", "hpsearch dashboard-user add NAME --auth-file users.txt",
                 "--no-auth", "ssh -L"):
        assert hint in message
    both = invoke_dashboard([*exposed, "--auth-file", str(auth_file), "--no-auth"], monkeypatch)
    assert both.exit_code == 2 and "contradict" in both.output
    open_ = invoke_dashboard([*exposed, "--no-auth", "--read-only"], monkeypatch)
    assert open_.exit_code == 0, open_.output
    assert "WARNING: --no-auth: anyone who can reach" in open_.stderr
    assert "(read-only, no login;" in open_.stdout
    logged_in = invoke_dashboard([*exposed, "--auth-file", str(auth_file)], monkeypatch)
    assert logged_in.exit_code == 0, logged_in.output
    assert f"(read-write, login: {auth_file};" in logged_in.stdout
    assert "WARNING" not in logged_in.stderr
    assert invoke_dashboard(["--storage", study_url], monkeypatch).exit_code == 0  # loopback


def test_add_user_reads_a_hidden_password_and_keeps_the_file_private(tmp_path: Path) -> None:
    command = main.commands["dashboard-user"].commands["add"]  # type: ignore[attr-defined]
    assert not [p for p in command.params if "password" in p.name and not p.is_flag]
    path = tmp_path / "users.txt"
    path.write_text("")
    path.chmod(0o644)
    runner = CliRunner()
    result = runner.invoke(main, ["dashboard-user", "add", "alice", "--auth-file", str(path)],
                           input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output and f"added alice in {path}" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text() and verify_password(PASSWORD, read_users(path)["alice"])
    stdin = runner.invoke(main, ["dashboard-user", "add", "alice", "--auth-file", str(path),
                                 "--password-stdin"], input="new password\n")
    assert "changed the password of alice" in stdin.output
    assert verify_password("new password", read_users(path)["alice"])
    assert not verify_password(PASSWORD, read_users(path)["alice"])
    bad = runner.invoke(main, ["dashboard-user", "add", "a:b", "--auth-file", str(path),
                               "--password-stdin"], input="x\n")
    assert bad.exit_code == 1 and "user name 'a:b'" in bad.output
    assert list(read_users(path)) == ["alice"]


@pytest.mark.browser
def test_chromium_renders_the_read_only_dashboard_behind_a_login(study_url: str,
                                                                 auth_file: Path) -> None:
    study_id, _ = ids(study_url)
    with serving(study_url, Access(read_only=True)) as base:
        trials_page = browser.load(f"{base}/dashboard/studies/{study_id}/trials")
    for number in range(TRIALS):
        assert f"Trial {number}" in trials_page.dom
    assert "units" in trials_page.dom and "optimizer" in trials_page.dom
    assert not trials_page.errors
    with serving(study_url, Access(auth_file=auth_file, read_only=True)) as base:
        # A page opened as http://user:password@host/... may not fetch, so log in on `/`,
        # whose redirect drops the credentials from the URL and keeps them in the browser.
        home = browser.load(base.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@") + "/")
    assert "shared" in home.dom and not home.errors

