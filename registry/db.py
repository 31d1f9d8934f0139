"""Engine, sessions and migrations of the registry database.

Services never commit: ``session_scope`` (used by the API's request dependency and by the job
wrapper) commits once at the end, or rolls back, and then runs the callbacks registered with
``after_commit`` (this is how a job is enqueued only once the rows it reads are committed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from deltazoo.registry import lineage_index  # noqa: F401  (keeps lineage_descendant in step on every flush)
from deltazoo.registry.settings import Settings, get_settings
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

_lock = threading.Lock()
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean the psycopg2 driver deltazoo installs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_timeout: a burst that takes every connection waits at most 5 s, then answers 503 (Retry-After)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=5)


_health_engines: dict[str, Engine] = {}


def ping_database(settings: Settings) -> None:
    """SELECT 1 on a connection of its own (no pool): the health check answers at once even while a
    burst holds every pooled connection."""
    url = normalize_url(settings.resolved_database_url)
    with _lock:
        engine = _health_engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
            else:
                engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
            _health_engines[url] = engine
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """One session factory (and engine) per database URL, made on first use."""
    url = (settings or get_settings()).resolved_database_url
    with _lock:
        factory = _factories.get(url)
        if factory is None:
            factory = sessionmaker(make_engine(url), expire_on_commit=False)
            _factories[url] = factory
        return factory


def dispose_engines() -> None:
    with _lock:
        for factory in _factories.values():
            bind = factory.kw.get("bind")
            if bind is not None:
                bind.dispose()
        _factories.clear()


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has been committed by ``session_scope``."""
    session.info.setdefault("after_commit", []).append(callback)


def commit_now(session: Session) -> None:
    """Commit the unit of work so far and run its after-commit callbacks (enqueued jobs): for a request
    that then waits on what it started (a Hub commit waits for its encode); ``session_scope`` commits
    whatever it writes after."""
    session.commit()
    for callback in session.info.pop("after_commit", []):
        callback()


def end_read(session: Session) -> None:
    """End a transaction that has only read, so that no connection or snapshot is held while a long
    request body streams in; the unit of work (``session_scope``) goes on and commits what is written
    after. Loaded rows stay loaded. Raises when something was written: that must commit with the rest."""
    if session.new or session.dirty or session.deleted or session.info.get("after_commit"):
        raise RuntimeError("end_read after a write: the request's unit of work must commit it whole")
    session.commit()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        session.info.pop("after_commit", None)
        raise
    finally:
        callbacks = session.info.pop("after_commit", [])
        session.close()
    for callback in callbacks:
        callback()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    ini = resources.files("deltazoo.migrations") / "alembic.ini"
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(resources.files("deltazoo.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade_database(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: the settings') to the newest schema (alembic upgrade head)."""
    from alembic import command

    url = normalize_url(url or get_settings().resolved_database_url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
