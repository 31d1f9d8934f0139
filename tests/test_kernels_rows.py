"""Mixed batches keep every fine-tune whole: rows of three full fine-tunes (different embeddings,
head, norms and biases) and base rows, in one batch, equal each single-artifact model row by row, on
the torch backend and through the Triton kernels (the interpreter on a CPU)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from deltazoo.compression.packed import PackedArtifact, PackedFormatError  # noqa: E402

from deltazoo.kernels import (  # noqa: E402
    PerRowModule,
    active_deltas,
    patch_model,
    random_packed_delta,
    set_active_deltas,
    triton_available,
    unpatch_model,
)

transformers = pytest.importorskip("transformers")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_available(), reason="triton is not installed"))]


def tiny(kind: str = "llama", tie: bool = False) -> torch.nn.Module:
    common = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = (transformers.Qwen2Config(**common) if kind == "qwen2" else transformers.LlamaConfig(**common))
    cls = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(config).eval().to(DEVICE)


def full_finetune_artifact(model: torch.nn.Module, seed: int) -> PackedArtifact:
    """Packed linear deltas, and every other tensor changed as a full fine-tune changes it (exact)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    packed, dense = {}, {}
    for name, value in state.items():
        if any(f".{lin}.weight" in name for lin in LINEARS):
            packed[name] = random_packed_delta(tuple(value.shape), n=1, m=32, bits=4, scale_granularity="row",
                                               scale=4e-3, generator=g)
        elif name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        else:
            dense[name] = value + 0.05 * torch.randn(value.shape, generator=g)
    return PackedArtifact(profile="deltadq:n=1,m=32,bits=4", packed=packed, dense=dense, metadata={})


def single(kind: str, artifact: PackedArtifact, backend: str, tie: bool = False) -> torch.nn.Module:
    return patch_model(tiny(kind, tie), artifact, backend=backend)  # type: ignore[arg-type]


def dense(kind: str, artifact: PackedArtifact, tie: bool = False) -> torch.nn.Module:
    # built on the CPU, where the state dict's tied head and embeddings are one tensor: .cpu() copies of
    # a GPU model's would be two, and the unchanged head would overwrite the fine-tuned embeddings
    model = tiny(kind, tie).cpu()
    model.load_state_dict(artifact.apply_to(model.state_dict()))
    return model.to(DEVICE)


PROMPTS = torch.tensor([
    [1, 5, 9, 14, 3, 22, 7, 40],
    [1, 33, 12, 8, 61, 17, 2, 29],
    [1, 4, 4, 50, 11, 9, 30, 6],
    [1, 7, 19, 23, 5, 44, 13, 3],
    [1, 9, 9, 9, 10, 11, 12, 63],
], device=DEVICE)
IDS = [0, 1, -1, 2, 1]


@pytest.mark.parametrize(("backend", "kind", "tie"), [
    ("torch", "llama", False), ("torch", "qwen2", False), ("torch", "llama", True),
    ("triton", "llama", False),
])
def test_mixed_batch_rows_equal_single_artifact_models(backend: str, kind: str, tie: bool) -> None:
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    arts = [full_finetune_artifact(tiny(kind, tie), seed) for seed in (11, 12, 13)]
    mixed = patch_model(tiny(kind, tie), arts, backend=backend)  # type: ignore[arg-type]
    assert any(isinstance(m, PerRowModule) for m in mixed.modules())
    assert set(mixed.state_dict()) == set(tiny(kind, tie).state_dict())  # base names, tables hidden
    # the interpreter runs one program per token and row block: half the tokens, every kind of row still
    prompts = PROMPTS[:, :4] if backend == "triton" else PROMPTS
    with torch.no_grad(), active_deltas(mixed, IDS):
        got = mixed(prompts).logits
    base = tiny(kind, tie)
    with torch.no_grad():
        for row, d in enumerate(IDS):
            prompt = prompts[row : row + 1]
            if d < 0:
                expected = base(prompt).logits[0]
            else:
                expected = single(kind, arts[d], backend, tie)(prompt).logits[0]
                # the single-artifact model is the dense fine-tune (packed deltas read exactly)
                torch.testing.assert_close(expected, dense(kind, arts[d], tie)(prompt).logits[0],
                                           rtol=1e-4, atol=1e-4)
                assert (expected - base(prompt).logits[0]).abs().max() > 1e-2  # it really differs
            torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5)


def test_per_token_ids_and_a_single_id_batch() -> None:
    arts = [full_finetune_artifact(tiny(), seed) for seed in (21, 22)]
    mixed = patch_model(tiny(), arts, backend="torch")
    with torch.no_grad():
        with active_deltas(mixed, [1] * len(PROMPTS)):
            all_one = mixed(PROMPTS).logits
        per_token = torch.full(PROMPTS.shape, 1, device=DEVICE)
        with active_deltas(mixed, per_token):
            torch.testing.assert_close(mixed(PROMPTS).logits, all_one, rtol=1e-5, atol=1e-5)
        expected = single("llama", arts[1], "torch")(PROMPTS).logits
    torch.testing.assert_close(all_one, expected, rtol=1e-5, atol=1e-5)


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids.to(DEVICE), mask.to(DEVICE)


def greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new: int = 8) -> list[list[int]]:
    """New tokens of each row, up to and including EOS (a batch pads rows that stopped early)."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else row)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_with_padding_matches_single_model_runs(backend: str) -> None:
    arts = [full_finetune_artifact(tiny(), seed) for seed in (31, 32, 33)]
    mixed = patch_model(tiny(), arts, backend=backend)  # type: ignore[arg-type]
    prompts = [[1, 5, 9, 14, 3], [1, 33, 12, 8, 61, 17, 2, 29], [1, 4], [1, 7, 19, 23, 5, 44], [1, 60, 3]]
    ids_of_rows, new = IDS, 8
    if backend == "triton":  # the interpreter is slow: fewer rows and tokens, still mixed and padded
        prompts, ids_of_rows, new = prompts[:3], IDS[:3], 4
    ids, mask = left_padded(prompts)
    with active_deltas(mixed, ids_of_rows):
        got = greedy(mixed, ids, mask, new)
    base = tiny()
    for row, d in enumerate(ids_of_rows):
        model = base if d < 0 else single("llama", arts[d], backend)
        one, one_mask = left_padded([prompts[row]])
        assert got[row] == greedy(model, one, one_mask, new)[0], f"row {row} (delta {d})"
    assert any(len(row) == new for row in got)  # not every row stopped at once


def test_modes_refuse_or_keep_the_base_explicitly() -> None:
    a, b = (full_finetune_artifact(tiny(), seed) for seed in (41, 42))
    with pytest.raises(PackedFormatError, match="per-row"):
        patch_model(tiny(), [a, b], on_dense_mismatch="error")
    kept = patch_model(tiny(), [a, b], on_dense_mismatch="keep-base")
    assert not any(isinstance(m, PerRowModule) for m in kept.modules())
    norm = "model.norm.weight"
    torch.testing.assert_close(kept.state_dict()[norm], tiny().state_dict()[norm])
    with pytest.raises(ValueError, match="on_dense_mismatch must be one of"):
        patch_model(tiny(), [a, b], on_dense_mismatch="average")
    grown = PackedArtifact(profile=a.profile, packed=a.packed,
                           dense={**a.dense, "model.norm.weight": torch.ones(65)}, metadata={})
    fresh = tiny()
    with pytest.raises(PackedFormatError, match="resize the model"):
        patch_model(fresh, [grown, b])
    assert not any(isinstance(m, PerRowModule) for m in fresh.modules())  # refused before any change
    mixed = patch_model(tiny(), [a, b])
    with pytest.raises(ValueError, match="set_active_deltas"):
        mixed(PROMPTS)
    with pytest.raises(ValueError, match=r"delta_ids must lie in \[-1, 1\]"):
        set_active_deltas(mixed, [0, 2, 1, 0, 0])
    set_active_deltas(mixed, [0, 1])
    with pytest.raises(ValueError, match="input batch"):
        mixed(PROMPTS)


def test_unpatch_restores_the_base_and_a_new_set_can_be_patched() -> None:
    a, b, c = (full_finetune_artifact(tiny("qwen2"), seed) for seed in (51, 52, 53))
    model = patch_model(tiny("qwen2"), [a, b])
    unpatch_model(model)
    assert type(model.model.norm).__name__ == "Qwen2RMSNorm"
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPTS).logits, tiny("qwen2")(PROMPTS).logits, rtol=0, atol=0)
        patch_model(model, [c, a])
        with active_deltas(model, [0, 1, -1, 0, 1]):
            got = model(PROMPTS).logits
        expected = single("qwen2", c, "torch")(PROMPTS[:1]).logits[0]
        torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[2], tiny("qwen2")(PROMPTS[2:3]).logits[0], rtol=1e-5, atol=1e-5)
