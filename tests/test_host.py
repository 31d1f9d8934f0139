"""``deltazoo host`` against a real registry server: three fine-tunes and the base answered in the same
forward passes, with the greedy completions of single-model runs; deltas fetched on demand into an
LRU with a byte budget; clear errors; and a host process that runs without the server packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from deltazoo import Client

transformers = pytest.importorskip("transformers")

from deltazoo.compression.packed import load_artifact  # noqa: E402

from deltazoo.host import Host, HostSettings  # noqa: E402
from deltazoo.host.http import serve  # noqa: E402
from deltazoo.host.store import artifact_bytes  # noqa: E402
from deltazoo.kernels import patch_model  # noqa: E402

PROFILE = "deltadq:n=1,m=32,bits=4"
EOS = 2
PROMPTS = {"base": "def add(a, b):", "ft0": "The quick brown", "ft1": "import os\n", "ft2": "Hello, world"}


def tiny_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=96, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=EOS, pad_token_id=0,
    )


def save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@dataclass
class Zoo:
    url: str
    base: str
    finetunes: list[str]  # refs, each with PROFILE built
    folders: dict[str, Path]  # ref -> checkpoint folder
    stranger: str  # a model with another base
    unbuilt: str  # a fine-tune of the base without the profile
    grandchild: str  # a fine-tune of ft0 (its delta is against ft0), with the profile
    frozen: str  # a fine-tune that left one layer as the base's (its artifact packs one layer less)
    grown: str  # a fine-tune with a larger vocabulary (its embeddings do not fit the base)


@pytest.fixture(scope="module")
def zoo(embedded_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    root = tmp_path_factory.mktemp("host-zoo")
    org = f"host-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = transformers.LlamaForCausalLM(tiny_config()).eval()
        other = transformers.LlamaForCausalLM(tiny_config()).eval()
    folders: dict[str, Path] = {}
    with Client(embedded_server, cache_dir=root / "pusher-cache") as c:
        base_v = c.push(save(base, root / "base"), f"{org}/base", quiet=True)
        folders[base_v.ref] = root / "base"
        refs = []
        for i in range(4):
            g = torch.Generator().manual_seed(100 + i)
            ft = transformers.LlamaForCausalLM(tiny_config()).eval()
            # a full fine-tune: every tensor moves (embeddings, head and norms too)
            ft.load_state_dict({k: v + 0.08 * v.abs().mean() * torch.randn(v.shape, generator=g)
                                for k, v in base.state_dict().items()})
            name = f"{org}/ft{i}" if i < 3 else f"{org}/unbuilt"
            folder = save(ft, root / name.split("/")[1])
            v = c.push(folder, name, base=base_v.ref, profiles=[PROFILE] if i < 3 else [], quiet=True)
            assert v.status == "ready"
            folders[v.ref] = folder
            refs.append(v.ref)
        stranger = c.push(save(other, root / "other"), f"{org}/other", quiet=True)
        more = odd_finetunes(c, org, base, base_v.ref, refs, folders, root)
    yield Zoo(embedded_server, base_v.ref, refs[:3], folders, stranger.ref, refs[3], *more)


def odd_finetunes(
    c: Client, org: str, base: torch.nn.Module, base_ref: str, refs: list[str], folders: dict[str, Path],
    root: Path,
) -> tuple[str, str, str]:
    """A fine-tune of ft0, one of ft1 with a layer left as the base's, one of ft2 with a grown vocabulary."""
    def load(ref: str) -> torch.nn.Module:
        return transformers.AutoModelForCausalLM.from_pretrained(str(folders[ref])).eval()

    gc, g = load(refs[0]), torch.Generator().manual_seed(200)
    with torch.no_grad():
        for p in gc.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
    grandchild = c.push(save(gc, root / "gc"), f"{org}/gc", base=refs[0], profiles=[PROFILE], quiet=True)
    frozen_model = load(refs[1])
    with torch.no_grad():
        frozen_model.model.layers[0].self_attn.q_proj.weight.copy_(base.model.layers[0].self_attn.q_proj.weight)
    frozen = c.push(save(frozen_model, root / "frozen"), f"{org}/frozen", base=base_ref, profiles=[PROFILE],
                    quiet=True)
    folders[frozen.ref] = root / "frozen"
    grown_model = load(refs[2])
    grown_model.resize_token_embeddings(300)
    grown = c.push(save(grown_model, root / "grown"), f"{org}/grown", base=base_ref, profiles=[PROFILE],
                   quiet=True)
    return grandchild.ref, frozen.ref, grown.ref


def greedy_single(folder: Path, artifact_path: Path | None, prompt: list[int], new: int) -> list[int]:
    """The single-model run: the base (patched with one artifact) and transformers' generate."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    if artifact_path is not None:
        patch_model(model, load_artifact(artifact_path))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             pad_token_id=0, eos_token_id=EOS)
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def byte_text(tokens: list[int]) -> str:
    return bytes(t for t in tokens if t != EOS).decode("utf-8", errors="replace")


@pytest.fixture
def host(zoo: Zoo, tmp_path: Path) -> Iterator[Host]:
    client = Client(zoo.url, cache_dir=tmp_path / "host-cache")
    h = Host(client, HostSettings(base=zoo.base, profile=PROFILE, device="cpu", backend="torch"))
    try:
        yield h
    finally:
        h.close()
        client.close()


def test_three_finetunes_and_the_base_in_one_batch_over_http(zoo: Zoo, host: Host, tmp_path: Path) -> None:
    server = serve(host, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    models = {"base": zoo.base, **{f"ft{i}": ref for i, ref in enumerate(zoo.finetunes)}}
    new = 12
    results: dict[str, dict] = {}
    streamed: dict[str, str] = {}

    def ask(label: str) -> None:
        body = {"model": models[label], "prompt": PROMPTS[label], "max_tokens": new, "temperature": 0}
        if label == "ft2":  # one of the rows streams
            with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True},
                              timeout=120) as r:
                assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
                lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            chunks = [json.loads(ln) for ln in lines[:-1]]
            streamed[label] = "".join(ch["choices"][0]["text"] for ch in chunks)
            results[label] = {"finish_reason": chunks[-1]["choices"][0]["finish_reason"]}
        else:
            r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            results[label] = r.json()

    try:
        # every fine-tune is fetched on the first request naming it; warm them, then hold the engine
        # so that the four concurrent requests start in the same forward pass
        for label in ("ft0", "ft1", "ft2"):
            ask(label)
        assert sorted(host.store.resident()) == sorted(f"{r}:{PROFILE}" for r in zoo.finetunes)
        assert host.store.loads == 3
        with host.engine.hold():
            threads = [threading.Thread(target=ask, args=(label,)) for label in models]
            for t in threads:
                t.start()
            deadline = time.time() + 60
            while host.engine.waiting < 4 and time.time() < deadline:
                time.sleep(0.02)
            assert host.engine.waiting == 4
        for t in threads:
            t.join(120)
        listed = httpx.get(f"{server.url}/v1/models", timeout=30).json()
    finally:
        server.shutdown()
        server.server_close()
    assert host.store.loads == 3  # no second fetch
    assert any(len(set(keys)) == 4 for keys in host.engine.mixed_steps), "the four rows never shared a pass"
    with Client(zoo.url, cache_dir=tmp_path / "ref-cache") as c:
        for label, ref in models.items():
            prompt = host.tokenizer.encode(PROMPTS[label])
            art = c.fetch_delta_file(ref, PROFILE, quiet=True) if label != "base" else None
            expected = greedy_single(zoo.folders[zoo.base], art, prompt, new)
            got = streamed[label] if label in streamed else results[label]["choices"][0]["text"]
            assert got == byte_text(expected), f"{label}: {got!r} != {byte_text(expected)!r}"
            finish = results[label]["finish_reason"] if label in streamed else results[label]["choices"][0][
                "finish_reason"]
            assert finish == ("stop" if expected[-1:] == [EOS] else "length")
    ids = [m["id"] for m in listed["data"]]
    assert ids[0] == zoo.base and set(zoo.finetunes) <= set(ids)


def test_lru_eviction_and_on_demand_fetch(zoo: Zoo, tmp_path: Path) -> None:
    client = Client(zoo.url, cache_dir=tmp_path / "cache")
    probe = load_artifact(client.fetch_delta_file(zoo.finetunes[0], PROFILE, quiet=True))
    size = artifact_bytes(probe)
    host = Host(client, HostSettings(base=zoo.base, profile=PROFILE, budget_bytes=2 * size + size // 2,
                                     device="cpu", backend="torch"))
    try:
        outs = {ref: host.complete(ref, "abc", max_tokens=4) for ref in zoo.finetunes}
        keys = [f"{r}:{PROFILE}" for r in zoo.finetunes]
        assert host.store.loads == 3 and host.store.evictions == [keys[0]]
        assert host.store.resident() == keys[1:] and host.store.used <= host.store.budget
        downloaded = client.bytes_downloaded
        assert host.complete(zoo.finetunes[0], "abc", max_tokens=4) == outs[zoo.finetunes[0]]  # fetched again
        assert host.store.loads == 4 and host.store.evictions == [keys[0], keys[1]]
        assert client.bytes_downloaded == downloaded  # from the client's disk cache, not the wire
        host.complete(zoo.finetunes[2], "abc", max_tokens=4)  # resident: no load
        assert host.store.loads == 4
    finally:
        host.close()
        client.close()


def test_clear_errors(zoo: Zoo, tmp_path: Path) -> None:
    client = Client(zoo.url, cache_dir=tmp_path / "cache")
    host = Host(client, HostSettings(base=zoo.base, profile=PROFILE, budget_bytes=1000, device="cpu",
                                     backend="torch"))
    server = serve(host, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def post(body: object, path: str = "/v1/completions") -> httpx.Response:
        if isinstance(body, bytes):  # JSON httpx will not write (NaN)
            return httpx.post(f"{server.url}{path}", content=body, timeout=60)
        return httpx.post(f"{server.url}{path}", json=body, timeout=60)

    try:
        cases = [
            ({"model": zoo.finetunes[0], "prompt": "x"}, 413, "over_budget"),
            ({"model": zoo.stranger, "prompt": "x"}, 400, "not_a_descendant"),
            ({"model": zoo.grandchild, "prompt": "x"}, 400, "not_a_child"),  # its delta is against ft0
            (f'{{"model": "{zoo.base}", "prompt": "x", "temperature": NaN}}'.encode(), 400, "bad_request"),
            ({"model": zoo.base, "prompt": "x", "seed": 2**64}, 400, "bad_request"),
            ({"model": zoo.unbuilt, "prompt": "x"}, 409, "profile_not_built"),
            ({"model": f"{zoo.finetunes[0]}:deltadq:n=2,m=32,bits=4", "prompt": "x"}, 400,
             "profile_not_served"),
            ({"model": zoo.base.split("@")[0] + "-missing", "prompt": "x"}, 404, "model_not_found"),
            ({"model": zoo.base, "prompt": "x", "max_tokens": 0}, 400, "bad_max_tokens"),
            ({"model": zoo.base, "prompt": "x" * 200}, 400, "prompt_too_long"),
            ({"model": zoo.base, "prompt": "x", "stop": ["\n"]}, 400, "unsupported"),
            ({"model": zoo.base}, 400, "bad_prompt"),
            ({"prompt": "x"}, 400, "missing_model"),
            ([1, 2], 400, "bad_json"),
        ]
        for body, status, code in cases:
            r = post(body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
            assert r.json()["error"]["message"]
        r = post({"model": zoo.base, "messages": [{"role": "user", "content": "hi"}]}, "/v1/chat/completions")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "no_chat_template")
        assert "over_budget" not in str(host.store.resident())
        ok = post({"model": zoo.base, "prompt": "x", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3
    finally:
        server.shutdown()
        server.server_close()
        host.close()
        client.close()


def test_build_missing_asks_the_server_and_waits(zoo: Zoo, tmp_path: Path) -> None:
    client = Client(zoo.url, cache_dir=tmp_path / "cache")
    host = Host(client, HostSettings(base=zoo.base, profile=PROFILE, device="cpu", backend="torch",
                                     build_missing=True, build_timeout=120))
    try:
        got = host.complete(zoo.unbuilt, "abc", max_tokens=4)
        art = client.fetch_delta_file(zoo.unbuilt, PROFILE, quiet=True)
        expected = greedy_single(zoo.folders[zoo.base], art, host.tokenizer.encode("abc"), 4)
        assert got == byte_text(expected)
    finally:
        host.close()
        client.close()


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"api", "registry", "workers", "fastapi", "sqlalchemy", "celery", "uvicorn", "alembic", "minio"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the host imported server package {name}")
sys.meta_path.insert(0, Block())
from deltazoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_host_command_runs_without_the_server_packages(zoo: Zoo, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DELTAZOO_CACHE": str(tmp_path / "cache"), "DELTAZOO_HOME": str(tmp_path / "home")}
    log = (tmp_path / "host.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKER, "--url", zoo.url, "host", zoo.base, "--port", str(port),
         "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, (tmp_path / "host.log").read_text()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                       json={"model": zoo.finetunes[1], "prompt": "abc", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_fine_tunes_of_another_layout_take_turns_and_never_break_the_others(zoo: Zoo, host: Host) -> None:
    """A fine-tune that left a layer frozen packs one layer less, so it cannot share a pass with the
    others: it runs in a pass of its own (the same tokens as its single-model run) and the others go on
    as before; one whose embeddings do not fit the base (a grown vocabulary) is refused before it is
    kept, instead of failing every fine-tune's request after it (it did until the host restarted)."""
    from deltazoo.host.errors import HostError

    prompt = list(PROMPTS["ft1"].encode())
    frozen_path = Client(zoo.url).fetch_delta_file(zoo.frozen, PROFILE, quiet=True)
    expected = {
        zoo.finetunes[0]: host.client.fetch_delta_file(zoo.finetunes[0], PROFILE, quiet=True),
        zoo.frozen: frozen_path,
    }
    with host.engine.hold():  # both submitted before the next step: the engine sees them together
        runs = {ref: host.start(ref, prompt, max_tokens=6) for ref in (zoo.finetunes[0], zoo.frozen)}
    for ref, c in runs.items():
        c.wait(120)
        assert c.error is None, c.error
        single = greedy_single(zoo.folders[zoo.base], expected[ref], prompt, 6)
        assert c.tokens == single, ref
    assert not any(
        zoo.frozen in step and zoo.finetunes[0] in step for step in map(str, host.engine.mixed_steps)
    )
    with pytest.raises(HostError) as refused:
        host.start(zoo.grown, prompt, max_tokens=2)
    assert refused.value.status == 409 and refused.value.code == "incompatible_artifact"
    assert "embed_tokens" in str(refused.value) or "lm_head" in str(refused.value)
    again = host.start(zoo.finetunes[0], prompt, max_tokens=6).wait(120)
    assert again.error is None and again.tokens == runs[zoo.finetunes[0]].tokens
    tiny = host.start(zoo.base, prompt, max_tokens=6, temperature=1e-40).wait(120)  # greedy, not NaN
    assert tiny.error is None and tiny.tokens == host.start(zoo.base, prompt, max_tokens=6).wait(120).tokens


def test_host_options_and_profiles_are_checked_and_spelled_canonically(zoo: Zoo, host: Host) -> None:
    """``--max-batch 0`` hung every request and a malformed ``--profile`` started a host that served
    nothing; a profile asked for in another spelling was refused as another profile."""
    from deltazoo.cli import main
    from deltazoo.host.errors import HostError

    for argv in (["--max-batch", "0"], ["--profile", "garbage"], ["--port", "99999"]):
        with pytest.raises(SystemExit) as exited:
            main(["host", zoo.base, *argv])
        assert exited.value.code == 2, argv
    same = host.resolve(f"{zoo.finetunes[0]}:deltadq:bits=4,m=32,n=1")  # the profile it serves, reordered
    assert same == f"{zoo.finetunes[0]}:{PROFILE}"
    with pytest.raises(HostError) as bad:
        host.resolve(f"{zoo.finetunes[0]}:garbage")
    assert bad.value.code == "invalid_profile"
