"""Models and migrations agree: after ``alembic upgrade head`` autogenerate finds nothing to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from deltazoo.registry.db import upgrade_database
from deltazoo.registry.model_search import SEARCH_OBJECTS, made_outside_metadata
from deltazoo.registry.models import Base
from sqlalchemy import Engine, create_engine, inspect

TABLES = {
    "namespace",
    "api_token",
    "model",
    "revision_floor",
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


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_models_match_migrations(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """``upgrade head`` (twice: running it again is harmless) builds every table of the models, and
    autogenerate finds nothing to change."""
    url = (
        request.getfixturevalue("empty_postgres_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'r.db'}"
    )
    upgrade_database(url)
    upgrade_database(url)
    assert schema_diff(url) == []
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) - SEARCH_OBJECTS == TABLES
    finally:
        engine.dispose()


def test_upgrading_a_populated_sqlite_database_keeps_its_rows(tmp_path: Path) -> None:
    """Batch-mode table rebuilds on SQLite must not fire ON DELETE CASCADE / SET NULL: an embedded
    server upgraded from schema 0002 lost every file row and parent link before migrations/env.py
    turned foreign keys off while migrating."""
    import sqlite3

    from alembic import command
    from deltazoo.registry.db import alembic_config

    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0002")
    now = "2026-01-01 00:00:00"
    version = {"relation": "finetune", "status": "ready", "logical_bytes": 1, "stored_bytes": 1}
    version |= {"lossy": 0, "profiles": "[]", "created_at": now, "updated_at": now}
    rows: dict[str, list[dict[str, object]]] = {
        "namespace": [{"id": 1, "name": "acme", "created_at": now}],
        "model": [
            {"id": 1, "namespace_id": 1, "name": "m", "description": "", "private": 0, "created_at": now}
        ],
        "version": [
            {**version, "id": vid, "model_id": 1, "revision": vid, "parent_version_id": parent}
            for vid, parent in ((1, None), (2, 1))
        ],
        "file": [
            {"id": 1, "version_id": 2, "path": "config.json", "size": 1, "sha256": "0" * 64, "kind": "other"}
            | {"uploaded": 1}
        ],
    }
    _insert_rows(url, rows)

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


# a row in every table of schema 0006 (issue13_lossy_files), linked as the services link them
ROWS_AT_0006: dict[str, list[dict[str, object]]] = {
    "namespace": [{"id": 1, "name": "acme"}],
    "api_token": [
        {
            "id": 1,
            "name": "ci",
            "token_hash": "0" * 64,
            "namespace_id": 1,
            "scopes": '["read"]',
            "admin": False,
        }
    ],
    "model": [
        {"id": 1, "namespace_id": 1, "name": "base", "description": "", "private": False},
        {"id": 2, "namespace_id": 1, "name": "ft", "description": "", "private": False},
    ],
    "version": [
        {"id": 1, "model_id": 1, "revision": 1, "parent_version_id": None, "commit_id": "1" * 40},
        {"id": 2, "model_id": 2, "revision": 1, "parent_version_id": 1, "commit_id": "2" * 40},
    ],
    "blob": [{"sha256": c * 64, "size": 10, "refcount": 1} for c in "abcd"],
    "text_set": [
        {"id": 1, "name": "wiki", "description": "", "sha256": "e" * 64, "bytes": 5, "blob": "d" * 64}
    ],
    "file": [
        {
            "id": 1,
            "version_id": 1,
            "path": "model.safetensors",
            "size": 100,
            "sha256": "f" * 64,
            "kind": "safetensors",
            "uploaded": True,
            "source_file_id": None,
            "staging_key": None,
            "header_blob": "a" * 64,
            "blob": None,
        },
        {
            "id": 2,
            "version_id": 2,
            "path": "model.safetensors",
            "size": 100,
            "sha256": "f" * 64,
            "kind": "safetensors",
            "uploaded": True,
            "source_file_id": 1,
            "staging_key": "staging/upload-2",
            "header_blob": None,
            "blob": None,
        },
    ],
    "tensor": [
        {
            "id": 1,
            "version_id": 1,
            "file_id": 1,
            "name": "w",
            "dtype": "BF16",
            "shape": "[2, 2]",
            "sha256": "9" * 64,
            "offset_begin": 0,
            "offset_end": 8,
            "encoding": "plain",
            "blob": None,
            "stored_bytes": 10,
            "depth": 0,
            "parent_tensor_id": None,
            "chunks": 1,
        },
        {
            "id": 2,
            "version_id": 2,
            "file_id": 2,
            "name": "w",
            "dtype": "BF16",
            "shape": "[2, 2]",
            "sha256": "9" * 64,
            "offset_begin": 0,
            "offset_end": 8,
            "encoding": "same",
            "blob": None,
            "stored_bytes": 0,
            "depth": 0,
            "parent_tensor_id": 1,
            "chunks": 0,
        },
    ],
    "tensor_chunk": [
        {
            "tensor_id": 1,
            "index": 0,
            "begin": 0,
            "end": 4,
            "encoding": "plain",
            "blob": "b" * 64,
            "sha256": "8" * 64,
            "stored_bytes": 10,
        }
    ],
    "artifact": [
        {
            "id": 1,
            "version_id": 2,
            "profile": "deltadq:n=1,m=32,bits=4",
            "status": "ready",
            "bytes": 10,
            "blob": "c" * 64,
            "quality": "{}",
        }
    ],
    "job": [
        {
            "id": 1,
            "kind": "encode_version",
            "target": "acme/ft@1",
            "target_id": 2,
            "status": "succeeded",
            "attempts": 1,
            "progress": 1.0,
        }
    ],
    "evaluation": [
        {
            "id": 1,
            "version_id": 2,
            "artifact_id": None,
            "text_set_id": 1,
            "bits_per_byte": 0.9,
            "details": "{}",
            "status": "ready",
        }
    ],
    "sketch_band": [{"version_id": 2, "band": 1, "key": 7}],
    "version_tag": [{"id": 1, "model_id": 2, "name": "prod", "version_id": 2}],
}
VERSION_DEFAULTS: dict[str, object] = {
    "relation": "finetune",
    "status": "ready",
    "logical_bytes": 100,
    "stored_bytes": 10,
    "lossy": False,
    "profiles": "[]",
}
STAMPED = {
    "api_token",
    "blob",
    "model",
    "namespace",
    "text_set",
    "version",
    "artifact",
    "job",
    "evaluation",
    "version_tag",
}


def test_upgrading_a_populated_postgres_database_from_0006_keeps_its_rows(empty_postgres_url: str) -> None:
    """``alembic upgrade head`` on a Postgres registry at schema 0006 with rows in every table: every row
    stays, the lineage index is filled from the stored parents, and the queries on the indexes added since
    find what they found before."""
    from alembic import command
    from deltazoo.registry.db import alembic_config
    from deltazoo.registry.lineage_repository import LineageRepository
    from deltazoo.registry.repositories import FileRepository, TensorRepository
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    command.upgrade(alembic_config(empty_postgres_url), "issue13_lossy_files")
    stamped = {table: [_stamped(table, row) for row in rows] for table, rows in ROWS_AT_0006.items()}
    _insert_rows(empty_postgres_url, stamped)
    engine = create_engine(empty_postgres_url)
    try:
        before = _row_counts(engine)
        assert all(before[t] == len(rows) for t, rows in ROWS_AT_0006.items()), before

        upgrade_database(empty_postgres_url)

        assert _row_counts(engine) == before
        assert schema_diff(empty_postgres_url) == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, parent_version_id FROM version ORDER BY id")).all() == [
                (1, None),
                (2, 1),
            ]
            assert conn.execute(
                text("SELECT ancestor_model_id, version_id, model_id FROM lineage_descendant")
            ).all() == [(1, 2, 2)]
        with Session(engine) as s:
            dedup = FileRepository(s).stored_ready_with_sha("f" * 64, 100, None)
            assert dedup is not None and dedup.id == 1  # the first file with the bytes, not its copy
            twin = TensorRepository(s).stored_with_sha("9" * 64)
            assert twin is not None and twin.id == 1  # the stored tensor, never its ``same`` copy
            assert FileRepository(s).referenced_staging_keys(["staging/upload-2", "staging/gone"]) == {
                "staging/upload-2"
            }
            assert LineageRepository(s).ancestor_ids([2]) == {1}
    finally:
        engine.dispose()


def _stamped(table: str, row: dict[str, object]) -> dict[str, object]:
    """A row of schema 0006 with the defaults and timestamps the services write."""
    row = {**(VERSION_DEFAULTS if table == "version" else {}), **row}
    if table in STAMPED:
        row["created_at"] = "2026-01-01"
    if table in ("version", "job", "evaluation", "version_tag"):
        row["updated_at"] = "2026-01-01"
    return row


def _insert_rows(url: str, rows: dict[str, list[dict[str, object]]]) -> None:
    """Insert ``rows`` (table -> rows, in order) as they are, in one transaction."""
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for table, table_rows in rows.items():
                for row in table_rows:
                    columns = ", ".join(f'"{c}"' for c in row)
                    values = ", ".join(f":{c}" for c in row)
                    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({values})"), row)
    finally:
        engine.dispose()


def _row_counts(engine: Engine) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in ROWS_AT_0006}


def test_sketches_holding_nan_are_made_json_on_sqlite(tmp_path: Path) -> None:
    """A Hub commit stored NaN / Infinity samples in version.sketch (not JSON: every read of the model was
    a 503 on SQLite); the migration rewrites them as null, leaving every other value as it was."""
    import json
    import sqlite3

    from alembic import command
    from deltazoo.registry.db import alembic_config

    path = tmp_path / "nan.db"
    url = f"sqlite:///{path}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "issue18_file_source_index")
    sketch = '{"v": 1, "tensors": {"NaN.w": {"dtype": "F32", "shape": [3], "values": [NaN, -Infinity, 0.5]}}}'
    rows: dict[str, list[dict[str, object]]] = {
        "namespace": [_stamped("namespace", {"id": 1, "name": "acme"})],
        "model": [
            _stamped("model", {"id": 1, "namespace_id": 1, "name": "m", "description": "", "private": 0})
        ],
        "version": [
            _stamped(
                "version", {"id": 1, "model_id": 1, "revision": 1, "sketch": sketch, "commit_id": "a" * 40}
            )
        ],
    }
    _insert_rows(url, rows)
    command.upgrade(cfg, "head")
    db = sqlite3.connect(path)
    try:
        (stored,) = db.execute("select sketch from version").fetchone()
        assert db.execute("select json_valid(sketch) from version").fetchone() == (1,)
    finally:
        db.close()
    assert json.loads(stored)["tensors"] == {
        "NaN.w": {"dtype": "F32", "shape": [3], "values": [None, None, 0.5]}
    }
