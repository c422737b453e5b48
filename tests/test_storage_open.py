"""Opening a PostgreSQL storage retries a server that went away or is not taking connections yet,
decided by the error's type and the server's state, never by the error's text."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy

from hpsearch.errors import StorageError
from hpsearch.search import rdb
from hpsearch.search.storage import open_storage

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/db"


def _opening(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> list[int]:
    """Make `open_rdb` meet `errors` one after the other, then succeed; returns the calls."""
    calls: list[int] = []

    def rdb_storage(*_: object) -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "opened"

    monkeypatch.setattr(rdb, "_schema_lock", lambda url: contextlib.nullcontext())
    monkeypatch.setattr(rdb, "_rdb_storage", rdb_storage)
    monkeypatch.setattr(rdb.time, "sleep", lambda seconds: None)
    return calls


def test_a_session_ended_by_the_server_is_retried_whatever_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdown = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("bye"))
    dropped = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("gone"),
                                              connection_invalidated=True)
    calls = _opening(monkeypatch, [shutdown, dropped])
    assert rdb.open_rdb(URL, {}, None, postgres=True) == "opened"
    assert len(calls) == 3


def test_an_error_that_only_reads_like_a_lost_server_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    bad_query = sqlalchemy.exc.ProgrammingError(
        "SELECT 1", {}, psycopg.errors.SyntaxError("terminating connection due to a typo"))
    calls = _opening(monkeypatch, [bad_query])
    with pytest.raises(sqlalchemy.exc.ProgrammingError):
        rdb.open_rdb(URL, {}, None, postgres=True)
    assert len(calls) == 1


# A TCP server that answers every PostgreSQL connection attempt with one FATAL error, printing a
# line per attempt. A process of its own: libpq's PQping holds the GIL while it waits.
REFUSING_SERVER = r"""
import socket, struct, sys
sqlstate, message = sys.argv[1], sys.argv[2]
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
fields = b"".join(code + text.encode() + b"\0" for code, text in
                  [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message)])
while True:
    conn, _ = listener.accept()
    print("attempt", flush=True)
    with conn:
        conn.settimeout(5)
        try:
            while True:
                length = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))[0]
                body = conn.recv(length - 4, socket.MSG_WAITALL)
                if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):  # SSL, GSS requests
                    conn.sendall(b"N")
                    continue
                conn.sendall(b"E" + struct.pack("!i", 4 + len(fields) + 1) + fields + b"\0")
                break
        except (OSError, struct.error):
            pass
"""


@contextlib.contextmanager
def _refusing_server(sqlstate: str, message: str) -> Iterator[tuple[int, list[str]]]:
    server = subprocess.Popen([sys.executable, "-c", REFUSING_SERVER, sqlstate, message],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    attempts: list[str] = []
    try:
        yield int(server.stdout.readline()), attempts
    finally:
        server.kill()
        attempts.extend(server.communicate(timeout=10)[0].split())


def test_a_server_that_is_starting_up_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rdb, "OPEN_RETRY_SECONDS", 1.5)
    caplog.set_level(logging.WARNING, logger="hpsearch.search.storage")
    with _refusing_server("57P03", "the database system is starting up") as (port, attempts), \
            pytest.raises(StorageError, match="the database system is starting up"):
        open_storage(f"postgresql+psycopg://postgres@127.0.0.1:{port}/db")
    assert "retrying" in caplog.text and len(attempts) >= 3


def test_a_server_that_refuses_the_database_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rdb, "OPEN_RETRY_SECONDS", 1.5)
    caplog.set_level(logging.WARNING, logger="hpsearch.search.storage")
    with _refusing_server("3D000", 'database "db" does not exist') as (port, attempts), \
            pytest.raises(StorageError, match='database "db" does not exist'):
        open_storage(f"postgresql+psycopg://postgres@127.0.0.1:{port}/db")
    assert "retrying" not in caplog.text
    assert len(attempts) <= 2  # the attempt, and the ping that found the server up
