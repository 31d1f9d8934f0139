"""Per-token limits (services/token_limits.py) on the embedded default (SQLite) and on Postgres, auth on:
a token holds at most DELTAZOO_MAX_PENDING_VERSIONS versions created and not committed, and streams at
most DELTAZOO_MAX_CONCURRENT_UPLOADS files at once; past either it gets 429 with Retry-After and a
message saying what to do, never a 500, and other tokens are not affected."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deltazoo.api.body_feed import FEED_BATCH
from fastapi.testclient import TestClient

from tests.servers import running_api_server
from tests.test_api_support import CONFIG, sha
from tests.test_races_and_limits import app_on_backend, at_barrier, codes

ADMIN = "limits-admin"
PENDING = 3
UPLOADS = 2


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token(client: Any, namespace: str) -> str:
    body = {"name": f"{namespace} writer", "namespace": namespace, "scopes": ["read", "write"]}
    r = client.post("/v1/tokens", json=body, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def new_model(client: Any, name: str, token: str) -> None:
    r = client.post("/v1/models", json={"name": name}, headers=bearer(token))
    assert r.status_code == 201, r.text


def declare(client: Any, name: str, token: str, files: dict[str, bytes] | None = None) -> Any:
    files = files or {"config.json": CONFIG}
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    return client.post(f"/v1/models/{name}/versions", json=body, headers=bearer(token))


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_on_backend(
        request, tmp_path, auth=True, admin_token=ADMIN, max_pending_versions=PENDING
    ) as client:
        yield client


def test_pending_versions_past_the_limit_are_429_until_one_is_committed_or_deleted(api: TestClient) -> None:
    alice, bob = new_token(api, "alice"), new_token(api, "bob")
    new_model(api, "alice/m", alice)
    new_model(api, "bob/m", bob)
    revs = []
    for _ in range(PENDING):
        r = declare(api, "alice/m", alice)
        assert r.status_code == 201, r.text
        revs.append(r.json()["version"]["revision"])
    r = declare(api, "alice/m", alice)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_pending"
    assert "commit or delete them" in error["message"] and "deltazoo ls --pending" in error["message"]
    assert int(r.headers["Retry-After"]) > 3600  # the oldest expires in about 24 h
    assert [
        v["revision"] for v in api.get("/v1/models/alice/m", headers=bearer(alice)).json()["versions"]
    ] == revs
    assert declare(api, "bob/m", bob).status_code == 201  # another token is not affected

    # commit one: a slot is free again
    r = api.put(
        f"/v1/models/alice/m/versions/{revs[0]}/files/config.json", content=CONFIG, headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    assert api.post(f"/v1/models/alice/m/versions/{revs[0]}/commit", headers=bearer(alice)).status_code == 202
    assert declare(api, "alice/m", alice).status_code == 201
    assert declare(api, "alice/m", alice).status_code == 429
    # delete one: a slot is free again
    assert api.delete(f"/v1/models/alice/m/versions/{revs[1]}", headers=bearer(alice)).status_code == 204
    assert declare(api, "alice/m", alice).status_code == 201


def test_the_admin_token_is_limited_too(api: TestClient) -> None:
    new_model(api, "ops/m", ADMIN)
    assert [declare(api, "ops/m", ADMIN).status_code for _ in range(PENDING + 1)] == [201] * PENDING + [429]


def test_concurrent_creates_at_a_barrier_stop_exactly_at_the_limit(api: TestClient) -> None:
    alice = new_token(api, "alice")
    for i in range(8):  # one model each: no two creates race for one revision number
        new_model(api, f"alice/race{i}", alice)
    answers = at_barrier(8, lambda i: declare(api, f"alice/race{i}", alice))
    assert 500 not in codes(answers), [r.text for r in answers]
    assert set(codes(answers)) <= {201, 429, 503}, [r.text for r in answers]
    assert codes(answers).count(201) == PENDING, [r.text for r in answers]
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} <= {"too_many_pending"}
    pending = api.get("/v1/pending", headers=bearer(alice)).json()["items"]
    assert len(pending) == PENDING


# --- concurrent uploads, on a real server (bodies held open mid-stream) ----------------------------


class HeldUpload(threading.Thread):
    """A resumable PUT of a whole file (one part) that sends its first ``FEED_BATCH`` bytes, then waits
    for ``release`` before the rest. The server hands a body to its sink in batches of ``FEED_BATCH``
    bytes (``api/body_feed.py``), so once it has taken the upload in, ``GET .../uploads/{path}`` reports
    bytes received: the outside sign that the upload holds its slot (a client's own "sent" is not one:
    another request may reach the server first and take the slot)."""

    def __init__(self, url: str, token: str, data: bytes, release: threading.Event):
        super().__init__()
        self.url, self.token, self.data, self.release = url, token, data, release
        self.answer: httpx.Response | None = None

    def body(self) -> Iterator[bytes]:
        yield self.data[:FEED_BATCH]
        self.release.wait(60)
        yield self.data[FEED_BATCH:]

    def run(self) -> None:
        size = len(self.data)
        headers = {
            **bearer(self.token),
            "Content-Length": str(size),
            "Content-Range": f"bytes 0-{size - 1}/{size}",
        }
        self.answer = httpx.put(self.url, content=self.body(), headers=headers, timeout=120)


def wait_until_streaming(client: httpx.Client, url: str, token: str, held: list[HeldUpload]) -> None:
    """Until the server reports bytes received of every held upload (each holds its slot by then)."""
    received: list[httpx.Response] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        received = [client.get(f"{url}/{u.url.rsplit('/', 1)[1]}", headers=bearer(token)) for u in held]
        assert all(r.status_code == 200 for r in received), [r.text for r in received]
        if all(r.json()["received"] > 0 for r in received):
            return
        if any(not u.is_alive() for u in held):  # answered before its body ended: a 4xx/5xx, shown below
            break
        time.sleep(0.05)
    answers = [(u.answer.status_code, u.answer.text) if u.answer else None for u in held]
    pytest.fail(f"the held uploads never streamed in: {[r.json() for r in received]}, answers {answers}")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_uploads_past_the_limit_are_429_per_token(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    env = {
        "DELTAZOO_AUTH": "true",
        "DELTAZOO_ADMIN_TOKEN": ADMIN,
        "DELTAZOO_MAX_CONCURRENT_UPLOADS": str(UPLOADS),
    }
    if backend == "postgres":
        env["DELTAZOO_DATABASE_URL"] = request.getfixturevalue("empty_postgres_url")
    size = FEED_BATCH + (64 << 10)  # the held ones send one batch, then wait
    files = {f"part{i}.bin": bytes([i]) * size for i in range(UPLOADS + 2)}
    with running_api_server(tmp_path / "home", env) as server, httpx.Client(base_url=server.url) as client:
        alice, bob = new_token(client, "alice"), new_token(client, "bob")
        for who, token in (("alice", alice), ("bob", bob)):
            new_model(client, f"{who}/m", token)
            assert declare(client, f"{who}/m", token, files).status_code == 201
        url = f"{server.url}/v1/models/alice/m/versions/1/files"
        release = threading.Event()
        held = [
            HeldUpload(f"{url}/part{i}.bin", alice, files[f"part{i}.bin"], release) for i in range(UPLOADS)
        ]
        for upload in held:
            upload.start()
        try:
            wait_until_streaming(client, "/v1/models/alice/m/versions/1/uploads", alice, held)
            # both slots are held: one more file, whole or a part, is 429 before any byte is read
            extra = f"/v1/models/alice/m/versions/1/files/part{UPLOADS}.bin"
            data = files[f"part{UPLOADS}.bin"]
            part = {**bearer(alice), "Content-Range": f"bytes 0-{FEED_BATCH - 1}/{size}"}
            for r in (
                client.put(extra, content=data, headers=bearer(alice)),
                client.put(extra, content=data[:FEED_BATCH], headers=part),
            ):
                assert r.status_code == 429, (r.text, server.process.log_tail())
                assert r.json()["error"]["code"] == "too_many_uploads" and r.headers["Retry-After"] == "1"
                assert "send the next file once one has finished" in r.json()["error"]["message"]
            # another token uploads meanwhile
            r = client.put(
                "/v1/models/bob/m/versions/1/files/part0.bin", content=files["part0.bin"], headers=bearer(bob)
            )
            assert r.status_code == 200, r.text
        finally:
            release.set()
            for upload in held:
                upload.join(120)
        assert [u.answer.status_code if u.answer else None for u in held] == [200] * UPLOADS
        for i in range(UPLOADS, UPLOADS + 2):  # slots are free again
            r = client.put(
                f"/v1/models/alice/m/versions/1/files/part{i}.bin",
                content=files[f"part{i}.bin"],
                headers=bearer(alice),
            )
            assert r.status_code == 200, r.text
        assert client.post("/v1/models/alice/m/versions/1/commit", headers=bearer(alice)).status_code == 202
