"""A zoo that grows: the SQL statements of a request do not grow with the number of models (N+1 guard),
and the lineage API pages its descendants with a cursor and counts them by relation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_factory, upgrade_database
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from deltazoo.models import Lineage
from tests.checkpoints import TINY_LLAMA_SHAPES, finetune_of, random_tensors
from tests.test_api_support import checkpoint, push, sha, wait_job

BASE = random_tensors(TINY_LLAMA_SHAPES, seed=30)
FINETUNE = checkpoint(finetune_of(BASE, seed=31))


class StatementCounter:
    """SQL statements sent by request threads (the in-process job threads are not counted)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.count = engine, 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        if not threading.current_thread().name.startswith("deltazoo-job"):
            self.count += 1

    @contextmanager
    def counting(self, into: dict[str, int], what: str) -> Iterator[None]:
        before = self.count
        yield
        into[what] = into.get(what, 0) + self.count - before

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def _settings(home: Path, database_url: str | None) -> Settings:
    return Settings(home=home, database_url=database_url, broker_url=None, s3_endpoint=None, auth=False)


def _ready(client: TestClient, answer: dict[str, Any]) -> dict[str, Any]:
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    return answer


def _grow(client: TestClient, first: int, count: int) -> None:
    """``count`` more fine-tunes of zoo/base (the same bytes: uploads deduplicated, the encode copies)."""
    jobs = [
        push(client, f"zoo/ft{i}", FINETUNE, base="zoo/base@1")["job"]["id"]
        for i in range(first, first + count)
    ]
    for job in jobs:
        assert wait_job(client, job)["status"] == "succeeded"


def _probe(client: TestClient, counter: StatementCounter, tag: str) -> dict[str, int]:
    """Statements per request of a push (a new fine-tune, bytes uploaded), an auto-based push, and the
    reads that list or draw the zoo."""
    seen: dict[str, int] = {}
    files = checkpoint(finetune_of(BASE, seed=hash(tag) % 1000 + 100))
    for name, base in ((f"probe/{tag}", "zoo/base@1"), (f"probe/auto-{tag}", "auto")):
        kind = "push" if base != "auto" else "push auto"
        with counter.counting(seen, f"{kind}: create model"):
            assert client.post("/v1/models", json={"name": name}).status_code == 201
        body = {
            "base": base,
            "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
        }
        with counter.counting(seen, f"{kind}: create version"):
            created = client.post(f"/v1/models/{name}/versions", json=body)
        assert created.status_code == 201, created.text
        for up in created.json()["uploads"]:
            if up["needed"]:
                with counter.counting(seen, f"{kind}: upload {up['path']}"):
                    r = client.put(
                        f"/v1/models/{name}/versions/1/files/{up['path']}", content=files[up["path"]]
                    )
                assert r.status_code == 200, r.text
        with counter.counting(seen, f"{kind}: commit"):
            committed = client.post(f"/v1/models/{name}/versions/1/commit")
        assert committed.status_code == 202, committed.text
        assert committed.json()["version"]["parent"] == "zoo/base@1"
        _ready(client, committed.json())
        files = checkpoint(finetune_of(BASE, seed=hash(tag) % 1000 + 2000))
    reads = {
        "lineage of the base": "/v1/models/zoo/base/lineage",
        "lineage of a fine-tune": "/v1/models/zoo/ft0/lineage",
        "base's web page": "/models/zoo/base",
        "fine-tune's web page": "/models/zoo/ft0",
        "list models": "/v1/models?limit=20",
        "search models": "/v1/models?search=ft1&limit=20",
        "model detail": "/v1/models/zoo/base",
        "version detail": "/v1/models/zoo/ft0/versions/1",
        "stats": "/v1/stats",
        "index page": "/",
    }
    for what, path in reads.items():
        with counter.counting(seen, what):
            r = client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
    return seen


def _statements_do_not_grow(home: Path, database_url: str | None) -> None:
    with TestClient(create_app(_settings(home, database_url))) as client:
        counter = StatementCounter(session_factory(client.app.state.settings).kw["bind"])  # type: ignore[attr-defined]
        try:
            _ready(client, push(client, "zoo/base", checkpoint(BASE)))
            _ready(client, push(client, "zoo/ft0", FINETUNE, base="zoo/base@1"))
            _grow(client, 1, 4)
            assert client.post("/v1/models", json={"name": "probe/namespace"}).status_code == 201
            small = _probe(client, counter, "small")
            _grow(client, 5, 45)
            large = _probe(client, counter, "large")
        finally:
            counter.close()
        lineage = client.get("/v1/models/zoo/base/lineage").json()
        assert lineage["descendants_total"] == 50 + 4  # the fine-tunes and the probes
    print(database_url or "sqlite", small)
    assert small == large, {k: (small[k], large.get(k)) for k in small if small[k] != large.get(k)}
    # the lineage call reads the page's versions with the page and each model's name once; the web page
    # adds the family graph and the model card (README.md); a version's chain is named, not summarised
    assert small["lineage of the base"] <= 9 and small["base's web page"] <= 17, small
    assert small["version detail"] <= 15, small


def test_statements_per_request_do_not_grow_with_the_zoo_on_postgres(
    tmp_path: Path, empty_postgres_url: str
) -> None:
    upgrade_database(empty_postgres_url)
    _statements_do_not_grow(tmp_path / "home", empty_postgres_url)


def test_statements_per_request_do_not_grow_with_the_zoo_on_sqlite(tmp_path: Path) -> None:
    _statements_do_not_grow(tmp_path / "home", None)


@pytest.fixture
def family(tmp_path: Path) -> Iterator[TestClient]:
    """zoo/base with 6 fine-tunes, an adapter, a fine-tune of a fine-tune (embedded default)."""
    with TestClient(create_app(_settings(tmp_path / "home", None))) as client:
        _ready(client, push(client, "zoo/base", checkpoint(BASE)))
        _ready(client, push(client, "zoo/ft0", FINETUNE, base="zoo/base@1"))
        _grow(client, 1, 5)
        r = client.post("/v1/models", json={"name": "zoo/adapter"})
        assert r.status_code == 201
        files = checkpoint(finetune_of(BASE, seed=40))
        body = {
            "base": "zoo/base@1",
            "relation": "adapter",
            "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
        }
        assert client.post("/v1/models/zoo/adapter/versions", json=body).status_code == 201
        for path, data in files.items():
            assert (
                client.put(f"/v1/models/zoo/adapter/versions/1/files/{path}", content=data).status_code == 200
            )
        _ready(client, client.post("/v1/models/zoo/adapter/versions/1/commit").json())
        _ready(
            client, push(client, "zoo/grandchild", checkpoint(finetune_of(BASE, seed=41)), base="zoo/ft3@1")
        )
        yield client


def test_lineage_pages_cover_every_descendant_once(family: TestClient) -> None:
    full = family.get("/v1/models/zoo/base/lineage").json()
    assert full["descendant_counts"] == {"adapter": 1, "finetune": 7}
    assert full["descendants_total"] == 8 and len(full["descendants"]) == 8 and full["next_cursor"] is None
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = family.get("/v1/models/zoo/base/lineage", params=params).json()
        assert len(page["descendants"]) <= 3 and page["descendant_counts"] == full["descendant_counts"]
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == 3
    merged = Lineage.from_pages(pages)
    assert list(merged.descendants) == full["descendants"]
    assert {(e.parent, e.child, e.relation) for e in merged.edges} == {
        (e["parent"], e["child"], e["relation"]) for e in full["edges"]
    }
    assert ("zoo/ft3@1", "zoo/grandchild@1", "finetune") in {
        (e.parent, e.child, e.relation) for e in merged.edges
    }
    assert {n.ref for n in merged.nodes} == {n["ref"] for n in full["nodes"]}
    own = family.get("/v1/models/zoo/grandchild/lineage").json()
    assert own["ancestors"] == ["zoo/ft3@1", "zoo/base@1"] and own["descendants_total"] == 0


@pytest.mark.parametrize("params", [{"cursor": "abc"}, {"cursor": "-1"}, {"limit": 0}, {"limit": 1001}])
def test_lineage_rejects_a_bad_page_request_with_a_4xx(family: TestClient, params: dict[str, Any]) -> None:
    r = family.get("/v1/models/zoo/base/lineage", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"]


def test_model_page_draws_one_page_and_counts_the_rest(
    family: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltazoo.api.routes import web

    monkeypatch.setattr(web, "WEB_LINEAGE_PAGE", 4)
    html = family.get("/models/zoo/base").text
    assert "8 descendant versions in other models: 1 adapter, 7 finetune" in html
    assert 'id="lineage-more"' in html and "4 more descendants not drawn" in html
    tree = html.split('id="lineage"')[1].split("</ul>\n")[0]
    assert tree.count('class="node') == 1 + 4
