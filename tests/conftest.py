"""Fixtures with real services: tests/services.py (S3, Postgres, Redis), tests/servers.py (API, worker).

Session-scoped fixtures are per pytest-xdist worker: each worker gets its own S3 server, Postgres
database, Redis database number and server processes. Servers are shared by the tests of a worker, so
tests name their models uniquely (the ``unique_org`` fixture).

- ``s3_server``        -> tests.services.S3Server (endpoint, access_key, secret_key, bucket, client())
- ``postgres_url``     -> SQLAlchemy URL of a fresh database migrated by registry.db.upgrade_database
- ``empty_postgres_url`` -> SQLAlchemy URL of a fresh empty database (per test)
- ``redis_url``        -> redis://127.0.0.1:6379/<this worker's db>, flushed before and after
- ``embedded_server``  -> base URL of the API in embedded mode (SQLite + local objects, in-process jobs)
- ``stack_server``     -> tests.servers.Stack: API + Celery worker on Postgres, Redis and S3, auth on
                          (``.url``, ``.admin_token``, ``.worker.kill()``, ``.restart_worker()``)
- ``checkpoint_pair``  -> tests.checkpoints.CheckpointPair: tiny Llama base + fine-tune (bf16)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import Stack, start_api_server, start_stack
from tests.services import (
    ADMIN_TOKEN,
    S3Server,
    create_database,
    drop_database,
    flush_redis,
    new_database_name,
    service_problems,
    start_s3_server,
    temporary_database,
)
from tests.services import redis_url as worker_redis_url

if TYPE_CHECKING:
    from tests.checkpoints import CheckpointPair


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop the whole run, loudly, when Postgres or Redis is missing: never skip what needs them."""
    problems = service_problems()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        pytest.exit(
            f"\n\nMISSING SERVICES: the deltazoo suite needs them and will not skip.\n{lines}\n"
            "(bash scripts/test.sh starts them when they are installed)\n",
            returncode=3,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    from deltazoo.registry.db import upgrade_database

    name = new_database_name()
    url = create_database(name)
    try:
        upgrade_database(url)
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = worker_redis_url()
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)


def _assert_clean_log(problems: list[str], log_path: Path) -> None:
    shown = "\n\n".join(problems[:5])
    assert not problems, f"{len(problems)} error(s) in the server log {log_path}:\n{shown}"


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_api_server(tmp_path_factory.mktemp("embedded") / "home", {})
    try:
        yield server.url
    finally:
        server.stop()
    _assert_clean_log(server.problems(), server.process.log_path)


@pytest.fixture(scope="session")
def stack_server(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, postgres_url: str, redis_url: str
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    stack = start_stack(root, postgres_url, redis_url, s3_server, ADMIN_TOKEN)
    try:
        yield stack
    finally:
        stack.stop()
    _assert_clean_log(stack.api.problems(), stack.api.process.log_path)


@pytest.fixture
def checkpoint_pair(tmp_path: Path) -> CheckpointPair:
    from tests.checkpoints import make_base_and_finetune  # torch: imported by the tests that use it

    return make_base_and_finetune(tmp_path / "checkpoints")


@pytest.fixture
def unique_org() -> str:
    """A namespace no other test uses, for tests that share a session-scoped server."""
    return f"org-{secrets.token_hex(4)}"


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hugging Face token or cache of the machine's user leaks into a test: HF_HOME is the test's own."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hf-home"


@pytest.fixture
def env(embedded_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DELTAZOO_URL and a private cache for the commands of one test."""
    from deltazoo.settings import get_settings

    monkeypatch.setenv("DELTAZOO_URL", embedded_server)
    monkeypatch.setenv("DELTAZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DELTAZOO_TOKEN", raising=False)
    monkeypatch.delenv("DELTAZOO_OFFLINE", raising=False)
    get_settings.cache_clear()
    yield embedded_server
    get_settings.cache_clear()
