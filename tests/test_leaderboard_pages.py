"""The leaderboard is ranked and paged in the database: pages put together give every evaluation once,
best ratio first and those without a bpb last; the web page links to the next page."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_scope
from deltazoo.registry.models import Evaluation, Model, TextSet, Version
from deltazoo.registry.objectstore import object_store_from_settings
from deltazoo.registry.repositories import NamespaceRepository
from deltazoo.registry.settings import Settings
from deltazoo.services.evaluation import register_text
from fastapi.testclient import TestClient
from sqlalchemy import select

BPB = [0.9, None, 0.7, 1.1, 0.7, None, 0.8, 1.0]  # two ties, two without a figure


def _seed(settings: Settings, bpbs: list[float | None]) -> None:
    """Text set "t" and one ready version per figure with its dense evaluation (what the evaluate job
    writes: a bpb, or none for a failed one)."""
    with session_scope(settings) as s:
        store = object_store_from_settings(settings)
        register_text(s, store, "t", b"text " * 40, "", 1 << 20, 0, lambda _: None)
        text_id = s.scalar(select(TextSet.id).where(TextSet.name == "t"))
        ns = NamespaceRepository(s).get_or_create("lb")
        for i, bpb in enumerate(bpbs):
            model = Model(namespace_id=ns.id, name=f"m{i}", description="", private=False)
            s.add(model)
            s.flush()
            version = Version(model_id=model.id, revision=1, status="ready", logical_bytes=10, stored_bytes=5)
            s.add(version)
            s.flush()
            status = "ready" if bpb is not None else "failed"
            s.add(Evaluation(version_id=version.id, text_set_id=text_id, bits_per_byte=bpb, status=status))


def _settings(home: Path) -> Settings:
    return Settings(home=home, broker_url=None, s3_endpoint=None, auth=False)


def test_pages_rank_every_evaluation_once(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        _seed(client.app.state.settings, BPB)  # type: ignore[attr-defined]
        pages, offset = [], 0
        while True:
            r = client.get("/v1/leaderboard", params={"text": "t", "limit": 3, "offset": offset})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["total"] == len(BPB) and body["ranked"] == 6 and len(body["items"]) <= 3
            pages += body["items"]
            offset += 3
            if offset >= body["total"]:
                break
        assert len({i["ref"] for i in pages}) == len(BPB)
        assert [i["bpb"] for i in pages] == [0.7, 0.7, 0.8, 0.9, 1.0, 1.1, None, None]
        ratios = [i["ratio"] for i in pages[:6]]
        assert ratios == sorted(ratios, reverse=True)
        html = client.get("/leaderboard", params={"text": "t"}).text
        assert 'id="leaderboard-pages"' not in html  # one page holds them all
        for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
            r = client.get("/v1/leaderboard", params={"text": "t", **bad})
            assert r.status_code == 422, (bad, r.text)
        assert client.get("/leaderboard", params={"text": "t", "offset": -1}).status_code == 422


def test_the_web_leaderboard_links_its_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltazoo.api.routes import web

    monkeypatch.setattr(web, "LEADERBOARD_PAGE", 2)
    with TestClient(create_app(_settings(tmp_path))) as client:
        _seed(client.app.state.settings, [1.0, 2.0, 3.0])  # type: ignore[attr-defined]
        first = client.get("/leaderboard", params={"text": "t"}).text
        assert "1–2 of 3" in first and "offset=2" in first and "lb/m0" in first and "lb/m2" not in first
        second = client.get("/leaderboard", params={"text": "t", "offset": 2}).text
        assert "3–3 of 3" in second and "lb/m2" in second and "previous" in second


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 100])
def test_cursor_pages_rank_every_evaluation_once(tmp_path: Path, limit: int) -> None:
    """Pages read by ``next_cursor`` (an index range however deep) give what offset pages give, across
    ties and the step from ranked rows to those without a bpb."""
    with TestClient(create_app(_settings(tmp_path))) as client:
        _seed(client.app.state.settings, BPB)  # type: ignore[attr-defined]
        whole = client.get("/v1/leaderboard", params={"text": "t", "limit": 100}).json()
        assert whole["next_cursor"] is None
        pages, cursor = [], None
        while True:
            params = {"text": "t", "limit": limit, **({"cursor": cursor} if cursor else {})}
            body = client.get("/v1/leaderboard", params=params).json()
            assert body["total"] == len(BPB) and body["ranked"] == 6 and len(body["items"]) <= limit
            pages += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == whole["items"]
        for bad in ("x", "0.5", "nan:3", "-1.0:3", "0.5:-2", "-:x", "inf:1"):
            r = client.get("/v1/leaderboard", params={"text": "t", "cursor": bad})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", (bad, r.text)
        r = client.get("/v1/leaderboard", params={"text": "t", "cursor": "-:1", "offset": 2})
        assert r.status_code == 422
        for params, code in (
            ({"limit": 0}, "invalid_limit"),
            ({"limit": 100_000}, "invalid_limit"),
            ({"offset": -1}, "invalid_offset"),
            ({"offset": 2**64}, "invalid_offset"),
        ):  # the codes docs/REST.md names, where they were all invalid_request
            r = client.get("/v1/leaderboard", params={"text": "t", **params})
            assert r.status_code == 422 and r.json()["error"]["code"] == code, (params, r.text)
