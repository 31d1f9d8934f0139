"""Models and migrations agree: after ``alembic upgrade head`` autogenerate finds nothing to change."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from registry.db import upgrade_database
from registry.models import Base

TABLES = {
    "namespace",
    "api_token",
    "model",
    "version",
    "file",
    "tensor",
    "blob",
    "artifact",
    "job",
    "evaluation",
    "text_set",
    "sketch_band",
    "version_tag",
    "alembic_version",
}


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_models_match_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade_database(url)
    upgrade_database(url)  # running it again is harmless
    assert schema_diff(url) == []
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_postgres_models_match_migrations(empty_postgres_url: str) -> None:
    upgrade_database(empty_postgres_url)
    assert schema_diff(empty_postgres_url) == []

