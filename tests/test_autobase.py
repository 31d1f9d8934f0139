"""base="auto": the server picks the true parent from value sketches, among look-alike stored models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from deltazoo.services.similarity import RELATED_THRESHOLD, sample_window, similarity
from fastapi.testclient import TestClient

from tests.checkpoints import TINY_LLAMA_SHAPES, finetune_of, random_tensors
from tests.test_api_support import checkpoint, push, wait_job


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _push_ready(
    client: TestClient, name: str, state: dict[str, torch.Tensor], base: str | None = None
) -> dict:
    answer = push(client, name, checkpoint(state), base=base)
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    return answer


def test_auto_picks_the_true_base_among_look_alikes(client: TestClient) -> None:
    base = random_tensors(TINY_LLAMA_SHAPES, seed=0)
    unrelated = random_tensors(TINY_LLAMA_SHAPES, seed=7)  # same architecture, independent weights
    ft = finetune_of(base, seed=1)
    _push_ready(client, "zoo/base", base)
    _push_ready(client, "zoo/unrelated", unrelated)
    _push_ready(client, "zoo/ft", ft, base="zoo/base@1")

    sibling = push(client, "zoo/sibling", checkpoint(finetune_of(base, seed=2)), base="auto")
    assert sibling["version"]["parent"] == "zoo/base@1"
    assert sibling["version"]["parent_similarity"] >= RELATED_THRESHOLD
    assert wait_job(client, sibling["job"]["id"])["status"] == "succeeded"
    detail = client.get("/v1/models/zoo/sibling/versions/1").json()
    assert detail["parent"] == "zoo/base@1" and detail["relation"] == "finetune"
    for t in detail["tensors"]:  # coded against the base, or (tiny) stored as its bytes are
        assert t["encoding"] in ("delta", "same") or t["stored_bytes"] == t["logical_bytes"] + 8, t

    grandchild = push(client, "zoo/ft-of-ft", checkpoint(finetune_of(ft, seed=3, noise=0.02)), base="auto")
    assert grandchild["version"]["parent"] == "zoo/ft@1"


def test_no_base_gets_a_suggestion_only(client: TestClient) -> None:
    base = random_tensors(TINY_LLAMA_SHAPES, seed=0)
    _push_ready(client, "zoo/base", base)
    answer = push(client, "zoo/ft", checkpoint(finetune_of(base, seed=1)))
    assert answer["version"]["parent"] is None
    suggestion = answer["version"]["suggested_base"]
    assert suggestion["ref"] == "zoo/base@1" and suggestion["similarity"] >= RELATED_THRESHOLD

    lone = push(client, "zoo/lone", checkpoint(random_tensors(TINY_LLAMA_SHAPES, seed=9)), base="auto")
    assert lone["version"]["parent"] is None and lone["version"]["suggested_base"] is None
    assert lone["version"]["parent_similarity"] is None


def test_similarity_scores_relatives_high_and_strangers_low() -> None:
    def sketch(state: dict[str, torch.Tensor]) -> dict:
        out = {}
        for name, t in state.items():
            start, count = sample_window(name, tuple(t.shape))
            values = t.flatten()[start : start + count].float().tolist()
            out[name] = {"dtype": "BF16", "shape": list(t.shape), "values": values}
        return {"tensors": out}

    base = random_tensors(TINY_LLAMA_SHAPES, seed=0)
    assert similarity(sketch(finetune_of(base)), sketch(base)) > 0.9
    assert similarity(sketch(random_tensors(TINY_LLAMA_SHAPES, seed=4)), sketch(base)) < 0.1
    assert similarity(sketch(base), sketch(base)) == 1.0
    assert similarity({"tensors": {}}, sketch(base)) == 0.0


def test_auto_prefers_the_ancestor_when_a_sibling_scores_about_as_high(client: TestClient) -> None:
    base = random_tensors(TINY_LLAMA_SHAPES, seed=20)
    step = {
        k: (v.float() * 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(21)))
        for k, v in base.items()
    }
    new = {k: (v.float() + step[k]).to(v.dtype) for k, v in base.items()}  # relative change ~5%
    near_sibling = {k: (v.float() + 0.1 * step[k]).to(v.dtype) for k, v in base.items()}  # leans towards new
    _push_ready(client, "fam/base", base)
    _push_ready(client, "fam/sibling", near_sibling, base="fam/base@1")
    answer = push(client, "fam/new", checkpoint(new), base="auto")
    detail = answer["version"]
    assert detail["parent"] == "fam/base@1", detail
    assert detail["suggested_base"] is None or detail["suggested_base"]["ref"] == "fam/base@1"
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"


def test_auto_keeps_a_chain_a_chain(client: TestClient) -> None:
    """A fine-tune of the last link of a chain gets that link as its parent, not the root its ancestors
    all resemble too (each step 2 % of the weights' spread: c3 is twice as close as c0)."""
    state = random_tensors(TINY_LLAMA_SHAPES, seed=30)
    _push_ready(client, "chain/c0", state)
    for i in range(1, 4):
        state = finetune_of(state, seed=30 + i, noise=0.02, unchanged="")
        _push_ready(client, f"chain/c{i}", state, base=f"chain/c{i - 1}@1")
    answer = push(
        client, "chain/c4", checkpoint(finetune_of(state, seed=40, noise=0.02, unchanged="")), base="auto"
    )
    assert answer["version"]["parent"] == "chain/c3@1", answer["version"]
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
