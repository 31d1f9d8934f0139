"""Models and migrations agree: after ``alembic upgrade head`` autogenerate finds nothing to change."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from deltazoo.registry.db import upgrade_database
from deltazoo.registry.model_search import SEARCH_OBJECTS, made_outside_metadata
from deltazoo.registry.models import Base
from sqlalchemy import create_engine, inspect

TABLES = {
    "namespace",
    "api_token",
    "model",
    "version",
    "file",
    "tensor",
    "tensor_chunk",
    "blob",
    "artifact",
    "job",
    "evaluation",
    "text_set",
    "sketch_band",
    "lineage_descendant",
    "version_tag",
    "tally",
    "tally_delta",
    "alembic_version",
}


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "include_name": made_outside_metadata}
            ctx = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_models_match_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade_database(url)
    upgrade_database(url)  # running it again is harmless
    assert schema_diff(url) == []
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) - SEARCH_OBJECTS == TABLES
    engine.dispose()


def test_postgres_models_match_migrations(empty_postgres_url: str) -> None:
    upgrade_database(empty_postgres_url)
    assert schema_diff(empty_postgres_url) == []


def test_upgrading_a_populated_sqlite_database_keeps_its_rows(tmp_path: Path) -> None:
    """Batch-mode table rebuilds on SQLite must not fire ON DELETE CASCADE / SET NULL: an embedded
    server upgraded from schema 0002 lost every file row and parent link before migrations/env.py
    turned foreign keys off while migrating."""
    import sqlite3

    from alembic import command
    from deltazoo.registry.db import alembic_config

    path = tmp_path / "old.db"
    cfg = alembic_config(f"sqlite:///{path}")
    command.upgrade(cfg, "0002")
    db = sqlite3.connect(path)

    def insert(table: str, **values: object) -> None:
        db.execute(
            f"insert into {table} ({', '.join(values)}) values ({', '.join('?' for _ in values)})",
            list(values.values()),
        )

    now = "2026-01-01 00:00:00"
    insert("namespace", id=1, name="acme", created_at=now)
    insert("model", id=1, namespace_id=1, name="m", description="", private=0, created_at=now)
    for vid, parent in ((1, None), (2, 1)):
        insert(
            "version",
            id=vid,
            model_id=1,
            revision=vid,
            parent_version_id=parent,
            relation="finetune",
            status="ready",
            logical_bytes=1,
            stored_bytes=1,
            lossy=0,
            profiles="[]",
            created_at=now,
            updated_at=now,
        )
    insert("file", id=1, version_id=2, path="config.json", size=1, sha256="0" * 64, kind="other", uploaded=1)
    db.commit()
    db.close()

    command.upgrade(cfg, "head")
    db = sqlite3.connect(path)
    try:
        assert db.execute("select id, parent_version_id from version order by id").fetchall() == [
            (1, None),
            (2, 1),
        ]
        assert db.execute("select id, version_id from file").fetchall() == [(1, 2)]
        assert db.execute("pragma foreign_key_check").fetchall() == []
    finally:
        db.close()
