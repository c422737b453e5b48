"""optuna-dashboard over an hpsearch storage, served by waitress, bound to loopback unless asked.

The dashboard reads the same storage the workers write (SQLite, journal file or PostgreSQL),
so it shows trials as they finish, with the per-epoch values (intermediate values), configs and
timings (user attributes) every trial records. optuna-dashboard itself has no login and its API
renames and deletes studies and tells trials; hpsearch puts two WSGI layers in front of it:
`BasicAuth` (dashboard_auth.py) and, with `read_only`, `ReadOnly`, which lets through only the
routes of optuna-dashboard's own table that are known to read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import bottle
import optuna_dashboard
import waitress
from waitress import trigger, wasyncore

from hpsearch.analysis.dashboard_auth import BasicAuth, StartResponse, WSGIApp
from hpsearch.errors import HPSearchError
from hpsearch.search.storage import StorageHandle

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8

EXPOSED_WARNING = (
    "--no-auth: anyone who can reach {url} can read every study in this storage{writes}. Prefer "
    "--auth-file, or --host 127.0.0.1 with an SSH tunnel (ssh -L {port}:127.0.0.1:{port} this-host)."
)

# optuna-dashboard 0.21's routes (optuna_dashboard/_app.py, _rdb_migration.py) that only read:
# the page and its static files, the study list and details (trials with intermediate values
# and user attributes), importances, server-side plots and the CSV download. Everything else
# (POST/PUT/DELETE: create, rename, delete, tell, notes, user attrs, skip, preferences,
# artifacts, schema migration, LLM queries) is refused, and so is any route a later release adds
# until it is put here. Artifact downloads are left out: hpsearch serves no artifact store.
READ_ROUTES = frozenset({
    ("GET", "/"),
    ("GET", "/dashboard<:re:(/.*)?>"),
    ("GET", "/favicon.ico"),
    ("GET", "/static/<filename:path>"),
    ("GET", "/api/meta"),
    ("GET", "/api/studies"),
    ("GET", "/api/studies/<study_id:int>"),
    ("GET", "/api/studies/<study_id:int>/param_importances"),
    ("GET", "/api/studies/<study_id:int>/plot/<plot_type>"),
    ("GET", "/csv/<study_id:int>"),
    ("GET", "/incompatible-rdb-schema"),
})


class ReadOnly:
    """WSGI middleware: a request is passed on only when optuna-dashboard's own router matches
    it to a route in READ_ROUTES with GET or HEAD; anything else gets 403 before the app runs."""

    def __init__(self, app: bottle.Bottle) -> None:
        table = {(route.method, route.rule) for route in app.routes}
        missing = sorted(READ_ROUTES - table)
        if missing:  # a new optuna-dashboard renamed a route: say so rather than break the page
            raise HPSearchError(f"optuna-dashboard {optuna_dashboard.__version__} has no route "
                                f"{missing}; hpsearch's read-only list needs updating for it")
        self._app = app

    def allows(self, environ: dict[str, Any]) -> bool:
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("GET", "HEAD"):
            return False
        # The app strips trailing slashes before routing (its before_request hook); so do we.
        probe = {**environ, "PATH_INFO": environ.get("PATH_INFO", "").rstrip("/")}
        try:
            route, _ = self._app.router.match(probe)
        except bottle.HTTPError:  # no such route, or not for this method
            return False
        return (route.method, route.rule) in READ_ROUTES

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.allows(environ):
            return self._app(environ, start_response)
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        logger.info("403 (read-only) for %s %s from %s", method, path, environ.get("REMOTE_ADDR"))
        body = json.dumps({"reason": f"this dashboard is read-only: {method} {path} is refused"})
        start_response("403 Forbidden", [("Content-Type", "application/json")])
        return [body.encode()]


@dataclasses.dataclass(frozen=True)
class Access:
    """Who may do what: `auth_file` of users (None: no login) and whether writes are refused."""

    auth_file: Path | None = None
    read_only: bool = False


def dashboard_app(handle: StorageHandle, access: Access) -> WSGIApp:
    """optuna-dashboard over the storage, behind the layers `access` asks for (auth outermost, so
    that a stranger gets 401 and learns nothing of which routes exist)."""
    app: Any = optuna_dashboard.wsgi(handle.storage)
    if access.read_only:
        app = ReadOnly(app)
    if access.auth_file is not None:
        app = BasicAuth(app, access.auth_file)
    return app


class DashboardServer:
    """waitress serving `app` on several threads (the page makes several API calls at once, and
    one slow importance computation must not hold up the rest)."""

    def __init__(self, app: WSGIApp, *, host: str, port: int, threads: int) -> None:
        # Our own socket map: a host such as `localhost` binds one socket per address, and
        # `shutdown` closes them all.
        self._map: dict[int, Any] = {}
        self._serving, self._stopped = threading.Event(), threading.Event()
        try:
            self._server: Any = waitress.create_server(
                app, map=self._map, host=host, port=port, threads=threads,
                ident="hpsearch-dashboard")
        except OSError as e:
            raise HPSearchError(
                f"cannot serve the dashboard on {host}:{port}: {e.strerror}; choose another --port "
                "(or --port 0 for any free one) or --host") from e
        self._wait_for_idle_threads()

    def _wait_for_idle_threads(self, timeout: float = 5.0) -> None:
        """Return once every worker thread waits for work, so the server is ready when its URL is
        shown. waitress counts a new thread busy until it first waits; on a loaded machine the
        first request could come sooner and log a false "Task queue depth is 1"."""
        dispatcher = self._server.task_dispatcher
        deadline = time.monotonic() + timeout
        while dispatcher.active_count > 0 and time.monotonic() < deadline:
            time.sleep(0.005)

    @property
    def server_address(self) -> tuple[str, int]:
        listening = getattr(self._server, "effective_listen", None)
        host, port = listening[0] if listening else (self._server.effective_host,
                                                     self._server.effective_port)
        return host, int(port)  # waitress gives the port as a string

    def serve_forever(self) -> None:
        """Serve until `shutdown` (from another thread) or Ctrl-C."""
        self._serving.set()
        try:
            self._server.run()
        except OSError:
            if self._map:  # not closed by `shutdown`'s fallback under the loop's select
                raise
        finally:
            self._server.task_dispatcher.shutdown()
            self._serving.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop `serve_forever` and wait until it has returned (socketserver's contract).

        Requests in flight are answered first (for up to 5 s, waitress's own limit)."""
        # The worker threads end before any socket closes, so a response being written is not
        # cut off and no thread is left to touch a channel or trigger the loop has closed.
        self._server.task_dispatcher.shutdown()
        # Then closed from inside waitress's own loop (a trigger's thunk, run as soon as the
        # loop runs), which then finds no socket left and returns.
        wake = next((d for d in list(self._map.values()) if isinstance(d, trigger.trigger)), None)
        try:
            if wake is None:
                raise OSError("its wake-up pipe is closed")
            wake.pull_trigger(lambda: wasyncore.close_all(self._map))
        except OSError as e:  # close from here; the loop finds an empty map when its poll times
            # out (waitress's asyncore_loop_timeout, 1 s)
            logger.warning("dashboard shutdown: cannot wake the server loop (%s); closing from "
                           "this thread", e)
            wasyncore.close_all(self._map, ignore_all=True)
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        wasyncore.close_all(self._map, ignore_all=True)

    @contextlib.contextmanager
    def in_background(self) -> Iterator[str]:
        """Serve on a thread of its own while the block runs (tests, benchmarks): its base URL."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = self.server_address
            yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
        finally:
            self.shutdown()
            thread.join()
            self.server_close()


def make_dashboard_server(handle: StorageHandle, *, host: str, port: int,
                          access: Access = Access(),
                          threads: int = DEFAULT_THREADS) -> DashboardServer:
    """A server for the dashboard, bound but not yet serving; port 0 picks a free port."""
    return DashboardServer(dashboard_app(handle, access), host=host, port=port, threads=threads)


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def dashboard_url(server: DashboardServer, host: str) -> str:
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard"
