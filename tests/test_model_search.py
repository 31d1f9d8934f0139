"""Model search (registry.model_search) finds what a user types anywhere in ``org/name`` or the
description, as plain text, on both backends, and is served by the index (pg_trgm, FTS5 trigram)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltazoo.registry.db import session_scope, upgrade_database
from deltazoo.registry.model_search import matching_model_ids, sqlite_has_trigram
from deltazoo.registry.models import Model, Namespace
from deltazoo.registry.repositories import ModelRepository
from deltazoo.registry.settings import Settings
from deltazoo.services.versions import create_model
from sqlalchemy import select, text

MODELS = {
    "meta/Llama-3-8B-chat": "a chat model",
    "acme/my_model": "",
    "acme/my-model": "tuned for 100% recall",
    "acme/ft-0004": "",
    "acme/ft-00041": "a fine-tune of meta/Llama-3-8B",
    "zoo/base": "ACME's base",
}
QUERIES = [
    "llama",
    "8B-CH",
    "my_model",  # "_" is a character, not a wildcard: my-model is not found
    "100%",
    "%",
    "meta/ll",
    "ta/Ll",
    "a/my",
    "me/",
    "/ft-0004",
    "acme",
    "ft-0004",
    "a",
    "zz",
    "base",
    'a "quoted" word',
]


def expected(query: str) -> list[str]:
    q = query.lower()
    return sorted(
        (name for name, description in MODELS.items() if q in name.lower() or q in description.lower()),
        key=lambda n: tuple(n.split("/")),
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_search_finds_substrings_of_names_and_descriptions(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("empty_postgres_url") if backend == "postgres" else None
    settings = Settings(
        home=tmp_path / "home", database_url=url, broker_url=None, s3_endpoint=None, auth=False
    )
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings) as s:
        for name, description in MODELS.items():
            create_model(s, name, description, False, False)
    with session_scope(settings) as s:
        repo = ModelRepository(s)
        for query in QUERIES:
            rows, total = repo.search(query, 100, 0)
            assert [name for _, name in rows] == expected(query), query
            assert total == len(expected(query)), query
        rows, total = repo.search("acme", 2, 1)
        assert [name for _, name in rows] == expected("acme")[1:3] and total == len(expected("acme")) == 5
        # a renamed description is found by its new words only
        model = s.scalar(select(Model).join(Namespace).where(Model.name == "my_model"))
        model.description = "now about zebras"
        s.flush()
        assert [n for _, n in repo.search("zebra", 10, 0)[0]] == ["acme/my_model"]
        assert [n for _, n in repo.search("100%", 10, 0)[0]] == ["acme/my-model"]


def test_search_reads_the_trigram_index_on_postgres(tmp_path: Path, empty_postgres_url: str) -> None:
    upgrade_database(empty_postgres_url)
    settings = Settings(
        home=tmp_path / "home", database_url=empty_postgres_url, broker_url=None, s3_endpoint=None, auth=False
    )
    with session_scope(settings) as s:
        s.execute(text("SET LOCAL enable_seqscan = off"))  # a few rows: the planner would scan them
        query = select(Model.id).where(Model.id.in_(matching_model_ids(s, "ft-0004")))
        compiled = query.compile(s.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(s.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert "ix_model_name_trgm" in plan and "ix_model_description_trgm" in plan, plan
    with session_scope(settings) as s:
        options = s.execute(
            text("SELECT relname, reloptions FROM pg_class WHERE relname LIKE 'ix_model_%_trgm'")
        ).all()
    assert sorted(options) == [
        ("ix_model_description_trgm", ["fastupdate=off"]),
        ("ix_model_name_trgm", ["fastupdate=off"]),
    ]


@pytest.mark.skipif(not sqlite_has_trigram(), reason="this SQLite has no FTS5 trigram tokenizer")
def test_search_reads_the_fts5_table_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None, auth=False
    )
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings) as s:
        query = select(Model.id).where(Model.id.in_(matching_model_ids(s, "ft-0004")))
        compiled = query.compile(s.get_bind(), compile_kwargs={"literal_binds": True})
        plan = " | ".join(str(row[-1]) for row in s.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "VIRTUAL TABLE INDEX" in plan and "SCAN model " not in plan + " ", plan
