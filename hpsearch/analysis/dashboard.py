"""optuna-dashboard over an hpsearch storage, bound to loopback unless asked otherwise.

The dashboard reads the same storage the workers write (SQLite, journal file or PostgreSQL),
so it shows trials as they finish, with the per-epoch values (intermediate values), configs and
timings (user attributes) every trial records. It has no login and its API can rename and
delete studies and tell trials, so anyone who can reach the port can change the study.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from hpsearch.errors import HPSearchError
from hpsearch.search.storage import StorageHandle

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

EXPOSED_WARNING = (
    "optuna-dashboard has NO LOGIN: anyone who can reach {url} can read every study in this "
    "storage and rename or delete studies and change trials. Prefer --host 127.0.0.1 with an SSH "
    "tunnel (ssh -L {port}:127.0.0.1:{port} this-host), or put it behind an authenticating proxy."
)


class _ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
    """The dashboard's page makes several API calls at once; serve them concurrently."""

    daemon_threads = True


class _LoggingHandler(WSGIRequestHandler):
    """Request lines go to the log (visible with -vv), not straight to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


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


def make_dashboard_server(handle: StorageHandle, *, host: str, port: int) -> WSGIServer:
    """A server for the dashboard, bound but not yet serving; port 0 picks a free port."""
    app = optuna_dashboard.wsgi(handle.storage)
    try:
        return make_server(host, port, app, server_class=_ThreadedServer,
                           handler_class=_LoggingHandler)
    except OSError as e:
        raise HPSearchError(
            f"cannot serve the dashboard on {host}:{port}: {e.strerror}; choose another --port "
            "(or --port 0 for any free one) or --host"
        ) from e


def dashboard_url(server: WSGIServer, host: str) -> str:
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard"
