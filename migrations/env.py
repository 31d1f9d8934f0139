"""Alembic environment: the URL comes from the caller (registry.db) or from deltazoo's settings."""

from __future__ import annotations

from alembic import context
from deltazoo.registry.db import make_engine
from deltazoo.registry.model_search import made_outside_metadata
from deltazoo.registry.models import Base
from deltazoo.registry.settings import get_settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        include_name=made_outside_metadata,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(database_url())
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table as copy + DROP + rename. With foreign keys on (registry.db
        # turns them on for every connection), the DROP deletes the old rows first, and every
        # ON DELETE CASCADE / SET NULL fires: an upgrade would delete all files, tensors and
        # artifacts and cut every parent link. SQLite ignores this pragma inside a transaction,
        # so it is set before the migration's transaction begins.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        compare_type=True,
        include_name=made_outside_metadata,
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            connection.commit()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
