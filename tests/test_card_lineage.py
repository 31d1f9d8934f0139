"""Model cards set lineage (``base_model`` / ``base_model_relation``) unless a base is given; adapters
are stored under their base with relation ``adapter`` (their own tensors coded plain)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        job = push(c, "acme/base", checkpoint(base_state()))["job"]
        assert wait_job(c, job["id"])["status"] == "succeeded"
        yield c


def card(**front: str) -> bytes:
    lines = "".join(f"{k}: {v}\n" for k, v in front.items())
    return f"---\n{lines}---\n# a model\n\nSome text.\n".encode()


def pushed(client: TestClient, name: str, files: dict[str, bytes], **kw: object) -> dict:
    answer = push(client, name, files, **kw)  # type: ignore[arg-type]
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    return client.get(f"/v1/models/{name}/versions/{answer['version']['revision']}").json()


def test_card_base_model_sets_parent_and_relation(client: TestClient) -> None:
    ft = checkpoint(finetune_state(base_state()))
    readme = card(base_model="acme/base", license="mit")
    v = pushed(client, "acme/ft", {**ft, "README.md": readme})
    assert v["parent"] == "acme/base@1" and v["relation"] == "finetune"
    assert {t["encoding"] for t in v["tensors"]} & {"delta", "delta-rows"}
    r = client.get("/v1/models/acme/ft/versions/1/files/README.md")
    assert r.content == readme  # served byte for byte as uploaded
    v = pushed(
        client, "acme/q", {**ft, "README.md": card(base_model="acme/base", base_model_relation="quantized")}
    )
    assert v["parent"] == "acme/base@1" and v["relation"] == "quantized"
    v = pushed(client, "acme/listed", {**ft, "README.md": card(base_model="[acme/base]")})
    assert v["parent"] == "acme/base@1"
    lineage = client.get("/v1/models/acme/base/lineage").json()
    assert {"acme/ft@1", "acme/q@1", "acme/listed@1"} <= set(lineage["descendants"])


def test_an_explicit_base_wins_and_an_unknown_card_base_leaves_a_root(client: TestClient) -> None:
    ft = checkpoint(finetune_state(base_state()))
    job = push(client, "acme/other", checkpoint(base_state(seed=5)))["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    v = pushed(client, "acme/ft2", {**ft, "README.md": card(base_model="acme/base")}, base="acme/other")
    assert v["parent"] == "acme/other@1"
    v = pushed(client, "acme/ft3", {**ft, "README.md": card(base_model="meta-llama/Llama-3-8B")})
    assert v["parent"] is None and v["status"] == "ready"
    v = pushed(client, "acme/ft4", {**ft, "README.md": b"---\n: : not yaml [\n---\n"})
    assert v["parent"] is None and v["status"] == "ready"


def adapter_files(base_model: str | None) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "base_model.model.layers.0.q.lora_A.weight": torch.randn(4, 32, generator=g).to(torch.bfloat16),
        "base_model.model.layers.0.q.lora_B.weight": torch.randn(32, 4, generator=g).to(torch.bfloat16),
    }
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q"],
        "base_model_name_or_path": base_model,
    }
    files = {"adapter_model.safetensors": save(tensors), "adapter_config.json": json.dumps(config).encode()}
    if base_model:
        files["README.md"] = card(base_model=base_model, library_name="peft")
    return files


def test_an_adapter_is_stored_under_its_base(client: TestClient) -> None:
    files = adapter_files("acme/base")
    v = pushed(client, "acme/lora", files)  # relation from the card and adapter_config.json
    assert v["parent"] == "acme/base@1" and v["relation"] == "adapter"
    assert {t["encoding"] for t in v["tensors"]} == {"plain"}
    for path, data in files.items():
        assert client.get(f"/v1/models/acme/lora/versions/1/files/{path}").content == data
    edges = client.get("/v1/models/acme/base/lineage").json()["edges"]
    assert {"parent": "acme/base@1", "child": "acme/lora@1", "relation": "adapter"} in edges

    plain = adapter_files(None)  # no card: the relation is given explicitly
    declared = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in plain.items()]
    assert client.post("/v1/models", json={"name": "acme/lora2"}).status_code == 201
    for relation, expected in (("finetune", 400), ("adapter", 202)):
        body = {"base": "acme/base", "relation": relation, "files": declared}
        r = client.post("/v1/models/acme/lora2/versions", json=body)
        assert r.status_code == 201, r.text
        rev = r.json()["version"]["revision"]
        for path, data in plain.items():
            client.put(f"/v1/models/acme/lora2/versions/{rev}/files/{path}", content=data)
        r = client.post(f"/v1/models/acme/lora2/versions/{rev}/commit")
        assert r.status_code == expected, r.text
        if expected == 400:  # a fine-tune sharing no tensor name with its base is refused, as before
            assert r.json()["error"]["code"] == "unrelated_base"
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    r = client.post("/v1/models/acme/lora2/versions", json={**body, "base": "acme/nothing"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "base_not_found"  # its base must exist


ALIAS_BOMB = (
    "---\nbase_model: acme/base\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True))
    + "---\n# ten million strings\n"
)


def test_a_card_header_with_aliases_or_deep_nesting_is_ignored_not_expanded(client: TestClient) -> None:
    """A few hundred bytes of nested YAML aliases expand to gigabytes, a self-referencing one never ends:
    aliases are refused (validate-yaml says why), the card's text is still served as it is, and the
    pages and Hub routes that read the header answer at once."""
    ft = checkpoint(finetune_state(base_state()))
    for i, header in enumerate((ALIAS_BOMB, "---\na: &a [*a]\n---\n", "---\na: " + "[" * 5000 + "\n---\n")):
        readme = header.encode()
        assert len(readme) < 6000
        problem = client.post("/api/validate-yaml", json={"content": header}).json()
        assert "alias" in str(problem) or "nested too deeply" in str(problem), problem
        v = pushed(client, f"acme/card{i}", {**ft, "README.md": readme})
        assert v["parent"] is None  # the header is ignored, base_model with it
        info = client.get(f"/api/models/acme/card{i}")
        assert info.status_code == 200 and "cardData" not in info.json() and len(info.content) < 10_000
        page = client.get(f"/models/acme/card{i}")
        assert page.status_code == 200 and len(page.content) < 200_000
        assert client.get(f"/v1/models/acme/card{i}/versions/1/files/README.md").content == readme
