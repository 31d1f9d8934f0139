"""The Hugging Face Hub protocol on the full stack (Postgres, Celery worker, S3 server, auth on): an
upload_folder with a model card becomes a version coded against its base by the worker, and downloads
come back byte-exact, by main, tag and commit id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deltazoo import Client
from tests.checkpoints import make_base_and_finetune, tree_sha256
from tests.servers import Stack

pytestmark = pytest.mark.stack


def test_upload_and_download_through_the_hub_protocol_on_the_stack(
    stack_server: Stack, unique_org: str, tmp_path: Path, hf_home: Path
) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    url, token = stack_server.url, stack_server.admin_token
    pair = make_base_and_finetune(tmp_path / "ckpt")
    base, ft = f"{unique_org}/base", f"{unique_org}/ft"
    with Client(url, token=token) as client:
        client.push(pair.base, base, quiet=True)
    (pair.finetune / "README.md").write_text(f"---\nbase_model: {base}\n---\n# fine-tune\n")

    api = HfApi(endpoint=url, token=token)
    api.create_repo(ft, private=True)
    commit = api.upload_folder(repo_id=ft, folder_path=pair.finetune).oid
    deadline = time.monotonic() + 180
    while api.model_info(ft).sha != commit:
        assert time.monotonic() < deadline, "the worker never finished the uploaded version"
        time.sleep(0.5)

    got = snapshot_download(ft, endpoint=url, cache_dir=tmp_path / "c", token=token)
    assert tree_sha256(got) == tree_sha256(pair.finetune)
    with Client(url, token=token) as client:
        v = client.version_info(f"{ft}@{commit}")
        assert v.parent == f"{base}@1" and {t.encoding for t in v.tensors} & {"delta", "delta-rows"}
        client.tag(f"{ft}@1", "prod")
    path = hf_hub_download(
        ft, "model.safetensors", revision="prod", endpoint=url, cache_dir=tmp_path / "d", token=token
    )
    assert Path(path).read_bytes() == (pair.finetune / "model.safetensors").read_bytes()


def test_lfs_upload_on_the_stack(stack_server: Stack, unique_org: str, tmp_path: Path, hf_home: Path) -> None:
    """A second API on the same Postgres, S3 and worker, taking weight files through Git LFS: the shards
    are PUT into S3 staging, the commit names their oids, the worker encodes them, downloads are exact."""
    from huggingface_hub import HfApi, snapshot_download

    from tests.servers import running_api_server
    from tests.test_hub_lfs import lfs_puts, upload_folder

    token = stack_server.admin_token
    pair = make_base_and_finetune(tmp_path / "ckpt")
    base, ft = f"{unique_org}/base", f"{unique_org}/ft"
    env = {**stack_server.env, "DELTAZOO_HUB_LARGE_FILES": "lfs"}
    with running_api_server(tmp_path / "home", env) as api:
        with Client(api.url, token=token) as client:
            client.push(pair.base, base, quiet=True)
        (pair.finetune / "README.md").write_text(f"---\nbase_model: {base}\n---\n# fine-tune\n")
        hf = HfApi(endpoint=api.url, token=token)
        hf.create_repo(ft)
        done = upload_folder(api.url, token, ft, pair.finetune, xet=False)
        assert done.returncode == 0, done.stderr
        assert lfs_puts(api) == 1  # model.safetensors
        commit = done.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 180
        while hf.model_info(ft).sha != commit:
            assert time.monotonic() < deadline, "the worker never finished the uploaded version"
            time.sleep(0.5)
        got = snapshot_download(ft, endpoint=api.url, cache_dir=tmp_path / "c", token=token)
        assert tree_sha256(got) == tree_sha256(pair.finetune)
        with Client(api.url, token=token) as client:
            v = client.version_info(f"{ft}@main")
        assert v.parent == f"{base}@1" and {t.encoding for t in v.tensors} & {"delta", "delta-rows"}


def test_concurrent_commits_all_land_on_the_stack(
    stack_server: Stack, unique_org: str, hf_home: Path
) -> None:
    """Postgres: commits to one repository take its row (FOR UPDATE) one after the other."""
    from tests.test_hub_upload import concurrent_uploads_all_land

    concurrent_uploads_all_land(stack_server.url, stack_server.admin_token, f"{unique_org}/race")
