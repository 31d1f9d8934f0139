"""The model list (registry.model_listing): pages in ``org/name`` order by cursor or offset, each model
once, private ones only for those who may read them, the total from the counters; and on Postgres a
page reads the models it shows, not the whole zoo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_factory, session_scope, upgrade_database
from deltazoo.registry.errors import Unprocessable
from deltazoo.registry.settings import Settings
from deltazoo.services.access import ANONYMOUS, OPEN, Principal
from deltazoo.services.catalog import search_models
from deltazoo.services.versions import create_model
from fastapi.testclient import TestClient
from sqlalchemy import event, text

# lowercase letters and digits only: Python's order is the database collation's
MODELS = {
    "acme/m00": False,
    "acme/m01": True,
    "acme/m02": False,
    "beta/m00": True,
    "beta/m01": True,
    "meta/m00": False,
    "meta/m03": False,
    "meta/m10": True,
    "zoo/m05": False,
}
ACME_READER = Principal(token_id=7, admin=False, namespace="acme", scopes=frozenset({"read"}))


def _settings(home: Path, url: str | None) -> Settings:
    return Settings(home=home, database_url=url, broker_url=None, s3_endpoint=None, auth=False)


def _visible(viewer: Principal) -> list[str]:
    allowed = viewer.private_namespaces()
    return sorted(
        name
        for name, private in MODELS.items()
        if not private or allowed is None or name.split("/")[0] in allowed
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_pages_by_cursor_and_by_offset_show_each_readable_model_once_in_order(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("empty_postgres_url") if backend == "postgres" else None
    settings = _settings(tmp_path / "home", url)
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings) as s:
        for name, private in MODELS.items():
            create_model(s, name, "", private, False)
    with session_scope(settings) as s:
        for viewer in (OPEN, ANONYMOUS, ACME_READER):
            want = _visible(viewer)
            for size in (1, 2, 4, 50):
                seen, cursor = [], None
                while True:
                    page = search_models(s, viewer, "", size, 0, cursor)
                    assert page.total == len(want)
                    assert len(page.items) <= size
                    seen += [m.name for m in page.items]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                    assert cursor == seen[-1]
                assert seen == want, (viewer, size)
                by_offset = [search_models(s, viewer, "", size, o, None).items for o in range(0, 10, size)]
                assert [m.name for items in by_offset for m in items] == want
            # a cursor and an offset together: the offset counts from the cursor
            assert [m.name for m in search_models(s, viewer, "", 2, 1, want[0]).items] == want[2:4]
            # a search pages alike (its total counts the matches)
            page = search_models(s, viewer, "m0", 1, 0, "acme/m00")
            matching = [n for n in want if "m0" in n]
            assert page.total == len(matching) and [m.name for m in page.items] == matching[1:2]
        # a cursor naming a model that no longer exists still starts right after where it stood
        after_gone = search_models(s, OPEN, "", 2, 0, "meta/m01").items
        assert [m.name for m in after_gone] == ["meta/m03", "meta/m10"]
        for bad in ("nonsense", "/m00", "acme/", "a" * 400 + "/b"):
            with pytest.raises(Unprocessable):
                search_models(s, OPEN, "", 2, 0, bad)


def test_rest_list_answers_next_cursor_and_refuses_a_bad_cursor_with_422(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path / "home", None))) as client:
        for name in ("org/a", "org/b", "org/c"):
            assert client.post("/v1/models", json={"name": name}).status_code == 201
        first = client.get("/v1/models", params={"limit": 2}).json()
        assert [m["name"] for m in first["items"]] == ["org/a", "org/b"] and first["next_cursor"] == "org/b"
        assert first["total"] == 3
        last = client.get("/v1/models", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [m["name"] for m in last["items"]] == ["org/c"] and last["next_cursor"] is None
        r = client.get("/v1/models", params={"cursor": "no-slash"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
        r = client.get("/v1/models", params={"cursor": "o/" + "n" * 400})
        assert r.status_code == 422


def _model_rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans of ``model`` returned (over all their loops) and removed by a filter."""
    own = 0
    if plan.get("Relation Name") == "model":
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    return own + sum(_model_rows_read(p) for p in plan.get("Plans", []))


def test_a_page_reads_the_models_it_shows_not_the_zoo_on_postgres(
    tmp_path: Path, empty_postgres_url: str
) -> None:
    """The statement the REST list sends, run under EXPLAIN ANALYZE on a zoo of 2,000 models in one
    namespace (the planner statistics taken): the first page and a deep page after a cursor each read at
    most the page and one more from ``model`` (a join sorted on both names read all 2,000)."""
    upgrade_database(empty_postgres_url)
    settings = _settings(tmp_path / "home", empty_postgres_url)
    with session_scope(settings) as s:
        create_model(s, "fam/base", "", False, False)
        s.execute(
            text(
                "INSERT INTO model (namespace_id, name, description, private, created_at) "
                "SELECT namespace_id, 'ft-' || lpad(i::text, 5, '0'), '', false, now() "
                "FROM model, generate_series(1, 1999) AS i"
            )
        )
        s.execute(text("ANALYZE"))
    engine = session_factory(settings).kw["bind"]
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
        if "FROM namespace JOIN LATERAL" in statement:
            sent.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with session_scope(settings) as s:
            assert search_models(s, ANONYMOUS, "", 20, 0).next_cursor == "fam/ft-00019"
            assert search_models(s, OPEN, "", 20, 0, "fam/ft-01500").items[0].name == "fam/ft-01501"
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert len(sent) == 2
    with engine.connect() as conn:
        for statement, params in sent:
            cursor = conn.connection.cursor()
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            assert _model_rows_read(plan[0]["Plan"]) <= 21, json.dumps(plan, indent=1)
