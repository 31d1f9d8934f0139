"""The Hugging Face Hub protocol, upload side, with the real huggingface_hub (hf-xet installed, as users
get it) against a real ``deltazoo serve`` (auth on): create_repo, upload_folder of a sharded checkpoint
with a model card (lineage from the card, deduplicated, exact), commits on top of main, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from deltazoo import Client
from tests.checkpoints import make_base_and_finetune, tree_sha256
from tests.servers import ApiServer, log_problems, running_api_server

ADMIN = "hub-up-admin-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("hub-up") / "home"
    with running_api_server(home, {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN}) as api:
        yield api


pytestmark = pytest.mark.usefixtures("hf_home")  # tests/conftest.py: HF_HOME of the test's own


def sharded(src: Path, dest: Path, card: str) -> Path:
    """``src``'s weights in two shards with an index, its config, and a model card."""
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    dest.mkdir(parents=True)
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(dest / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (dest / "config.json").write_bytes((src / "config.json").read_bytes())
    (dest / "README.md").write_text(card)
    return dest


def wait_main(api: object, repo: str, commit: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while api.model_info(repo).sha != commit:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"main of {repo} never reached {commit}"
        time.sleep(0.2)


def test_upload_folder_of_a_sharded_checkpoint_with_a_card(server: ApiServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    pair = make_base_and_finetune(tmp_path / "ckpt")
    with Client(server.url, token=ADMIN) as client:
        client.push(pair.base, "acme/base", quiet=True)
        writer = client.create_token("acme-writer", namespace="acme", scopes=["read", "write"]).token
    folder = sharded(pair.finetune, tmp_path / "up", "---\nbase_model: acme/base\nlicense: mit\n---\n# ft\n")

    api = HfApi(endpoint=server.url, token=writer)
    url = api.create_repo("acme/ft", private=True)
    assert str(url).endswith("/acme/ft")
    assert api.create_repo("acme/ft", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("acme/ft")
    assert conflict.value.response.status_code == 409
    info = api.upload_folder(repo_id="acme/ft", folder_path=folder, commit_message="first")
    assert len(info.oid) == 40
    wait_main(api, "acme/ft", info.oid)

    got = snapshot_download("acme/ft", endpoint=server.url, cache_dir=tmp_path / "c", token=writer)
    assert tree_sha256(got) == tree_sha256(folder)
    with Client(server.url, token=ADMIN) as client:
        v = client.version_info("acme/ft@main")
    assert v.parent == "acme/base@1" and v.relation == "finetune"  # lineage from the model card
    assert v.commit_id == info.oid
    encodings = {t.encoding for t in v.tensors}
    assert "same" in encodings and encodings & {"delta", "delta-rows"}  # coded against its base
    assert v.stored_bytes < v.logical_bytes

    # commits on top of main: a file added, then one deleted; the rest is carried over
    info2 = api.upload_file(path_or_fileobj=b"notes\n", path_in_repo="notes/a.txt", repo_id="acme/ft")
    wait_main(api, "acme/ft", info2.oid)
    info3 = api.delete_file("README.md", repo_id="acme/ft")
    wait_main(api, "acme/ft", info3.oid)
    files = set(api.list_repo_files("acme/ft"))
    assert "notes/a.txt" in files and "README.md" not in files
    assert "model-00001-of-00002.safetensors" in files

    # tags through the Hub API: create on a commit, read by tag, refuse a second, delete
    api.create_tag("acme/ft", tag="v1", revision=info.oid)
    assert [(t.name, t.target_commit) for t in api.list_repo_refs("acme/ft").tags] == [("v1", info.oid)]
    assert "README.md" in set(api.list_repo_files("acme/ft", revision="v1"))  # the first commit's files
    with pytest.raises(HfHubHTTPError) as taken:
        api.create_tag("acme/ft", tag="v1")
    assert taken.value.response.status_code == 409
    api.create_tag("acme/ft", tag="v1", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as readonly:
        HfApi(endpoint=server.url, token=False).delete_tag("acme/ft", tag="v1")
    assert readonly.value.response.status_code in (401, 403)
    api.delete_tag("acme/ft", tag="v1")
    assert api.list_repo_refs("acme/ft").tags == []


def test_upload_refusals_are_4xx_in_the_hub_shape(server: ApiServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    with Client(server.url, token=ADMIN) as client:
        other = client.create_token("other-writer", namespace="other", scopes=["read", "write"]).token
    anonymous = HfApi(endpoint=server.url, token=False)
    with pytest.raises(HfHubHTTPError) as no_token:
        anonymous.create_repo("acme/x")
    assert no_token.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong_ns:
        HfApi(endpoint=server.url, token=other).create_repo("acme/x")
    assert wrong_ns.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url, token=other).upload_file(
            path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="other/missing"
        )
    admin = HfApi(endpoint=server.url, token=ADMIN)
    admin.create_repo("acme/bad")
    bad_shard = tmp_path / "bad.safetensors"
    bad_shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header....")
    with pytest.raises(HfHubHTTPError) as invalid:
        admin.upload_file(
            path_or_fileobj=str(bad_shard), path_in_repo="model.safetensors", repo_id="acme/bad"
        )
    assert invalid.value.response.status_code == 400
    assert admin.list_repo_files("acme/bad") == []  # nothing stored
    h = {"Authorization": f"Bearer {ADMIN}"}
    cases = [
        (
            "/api/models/acme/bad/commit/main",
            b'{"key": "lfsFile", "value": {"path": "a", "oid": "x"}}\n',
            400,
        ),
        ("/api/models/acme/bad/commit/main", b"not json\n", 400),
        ("/api/models/acme/bad/commit/v1", b'{"key": "header", "value": {}}\n', 400),
        (
            "/api/models/acme/bad/commit/main",
            b'{"key": "file", "value": {"path": "../x", "content": ""}}\n',
            422,
        ),
        ("/api/models/acme/bad/commit/main", b'{"key": "header", "value": {"summary": "empty"}}\n', 422),
        ("/api/models/acme/bad/preupload/main", b'{"files": 3}', 400),
        ("/api/repos/create", b'{"name": "solo"}', 422),
        ("/api/models/acme/bad/xet-write-token/main", None, 400),
    ]
    for path, body, status in cases:
        method = "GET" if body is None else "POST"
        r = httpx.request(method, server.url + path, content=body, headers=h)
        assert r.status_code == status, (path, body, r.status_code, r.text)
        assert isinstance(r.json()["error"], str)


def test_repository_settings_commits_and_delete_through_hf_api(server: ApiServer, tmp_path: Path) -> None:
    """``update_repo_settings`` (visibility), ``list_repo_commits`` and ``delete_repo`` as huggingface_hub
    calls them; a private repository is then missing for others, a deleted one for everyone."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    with Client(server.url, token=ADMIN) as client:
        writer = client.create_token("lab-writer", namespace="lab", scopes=["read", "write"]).token
    api, anonymous = HfApi(endpoint=server.url, token=writer), HfApi(endpoint=server.url, token=False)
    api.create_repo("lab/epochs")
    assert api.list_repo_commits("lab/epochs") == []  # created, nothing committed yet
    shas = []
    for epoch in range(3):
        data = torch.full((4, 4), float(epoch))
        save_file({"w": data}, str(tmp_path / f"e{epoch}.safetensors"))
        info = api.upload_file(
            path_or_fileobj=str(tmp_path / f"e{epoch}.safetensors"),
            path_in_repo="model.safetensors",
            repo_id="lab/epochs",
        )
        shas.append(info.oid)
    commits = api.list_repo_commits("lab/epochs")
    assert [c.commit_id for c in commits] == shas[::-1]  # newest first, as the Hub lists them
    assert commits[0].title.startswith("version 3") and commits[0].authors == ["lab"]
    assert [c.commit_id for c in api.list_repo_commits("lab/epochs", revision=shas[1])] == shas[1::-1]

    api.update_repo_settings("lab/epochs", private=True)
    assert api.model_info("lab/epochs").private is True
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("lab/epochs")
    with pytest.raises(RepositoryNotFoundError):
        anonymous.list_repo_commits("lab/epochs")
    api.update_repo_settings("lab/epochs", visibility="public")
    assert anonymous.model_info("lab/epochs").private is False
    with pytest.raises(HfHubHTTPError) as gated:
        api.update_repo_settings("lab/epochs", gated="auto")
    assert gated.value.response.status_code == 400 and "gated" in str(gated.value)
    with pytest.raises(HfHubHTTPError) as not_theirs:
        anonymous.delete_repo("lab/epochs")
    assert not_theirs.value.response.status_code == 401

    api.delete_repo("lab/epochs")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("lab/epochs")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("lab/epochs")
    api.delete_repo("lab/epochs", missing_ok=True)


def concurrent_uploads_all_land(endpoint: str, token: str, repo: str, n: int = 4) -> None:
    """``n`` threads ``upload_file`` one file each to ``repo`` at once: every commit lands on main, each on
    top of the one before (none built beside another, which would drop its files)."""
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)

    def upload(i: int) -> str:
        data = f"file {i}".encode()
        return api.upload_file(path_or_fileobj=data, path_in_repo=f"f{i}.txt", repo_id=repo).oid

    with ThreadPoolExecutor(n) as pool:
        commits = list(pool.map(upload, range(n)))
    assert sorted(api.list_repo_files(repo)) == ["config.json", *(f"f{i}.txt" for i in range(n))]
    listed = [c.commit_id for c in api.list_repo_commits(repo)]
    assert sorted(listed[:n]) == sorted(commits) and len(listed) == n + 1  # one version per commit


def test_concurrent_commits_to_one_repository_all_land(server: ApiServer) -> None:
    concurrent_uploads_all_land(server.url, ADMIN, "acme/race")


def test_copy_operations_through_hf_api(server: ApiServer, tmp_path: Path) -> None:
    from huggingface_hub import CommitOperationCopy, HfApi, hf_hub_download

    api = HfApi(endpoint=server.url, token=ADMIN)
    api.create_repo("acme/copies")
    save_file({"w": torch.arange(8.0)}, str(tmp_path / "w.safetensors"))
    api.upload_file(
        path_or_fileobj=str(tmp_path / "w.safetensors"),
        path_in_repo="model.safetensors",
        repo_id="acme/copies",
    )
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="notes.txt", repo_id="acme/copies")
    api.create_commit(
        "acme/copies",
        operations=[
            CommitOperationCopy("model.safetensors", "backup/model.safetensors"),
            CommitOperationCopy("notes.txt", "notes-copy.txt"),
        ],
        commit_message="copies",
    )
    weights = (tmp_path / "w.safetensors").read_bytes()
    for path, data in (("backup/model.safetensors", weights), ("notes-copy.txt", b"notes")):
        got = hf_hub_download("acme/copies", path, endpoint=server.url, token=ADMIN, cache_dir=tmp_path / "c")
        assert Path(got).read_bytes() == data


def test_writes_without_the_right_token_are_refused_before_their_body_is_read(server: ApiServer) -> None:
    """A commit or preupload announcing a gigabyte is answered 401 after a few kilobytes (the body is
    never read, spooled or kept), and a JSON body over 8 MiB is refused (413) whoever sends it."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import HfApi

    HfApi(endpoint=server.url, token=ADMIN).create_repo("acme/guarded")
    where = urlparse(server.url)
    for path in ("/api/models/acme/guarded/commit/main", "/api/models/acme/guarded/preupload/main"):
        with socket.create_connection((where.hostname, where.port), timeout=10) as s:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n"
            s.sendall(head.encode() + b" " * 65536)
            answer = s.recv(4096).decode(errors="replace")  # before the rest of the gigabyte
        assert answer.startswith("HTTP/1.1 401"), (path, answer[:200])
    big = httpx.post(
        f"{server.url}/api/models/acme/guarded/preupload/main",
        content=b" " * (9 << 20),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert big.status_code == 413, big.text


def test_a_repository_is_found_under_any_letter_case(server: ApiServer, tmp_path: Path) -> None:
    """As on the Hub: ``create_repo("acme/mixedcase", exist_ok=True)`` when ``acme/MixedCase`` exists, then
    uploads and downloads under the name as typed, reach the stored model (its id is the stored name)."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=server.url, token=ADMIN)
    api.create_repo("acme/MixedCase")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="acme/MixedCase")
    api.create_repo("acme/mixedcase", exist_ok=True)
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="notes.txt", repo_id="acme/mixedcase")
    assert api.model_info("ACME/mixedcase").id == "acme/MixedCase"
    assert sorted(api.list_repo_files("acme/MixedCase")) == ["config.json", "notes.txt"]
    got = hf_hub_download("acme/mixedcase", "notes.txt", endpoint=server.url, token=ADMIN, cache_dir=tmp_path)
    assert Path(got).read_bytes() == b"notes"


def test_a_commit_cut_off_mid_body_logs_no_error_and_keeps_nothing(server: ApiServer) -> None:
    """An interrupted ``upload_folder``: the client goes away in the middle of the commit's body. The
    server answers it a 400 (nobody is there to read it), logs no unhandled error or traceback, and
    stores nothing of it."""
    import base64
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import HfApi

    HfApi(endpoint=server.url, token=ADMIN).create_repo("acme/cut")
    header = json.dumps({"key": "header", "value": {"summary": "cut"}}).encode() + b"\n"
    start = b'{"key": "file", "value": {"path": "big.bin", "encoding": "base64", "content": "'
    body = header + start + base64.b64encode(b"x" * 300_000)
    where = urlparse(server.url)
    before = len(server.process.log_text())
    with socket.create_connection((where.hostname, where.port), timeout=10) as s:
        head = (
            f"POST /api/models/acme/cut/commit/main HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body) + 10**6}\r\n\r\n"
        )
        s.sendall(head.encode() + body)
    time.sleep(2.0)  # the server reads to the cut, then answers a client that is gone
    assert log_problems(server.process.log_text()[before:]) == []
    assert "unhandled" not in server.process.log_text()[before:]
    assert (
        httpx.get(f"{server.url}/v1/models/acme/cut", headers={"Authorization": f"Bearer {ADMIN}"}).json()[
            "versions"
        ]
        == []
    )
