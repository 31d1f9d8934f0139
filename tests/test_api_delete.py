"""Deleting versions and models: refcounted blobs, descendants never broken, precise 409 messages;
accounting (root relation null, stored and artifact bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        yield c


def pushed(client: TestClient, name: str, files: dict[str, bytes], base: str | None = None) -> None:
    assert wait_job(client, push(client, name, files, base=base)["job"]["id"])["status"] == "succeeded"


def assert_pulls_exact(client: TestClient, ref: str, files: dict[str, bytes]) -> None:
    name, rev = ref.split("@")
    for path, data in files.items():
        r = client.get(f"/v1/models/{name}/versions/{rev}/files/{path}")
        assert r.status_code == 200 and sha(r.content) == sha(data), (ref, path)


def test_delete_names_what_depends_and_why_then_collects_every_blob(client: TestClient) -> None:
    base = base_state(seed=4)
    files = {"base": checkpoint(base), "ft": checkpoint(finetune_state(base, seed=5))}
    pushed(client, "org/base", files["base"])
    pushed(client, "org/ft", files["ft"], base="org/base@1")
    pushed(client, "org/copy", files["base"])  # a deduplicated push: reuses every tensor of org/base@1
    blobs = client.get("/v1/stats").json()["blobs"]
    r = client.delete("/v1/models/org/base/versions/1")
    assert r.status_code == 409 and r.json()["error"]["code"] == "has_descendants"
    message = r.json()["error"]["message"]
    assert "org/ft@1 stores deltas against" in message
    assert "org/copy" not in message  # an unrelated copy of the same weights never blocks
    assert client.get("/v1/stats").json()["blobs"] == blobs  # a refused delete changed nothing

    assert client.delete("/v1/models/org/ft/versions/1").status_code == 204
    assert client.get("/v1/stats").json()["blobs"] < blobs
    assert_pulls_exact(client, "org/base@1", files["base"])  # deleting a descendant leaves the base whole
    assert client.delete("/v1/models/org/base/versions/1").status_code == 204
    assert_pulls_exact(client, "org/copy@1", files["base"])  # the copy was given the bytes it reused
    assert client.delete("/v1/models/org/copy").status_code == 204
    stats = client.get("/v1/stats").json()
    assert stats["blobs"] == 0 and stats["stored_bytes"] == 0


def test_deleting_a_leaf_keeps_its_ancestors_and_siblings_exact(client: TestClient) -> None:
    base = base_state(seed=6)
    files = {
        "base": checkpoint(base),
        "a": checkpoint(finetune_state(base, seed=7)),
        "b": checkpoint(finetune_state(base, seed=8)),
    }
    pushed(client, "org/base", files["base"])
    pushed(client, "org/a", files["a"], base="org/base@1")
    pushed(client, "org/b", files["b"], base="org/base@1")
    assert client.delete("/v1/models/org/a/versions/1").status_code == 204
    assert_pulls_exact(client, "org/base@1", files["base"])
    assert_pulls_exact(client, "org/b@1", files["b"])
    assert client.get("/v1/models/org/a/versions/1").status_code == 404


def test_delete_model_only_when_no_other_model_needs_it(client: TestClient) -> None:
    base = base_state(seed=9)
    v1, v2 = checkpoint(base), checkpoint(finetune_state(base, seed=10))
    pushed(client, "org/fam", v1)
    pushed(client, "org/fam", v2, base="org/fam@1")  # a delta inside the same model is fine
    pushed(client, "org/child", checkpoint(finetune_state(base, seed=11)), base="org/fam@2")
    r = client.delete("/v1/models/org/fam")
    assert r.status_code == 409 and "org/child@1" in r.json()["error"]["message"]
    assert client.delete("/v1/models/org/child").status_code == 204
    assert client.delete("/v1/models/org/fam").status_code == 204
    assert client.get("/v1/models/org/fam").status_code == 404
    assert client.get("/v1/stats").json()["blobs"] == 0
    r = client.delete("/v1/models/org/fam")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_accounting_root_relation_and_stored_bytes(client: TestClient) -> None:
    base = base_state(seed=12)
    files = checkpoint(base)
    files["config.json"] = b'{"model_type": "llama"}'
    pushed(client, "org/root", files)
    pushed(client, "org/ft", checkpoint(finetune_state(base, seed=13)), base="org/root@1")
    root = client.get("/v1/models/org/root/versions/1").json()
    assert root["relation"] is None and root["parent"] is None
    assert client.get("/v1/models/org/root").json()["versions"][0]["relation"] is None
    assert client.get("/v1/models/org/ft/versions/1").json()["relation"] == "finetune"
    tensor_bytes = sum(t["stored_bytes"] for t in root["tensors"])
    manifest = client.get("/v1/models/org/root/versions/1/manifest").json()
    blob_sizes = {}
    for f in manifest["files"]:
        for key in ("blob", "header_blob"):
            if f.get(key):
                blob_sizes[f[key]] = len(client.get(f"/v1/blobs/{f[key]}").content)
    assert root["stored_bytes"] == tensor_bytes + sum(blob_sizes.values())  # payloads, headers, other files
    stats = client.get("/v1/stats").json()
    versions = [client.get(f"/v1/models/org/{m}/versions/1").json() for m in ("root", "ft")]
    assert stats["stored_bytes"] == sum(v["stored_bytes"] for v in versions)  # each blob counted once
    assert stats["artifact_bytes"] == 0 and root["artifact_bytes"] == 0


def test_a_base_is_kept_while_a_child_is_encoded_against_it(client: TestClient) -> None:
    """A child committed against the base and still encoding holds no tensor of it yet, but its encode
    reads the base's: deleting the base (its model or the version) is 409 ``has_descendants`` naming the
    child (it used to go, and the child's encode failed on the missing blobs), until the child is gone."""
    from deltazoo.registry.db import session_scope
    from deltazoo.registry.models import Tensor, Version
    from sqlalchemy import delete, select

    base = base_state(seed=12)
    pushed(client, "enc/base", checkpoint(base))
    pushed(client, "enc/child", checkpoint(finetune_state(base, seed=13)), base="enc/base@1")
    settings = client.app.state.settings  # type: ignore[attr-defined]
    with session_scope(settings) as session:  # the child as it is mid-encode: no tensor row written yet
        child = session.scalar(select(Version).where(Version.parent_version_id.is_not(None)))
        assert child is not None
        child.status = "processing"
        session.execute(delete(Tensor).where(Tensor.version_id == child.id))
    for url in ("/v1/models/enc/base", "/v1/models/enc/base/versions/1"):
        r = client.delete(url)
        assert r.status_code == 409 and r.json()["error"]["code"] == "has_descendants", r.text
        assert "enc/child@1" in r.json()["error"]["message"] and "encoded" in r.json()["error"]["message"]
    assert client.delete("/v1/models/enc/child").status_code == 204  # no worker holds its job: cancelled
    assert client.delete("/v1/models/enc/base").status_code == 204


def test_a_read_that_loses_a_race_with_a_delete_is_a_404(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull whose version is deleted between its file row and its tensor rows found nothing where it
    looked: that is a 404 saying so, not a 500 calling the store corrupt (found probing: pull during rm)."""
    from deltazoo.services import transfer
    from deltazoo.services.storage import CorruptStoreError

    pushed(client, "org/racy", checkpoint(base_state(seed=12)))
    real = transfer.file_plan

    def deleted_meanwhile(*args: object, **kwargs: object) -> object:
        assert client.delete("/v1/models/org/racy").status_code == 204
        raise CorruptStoreError("tensor 'w' (delta) has no blob")

    monkeypatch.setattr(transfer, "file_plan", deleted_meanwhile)
    r = client.get("/v1/models/org/racy/versions/1/files/model.safetensors")
    assert r.status_code == 404 and "was deleted while" in r.json()["error"]["message"], r.text

    pushed(client, "org/damaged", checkpoint(base_state(seed=13)))
    monkeypatch.setattr(transfer, "file_plan", lambda *a, **k: (_ for _ in ()).throw(CorruptStoreError("x")))
    with pytest.raises(CorruptStoreError):  # a version still there whose rows are wrong is damage: a 500
        client.get("/v1/models/org/damaged/versions/1/files/model.safetensors")
    monkeypatch.setattr(transfer, "file_plan", real)


def test_a_base_deleted_before_its_childs_commit_fails_the_commit(client: TestClient) -> None:
    """Deleting a base while a push against it is still uploading succeeds (a pending version holds
    nothing of it), and that push's commit says so instead of silently storing a root."""
    base = base_state(seed=14)
    pushed(client, "org/gone", checkpoint(base))
    files = checkpoint(finetune_state(base, seed=15))
    client.post("/v1/models", json={"name": "org/orphan"})
    body = {
        "base": "org/gone@1",
        "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
    }
    rev = client.post("/v1/models/org/orphan/versions", json=body).json()["version"]["revision"]
    for path, data in files.items():
        assert (
            client.put(f"/v1/models/org/orphan/versions/{rev}/files/{path}", content=data).status_code == 200
        )
    assert client.delete("/v1/models/org/gone").status_code == 204
    r = client.post(f"/v1/models/org/orphan/versions/{rev}/commit")
    assert r.status_code == 409 and r.json()["error"]["code"] == "base_deleted", r.text
    assert "org/gone@1" in r.json()["error"]["message"]


def test_a_name_in_two_files_of_the_parent_is_matched_by_its_file(client: TestClient) -> None:
    """Two files of the base each hold a ``w`` (two independent models side by side): each file of the
    fine-tune is coded against the ``w`` of its own file, not whichever came last."""
    from safetensors.torch import save

    g = torch.Generator().manual_seed(16)
    ws = {p: torch.randn(128, 128, generator=g).bfloat16() for p in ("a.safetensors", "b.safetensors")}
    base = {p: save({"w": w}) for p, w in ws.items()}
    tuned = {
        p: save({"w": (w.float() + 1e-3 * torch.randn(128, 128, generator=g)).bfloat16()})
        for p, w in ws.items()
    }
    pushed(client, "org/two", base)
    pushed(client, "org/two-ft", tuned, base="org/two@1")
    for t in client.get("/v1/models/org/two-ft/versions/1").json()["tensors"]:
        assert t["encoding"] == "delta" and t["parent"] == f"org/two@1:{t['file']}:w", t
    assert_pulls_exact(client, "org/two-ft@1", tuned)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_revision_number_is_never_given_twice(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Clients keep numbered revisions cached without asking again: after the newest version is deleted,
    or the whole model is deleted and made again, the next version takes a new number, never the
    deleted one's (which served the deleted version's files to a client that had cached it)."""
    settings = embedded_settings(tmp_path / "home")
    if database == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("empty_postgres_url")})
    with TestClient(create_app(settings)) as client:
        first, second = checkpoint(base_state(seed=1)), checkpoint(base_state(seed=2))
        pushed(client, "acme/m", first)
        pushed(client, "acme/m", second)
        assert client.delete("/v1/models/acme/m/versions/2").status_code == 204
        answer = push(client, "acme/m", second)
        assert answer["version"]["revision"] == 3
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
        assert client.get("/v1/models/acme/m/versions/2").status_code == 404
        assert client.delete("/v1/models/acme/m").status_code == 204
        answer = push(client, "acme/m", first)  # made again under the same name
        assert answer["version"]["revision"] == 4
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
        assert_pulls_exact(client, "acme/m@4", first)
        assert client.get("/v1/models/acme/m/versions/1").status_code == 404
        pushed(client, "acme/other", first)  # another name keeps its own numbers
        assert client.get("/v1/models/acme/other/versions/1").status_code == 200


def test_a_refused_delete_names_the_first_dependents_and_counts_the_rest(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base with thousands of fine-tunes: the 409 names the first ``MAX_NAMED_DEPENDENTS`` (here 2)
    and counts the others, instead of a message that grows with the zoo (81 kB at 1,500)."""
    from deltazoo.services import versions

    monkeypatch.setattr(versions, "MAX_NAMED_DEPENDENTS", 2)
    base = base_state(seed=8)
    pushed(client, "org/base", checkpoint(base))
    for i in range(4):
        pushed(client, f"org/ft{i}", checkpoint(finetune_state(base, seed=20 + i)), base="org/base@1")
    message = client.delete("/v1/models/org/base").json()["error"]["message"]
    assert message.count("stores deltas against") == 2 and "2 more version(s)" in message, message
