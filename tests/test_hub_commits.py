"""Hub commits (NDJSON, the route huggingface_hub's upload_folder uses) against the embedded server: a
refused commit leaves no version behind, and commits sent in a row (upload_folder splits a large folder
into several) each build on the one before, even while it is still being encoded."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import checkpoint, sha

HEADER = {"key": "header", "value": {"summary": "s", "description": ""}}


def inline(path: str, data: bytes) -> dict:
    content = base64.b64encode(data).decode()
    return {"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}}


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        assert c.post("/api/repos/create", json={"name": "m", "organization": "hub"}).status_code == 200
        yield c


def test_a_refused_commit_leaves_no_version(client: TestClient) -> None:
    weights = checkpoint({"w": torch.ones(4)})["model.safetensors"]
    never_sent = {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}}
    index = inline("model.safetensors.index.json", b'{"weight_map": {"w": "o.safetensors"}}')
    refusals = [
        (ndjson(HEADER, inline("model.safetensors", b"\0" * 3)), 400),  # not a safetensors file
        (ndjson(HEADER, never_sent), 409),
        (ndjson(HEADER, index, inline("model.safetensors", weights)), 422),  # index names an unsent shard
    ]
    for body, status in refusals:
        r = client.post("/api/models/hub/m/commit/main", content=body)
        assert r.status_code == status, r.text
        assert "error" in r.json() and r.headers["X-Error-Message"]
    header = {"key": "header", "value": {"summary": "s", "parentCommit": "zz"}}
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(header, inline("a.txt", b"a")))
    assert r.status_code == 400 and r.json()["code"] == "invalid_parent_commit"
    assert client.get("/v1/models/hub/m").json()["versions"] == []
    assert [p for p in client.get("/v1/pending").json()["items"] if p["ref"].startswith("hub/")] == []


def test_commits_in_a_row_build_on_each_other_while_encoding(client: TestClient) -> None:
    files = {
        "config.json": b"{}",
        "model.safetensors": checkpoint({"w": torch.randn(1024, 1024)})["model.safetensors"],  # takes a while
        "tokenizer.json": b'{"t": 1}',
    }
    revisions = []
    for path, data in files.items():  # one commit a file, each sent as soon as the one before answered
        r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline(path, data)))
        assert r.status_code == 200, r.text
        revisions.append(r.json()["revision"])
    assert revisions == [1, 2, 3]
    deadline = time.monotonic() + 60
    while (detail := client.get("/v1/models/hub/m/versions/3").json())["status"] != "ready":
        assert detail["status"] == "processing" and time.monotonic() < deadline, detail
        time.sleep(0.05)
    assert sorted(f["path"] for f in detail["files"]) == sorted(files)
    for path, data in files.items():
        assert sha(client.get(f"/hub/m/resolve/main/{path}").content) == sha(data)


def test_an_empty_repository_has_no_file_rather_than_no_revision(client: TestClient) -> None:
    """transformers' push_to_hub asks for README.md of the repository it has just created: the Hub
    answers EntryNotFound, and so must deltazoo (RevisionNotFound aborted the push)."""
    for method in (client.head, client.get):
        r = method("/hub/m/resolve/main/README.md")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"
        assert "X-Repo-Commit" not in r.headers  # there is no commit to cache the absence under
    r = client.head("/hub/m/resolve/no-such-tag/README.md")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"


def test_deleting_a_path_the_repository_lacks_is_entry_not_found(client: TestClient) -> None:
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("a.txt", b"a")))
    assert r.status_code == 200, r.text
    commit = r.json()["commitOid"]
    for line in (
        {"key": "deletedFile", "value": {"path": "b.txt"}},
        {"key": "deletedFolder", "value": {"path": "d"}},
    ):
        r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, line))
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound", r.text
        assert r.headers["X-Repo-Commit"] == commit
    assert [v["revision"] for v in client.get("/v1/models/hub/m").json()["versions"]] == [1]  # none made
    r = client.post(
        "/api/models/hub/m/commit/main",
        content=ndjson(HEADER, {"key": "deletedFile", "value": {"path": "a.txt"}}),
    )
    assert (
        r.status_code == 422 and r.json()["code"] == "no_files"
    )  # the last file: the repository would be empty


def test_a_file_name_outside_latin_1_downloads_with_its_name(client: TestClient) -> None:
    name = "données-模型 x.json"
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline(name, b"{}")))
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while client.get("/v1/models/hub/m/versions/1").json()["status"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for method in (client.head, client.get):
        r = method(f"/hub/m/resolve/main/{name}")
        assert r.status_code == 200, r.text
        disposition = r.headers["Content-Disposition"]
        assert (
            disposition.isascii()
            and "filename*=UTF-8''donn%C3%A9es-%E6%A8%A1%E5%9E%8B%20x.json" in disposition
        )
        assert 'filename="donn?es-?? x.json"' in disposition
    assert r.content == b"{}"


def test_new_names_the_hub_refuses_or_that_differ_only_in_case(client: TestClient) -> None:
    def create(org: str, name: str) -> dict:
        r = client.post("/api/repos/create", json={"name": name, "organization": org})
        return {"status": r.status_code, **r.json()}

    assert create("hub", "M")["status"] == 409  # hub/m exists
    assert create("HUB", "other")["status"] == 409  # the namespace hub exists
    taken = create("HUB", "M")  # and the name it would suggest is taken too: it does not suggest it
    assert taken["status"] == 409 and "hub/M" not in taken["error"]
    for bad in ("x.git", "a--b", "a..b"):
        assert create("hub", bad)["status"] == 422, bad
    r = client.post("/v1/models", json={"name": "hub/M", "exist_ok": True})
    assert r.status_code == 409 and "hub/m" in r.json()["error"]["message"]
    assert create("hub", "m2")["status"] == 200


def test_a_pull_request_is_refused_before_anything_is_stored(client: TestClient) -> None:
    body = ndjson(HEADER, inline("a.txt", b"a"))
    for route in ("/api/models/hub/m/preupload/main", "/api/models/hub/m/commit/main"):
        r = client.post(
            route, params={"create_pr": "1"}, content=body if "commit" in route else b'{"files": []}'
        )
        assert r.status_code == 400 and r.json()["code"] == "pull_requests_unsupported", r.text
    assert client.get("/v1/models/hub/m").json()["versions"] == []


def test_a_commit_of_new_weights_is_stored_against_the_closest_version(client: TestClient) -> None:
    """upload_folder after each epoch: every commit is a fine-tune of the one before, so it is stored as
    deltas against it (as a push with base=auto), unless its model card names another base."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(256, 256, generator=g) * 0.02
    epochs = [w, w + torch.randn(256, 256, generator=g) * 1e-3]
    for state in epochs:
        weights = checkpoint({"w": state.bfloat16()})["model.safetensors"]
        r = client.post(
            "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("model.safetensors", weights))
        )
        assert r.status_code == 200, r.text
        wait_ready(client, f"/v1/models/hub/m/versions/{r.json()['revision']}")
    second = client.get("/v1/models/hub/m/versions/2").json()
    assert second["parent"] == "hub/m@1" and [t["encoding"] for t in second["tensors"]] == ["delta"]
    assert sha(client.get("/hub/m/resolve/main/model.safetensors").content) == sha(weights)

    assert client.post("/api/repos/create", json={"name": "other", "organization": "hub"}).status_code == 200
    card = b"---\nbase_model: hub/m@1\n---\n# a fine-tune\n"
    body = ndjson(HEADER, inline("README.md", card), inline("model.safetensors", weights))
    r = client.post("/api/models/hub/other/commit/main", content=body)
    assert r.status_code == 200, r.text
    wait_ready(client, "/v1/models/hub/other/versions/1")
    assert client.get("/v1/models/hub/other/versions/1").json()["parent"] == "hub/m@1"  # the card's, not @2


def wait_ready(client: TestClient, path: str) -> None:
    deadline = time.monotonic() + 60
    while (status := client.get(path).json()["status"]) != "ready":
        assert status == "processing" and time.monotonic() < deadline, status
        time.sleep(0.05)


def test_a_commit_is_readable_as_soon_as_it_is_answered(client: TestClient) -> None:
    """push_to_hub then from_pretrained: the commit is answered once its encode is done (as the Hub
    answers once main has moved), so the reads that follow get it, never an older main."""
    weights = checkpoint({"w": torch.randn(1024, 1024)})["model.safetensors"]  # takes a while to encode
    r = client.post(
        "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("model.safetensors", weights))
    )
    assert r.status_code == 200, r.text
    commit = r.json()["commitOid"]
    assert client.get("/v1/models/hub/m/versions/1").json()["status"] == "ready"  # answered once encoded
    assert client.get("/api/models/hub/m").json()["sha"] == commit
    for rev in ("main", commit):
        r = client.get(f"/hub/m/resolve/{rev}/model.safetensors")
        assert (
            r.status_code == 200 and r.headers["X-Repo-Commit"] == commit and sha(r.content) == sha(weights)
        )


def test_reads_of_a_commit_whose_encode_outlasts_every_wait(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker takes the encode: the commit answers after its wait, main stays the version before, and
    the new commit id is a 503 with Retry-After (clients retry it), not a 409 reported as a failure."""
    from deltazoo.services import hub, hub_commit

    monkeypatch.setattr(hub_commit, "PUBLISH_WAIT_S", 0.3)
    monkeypatch.setattr(hub, "HUB_READ_WAIT_S", 0.3)
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("a.txt", b"one")))
    assert r.status_code == 200
    wait_ready(client, "/v1/models/hub/m/versions/1")
    client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
    client.app.state.dispatcher = type("Nobody", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("a.txt", b"two")))
    assert r.status_code == 200, r.text
    pending_commit = r.json()["commitOid"]
    assert client.get("/hub/m/resolve/main/a.txt").content == b"one"  # the version before, until ready
    r = client.get(f"/hub/m/resolve/{pending_commit}/a.txt")
    assert (
        r.status_code == 503
        and r.headers["Retry-After"]
        and "still being encoded" in r.headers["X-Error-Message"]
    )


def test_a_copy_takes_the_bytes_of_a_file_of_main(client: TestClient) -> None:
    """``CommitOperationCopy``: every file is listed as LFS, so huggingface_hub sends a copy as an
    ``lfsFile`` naming the source's sha256 without a size; the copy is the source's bytes, stored once."""
    weights = checkpoint({"w": torch.arange(16.0)})["model.safetensors"]
    r = client.post(
        "/api/models/hub/m/commit/main",
        content=ndjson(HEADER, inline("model.safetensors", weights), inline("a.txt", b"text")),
    )
    assert r.status_code == 200, r.text
    copies = [
        {
            "key": "lfsFile",
            "value": {"path": "backup/model.safetensors", "algo": "sha256", "oid": sha(weights)},
        },
        {"key": "lfsFile", "value": {"path": "b.txt", "algo": "sha256", "oid": sha(b"text")}},
    ]
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, *copies))
    assert r.status_code == 200, r.text
    for path, data in (("backup/model.safetensors", weights), ("b.txt", b"text"), ("a.txt", b"text")):
        assert client.get(f"/hub/m/resolve/main/{path}").content == data
    missing = {"key": "lfsFile", "value": {"path": "c.txt", "algo": "sha256", "oid": "b" * 64}}
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, missing))
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound", r.text


def test_sizes_beyond_what_a_file_can_be_are_refused(client: TestClient) -> None:
    huge = 2**64
    line = {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "a" * 64, "size": huge}}
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, line))
    assert r.status_code == 400 and r.json()["code"] == "invalid_commit", r.text
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": "a" * 64, "size": huge}]}
    r = client.post("/hub/m.git/info/lfs/objects/batch", json=batch)
    assert r.status_code == 400 and "size" in r.text, r.text
    r = client.post("/hub/m.git/info/lfs/verify", json={"oid": "a" * 64, "size": huge})
    assert r.status_code == 400, r.text


def test_a_repository_id_without_a_namespace_is_repo_not_found_saying_why(client: TestClient) -> None:
    """``from_pretrained("gpt2")``: a RepoNotFound the client understands (a bare 404 read to
    transformers as a connection problem), naming the ORG/NAME form."""
    for method, path in (
        ("GET", "/api/models/gpt2"),
        ("GET", "/api/models/gpt2/revision/main"),
        ("HEAD", "/gpt2/resolve/main/config.json"),
        ("GET", "/gpt2/resolve/main/config.json"),
    ):
        r = client.request(method, path)
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound", (path, r.text)
        assert "ORG/NAME" in r.headers["X-Error-Message"]
    assert client.get("/hub/m/resolve/main/absent.txt").headers["X-Error-Code"] in (
        "EntryNotFound",
        "RevisionNotFound",
    )


def test_branches_are_refused_saying_to_use_tags(client: TestClient) -> None:
    for method in ("POST", "DELETE"):
        r = client.request(method, "/api/models/hub/m/branch/dev")
        assert r.status_code == 400 and "tag" in r.headers["X-Error-Message"], r.text
    assert client.get("/api/agent-harnesses").json() == {"standardEnvVars": [], "harnesses": {}}


def test_a_commit_of_the_same_files_again_adds_no_version(client: TestClient) -> None:
    """``upload_folder`` of an unchanged folder (huggingface_hub sends every file: deltazoo's preupload
    names no oids): answered with main's commit, as the Hub client skips an empty commit."""
    weights = checkpoint({"w": torch.ones(8)})["model.safetensors"]
    files = (inline("model.safetensors", weights), inline("config.json", b"{}"))
    first = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, *files)).json()
    again = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, *reversed(files)))
    assert again.status_code == 200 and again.json()["commitOid"] == first["commitOid"], again.text
    assert len(client.get("/v1/models/hub/m").json()["versions"]) == 1
    changed = client.post(
        "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("config.json", b"{ }"))
    )
    assert changed.json()["commitOid"] != first["commitOid"]
    assert len(client.get("/v1/models/hub/m").json()["versions"]) == 2


def test_a_pending_version_is_not_a_commit_and_has_no_manifest(client: TestClient) -> None:
    """Declared files never uploaded are not what a version stores: a pending version is no Hub revision
    (RevisionNotFound) and its manifest answers 409 as its files do."""
    assert (
        client.post(
            "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("a.txt", b"a"))
        ).status_code
        == 200
    )
    declared = {"files": [{"path": "b.txt", "size": 1, "sha256": "0" * 64}]}
    assert client.post("/v1/models/hub/m/versions", json=declared).json()["version"]["revision"] == 2
    for path in ("/api/models/hub/m/tree/2", "/api/models/hub/m/revision/2", "/hub/m/resolve/2/b.txt"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound", (path, r.text)
    r = client.get("/v1/models/hub/m/versions/2/manifest")
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_not_ready"
    assert client.get("/api/models/hub/m/tree/main").json()[0]["path"] == "a.txt"


def test_a_short_commit_id_names_its_version(client: TestClient) -> None:
    """As git and the Hub: a unique prefix (7+ hex digits) of a commit id is a revision."""
    commit = client.post(
        "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("a.txt", b"a"))
    ).json()
    short = commit["commitOid"][:7]
    r = client.get(f"/hub/m/resolve/{short}/a.txt")
    assert r.status_code == 200 and r.content == b"a" and r.headers["X-Repo-Commit"] == commit["commitOid"]
    assert client.get(f"/api/models/hub/m/revision/{short}").json()["sha"] == commit["commitOid"]
    assert client.get(f"/v1/models/hub/m/versions/{short}").json()["revision"] == 1
    r = client.get("/hub/m/resolve/0000000/a.txt")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"


def test_git_ref_names_are_revisions(client: TestClient) -> None:
    """huggingface_hub quotes a revision's slashes (``refs%2Fheads%2Fmain``): ``refs/heads/main`` is main
    and ``refs/tags/T`` tag T, on every route that takes a revision; other refs name nothing."""
    commit = client.post(
        "/api/models/hub/m/commit/main", content=ndjson(HEADER, inline("d/a.txt", b"a"))
    ).json()["commitOid"]
    assert client.post("/api/models/hub/m/tag/main", json={"tag": "v1"}).status_code == 200
    for ref in ("refs%2Fheads%2Fmain", "refs%2Ftags%2Fv1"):
        r = client.get(f"/hub/m/resolve/{ref}/d/a.txt")
        assert r.status_code == 200 and r.content == b"a", (ref, r.text)
        assert client.get(f"/api/models/hub/m/revision/{ref}").json()["sha"] == commit
        assert [e["path"] for e in client.get(f"/api/models/hub/m/tree/{ref}/d").json()] == ["d/a.txt"]
        assert client.get(f"/api/models/hub/m/commits/{ref}").json()[0]["id"] == commit
    for ref in ("refs%2Fheads%2Fdev", "refs%2Fpr%2F1"):
        r = client.get(f"/hub/m/resolve/{ref}/d/a.txt")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound", r.text
