"""Substring search of models served by an index, on both backends.

What a user types is found anywhere in ``org/name`` or in the description, case-insensitively, as
plain text (``%`` and ``_`` are characters, not wildcards): the Hub's and MLflow's model search find
``llama`` in ``meta/Llama-3-8B-chat`` and ``8b-chat`` in it too, so a prefix or token search would miss
what people type. The index:

- Postgres: ``pg_trgm`` GIN indexes on ``lower(model.name)`` and ``lower(model.description)``; a
  ``LIKE '%q%'`` reads the trigrams of ``q`` from them instead of scanning the table. No pending list
  (``fastupdate = off``): every search would read it whole until a vacuum merged it.
- SQLite: ``model_search``, an FTS5 table with the ``trigram`` tokenizer over the same two columns
  (external content: it indexes ``model`` and stores no copy), kept by triggers; ``MATCH '"q"'`` is a
  substring match. SQLite builds older than 3.34 have no trigram tokenizer: there the table is not
  made and search scans ``model`` as before, as it does for queries under 3 characters (no trigram).

Namespaces are few: the part of a query that names one is matched on ``namespace`` (a small scan), and
a query with a ``/`` is split at it (org ends with the left part, name starts with the right one).
"""

from __future__ import annotations

import functools
import sqlite3

from deltazoo.registry.models import Model, Namespace
from sqlalchemy import ColumnElement, Select, func, literal_column, select, text, union
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

TRIGRAM = 3  # a query shorter than this has no trigram to look up


@functools.cache
def sqlite_has_trigram() -> bool:
    """Whether this process's SQLite has FTS5 with the trigram tokenizer (3.34+)."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE model_search USING fts5(name, description, content='model', "
    "content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER model_search_insert AFTER INSERT ON model BEGIN "
    "INSERT INTO model_search (rowid, name, description) VALUES (NEW.id, NEW.name, NEW.description); END",
    "CREATE TRIGGER model_search_delete AFTER DELETE ON model BEGIN "
    "INSERT INTO model_search (model_search, rowid, name, description) "
    "VALUES ('delete', OLD.id, OLD.name, OLD.description); END",
    "CREATE TRIGGER model_search_update AFTER UPDATE OF name, description ON model BEGIN "
    "INSERT INTO model_search (model_search, rowid, name, description) "
    "VALUES ('delete', OLD.id, OLD.name, OLD.description); "
    "INSERT INTO model_search (rowid, name, description) VALUES (NEW.id, NEW.name, NEW.description); END",
    "INSERT INTO model_search (model_search) VALUES ('rebuild')",
]
_POSTGRES_TRGM = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS ix_model_name_trgm ON model USING gin (lower(name) gin_trgm_ops) "
    "WITH (fastupdate = off)",
    "CREATE INDEX IF NOT EXISTS ix_model_description_trgm ON model "
    "USING gin (lower(description) gin_trgm_ops) WITH (fastupdate = off)",
    # a GIN index's pending list (fastupdate) is read whole by every search until a vacuum merges it:
    # 10,000 models created in a burst made a search read 258 pending pages (2x its time). Models are
    # created rarely, searched often: each insert updates the index at once instead.
    "ALTER INDEX ix_model_name_trgm SET (fastupdate = off)",
    "ALTER INDEX ix_model_description_trgm SET (fastupdate = off)",
]
SEARCH_OBJECTS = {
    "model_search",
    "model_search_data",
    "model_search_idx",
    "model_search_docsize",
    "model_search_config",
    "ix_model_name_trgm",
    "ix_model_description_trgm",
}


def made_outside_metadata(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic's ``include_name``: False for the search objects made here, not by the metadata, so that
    autogenerate leaves them alone (migrations/env.py, tests/test_registry_migrations.py)."""
    return not (type_ in ("table", "index") and name in SEARCH_OBJECTS)


def install(conn: Connection) -> None:
    """Make the search index of the backend and fill it from the models stored."""
    if conn.dialect.name == "postgresql":
        for statement in _POSTGRES_TRGM:
            conn.execute(text(statement))
    elif sqlite_has_trigram():
        drop(conn)
        for statement in _SQLITE_FTS:
            conn.execute(text(statement))


def drop(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("DROP INDEX IF EXISTS ix_model_name_trgm"))
        conn.execute(text("DROP INDEX IF EXISTS ix_model_description_trgm"))
        return
    for event in ("insert", "delete", "update"):
        conn.execute(text(f"DROP TRIGGER IF EXISTS model_search_{event}"))
    conn.execute(text("DROP TABLE IF EXISTS model_search"))


def _escaped(query: str) -> str:
    return query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(column: ColumnElement[str], pattern: str) -> ColumnElement[bool]:
    return func.lower(column).like(pattern, escape="\\")


def matching_model_ids(session: Session, query: str) -> Select:
    """The ids of the models whose ``org/name`` or description contains ``query`` (not empty). The
    namespaces the query names are looked up first (a small table), so the planner is handed their ids
    and reads their models by ``ix_model_namespace_id`` only when some namespace matches."""
    q = _escaped(query)
    contains = f"%{q}%"
    arms: list[Select] = []

    def in_namespaces(pattern: str) -> ColumnElement[bool] | None:
        ids = list(session.scalars(select(Namespace.id).where(_like(Namespace.name, pattern))))
        return Model.namespace_id.in_(ids) if ids else None

    by_namespace = in_namespaces(contains)
    if by_namespace is not None:
        arms.append(select(Model.id).where(by_namespace))
    if "/" in query:
        org, _, name = q.partition("/")
        by_org = in_namespaces(f"%{org}")
        if by_org is not None:
            arms.append(select(Model.id).where(by_org, _like(Model.name, f"{name}%")))
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite" and sqlite_has_trigram() and len(query) >= TRIGRAM:
        phrase = '"' + query.replace('"', '""') + '"'
        fts: ColumnElement[str] = literal_column("model_search")
        arms.append(
            select(literal_column("rowid")).select_from(text("model_search")).where(fts.match(phrase))
        )
    else:
        arms.append(select(Model.id).where(_like(Model.name, contains)))
        arms.append(select(Model.id).where(_like(Model.description, contains)))
    return union(*arms)  # type: ignore[return-value]
