"""Inputs the database cannot hold (NUL characters, strings longer than a column) are 4xx on Postgres,
which, unlike SQLite, enforces both: never a 500, and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient

from tests.test_api_support import sha

ADMIN = {"Authorization": "Bearer admin-secret"}
LONG_PROFILE = "deltadq:n=1,m=32,bits=4,seed=" + "9" * 300
CONFIG = [{"path": "config.json", "size": 2, "sha256": sha(b"{}")}]
LONG_PROFILE_VERSION = {"files": CONFIG, "profiles": [LONG_PROFILE]}
TEXTS = "/v1/texts?name=t&description="


@pytest.fixture
def api(tmp_path: Path, empty_postgres_url: str) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home", database_url=empty_postgres_url, broker_url=None, s3_endpoint=None,
        auth=True, admin_token="admin-secret",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=ADMIN) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("POST", "/v1/models", {"name": "acme/a", "description": "x\x00y"}, 422, "invalid_description"),
        ("POST", "/v1/models", {"name": "acme/a", "description": "x" * 10_001}, 422, "invalid_description"),
        ("POST", "/v1/tokens", {"name": "a\x00b", "scopes": ["read"]}, 422, "invalid_token_name"),
        ("POST", "/v1/models/acme/m/versions", LONG_PROFILE_VERSION, 422, "invalid_profile"),
        ("POST", "/v1/models/acme/m/versions/1/artifacts", {"profile": LONG_PROFILE}, 422, "invalid_profile"),
        ("GET", "/v1/models/acme%00/m", None, 400, "invalid_characters"),
        ("GET", "/v1/models/acme/m/versions/1/files/a%00b", None, 400, "invalid_characters"),
        ("GET", "/v1/leaderboard?text=a%00b", None, 400, "invalid_characters"),
        ("POST", TEXTS + "a%00b", b"held-out text", 400, "invalid_characters"),
        ("POST", TEXTS + "d" * 10_001, b"held-out text", 422, "invalid_description"),
    ],
)
def test_what_postgres_cannot_hold_is_a_clear_4xx(
    api: TestClient, method: str, url: str, body: object, status: int, code: str
) -> None:
    assert api.post("/v1/models", json={"name": "acme/m"}).status_code == 201
    assert api.post("/v1/models/acme/m/versions", json={"files": CONFIG}).status_code == 201
    if isinstance(body, bytes):
        r = api.request(method, url, content=body)
    else:
        r = api.request(method, url, json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert [m["name"] for m in api.get("/v1/models").json()["items"]] == ["acme/m"]  # nothing half-stored
    assert api.get("/v1/texts").json()["items"] == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tokens", {"name": "t", "scopes": ["read"], "admin": "yes"}),
        ("/v1/models", {"name": "lax/m", "private": "yes"}),
        ("/v1/models", {"name": "lax/m", "exist_ok": 1}),
        ("/v1/models/lax/base/versions", {"files": [{"path": "a", "size": True, "sha256": sha(b"a")}]}),
        ("/v1/models/lax/base/versions", {"files": CONFIG, "resume": "no"}),
    ],
)
def test_booleans_and_sizes_are_not_coerced(api: TestClient, path: str, body: dict) -> None:
    """``"admin": "yes"`` made an admin token and ``"size": true`` a 1-byte file: now a 422 each."""
    api.post("/v1/models", json={"name": "lax/base"})
    r = api.post(path, json=body)
    assert r.status_code == 422, r.text
    assert api.get("/v1/models/lax/m").status_code == 404
    assert all(not t["admin"] or t["name"] != "t" for t in api.get("/v1/tokens").json()["items"])
