"""deltazoo's own processes for the tests: the API (uvicorn) and a Celery worker, both real subprocesses.

They depend only on the entry points: ``deltazoo serve`` (which runs ``api.app:create_app``) and
``workers.celery_app:app``. Settings reach them through DELTAZOO_* environment variables, the same way
a deployment sets them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import (
    ManagedProcess,
    S3Server,
    ServiceError,
    child_env,
    free_port,
    port_answers,
    wait_until,
    xdist_worker_id,
)

_ACCESS_LOG_5XX = re.compile(r'HTTP/[\d.]+" 5\d\d\b')
_CELERY_READY = re.compile(r"@\S+ ready\.")


def log_problems(text: str) -> list[str]:
    """What in a server log shows a bug: each Python traceback (the whole block) and each 5xx response."""
    problems: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _ACCESS_LOG_5XX.search(line):
            problems.append(line)
        elif line.startswith("Traceback"):
            end = i + 1  # the block runs through the first unindented line: the exception itself
            while end < len(lines) and lines[end][:1].isspace():
                end += 1
            problems.append("\n".join(lines[i : end + 1]))
    return problems


@dataclass
class ApiServer:
    """A running ``deltazoo serve`` (uvicorn with ``api.app:create_app``) on 127.0.0.1."""

    url: str
    home: Path
    env: dict[str, str]
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop(grace=15.0)

    def problems(self) -> list[str]:
        return log_problems(self.process.log_text())


def start_api_server(
    home: Path, settings_env: dict[str, str], *, timeout: float = 90.0, port: int | None = None
) -> ApiServer:
    """Start the API with DELTAZOO_HOME=``home`` plus ``settings_env`` (on ``port``, or a free one); wait
    until /v1/health is 200."""
    import httpx

    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = child_env({"DELTAZOO_HOME": str(home), **settings_env})
    # `deltazoo serve` as users run it: migrates the database, then uvicorn api.app:create_app --factory
    argv = [sys.executable, "-m", "deltazoo.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = ManagedProcess("deltazoo API", argv, env, home.parent / f"{home.name}-api.log", cwd=home)
    process.start()
    server = ApiServer(f"http://127.0.0.1:{port}", home, env, process)

    def healthy() -> bool:
        process.ensure_alive()
        try:
            return httpx.get(f"{server.url}/v1/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=timeout, what=f"GET {server.url}/v1/health answering 200")
    except ServiceError as exc:
        server.stop()
        raise ServiceError(f"{exc}; last lines of {process.log_path}:\n{process.log_tail()}") from exc
    return server


@dataclass
class CeleryWorker:
    """A ``celery -A workers.celery_app:app worker`` subprocess that can be killed and started again.

    Each start writes a new log (``worker-1.log``, ``worker-2.log``, ...) under ``log_dir``.
    """

    env: dict[str, str]
    log_dir: Path
    starts: int = 0
    process: ManagedProcess | None = field(default=None, repr=False)

    def start(self, *, timeout: float = 90.0) -> CeleryWorker:
        if self.process is not None and self.process.alive():
            raise ServiceError("the Celery worker is already running: kill() or stop() it first")
        self.starts += 1
        node = f"deltazoo-{xdist_worker_id()}-{self.starts}@%h"
        argv = [sys.executable, "-m", "celery", "-A", "deltazoo.workers.celery_app:app", "worker"]
        argv += ["--pool", "solo", "--concurrency", "1", "--loglevel", "INFO", "-n", node]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        log_path = self.log_dir / f"worker-{self.starts}.log"
        process = ManagedProcess("Celery worker", argv, self.env, log_path, cwd=self.log_dir)
        self.process = process.start()

        def ready() -> bool:
            process.ensure_alive()
            return bool(_CELERY_READY.search(process.log_text()))

        try:
            wait_until(ready, timeout=timeout, what="the Celery worker logging 'ready.'")
        except ServiceError as exc:
            process.stop()
            raise ServiceError(f"{exc}; last lines of {log_path}:\n{process.log_tail()}") from exc
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServiceError("the Celery worker was never started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL the worker mid-task, as a crashed host would."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        """Warm shutdown: SIGTERM lets the current task finish."""
        if self.process is not None:
            self.process.stop(grace=30.0)

    def restart(self, *, kill: bool = True) -> CeleryWorker:
        self.kill() if kill else self.stop()
        return self.start()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))


@dataclass
class Stack:
    """The full stack: API + Celery worker on Postgres, Redis and an S3 server."""

    url: str
    admin_token: str
    database_url: str
    broker_url: str
    s3: S3Server
    api: ApiServer
    worker: CeleryWorker
    env: dict[str, str]

    def restart_worker(self, *, kill: bool = True) -> CeleryWorker:
        return self.worker.restart(kill=kill)

    def stop(self) -> None:
        self.worker.stop()
        self.api.stop()


def start_stack(
    root: Path,
    database_url: str,
    broker_url: str,
    s3: S3Server,
    admin_token: str,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """A Celery worker and the API on the given database, broker and S3 server (state under ``root``)."""
    settings = {**full_stack_env(database_url, broker_url, s3, admin_token), **(extra_env or {})}
    worker_dir = root / "worker"
    worker_dir.mkdir(parents=True, exist_ok=True)
    worker = CeleryWorker(child_env({"DELTAZOO_HOME": str(worker_dir / "home"), **settings}), worker_dir)
    worker.start()
    try:
        api = start_api_server(root / "home", settings)
    except BaseException:
        worker.stop()
        raise
    return Stack(api.url, admin_token, database_url, broker_url, s3, api, worker, settings)


@contextmanager
def own_stack(root: Path, broker_db: int, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A whole stack of its own (S3 server, temporary Postgres database, Redis db ``broker_db``), for the
    benchmarks: nothing shared with a running test session as long as ``broker_db`` is not one of its."""
    from deltazoo.registry.db import upgrade_database

    from tests.services import ADMIN_TOKEN, flush_redis, redis_url, start_s3_server, temporary_database

    broker = redis_url(db=broker_db)
    flush_redis(broker)
    s3 = start_s3_server(root / "s3")
    try:
        with temporary_database() as database:
            upgrade_database(database)
            stack = start_stack(root, database, broker, s3, ADMIN_TOKEN, extra_env)
            try:
                yield stack
            finally:
                stack.stop()
    finally:
        s3.stop()
        flush_redis(broker)


def full_stack_env(database_url: str, broker_url: str, s3: S3Server, admin_token: str) -> dict[str, str]:
    """DELTAZOO_* settings of a full-stack deployment (auth on, as in docker-compose.yml)."""
    return {
        "DELTAZOO_DATABASE_URL": database_url,
        "DELTAZOO_BROKER_URL": broker_url,
        **s3.settings_env(),
        "DELTAZOO_AUTH": "true",
        "DELTAZOO_ADMIN_TOKEN": admin_token,
    }


@contextmanager
def running_api_server(home: Path, settings_env: dict[str, str]) -> Iterator[ApiServer]:
    """``start_api_server`` for the length of a ``with``: stopped after it, and its log then checked for
    tracebacks and 5xx answers (a module's tests share one server this way)."""
    api = start_api_server(home, settings_env)
    try:
        yield api
    finally:
        api.stop()
    problems = api.problems()
    assert not problems, "\n\n".join(problems[:5])


class OwnRedis:
    """A ``redis-server`` of this module's own, without persistence: a restart loses every message."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = ManagedProcess("redis-server", argv, child_env({}), root / "redis.log", cwd=root)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: port_answers("127.0.0.1", self.port), timeout=30, what="redis-server answering")

    def stop(self) -> None:
        self.process.stop(grace=10.0)


class DeltazooWorker:
    """``deltazoo worker --name ... --concurrency 1`` as an operator runs it."""

    def __init__(self, name: str, env: dict[str, str], root: Path) -> None:
        argv = [sys.executable, "-m", "deltazoo.cli", "worker", "--name", name, "--concurrency", "1"]
        self.process = ManagedProcess(f"worker {name}", argv, env, root / f"{name}.log", cwd=root)

    def start(self) -> None:
        before = self.process.log_text().count(" ready.")
        self.process.start()
        wait_until(
            lambda: self.process.ensure_alive() is None and self.process.log_text().count(" ready.") > before,
            timeout=90,
            what="the worker logging 'ready.'",
        )


@dataclass
class WorkerStack:
    """Its own ``redis-server``, S3 server and migrated Postgres database, and two ``deltazoo worker``
    processes on them (beating every 0.5 s); the API is the caller's to start (``settings``)."""

    redis: OwnRedis
    s3: S3Server
    database: str
    settings: dict[str, str]
    workers: list[DeltazooWorker]


@contextmanager
def own_worker_stack(root: Path, extra_settings: dict[str, str] | None = None) -> Iterator[WorkerStack]:
    """A ``WorkerStack`` under ``root`` for the length of a ``with`` (workers stopped, then S3 and Redis)."""
    from deltazoo.registry.db import upgrade_database

    from tests.services import ADMIN_TOKEN, start_s3_server, temporary_database

    redis = OwnRedis(root)
    redis.start()
    s3 = start_s3_server(root / "s3")
    try:
        with temporary_database() as database:
            upgrade_database(database)
            settings = {
                **full_stack_env(database, redis.url, s3, ADMIN_TOKEN),
                "DELTAZOO_JOB_HEARTBEAT_S": "0.5",
                **(extra_settings or {}),
            }
            env = child_env({"DELTAZOO_HOME": str(root / "wh"), **settings})
            workers = [DeltazooWorker(f"w{i}", env, root) for i in (1, 2)]
            try:
                for w in workers:
                    w.start()
                yield WorkerStack(redis, s3, database, settings, workers)
            finally:
                for w in workers:
                    w.process.stop(grace=15.0)
    finally:
        s3.stop()
        redis.stop()
