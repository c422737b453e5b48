"""HTTP basic auth for the dashboard, checked against a file of salted scrypt hashes.

The file holds one `NAME:$scrypt$ln=15,r=8,p=1$SALT$HASH` line per user (base64 salt and hash,
the cost in the line so that it can be raised later without breaking older lines), written
0600 by `hpsearch dashboard-user add`. Only the standard library is used: `hashlib.scrypt` is
a memory-hard KDF and `hmac.compare_digest` compares in constant time, which is all a handful of
lab accounts need.

Basic auth sends the password with every request, and the dashboard's page makes several per
second; one scrypt costs ~0.1 s and 32 MiB, so a credential that checked out once is remembered
for the life of the process as an HMAC under a key made at start (never the password itself),
and forgotten when the file changes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpsearch.errors import HPSearchError

logger = logging.getLogger(__name__)

REALM = "hpsearch dashboard"
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
# scrypt N=2**15, r=8: 32 MiB and about 0.1 s per hash on one core; p=1.
LOG2_N, BLOCK, PARALLEL = 15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_LINE = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=BLOCK, p=PARALLEL,
                            maxmem=_MAXMEM, dklen=32)
    return (f"$scrypt$ln={log2_n},r={BLOCK},p={PARALLEL}$"
            f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")


def verify_password(password: str, encoded: str) -> bool:
    match = _LINE.match(encoded)
    if match is None:
        return False
    log2_n, block, parallel = (int(match[i]) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match[4]), base64.b64decode(match[5])
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=block, p=parallel,
                            maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


@functools.cache
def _dummy() -> str:
    """Checked against when the name is unknown, so a wrong name costs as long as a wrong password."""
    return hash_password(secrets.token_hex(16))


def read_users(path: Path) -> dict[str, str]:
    """The users in an auth file, name to encoded hash; a malformed line is an error naming it."""
    try:
        text = path.read_text()
    except OSError as e:
        raise HPSearchError(f"cannot read --auth-file {str(path)!r}: {e.strerror}; create it with "
                            f"`hpsearch dashboard-user add NAME --auth-file {path}`") from e
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, encoded = line.partition(":")
        if not USER_NAME.match(name) or not _LINE.match(encoded):
            raise HPSearchError(f"{path}:{number} is not a `NAME:$scrypt$...` line written by "
                                "`hpsearch dashboard-user add`; remove it and add that user again")
        users[name] = encoded
    return users


def add_user(path: Path, name: str, password: str) -> bool:
    """Add `name` to the auth file (or change its password), written 0600 and replaced whole so
    that a server reading it never sees half a file. True when the user was new."""
    if not USER_NAME.match(name):
        raise HPSearchError(f"user name {name!r}: use 1-64 letters, digits or . _ @ -")
    if not password:
        raise HPSearchError("empty password; give one at the prompt or on stdin")
    users = read_users(path) if path.exists() else {}
    new = name not in users
    users[name] = hash_password(password)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{user}:{encoded}\n" for user, encoded in users.items())
    os.replace(tmp, path)
    return new


def readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o077)


class BasicAuth:
    """WSGI middleware: a request without a valid `Authorization: Basic` header for a user of
    the auth file gets 401 and never reaches the dashboard. The file is read again when it
    changes, so users added while serving can log in without a restart."""

    def __init__(self, app: WSGIApp, path: Path) -> None:
        self._app, self._path = app, path
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, str] = {}
        self._verified: set[bytes] = set()
        read_users(path)  # a bad file stops the server before it starts
        self._reload()

    def _reload(self) -> dict[str, str]:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
            with self._lock:
                if stamp != self._stamp:
                    self._users, self._stamp = read_users(self._path), stamp
                    self._verified = set()
        except (OSError, HPSearchError) as e:  # edited badly or removed while serving: fail closed
            logger.error("--auth-file %s: %s; nobody can log in until it is fixed", self._path, e)
            with self._lock:
                self._users, self._stamp, self._verified = {}, None, set()
        return self._users

    def check(self, header: str) -> str | None:
        """The user `header` authenticates, or None."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        users = self._reload()
        if not sep:
            return None
        remembered = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        if name in users and remembered in self._verified:
            return name
        if verify_password(password, users.get(name) or _dummy()) and name in users:
            with self._lock:
                self._verified.add(remembered)
            return name
        return None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        user = self.check(environ.get("HTTP_AUTHORIZATION", ""))
        if user is None:
            logger.info("401 for %s %s from %s", environ.get("REQUEST_METHOD"),
                        environ.get("PATH_INFO"), environ.get("REMOTE_ADDR"))
            start_response("401 Unauthorized", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
            return [b"401: log in with a user of the dashboard's --auth-file\n"]
        environ["REMOTE_USER"] = user
        return self._app(environ, start_response)
