"""patch_model on a tiny LlamaForCausalLM (built from a config, no hub): same logits and the same
greedy generation as the fine-tune reconstructed densely with ``artifact.apply_to``."""

from __future__ import annotations

import pytest
import torch
from deltazoo.compression.packed import PackedArtifact, PackedFormatError, load_artifact, save_artifact

from deltazoo.kernels import DeltaLinear, active_deltas, patch_model, random_packed_delta, set_active_deltas

transformers = pytest.importorskip("transformers")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config).eval()


def synthetic_artifact(model: torch.nn.Module, seed: int, norm_factor: float = 1.25) -> PackedArtifact:
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    packed = {}
    for layer in range(2):
        for i, lin in enumerate(LINEARS):
            name = f"model.layers.{layer}.{lin}.weight"
            gran = ("tensor", "row", "group")[i % 3]
            packed[name] = random_packed_delta(tuple(state[name].shape), n=1, m=32, bits=4,
                                               scale_granularity=gran, group_size=32, scale=3e-3, generator=g)
    dense = {"model.norm.weight": state["model.norm.weight"] * norm_factor}
    return PackedArtifact(profile="deltadq:n=1,m=32,bits=4", packed=packed, dense=dense, metadata={})


def dense_finetune(artifact: PackedArtifact) -> torch.nn.Module:
    model = tiny_llama()
    model.load_state_dict(artifact.apply_to(model.state_dict()))
    return model


PROMPTS = torch.tensor([
    [1, 5, 9, 14, 3, 22, 7, 40],
    [1, 33, 12, 8, 61, 17, 2, 29],
    [1, 4, 4, 50, 11, 9, 30, 6],
])


def greedy(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              pad_token_id=0)


def test_patched_model_matches_the_dense_finetune() -> None:
    artifact = synthetic_artifact(tiny_llama(), seed=1)
    expected_model = dense_finetune(artifact)
    patched = patch_model(tiny_llama(), artifact)
    assert sum(isinstance(m, DeltaLinear) for m in patched.modules()) == 14
    with torch.no_grad():
        base_logits = tiny_llama()(PROMPTS).logits
        expected = expected_model(PROMPTS).logits
        got = patched(PROMPTS).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the fine-tune really differs from the base
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy(patched, PROMPTS), greedy(expected_model, PROMPTS))
    assert set(patched.state_dict()) == set(tiny_llama().state_dict())  # names unchanged, buffers hidden


def test_patch_from_a_saved_container(tmp_path) -> None:
    artifact = synthetic_artifact(tiny_llama(), seed=2)
    save_artifact(artifact, tmp_path / "a.safetensors")
    patched = patch_model(tiny_llama(), load_artifact(tmp_path / "a.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(patched(PROMPTS).logits, dense_finetune(artifact)(PROMPTS).logits,
                                   rtol=1e-4, atol=1e-4)


def test_several_finetunes_in_one_batch() -> None:
    a, b = (synthetic_artifact(tiny_llama(), seed=s) for s in (3, 4))
    patched = patch_model(tiny_llama(), [a, b])
    references = [dense_finetune(a), dense_finetune(b)]
    base = tiny_llama()  # base rows run the base exactly, even where both fine-tunes share a tensor
    ids = [0, 1, -1]
    with torch.no_grad(), active_deltas(patched, ids):
        got = patched(PROMPTS).logits
        generated = greedy(patched, PROMPTS)
    for row, d in enumerate(ids):
        ref = base if d < 0 else references[d]
        with torch.no_grad():
            torch.testing.assert_close(got[row], ref(PROMPTS[row : row + 1]).logits[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(generated[row], greedy(ref, PROMPTS[row : row + 1])[0])
    with pytest.raises(ValueError, match="set_active_deltas"):
        patched(PROMPTS)  # the context manager restored "no choice", which two deltas cannot run with
    with pytest.raises(ValueError, match=r"delta_ids must lie in \[-1, 1\]"):
        set_active_deltas(patched, [0, 2, 1])


def test_mismatched_artifacts_are_refused_on_request_with_advice() -> None:
    a = synthetic_artifact(tiny_llama(), seed=5)
    b = synthetic_artifact(tiny_llama(), seed=6, norm_factor=0.5)
    with pytest.raises(PackedFormatError, match="keep-base"):
        patch_model(tiny_llama(), [a, b], on_dense_mismatch="error")
    patch_model(tiny_llama(), [a, b], on_dense_mismatch="keep-base")
    misplaced = {"model.norm.weight": a.packed["model.layers.0.mlp.up_proj.weight"]}
    bad = PackedArtifact(profile="p", packed=misplaced, dense={}, metadata={})
    with pytest.raises(PackedFormatError, match="not nn.Linear"):
        patch_model(tiny_llama(), bad)


def test_real_deltadq_artifact() -> None:
    deltadq = pytest.importorskip("deltazoo.compression.deltadq")
    base = tiny_llama()
    g = torch.Generator().manual_seed(9)
    finetune_state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}
    artifact = deltadq.build_artifact(base.state_dict(), finetune_state, "deltadq:n=1,m=32,bits=4")
    assert artifact.packed, "the encoder packed no layer"
    patched = patch_model(tiny_llama(), artifact)
    with torch.no_grad():
        torch.testing.assert_close(patched(PROMPTS).logits, dense_finetune(artifact)(PROMPTS).logits,
                                   rtol=1e-4, atol=1e-4)
