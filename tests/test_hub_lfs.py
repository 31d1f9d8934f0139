"""Hub uploads through Git LFS (``DELTAZOO_HUB_LARGE_FILES=lfs``), with the real huggingface_hub against
a real ``deltazoo serve`` (auth on): the batch API, the basic transfer into deltazoo, verify, and commits
naming ``lfsFile`` oids; objects the server holds are answered as present; what a client with hf-xet does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltazoo import Client
from tests.checkpoints import make_base_and_finetune, tree_sha256
from tests.servers import ApiServer, running_api_server
from tests.test_hub_upload import sharded, wait_main

ADMIN = "hub-lfs-admin-secret"
UPLOAD = """
import sys
from huggingface_hub import HfApi
api = HfApi(endpoint=sys.argv[1], token=sys.argv[2])
print(api.upload_folder(repo_id=sys.argv[3], folder_path=sys.argv[4]).oid)
"""

pytestmark = pytest.mark.usefixtures("hf_home")  # tests/conftest.py: HF_HOME of the test's own


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("hub-lfs") / "home"
    env = {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN, "DELTAZOO_HUB_LARGE_FILES": "lfs"}
    with running_api_server(home, env) as api:
        yield api


def upload_folder(url: str, token: str, repo: str, folder: Path, *, xet: bool) -> subprocess.CompletedProcess:
    """``HfApi.upload_folder`` in a process of its own, as a user runs it (with or without Xet)."""
    env = {**os.environ, "HF_HUB_DISABLE_XET": "0" if xet else "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    argv = [sys.executable, "-c", UPLOAD, url, token, repo, str(folder)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def lfs_puts(server: ApiServer) -> int:
    return len(re.findall(r'"PUT /api/lfs/objects/[A-Za-z0-9_-]+ HTTP/1\.1" 200', server.process.log_text()))


def test_upload_folder_sends_weights_through_lfs(server: ApiServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    pair = make_base_and_finetune(tmp_path / "ckpt")
    with Client(server.url, token=ADMIN) as client:
        client.push(pair.base, "acme/base", quiet=True)
        writer = client.create_token("lfs-writer", namespace="acme", scopes=["read", "write"]).token
    folder = sharded(pair.finetune, tmp_path / "up", "---\nbase_model: acme/base\n---\n# ft\n")
    api = HfApi(endpoint=server.url, token=writer)
    api.create_repo("acme/ft")
    before = lfs_puts(server)

    done = upload_folder(server.url, writer, "acme/ft", folder, xet=False)
    assert done.returncode == 0, done.stderr
    commit = done.stdout.strip().splitlines()[-1]
    assert lfs_puts(server) - before == 2  # both shards went through LFS, the card and index inline
    wait_main(api, "acme/ft", commit)
    got = snapshot_download("acme/ft", endpoint=server.url, cache_dir=tmp_path / "c", token=writer)
    assert tree_sha256(got) == tree_sha256(folder)
    with Client(server.url, token=ADMIN) as client:
        v = client.version_info("acme/ft@main")
    assert v.parent == "acme/base@1" and v.commit_id == commit  # lineage from the card, coded like a push
    assert {t.encoding for t in v.tensors} & {"delta", "delta-rows"}

    # the same shards again, to another model: the server holds them, so nothing is sent
    api.create_repo("acme/ft-copy")
    before = lfs_puts(server)
    again = upload_folder(server.url, writer, "acme/ft-copy", folder, xet=False)
    assert again.returncode == 0, again.stderr
    assert lfs_puts(server) == before
    wait_main(api, "acme/ft-copy", again.stdout.strip().splitlines()[-1])
    copy = snapshot_download("acme/ft-copy", endpoint=server.url, cache_dir=tmp_path / "c2", token=writer)
    assert tree_sha256(copy) == tree_sha256(folder)


def test_a_client_with_xet_is_told_to_disable_it(server: ApiServer, tmp_path: Path) -> None:
    """huggingface_hub with hf-xet importable sends every "lfs" file through Xet, which deltazoo does not
    speak: on a server that asks for LFS the upload fails at the Xet token route (whose 400 names the
    remedy, HF_HUB_DISABLE_XET=1; hf-xet shows only its status and URL), and nothing is stored. This is
    why the default, DELTAZOO_HUB_LARGE_FILES=inline, answers "regular" (tests/test_hub_upload.py)."""
    pair = make_base_and_finetune(tmp_path / "ckpt")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=ADMIN)
    api.create_repo("acme/xet")
    failed = upload_folder(server.url, ADMIN, "acme/xet", pair.finetune, xet=True)
    assert failed.returncode != 0
    assert "400 Bad Request" in failed.stderr and "/xet-write-token/" in failed.stderr
    token_route = httpx.get(f"{server.url}/api/models/acme/xet/xet-write-token/main")
    assert "HF_HUB_DISABLE_XET=1" in token_route.json()["error"]
    assert api.list_repo_files("acme/xet") == []


def _batch(url: str, token: str, repo: str, objects: list[dict], **extra: object) -> httpx.Response:
    body = {"operation": "upload", "transfers": ["basic", "multipart"], "objects": objects, **extra}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.git-lfs+json"}
    return httpx.post(f"{url}/{repo}.git/info/lfs/objects/batch", json=body, headers=headers)


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_lfs_put_streams_without_holding_the_object(tmp_path: Path) -> None:
    """A 192 MiB object PUT through the basic transfer raises the server's peak memory (VmHWM, reset
    before the PUT) by far less than its size: it streams through the transfer service into staging,
    hashed on the way."""
    size, block = 192 << 20, bytes(range(256)) * 4096  # 1 MiB pattern
    oid = hashlib.sha256()
    for _ in range(size // len(block)):
        oid.update(block)
    with running_api_server(
        tmp_path / "home", {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN}
    ) as api:
        h = {"Authorization": f"Bearer {ADMIN}"}
        httpx.post(f"{api.url}/api/repos/create", json={"name": "big", "organization": "acme"}, headers=h)
        answer = _batch(api.url, ADMIN, "acme/big", [{"oid": oid.hexdigest(), "size": size}])
        assert answer.status_code == 200, answer.text
        actions = answer.json()["objects"][0]["actions"]
        pid = api.process.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now
        before = _status_kib(pid, "VmRSS")

        def body() -> Iterator[bytes]:
            for _ in range(size // len(block)):
                yield block

        put = httpx.put(actions["upload"]["href"], content=body(), timeout=300)
        assert put.status_code == 200, put.text
        grown_mib = (_status_kib(pid, "VmHWM") - before) / 1024
        assert grown_mib < (size >> 20) / 3, f"peak memory grew {grown_mib:.0f} MiB for a 192 MiB object"
        verify = httpx.post(actions["verify"]["href"], json={"oid": oid.hexdigest(), "size": size}, headers=h)
        assert verify.status_code == 200, verify.text
        present = _batch(api.url, ADMIN, "acme/big", [{"oid": oid.hexdigest(), "size": size}])
        assert "actions" not in present.json()["objects"][0]  # held: the client would skip it
        assert httpx.put(actions["upload"]["href"], content=b"short").status_code == 400  # size checked


def test_lfs_refusals_are_4xx_in_the_hub_shape(server: ApiServer) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=server.url, token=ADMIN).create_repo("acme/secret", private=True)
    with Client(server.url, token=ADMIN) as client:
        other = client.create_token("lfs-other", namespace="other", scopes=["read", "write"]).token
        reader = client.create_token("lfs-reader", namespace="acme", scopes=["read"]).token
    oid = hashlib.sha256(b"x").hexdigest()
    ok = [{"oid": oid, "size": 1}]
    h = {"Authorization": f"Bearer {ADMIN}"}
    cases = [
        (_batch(server.url, ADMIN, "acme/secret", [{"oid": "zz", "size": 1}]), 400, None),
        (_batch(server.url, ADMIN, "acme/secret", [{"oid": oid, "size": -1}]), 400, None),
        (_batch(server.url, ADMIN, "acme/secret", []), 400, None),
        (_batch(server.url, ADMIN, "acme/secret", ok, transfers=["xet"]), 400, None),
        (_batch(server.url, ADMIN, "acme/secret", ok, operation="download"), 400, None),
        (_batch(server.url, ADMIN, "acme/secret", ok, ref={"name": "v1"}), 400, None),
        (_batch(server.url, ADMIN, "acme/missing", ok), 404, "RepoNotFound"),
        (_batch(server.url, other, "acme/secret", ok), 404, "RepoNotFound"),  # private: as if missing
        (_batch(server.url, reader, "acme/secret", ok), 403, None),
        (httpx.put(f"{server.url}/api/lfs/objects/{'a' * 43}", content=b"x"), 404, None),
        (httpx.put(f"{server.url}/api/lfs/objects/{'a' * 40}..x", content=b"x"), 404, None),
        (
            httpx.post(
                f"{server.url}/acme/secret.git/info/lfs/verify", json={"oid": oid, "size": 1}, headers=h
            ),
            404,
            None,
        ),
        (httpx.post(f"{server.url}/acme/secret.git/info/lfs/verify", json={"oid": 3}, headers=h), 400, None),
        (
            httpx.post(
                f"{server.url}/api/models/acme/secret/commit/main",
                content=json.dumps({"key": "lfsFile", "value": {"path": "a.bin", "oid": oid, "size": 1}}),
                headers=h,
            ),
            409,
            None,
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.status_code, response.text)
        assert isinstance(response.json()["error"], str)
        if code:
            assert response.headers["X-Error-Code"] == code
