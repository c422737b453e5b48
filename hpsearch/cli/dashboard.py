"""`hpsearch dashboard` and `hpsearch dashboard-user`: optuna-dashboard served to a lab, with a
login and, on request, no way to change the storage."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hpsearch.analysis.dashboard import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_THREADS,
    EXPOSED_WARNING,
    Access,
    dashboard_url,
    is_loopback,
    make_dashboard_server,
)
from hpsearch.analysis.dashboard_auth import add_user, readable_by_others
from hpsearch.cli.state import CliState, storage_option

AUTH_FILE_HELP = "File of users and salted scrypt hashes (`hpsearch dashboard-user add`)."


@dataclasses.dataclass(frozen=True)
class DashboardOptions:
    """Where `hpsearch dashboard` listens and who may do what there."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    threads: int = DEFAULT_THREADS
    read_only: bool = False
    auth_file: Path | None = None
    no_auth: bool = False

    @property
    def access(self) -> Access:
        return Access(auth_file=self.auth_file, read_only=self.read_only)

    def check(self) -> None:
        """Refuse to expose a dashboard nobody asked to expose without a login."""
        if self.auth_file is not None and self.no_auth:
            raise click.UsageError("--auth-file and --no-auth contradict each other; give one")
        if self.auth_file is None and not self.no_auth and not is_loopback(self.host):
            raise click.UsageError(
                f"--host {self.host} is reachable from other machines, and optuna-dashboard has no "
                "login of its own. Either require one: `hpsearch dashboard-user add NAME "
                "--auth-file users.txt`, then add --auth-file users.txt (and --read-only to refuse "
                "changes); or, behind an authenticating proxy or on a trusted network only, add "
                "--no-auth; or keep --host 127.0.0.1 and tunnel: ssh -L 8080:127.0.0.1:8080 "
                "this-host.")


_OPTIONS = [
    click.option("--host", default=DEFAULT_HOST, show_default=True,
                 help="Address to bind; any but loopback needs --auth-file or --no-auth."),
    click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
                 help="Port to listen on (0: any free port)."),
    click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS,
                 show_default=True, help="Requests served at once (waitress threads)."),
    click.option("--read-only", is_flag=True,
                 help="Refuse (403) every request that would change the storage: renames, "
                      "deletions, tells, notes, attributes."),
    click.option("--auth-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help=AUTH_FILE_HELP + " Every request must log in as one of them (HTTP basic)."),
    click.option("--no-auth", is_flag=True,
                 help="Serve a non-loopback --host without login (behind your own proxy)."),
]


def dashboard_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Declare the `DashboardOptions` options; the command gets them as one object."""

    @functools.wraps(func)
    def gathered(*args: Any, **params: Any) -> Any:
        names = [f.name for f in dataclasses.fields(DashboardOptions)]
        options = DashboardOptions(**{name: params.pop(name) for name in names})
        return func(*args, options, **params)

    command: Callable[..., Any] = gathered
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


@click.command("dashboard")
@storage_option
@dashboard_options
def dashboard_command(state: CliState, options: DashboardOptions) -> None:
    """Serve optuna-dashboard over the storage with waitress (Ctrl-C to stop)."""
    options.check()
    if options.auth_file is not None and readable_by_others(options.auth_file):
        click.secho(f"warning: {options.auth_file} is readable by other users; chmod 600 it",
                    fg="yellow", err=True)
    handle = state.open_storage(heartbeat=False)  # may watch a storage before its first run
    server = make_dashboard_server(handle, host=options.host, port=options.port,
                                   access=options.access, threads=options.threads)
    url = dashboard_url(server, options.host)
    if options.no_auth and not is_loopback(options.host):
        writes = "" if options.read_only else ", rename or delete studies and change trials"
        click.secho("WARNING: " + EXPOSED_WARNING.format(
            url=url, port=server.server_address[1], writes=writes), fg="red", bold=True, err=True)
    mode = ", ".join(["read-only" if options.read_only else "read-write",
                      f"login: {options.auth_file}" if options.auth_file else "no login"])
    click.echo(f"optuna-dashboard for {handle.url} at {url} ({mode}; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    click.echo("dashboard stopped")


@click.group("dashboard-user")
def dashboard_user_group() -> None:
    """Users of `hpsearch dashboard --auth-file`."""


@dashboard_user_group.command("add")
@click.argument("name")
@click.option("--auth-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=AUTH_FILE_HELP + " Created 0600 if missing.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of a hidden prompt.")
def add_user_command(name: str, auth_file: Path, password_stdin: bool) -> None:
    """Add user NAME to the auth file, or give NAME a new password. The password is read from a
    hidden prompt (or stdin), never from the command line, so it is in no `ps` or shell history."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    new = add_user(auth_file, name, password)
    click.echo(f"{'added' if new else 'changed the password of'} {name} in {auth_file}")


DASHBOARD_COMMANDS = (dashboard_command, dashboard_user_group)
