"""``deltazoo serve`` / ``deltazoo worker`` check their services first and say, in one line each, what
is wrong and how to fix it (registry/startup_checks.py); the one auth rule of registry/settings.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from deltazoo.registry.settings import Settings

from tests.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    child_env,
    free_port,
    new_database_name,
    postgres_user,
)


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "deltazoo.cli", *args]
    return subprocess.run(argv, env=child_env(env), cwd=cwd, capture_output=True, text=True, timeout=120)


def problem_lines(stderr: str, command: str) -> list[str]:
    """The problem lines (the first line of `serve` is its summary of the settings)."""
    return [
        line for line in stderr.splitlines() if line.startswith(f"deltazoo {command}: ") and ". Fix: " in line
    ]


def test_serve_names_a_missing_database_in_one_line(tmp_path: Path) -> None:
    missing = new_database_name("deltazoo_absent")
    url = f"postgresql+psycopg2://{postgres_user()}@{POSTGRES_HOST}:{POSTGRES_PORT}/{missing}"
    done = run_cli(
        ["serve", "--port", str(free_port())],
        {"DELTAZOO_DATABASE_URL": url, "DELTAZOO_HOME": str(tmp_path)},
        tmp_path,
    )
    assert done.returncode == 3, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = problem_lines(done.stderr, "serve")
    assert len(lines) == 1, done.stderr
    assert f'no database "{missing}"' in lines[0] and f"createdb -O {postgres_user()} {missing}" in lines[0]


def test_serve_names_a_missing_role_with_the_commands_to_create_it(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://deltazoo_no_such_role:pw@{POSTGRES_HOST}:{POSTGRES_PORT}/deltazoo"
    done = run_cli(
        ["serve", "--port", str(free_port())],
        {"DELTAZOO_DATABASE_URL": url, "DELTAZOO_HOME": str(tmp_path)},
        tmp_path,
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr, done
    (line,) = problem_lines(done.stderr, "serve")
    assert "pw@" not in line, "the password is printed"
    assert 'no role "deltazoo_no_such_role"' in line and "CREATE ROLE deltazoo_no_such_role LOGIN" in line
    assert "createdb -O deltazoo_no_such_role deltazoo" in line


def test_worker_names_each_service_that_does_not_answer(tmp_path: Path) -> None:
    dead = [free_port() for _ in range(3)]
    env = {
        "DELTAZOO_DATABASE_URL": f"postgresql+psycopg2://u@127.0.0.1:{dead[0]}/d",
        "DELTAZOO_BROKER_URL": f"redis://127.0.0.1:{dead[1]}/0",
        "DELTAZOO_S3_ENDPOINT": f"127.0.0.1:{dead[2]}",
        "DELTAZOO_HOME": str(tmp_path),
    }
    done = run_cli(["worker", "--name", "w1", "--concurrency", "2"], env, tmp_path)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done
    lines = problem_lines(done.stderr, "worker")
    assert [line.split()[2] for line in lines] == ["database", "broker", "object"], done.stderr
    assert f"127.0.0.1:{dead[0]}" in lines[0] and "start Postgres" in lines[0]
    assert f"redis://127.0.0.1:{dead[1]}/0" in lines[1] and "start Redis" in lines[1]
    assert f"127.0.0.1:{dead[2]}" in lines[2] and "start the S3 server" in lines[2]


@pytest.mark.parametrize(
    ("database_url", "auth", "expected"),
    [
        (None, None, False),  # the embedded default: open
        ("sqlite:////tmp/x.db", None, False),
        ("postgresql+psycopg2://u@h/d", None, True),  # a shared database: tokens required
        ("postgresql+psycopg2://u@h/d", "false", False),  # unless said otherwise
        (None, "true", True),
    ],
)
def test_one_auth_rule(
    monkeypatch: pytest.MonkeyPatch, database_url: str | None, auth: str | None, expected: bool
) -> None:
    for name, value in (("DELTAZOO_DATABASE_URL", database_url), ("DELTAZOO_AUTH", auth)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings().auth is expected
