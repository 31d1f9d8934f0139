"""The Hugging Face Hub protocol, download side, with the real huggingface_hub and transformers against
a real ``deltazoo serve`` (auth on): snapshot_download, hf_hub_download, from_pretrained, private repos,
missing optional files, revisions by commit id and tag; every bad request a 4xx in the Hub's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltazoo import Client
from tests.checkpoints import make_base_and_finetune, tree_sha256
from tests.servers import ApiServer, running_api_server

ADMIN = "hub-admin-secret"
CARD = b"---\nlicense: apache-2.0\ntags:\n- tiny\n---\n# tiny llama\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("hub") / "home"
    with running_api_server(home, {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN}) as api:
        yield api


pytestmark = pytest.mark.usefixtures("hf_home")  # tests/conftest.py: HF_HOME of the test's own


def hub_env(server: ApiServer, home: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"})
    if token:
        env["HF_TOKEN"] = token
    return env


@pytest.fixture(scope="module")
def zoo(server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """``demo/base`` (public, with a model card), ``demo/coder`` (its fine-tune, tagged ``prod``) and
    ``secret/coder`` (private)."""
    root = tmp_path_factory.mktemp("ckpt")
    pair = make_base_and_finetune(root)
    (pair.base / "README.md").write_bytes(CARD)
    with Client(server.url, token=ADMIN) as client:
        client.push(pair.base, "demo/base", quiet=True)
        client.push(pair.finetune, "demo/coder", base="demo/base", quiet=True)
        client.push(pair.finetune, "secret/coder", private=True, quiet=True)
        token = client.create_token("secret-reader", namespace="secret", scopes=["read"])
    return {"pair": pair, "secret_token": token.token}


def test_snapshot_download_is_byte_exact_and_model_info_has_a_commit_per_version(
    server: ApiServer, zoo: dict, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, snapshot_download

    pair = zoo["pair"]
    got = snapshot_download("demo/coder", endpoint=server.url, cache_dir=tmp_path / "c", token=False)
    assert tree_sha256(got) == tree_sha256(pair.finetune)

    api = HfApi(endpoint=server.url, token=False)
    info = api.model_info("demo/base")
    assert info.id == "demo/base" and info.private is False and len(info.sha) == 40
    assert sorted(s.rfilename for s in info.siblings) == ["README.md", "config.json", "model.safetensors"]
    assert info.card_data is not None and info.card_data.license == "apache-2.0"
    assert info.last_modified is not None
    assert api.model_info("demo/base", revision=info.sha).sha == info.sha
    assert api.model_info("demo/base", revision="1").sha == info.sha
    assert api.model_info("demo/coder").sha != info.sha

    files = {f.path: f for f in api.list_repo_tree("demo/base", recursive=True)}
    local = tree_sha256(pair.base)
    assert {p: f.lfs.sha256 for p, f in files.items()} == local
    assert all(f.lfs.size == f.size == (pair.base / p).stat().st_size for p, f in files.items())


def test_hf_hub_download_range_and_missing_optional_file(
    server: ApiServer, zoo: dict, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    pair = zoo["pair"]
    cache = tmp_path / "c"
    path = hf_hub_download("demo/coder", "config.json", endpoint=server.url, cache_dir=cache, token=False)
    assert Path(path).read_bytes() == (pair.finetune / "config.json").read_bytes()

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("demo/coder", "tokenizer.json", endpoint=server.url, cache_dir=cache, token=False)
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    assert try_to_load_from_cache("demo/coder", "tokenizer.json", cache_dir=cache) is _CACHED_NO_EXIST
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            "demo/coder", "config.json", revision="v9", endpoint=server.url, cache_dir=cache, token=False
        )
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("demo/nope", "config.json", endpoint=server.url, cache_dir=cache, token=False)

    weights = (pair.finetune / "model.safetensors").read_bytes()
    url = f"{server.url}/demo/coder/resolve/main/model.safetensors"
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["x-linked-size"] == str(len(weights))
    assert head.headers["etag"] == head.headers["x-linked-etag"]
    assert not any(h.lower().startswith("x-xet") for h in head.headers)  # never steers the client to xet
    r = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == weights[100:200]
    r = httpx.get(url, headers={"Range": f"bytes={len(weights)}-"})
    assert r.status_code == 416


def test_from_pretrained_with_hf_endpoint_equals_a_local_load(
    server: ApiServer, zoo: dict, tmp_path: Path
) -> None:
    pair = zoo["pair"]
    script = (
        "import hashlib, json, sys\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(json.dumps({k: hashlib.sha256(v.contiguous().view(-1).view(dtype=__import__('torch').uint8)"
        ".numpy().tobytes()).hexdigest() for k, v in m.state_dict().items()}))\n"
    )

    def weights(source: str, env: dict[str, str]) -> dict[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", script, source], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    env = hub_env(server, tmp_path / "hf")
    remote = weights("demo/coder", env)
    assert remote == weights(str(pair.finetune), env)
    assert "model.layers.0.self_attn.q_proj.weight" in remote


def test_private_repo_needs_a_token_and_tokens_follow_the_same_rules(
    server: ApiServer, zoo: dict, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    r = httpx.get(f"{server.url}/api/models/secret/coder")
    assert r.status_code == 401 and r.headers["x-error-code"] == "RepoNotFound"
    assert httpx.get(f"{server.url}/api/models/secret/nothing").status_code == 401  # same answer: no leak
    r = httpx.head(f"{server.url}/secret/coder/resolve/main/config.json")
    assert r.status_code == 401 and r.headers["x-error-code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url, token=False).model_info("secret/coder")

    token = zoo["secret_token"]
    got = snapshot_download("secret/coder", endpoint=server.url, cache_dir=tmp_path / "c", token=token)
    assert tree_sha256(got) == tree_sha256(zoo["pair"].finetune)
    api = HfApi(endpoint=server.url, token=token)
    assert api.model_info("secret/coder").private is True
    me = api.whoami()
    assert me["name"] == "secret" and me["auth"]["accessToken"]["role"] == "read"
    listed = {m.id for m in api.list_models(author="secret")}
    assert listed == {"secret/coder"}
    assert "secret/coder" not in {m.id for m in HfApi(endpoint=server.url, token=False).list_models()}
    assert {m.id for m in api.list_models(search="coder")} >= {"demo/coder", "secret/coder"}
    with pytest.raises(HfHubHTTPError) as bad:
        HfApi(endpoint=server.url, token="not-a-deltazoo-token").model_info("demo/base")
    assert bad.value.response.status_code == 401


def test_bad_requests_are_4xx_in_the_hub_shape(server: ApiServer, zoo: dict) -> None:
    cases = [
        ("GET", "/api/models/demo/coder/revision/no%20such", 404, "RevisionNotFound"),
        ("GET", "/api/models/demo/coder/revision/99", 404, "RevisionNotFound"),
        ("GET", "/api/models/demo/coder/tree/main/nope", 404, "EntryNotFound"),
        ("GET", "/demo/coder/resolve/main/nope.bin", 404, "EntryNotFound"),
        ("GET", "/demo/coder/resolve/" + "0" * 40 + "/config.json", 404, "RevisionNotFound"),
        ("GET", "/api/models/bad..name/x", 401, "RepoNotFound"),
        ("GET", "/api/models?limit=0", 400, None),
        ("GET", "/api/whoami-v2", 401, None),
    ]
    for method, path, status, code in cases:
        r = httpx.request(method, server.url + path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert isinstance(r.json()["error"], str), (path, r.text)
        assert r.headers.get("x-error-code") == code, (path, r.headers)
    r = httpx.get(server.url + "/demo/coder/resolve/main/nope.bin")
    info = httpx.get(server.url + "/api/models/demo/coder").json()
    assert r.headers["x-repo-commit"] == info["sha"]


def test_a_tag_works_as_a_revision_in_the_sdk_cli_and_hub(
    server: ApiServer,
    zoo: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    from deltazoo.cli import main
    from deltazoo.settings import get_settings

    monkeypatch.setenv("DELTAZOO_CACHE", str(tmp_path / "dz-cache"))
    get_settings.cache_clear()
    pair = zoo["pair"]
    try:
        assert main(["--url", server.url, "--token", ADMIN, "tag", "set", "demo/base@1", "v1.2"]) == 0
        assert "demo/base@v1.2 -> demo/base@1" in capsys.readouterr().out
        with Client(server.url, token=ADMIN) as client:
            tag = client.tag("demo/coder@main", "prod")
            assert tag.revision == 1 and len(tag.commit_id) == 40
            got = client.pull("demo/coder@prod", tmp_path / "pulled", quiet=True)
            assert tree_sha256(got) == tree_sha256(pair.finetune)
            assert client.version_info("demo/coder@prod").tags == ("prod",)
            assert client.version_info(f"demo/coder@{tag.commit_id}").revision == 1
        assert main(["--url", server.url, "info", "demo/coder@prod"]) == 0
        assert f"commit: {tag.commit_id}  tags: prod" in capsys.readouterr().out
        assert main(["--url", server.url, "tag", "ls", "demo/base"]) == 0
        assert "v1.2" in capsys.readouterr().out
        assert main(["--url", server.url, "tag", "set", "demo/base@1", "x"]) == 1  # writing needs a token
        capsys.readouterr()
    finally:
        get_settings.cache_clear()

    got = snapshot_download(
        "demo/coder", revision="prod", endpoint=server.url, cache_dir=tmp_path / "c", token=False
    )
    assert tree_sha256(got) == tree_sha256(pair.finetune)
    path = hf_hub_download(
        "demo/base", "README.md", revision="v1.2", endpoint=server.url, cache_dir=tmp_path / "c", token=False
    )
    assert Path(path).read_bytes() == CARD
    path = hf_hub_download(
        "demo/coder",
        "config.json",
        revision=tag.commit_id,
        endpoint=server.url,
        cache_dir=tmp_path / "c2",
        token=False,
    )
    assert Path(path).read_bytes() == (pair.finetune / "config.json").read_bytes()
    refs = HfApi(endpoint=server.url, token=False).list_repo_refs("demo/coder")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("prod", tag.commit_id)]
    assert refs.branches[0].name == "main"
    assert main(["--url", server.url, "--token", ADMIN, "tag", "rm", "demo/base", "v1.2"]) == 0


def test_the_hf_cli_downloads_and_uploads(server: ApiServer, zoo: dict, tmp_path: Path) -> None:
    hf = str(Path(sys.executable).parent / "hf")
    env = hub_env(server, tmp_path / "hf", token=ADMIN)

    def run(*argv: str) -> str:
        done = subprocess.run([hf, *argv], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    run("download", "demo/coder", "--local-dir", str(tmp_path / "out"))
    got = {k: v for k, v in tree_sha256(tmp_path / "out").items() if not k.startswith(".cache")}
    assert got == tree_sha256(zoo["pair"].finetune)
    run("upload", "cli/up", str(zoo["pair"].finetune))  # creates the repository, then commits
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=ADMIN)
    deadline = time.monotonic() + 120
    while api.model_info("cli/up").sha is None:  # main exists once the version is encoded
        assert time.monotonic() < deadline, "cli/up never became ready"
        time.sleep(0.2)
    assert sorted(api.list_repo_files("cli/up")) == ["config.json", "model.safetensors"]
    run("download", "cli/up", "config.json", "--revision", "1", "--local-dir", str(tmp_path / "one"))
    assert (tmp_path / "one" / "config.json").read_bytes() == (
        zoo["pair"].finetune / "config.json"
    ).read_bytes()
