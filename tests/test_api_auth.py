"""Bearer tokens when auth is on: 401 without a known token, 403 without the scope, admin may do all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_scope
from deltazoo.registry.models import ApiToken
from deltazoo.registry.repositories import NamespaceRepository
from deltazoo.services.tokens import token_hash
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings

ADMIN = "admin-secret"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(tmp_path / "home").model_copy(update={"auth": True, "admin_token": ADMIN})
    with TestClient(create_app(settings)) as c:
        with session_scope(settings) as s:
            team = NamespaceRepository(s).get_or_create("team")
            s.add(ApiToken(name="reader", token_hash=token_hash("reader"), scopes=["read"], admin=False))
            s.add(
                ApiToken(
                    name="team-writer",
                    token_hash=token_hash("writer"),
                    scopes=["read", "write"],
                    namespace_id=team.id,
                    admin=False,
                )
            )
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_scopes(client: TestClient) -> None:
    assert client.get("/v1/health").status_code == 200  # no token needed
    assert client.get("/v1/models").status_code == 200  # public models are readable by anyone
    r = client.post("/v1/models", json={"name": "team/anon"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/models", headers=bearer("wrong")).status_code == 401
    assert client.get("/v1/models", headers=bearer("reader")).status_code == 200
    r = client.post("/v1/models", json={"name": "team/a"}, headers=bearer("reader"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.post("/v1/models", json={"name": "team/a"}, headers=bearer(ADMIN)).status_code == 201
    body = {
        "files": [
            {
                "path": "c.json",
                "size": 2,
                "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            }
        ]
    }
    assert client.post("/v1/models/team/a/versions", json=body, headers=bearer("writer")).status_code == 201
    assert client.post("/v1/models", json={"name": "team/b"}, headers=bearer("writer")).status_code == 201
    r = client.post("/v1/models", json={"name": "other/b"}, headers=bearer("writer"))
    assert r.status_code == 403
    r = client.post("/v1/models/other/a/versions", json=body, headers=bearer("writer"))
    assert r.status_code == 403 and "namespace" in r.json()["error"]["message"]
