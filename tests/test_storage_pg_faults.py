"""PostgreSQL URLs and names that Optuna or libpq would take badly: one `Error:` line each."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner

from hpsearch.cli import main


@pytest.mark.parametrize(
    ("storage", "study_name", "message"),
    [
        ("postgresql://postgres:secret@127.0.0.1:abc/x", None,
         "storage URL 'postgresql://postgres:***@127.0.0.1:abc/x': the port is not a number"),
        # libpq would connect to a database named after the OS user and create tables there.
        ("postgresql://", None, "storage 'postgresql://' names no database; give one: postgresql://"),
        ("postgresql://postgres@127.0.0.1:5432", None, "names no database"),
        ("{pg}", "n" * 513, "is 513 characters; PostgreSQL storage keeps at most 512"),
    ],
)
def test_bad_postgresql_input_gets_one_error_line(
    storage: str, study_name: str | None, message: str, cli: CliRunner, postgres_url: str
) -> None:
    args = ["run", "quickstart", "--trials", "1", "--epochs", "1",
            "--storage", storage.replace("{pg}", postgres_url)]
    if study_name is not None:
        args += ["--study-name", study_name]
    result = cli.invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and "secret" not in result.output
    # Nothing was created in the test database (the only one these URLs could reach).
    assert optuna.get_all_study_summaries(postgres_url) == []
