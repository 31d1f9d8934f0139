"""Hostile headers, index files, revisions and file names on real Postgres and on the embedded default:
each is a clear 4xx naming what is wrong (never a 500 from Python's or the database's limits), and
nothing half-stored is left behind. Also: the admin token from the settings replaces the previous one."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient

from tests.test_api_support import CONFIG, sha

HUGE_INT = "9" * 5000


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = request.getfixturevalue("empty_postgres_url") if request.param == "postgres" else None
    settings = Settings(
        home=tmp_path / "home", database_url=url, broker_url=None, s3_endpoint=None, auth=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/v1/models", json={"name": "h/m"}).status_code == 201
        yield client


def safetensors_with(header_json: str, data: bytes = b"\0" * 4) -> bytes:
    raw = header_json.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def upload(api: TestClient, files: dict[str, bytes]) -> tuple[int, dict[str, int]]:
    """Declare a version with ``files`` and upload each: (revision, path -> status of its upload)."""
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    r = api.post("/v1/models/h/m/versions", json=body)
    assert r.status_code == 201, r.text
    rev = r.json()["version"]["revision"]
    answers = {}
    for path, data in files.items():
        r = api.put(f"/v1/models/h/m/versions/{rev}/files/{path}", content=data)
        assert r.status_code != 500, r.text
        answers[path] = r.status_code
    return rev, answers


TENSOR = '"dtype":"F32","shape":[1],"data_offsets":[0,4]'


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('{"w":{"dtype":"F32","shape":[' + HUGE_INT + '],"data_offsets":[0,4]}}', "digits"),
        ('{"\\ud800":{' + TENSOR + "}}", "surrogate"),
        ('{"w":{' + TENSOR + '},"__metadata__":{"k":"a\\u0000b"}}', "NUL"),
        ('{"w":{' + TENSOR + '},"x":' + "[" * 100 + "]" * 100 + "}", "deeper"),
        ('{"w":{' + TENSOR + '},"x":' + "[" * 5000 + "]" * 5000 + "}", "JSON"),
        ('{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', "JSON"),
    ],
)
def test_hostile_safetensors_headers_are_400(api: TestClient, header: str, message: str) -> None:
    rev, answers = upload(api, {"model.safetensors": safetensors_with(header)})
    assert answers["model.safetensors"] == 400
    r = api.put(f"/v1/models/h/m/versions/{rev}/files/model.safetensors", content=safetensors_with(header))
    assert r.json()["error"]["code"] == "invalid_safetensors" and message in r.json()["error"]["message"], (
        r.text
    )
    r = api.post(f"/v1/models/h/m/versions/{rev}/commit")
    assert r.status_code == 400 and r.json()["error"]["code"] == "files_missing"  # nothing was staged


def good_shard(name: str) -> bytes:
    return safetensors_with('{"' + name + '":{' + TENSOR + "}}")


@pytest.mark.parametrize(
    ("index", "status", "code"),
    [
        ('{"weight_map":' + "[" * 5000 + "]" * 5000 + "}", 400, "invalid_index"),
        ('{"weight_map":{"a":"model-1.safetensors"},"n":' + HUGE_INT + "}", 400, "invalid_index"),
        ('{"weight_map":{"a":"model-1.safetensors","b":"model-9.safetensors"}}', 422, "index_mismatch"),
        ('{"weight_map":{"a":"../../etc/model-1.safetensors"}}', 422, "index_outside"),
        ('{"weight_map":{"a":"model-2.safetensors"}}', 422, "index_mismatch"),
        # tensors: one the shard does not hold, and the shard's own left out (transformers fails to load)
        ('{"weight_map":{"a":"model-1.safetensors","z":"model-1.safetensors"}}', 422, "index_mismatch"),
        ('{"weight_map":{"z":"model-1.safetensors"}}', 422, "index_mismatch"),
        ('{"weight_map":{"a":"../../etc/passwd"}}', 400, "invalid_index"),
    ],
)
def test_an_index_names_exactly_its_shards_inside_the_checkpoint(
    api: TestClient, index: str, status: int, code: str
) -> None:
    files = {
        "model.safetensors.index.json": index.encode(),
        "model-1.safetensors": good_shard("a"),
        "config.json": CONFIG,
    }
    if code == "index_mismatch" and "model-2" in index:
        files["model-2.safetensors"] = good_shard("b")
        files["model.safetensors.index.json"] = b'{"weight_map":{"a":"model-1.safetensors"}}'
    rev, answers = upload(api, files)
    if status == 400:
        assert answers["model.safetensors.index.json"] == 400
        r = api.put(
            f"/v1/models/h/m/versions/{rev}/files/model.safetensors.index.json",
            content=files["model.safetensors.index.json"],
        )
        assert r.json()["error"]["code"] == code, r.text
        return
    assert set(answers.values()) == {200}
    r = api.post(f"/v1/models/h/m/versions/{rev}/commit")
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert api.get(f"/v1/models/h/m/versions/{rev}").json()["status"] == "pending"  # nothing queued


@pytest.mark.parametrize("rev", ["²", "١", HUGE_INT, "99999999999", "2147483648", "0", "-1", "1é"])
def test_revisions_are_parsed_strictly(api: TestClient, rev: str) -> None:
    for path in (f"/v1/models/h/m/versions/{rev}", f"/v1/models/h/m/versions/{rev}/manifest"):
        r = api.get(path)
        assert r.status_code in (404, 422) and r.json()["error"]["code"] in (
            "invalid_revision",
            "not_found",
        ), (
            path,
            r.text,
        )
    r = api.post("/v1/models/h/n/versions", json={"base": f"h/m@{rev}", "files": []})
    assert r.status_code in (404, 422), r.text


@pytest.mark.parametrize(
    ("paths", "code", "named"),
    [
        (["a", "a/b.json"], "colliding_paths", "'a'"),
        (["x/config.json", "X/Config.json"], "colliding_paths", "differ only in case"),
        (["CON.json"], "unportable_path", "CON.json"),
        (["sub/aux"], "unportable_path", "aux"),
        (["name."], "unportable_path", "name."),
        (["a:b.json"], "unportable_path", ":"),
    ],
)
def test_file_names_that_cannot_coexist_are_422(
    api: TestClient, paths: list[str], code: str, named: str
) -> None:
    files = [{"path": p, "size": len(CONFIG), "sha256": sha(CONFIG)} for p in paths]
    r = api.post("/v1/models/h/m/versions", json={"files": files})
    assert (
        r.status_code == 422 and r.json()["error"]["code"] == code and named in r.json()["error"]["message"]
    ), r.text
    assert api.get("/v1/models/h/m").json()["versions"] == []  # no version was created


def test_the_admin_token_from_settings_replaces_the_previous_one(tmp_path: Path) -> None:
    def app(token: str) -> TestClient:
        settings = Settings(
            home=tmp_path / "home",
            database_url=None,
            broker_url=None,
            s3_endpoint=None,
            auth=True,
            admin_token=token,
        )
        return TestClient(create_app(settings))

    with app("first-secret") as c:
        assert c.get("/v1/tokens", headers={"Authorization": "Bearer first-secret"}).status_code == 200
        r = c.post(
            "/v1/tokens",
            json={"name": "ops", "scopes": ["read", "write"], "admin": True},
            headers={"Authorization": "Bearer first-secret"},
        )
        ops = r.json()["token"]
    with app("second-secret") as c:
        assert c.get("/v1/tokens", headers={"Authorization": "Bearer first-secret"}).status_code == 401
        assert c.get("/v1/tokens", headers={"Authorization": "Bearer second-secret"}).status_code == 200
        assert c.get("/v1/tokens", headers={"Authorization": f"Bearer {ops}"}).status_code == 200  # kept
        names = [
            t["name"]
            for t in c.get("/v1/tokens", headers={"Authorization": "Bearer ops"}).json().get("items", [])
        ]
        assert names.count("admin (from settings)") <= 1
    assert json  # the module's helpers build raw JSON by hand on purpose
