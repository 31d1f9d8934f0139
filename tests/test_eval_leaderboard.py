"""Text sets, the evaluate job and the leaderboard on a tiny byte-level LlamaForCausalLM (made here)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.compression.quality import bits_per_byte, build_causal_lm
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.test_api_support import push, wait_job

PROFILE = "deltadq:n=1,m=32,bits=4"
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
TEXT = ("The quick brown fox jumps over the lazy dog. " * 12 + "Pack my box with five dozen jugs. ") * 2


def _model_state(seed: int, train_steps: int) -> dict[str, torch.Tensor]:
    """A random tiny Llama, optionally fine-tuned a few steps on TEXT (so its bpb really drops)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "architectures"}))
    if train_steps:
        ids = torch.tensor([[1, *TEXT.encode()[:63]]])
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(train_steps):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}


def _files(state: dict[str, torch.Tensor], config: dict[str, Any] | None = CONFIG) -> dict[str, bytes]:
    files = {"model.safetensors": save(state)}
    if config is not None:
        files["config.json"] = json.dumps(config).encode()
    return files


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    base = _model_state(0, 0)
    torch.manual_seed(1)
    finetune = _model_state(0, 12)
    return {"base": base, "ft": finetune}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None, auth=False,
        max_text_bytes=4096,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _ready(client: TestClient, answer: dict) -> None:
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"


def _board(client: TestClient, text: str, count: int, timeout_s: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = client.get("/v1/leaderboard", params={"text": text}).json()["items"]
        done = [i for i in items if i["status"] in ("ready", "not_evaluable", "failed")]
        if len(done) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


def test_bpb_and_gain_kept_reach_the_leaderboard(client: TestClient, states: dict) -> None:
    _ready(client, push(client, "lm/base", _files(states["base"])))
    _ready(client, push(client, "lm/ft", _files(states["ft"]), base="lm/base@1", profiles=[PROFILE]))
    r = client.post("/v1/texts", params={"name": "fox"}, content=TEXT.encode())
    assert r.status_code == 201, r.text
    assert r.json()["bytes"] == len(TEXT.encode())
    assert [t["name"] for t in client.get("/v1/texts").json()["items"]] == ["fox"]

    items = _board(client, "fox", 3)
    assert [i["status"] for i in items] == ["ready"] * 3, items
    by_key = {(i["ref"], i["profile"]): i for i in items}
    assert set(by_key) == {("lm/base@1", None), ("lm/ft@1", None), ("lm/ft@1", PROFILE)}
    ratios = [i["ratio"] for i in items]
    assert ratios == sorted(ratios, reverse=True)
    for i in items:
        assert i["ratio"] == round(8 / i["bpb"], 4)

    # the worker's figures are the ones compression.quality gives on the same weights
    for ref, state in (("lm/base@1", states["base"]), ("lm/ft@1", states["ft"])):
        expected = bits_per_byte(build_causal_lm(CONFIG, state), None, TEXT)
        assert by_key[(ref, None)]["bpb"] == pytest.approx(expected, rel=1e-5)
    base, ft = by_key[("lm/base@1", None)], by_key[("lm/ft@1", None)]
    assert ft["bpb"] < base["bpb"]  # the fine-tune learned the text
    profile = by_key[("lm/ft@1", PROFILE)]
    expected_gain = (base["bpb"] - profile["bpb"]) / (base["bpb"] - ft["bpb"])
    assert profile["gain_kept"] == pytest.approx(expected_gain, abs=1e-5)
    assert profile["stored_bytes"] < ft["logical_bytes"]

    # asking again is harmless: nothing left to do, no job
    again = client.post("/v1/models/lm/ft/versions/1/evaluations", json={"text": "fox"})
    assert again.status_code == 202 and again.json()["job"] is None and again.json()["status"] == "ready"


def test_unknown_architecture_and_missing_config_are_not_evaluable(client: TestClient, states: dict) -> None:
    odd = {**CONFIG, "model_type": "no-such-architecture", "architectures": ["NoSuchForCausalLM"]}
    _ready(client, push(client, "lm/odd", _files(states["base"], odd)))
    _ready(client, push(client, "lm/bare", _files(states["ft"], None)))
    assert client.post("/v1/texts", params={"name": "fox"}, content=TEXT.encode()).status_code == 201
    items = {i["ref"]: i for i in _board(client, "fox", 2)}
    assert items["lm/odd@1"]["status"] == "not_evaluable"
    assert "no-such-architecture" in items["lm/odd@1"]["status_message"]
    assert items["lm/bare@1"]["status"] == "not_evaluable"
    assert "config.json" in items["lm/bare@1"]["status_message"]
    assert items["lm/odd@1"]["bpb"] is None and items["lm/odd@1"]["ratio"] is None


def test_text_set_mistakes_are_clear_4xx(client: TestClient) -> None:
    def post(name: str, data: bytes) -> Any:
        return client.post("/v1/texts", params={"name": name}, content=data)

    assert post("ok", b"hello").status_code == 201
    dup = post("ok", b"hello again")
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "text_exists"
    bad = post("latin", "café".encode("latin-1"))
    assert bad.status_code == 400 and "UTF-8" in bad.json()["error"]["message"]
    assert post("empty", b"  \n").json()["error"]["code"] == "empty_text"
    assert post("big", b"x" * 5000).status_code == 413
    assert post("bad name!", b"x").json()["error"]["code"] == "invalid_text_name"
    assert client.post("/v1/texts", content=b"x").json()["error"]["code"] == "no_name"
    missing = client.get("/v1/leaderboard", params={"text": "nope"})
    assert missing.status_code == 404 and "ok" in missing.json()["error"]["message"]
    assert client.get("/v1/leaderboard").status_code == 400
    unknown = client.post("/v1/models/lm/x/versions/1/evaluations", json={"text": "ok"})
    assert unknown.status_code == 404


def test_a_model_whose_loss_is_not_finite_is_not_evaluable(client: TestClient, states: dict) -> None:
    """NaN weights (a diverged run) give a NaN bpb: no number to rank (nor any JSON can hold), so the
    row says not evaluable and why, the job still succeeds, and the other rows are ranked."""
    broken = {k: v.clone() for k, v in states["base"].items()}
    name = next(k for k in broken if k.endswith("q_proj.weight"))
    broken[name][0, 0] = float("nan")
    _ready(client, push(client, "lm/nan", _files(broken)))
    _ready(client, push(client, "lm/base", _files(states["base"])))
    assert client.post("/v1/texts", params={"name": "fox"}, content=TEXT.encode()).status_code == 201
    items = {i["ref"]: i for i in _board(client, "fox", 2)}
    assert items["lm/nan@1"]["status"] == "not_evaluable", items["lm/nan@1"]
    assert "not finite" in items["lm/nan@1"]["status_message"] and items["lm/nan@1"]["bpb"] is None
    assert items["lm/base@1"]["status"] == "ready"


def test_a_gain_too_small_to_measure_gets_no_share() -> None:
    """A fine-tune 0.002 bpb better than its base on a text: a profile's share of that was -5394 %."""
    from deltazoo.services.leaderboard import MIN_GAIN_BPB, gain_fields

    noise = gain_fields({"bpb_base": 7.983, "bpb_finetune": 7.981, "gain_kept": -53.945})
    assert noise["gain_kept"] is None and "too little" in noise["gain_note"]
    worse = gain_fields({"bpb_base": 2.0, "bpb_finetune": 2.1, "gain_kept": 3.0})
    assert worse["gain_kept"] is None and worse["gain_note"] == "fine-tune did not gain here"
    real = gain_fields({"bpb_base": 2.97, "bpb_finetune": 2.15, "gain_kept": 0.917})
    assert real["gain_kept"] == 0.917 and real["gain_note"] is None and MIN_GAIN_BPB < 0.1


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_text_set_can_be_deleted_with_its_evaluations(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A text registered by mistake kept triggering evaluations forever: `deltazoo text rm` forgets it,
    its evaluations and leaderboard with it, and its bytes once nothing else holds them."""
    from fastapi.testclient import TestClient

    from tests.test_api_roundtrip import embedded_settings
    from tests.test_api_support import base_state, checkpoint, push, wait_job

    settings = embedded_settings(tmp_path / "home")
    if database == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("empty_postgres_url")})
    with TestClient(create_app(settings)) as client:
        job = push(client, "org/m", checkpoint(base_state()))["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        blobs = client.get("/v1/stats").json()["blobs"]
        r = client.post("/v1/texts", params={"name": "oops"}, content=b"not held out " * 50)
        assert r.status_code == 201
        assert client.get("/v1/stats").json()["blobs"] == blobs + 1
        assert client.get("/v1/leaderboard", params={"text": "oops"}).status_code == 200
        assert client.delete("/v1/texts/oops").status_code == 204
        assert client.get("/v1/texts").json()["items"] == []
        assert client.get("/v1/leaderboard", params={"text": "oops"}).status_code == 404
        assert client.get("/v1/stats").json()["blobs"] == blobs
        r = client.delete("/v1/texts/oops")
        assert r.status_code == 404 and r.json()["error"]["code"] == "text_not_found"
        r = client.post("/v1/texts", params={"name": "oops"}, content=b"held out, really")
        assert r.status_code == 201  # the name is free again
