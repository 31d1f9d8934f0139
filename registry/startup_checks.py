"""What ``deltazoo serve`` and ``deltazoo worker`` check before starting: one line per problem.

Each dependency the settings name (database, broker, object store) is asked once, with a short
timeout; a failure becomes a ``Problem``: which service, where (the URL without its password), what
went wrong and how to fix it, e.g. the ``CREATE ROLE`` / ``createdb`` commands for a Postgres that has
no such role or database. No traceback: the user reads what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deltazoo.registry.settings import Settings

CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class Problem:
    service: str  # "database" | "broker" | "object store"
    where: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.service} {self.where}: {self.what}. Fix: {self.fix}"


def check_services(settings: Settings, *, broker: bool = True) -> list[Problem]:
    """Problems with the database, the broker (when ``broker`` and one is named) and the object store."""
    problems = [p for p in (check_database(settings), check_object_store(settings)) if p]
    if broker and settings.broker_url:
        found = check_broker(settings.broker_url)
        if found:
            problems.insert(1, found)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)


def check_database(settings: Settings) -> Problem | None:
    from deltazoo.registry.db import normalize_url
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    raw = settings.resolved_database_url
    if raw.startswith("sqlite"):
        return _check_sqlite(raw)
    try:
        url = make_url(normalize_url(raw))
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's URL
        return Problem(
            "database",
            "DELTAZOO_DATABASE_URL",
            f"not a database URL ({exc})",
            "write it as postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE",
        )
    where = url.render_as_string(hide_password=True)
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, connect_args=args, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line
        return _database_problem(
            where,
            url.username or "deltazoo",
            url.database or "deltazoo",
            url.host or "localhost",
            url.port or 5432,
            exc,
        )
    finally:
        engine.dispose()


def _database_problem(where: str, user: str, db: str, host: str, port: int, exc: BaseException) -> Problem:
    text = str(getattr(exc, "orig", None) or exc)
    create_db = f"sudo -u postgres createdb -O {user} {db}"
    if m := re.search(r'role "([^"]+)" does not exist', text):
        return Problem(
            "database",
            where,
            f'Postgres has no role "{m.group(1)}"',
            f'create the role and its database: sudo -u postgres psql -c "CREATE ROLE {m.group(1)} LOGIN '
            f"PASSWORD 'choose-one'\" && {create_db} (then put the password in DELTAZOO_DATABASE_URL)",
        )
    if m := re.search(r'database "([^"]+)" does not exist', text):
        return Problem(
            "database", where, f'Postgres has no database "{m.group(1)}"', f"create it: {create_db}"
        )
    if "password authentication failed" in text or "no password supplied" in text:
        return Problem(
            "database",
            where,
            f'Postgres refused the password of "{user}"',
            f"put the right password in DELTAZOO_DATABASE_URL, or set it: sudo -u postgres psql -c "
            f"\"ALTER ROLE {user} PASSWORD 'choose-one'\"",
        )
    if any(
        s in text
        for s in ("Connection refused", "could not connect", "timeout expired", "could not translate")
    ):
        return Problem(
            "database",
            where,
            f"nothing answers at {host}:{port}",
            "start Postgres there (e.g. `sudo systemctl start postgresql` or "
            "`docker compose up -d postgres`) or fix the host and port in DELTAZOO_DATABASE_URL",
        )
    return Problem(
        "database", where, _first_line(exc), "check DELTAZOO_DATABASE_URL and that the server runs"
    )


def _check_sqlite(raw: str) -> Problem | None:
    path = raw.split("///", 1)[-1]
    if not path or path == ":memory:":
        return None
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Problem(
            "database",
            f"SQLite {path}",
            f"cannot create {folder} ({exc.strerror})",
            "set DELTAZOO_HOME to a writable folder",
        )
    if not os.access(folder, os.W_OK):
        return Problem(
            "database",
            f"SQLite {path}",
            f"{folder} is not writable",
            "set DELTAZOO_HOME to a writable folder",
        )
    return None


def check_broker(broker_url: str) -> Problem | None:
    where = re.sub(r"//[^@/]*@", "//***@", broker_url)
    try:
        if broker_url.startswith(("redis://", "rediss://")):
            import redis

            redis.Redis.from_url(
                broker_url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
            ).ping()
        else:
            from kombu import Connection

            with Connection(broker_url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                conn.ensure_connection(max_retries=1)
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line
        text = _first_line(exc)
        if any(s in text for s in ("AUTH", "NOAUTH", "password", "WRONGPASS")):
            fix = "put the right password in DELTAZOO_BROKER_URL (redis://:PASSWORD@HOST:6379/0)"
        else:
            fix = (
                "start Redis there (`redis-server`, `sudo systemctl start redis-server` or "
                "`docker compose up -d redis`) or fix DELTAZOO_BROKER_URL"
            )
        return Problem("broker", where, f"not answering ({text})", fix)


def check_object_store(settings: Settings) -> Problem | None:
    if not settings.s3_endpoint:
        folder = settings.objects_dir.resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Problem(
                "object store",
                str(folder),
                f"cannot create it ({exc.strerror})",
                "set DELTAZOO_HOME to a writable folder",
            )
        return None
    where = f"{'https' if settings.s3_secure else 'http'}://{settings.s3_endpoint}/{settings.s3_bucket}"
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    try:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=CONNECT_TIMEOUT_S), retries=False
        )
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        client.bucket_exists(settings.s3_bucket)  # a missing bucket is created at start
        return None
    except S3Error as exc:
        if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            return Problem(
                "object store",
                where,
                f"the S3 server refused the credentials ({exc.code})",
                "set DELTAZOO_S3_ACCESS_KEY and DELTAZOO_S3_SECRET_KEY to a key allowed on the bucket",
            )
        return Problem(
            "object store",
            where,
            f"S3 error {exc.code}: {exc.message}",
            "check DELTAZOO_S3_* and the S3 server's log",
        )
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line
        return Problem(
            "object store",
            where,
            f"not answering ({_first_line(exc)})",
            "start the S3 server (MinIO: `docker compose up -d minio`; or `weed mini`) "
            "or fix DELTAZOO_S3_ENDPOINT (host:port) and DELTAZOO_S3_SECURE",
        )
