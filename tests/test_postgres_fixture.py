"""Without a PostgreSQL server a plain pytest skips the server tests; `make test` fails instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "postgresql://postgres@127.0.0.1:1/postgres"  # port 1: nothing listens there

TWO_SERVER_TESTS = '''
def test_one(postgres_url):
    pass


def test_two(postgres_url):
    pass
'''


def _pytest(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    environ.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HPSEARCH_TEST_POSTGRES=CLOSED, **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "test_server.py"],
        check=False, cwd=folder, env=environ, capture_output=True, text=True, timeout=120,
    )


def test_server_tests_skip_without_a_server_unless_it_is_required(tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path)
    (tmp_path / "test_server.py").write_text(TWO_SERVER_TESTS)

    plain = _pytest(tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    # -ra: one line for each skipped test, naming the URL tried and the variable that sets it.
    reason = f"no PostgreSQL at {CLOSED}; set HPSEARCH_TEST_POSTGRES to an admin URL to run these"
    skips = [line for line in plain.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips == [f"SKIPPED [1] test_server.py:{line}: {reason}" for line in (2, 6)]
    assert "2 skipped" in plain.stdout

    required = _pytest(tmp_path, HPSEARCH_REQUIRE_POSTGRES="1")
    assert required.returncode == 1, required.stdout + required.stderr
    assert "2 errors" in required.stdout
    assert f"PostgreSQL is needed at {CLOSED} (HPSEARCH_REQUIRE_POSTGRES=1" in required.stdout


def test_make_test_requires_the_server() -> None:
    """CI runs `.ci/run`, which runs `make test`: that target must not let the server tests skip."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    assert "HPSEARCH_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest" in recipe
