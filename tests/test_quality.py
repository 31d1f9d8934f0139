"""Bits-per-byte against a hand computation on a tiny random byte-level Llama; baselines' byte counts."""

from __future__ import annotations

import math

import pytest
import torch
from deltazoo.compression.baselines import dare, kept_for_budget, magnitude, mask_entropy_bits, sparse_bytes
from deltazoo.compression.quality import NotEvaluable, bits_per_byte, build_causal_lm, gain_kept

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
TEXT = "def f(x):\n    return x * 2  # é\n" * 3  # 99 bytes, one two-byte character per line


def _state() -> dict[str, torch.Tensor]:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIG))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model():
    return build_causal_lm(CONFIG, _state())


def _bits(model, ids: list[int], scored_from: int) -> float:
    """-log2 p of ids[scored_from:] given everything before, one forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return -sum(logp[i - 1, ids[i]].item() for i in range(scored_from, len(ids))) / math.log(2)


def test_bpb_by_hand_with_bos_and_windows(model):
    data = list(TEXT.encode("utf-8"))
    window = 16
    total = 0.0
    for start in range(0, len(data), window - 1):
        total += _bits(model, [1] + data[start : start + window - 1], 1)
    assert bits_per_byte(model, None, TEXT, window=window) == pytest.approx(total / len(data), rel=1e-5)
    # the window defaults to the config's max_position_embeddings
    assert bits_per_byte(model, None, TEXT) == pytest.approx(total / len(data), rel=1e-5)


def test_bpb_sliding_scores_each_byte_once(model):
    data = list(TEXT.encode("utf-8"))
    window, stride = 16, 5
    total, first = 0.0, 0
    while first < len(data):
        end = min(first + stride, len(data))
        start = max(0, first - (window - 1 - stride))
        total += _bits(model, [1] + data[start:end], 1 + first - start)
        first = end
    got = bits_per_byte(model, None, TEXT, window=window, stride=stride, batch_size=3)
    assert got == pytest.approx(total / len(data), rel=1e-5)


def test_bpb_without_bos_charges_the_first_byte_uniformly(model):
    text = TEXT[:30]
    data = list(text.encode("utf-8"))
    assert len(data) == 30
    model.config.bos_token_id = None
    try:
        got = bits_per_byte(model, None, text, window=16)
    finally:
        model.config.bos_token_id = 1
    # windows of 16 tokens: the first scores bytes 1..15, the next bytes 16..29 with byte 15 as context
    total = 8.0 + _bits(model, data[:16], 1) + _bits(model, data[15:30], 1)
    assert got == pytest.approx(total / 30, rel=1e-5)


def test_bpb_rejects_bad_input(model):
    with pytest.raises(ValueError, match="empty text"):
        bits_per_byte(model, None, "")
    with pytest.raises(ValueError, match="stride"):
        bits_per_byte(model, None, TEXT, window=16, stride=16)
    model.config.vocab_size = 100
    try:
        with pytest.raises(NotEvaluable, match="at least 256"):
            bits_per_byte(model, None, TEXT)
    finally:
        model.config.vocab_size = 256


def test_gain_kept():
    assert gain_kept(3.0, 2.0, 2.1) == pytest.approx(0.9)
    assert gain_kept(3.0, 2.0, 3.5) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="no gain"):
        gain_kept(2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="did not gain"):  # was 1.11: -0.5 / -0.45 read as "111 % kept"
        gain_kept(2.0, 2.45, 2.5)


def test_build_causal_lm_refuses_what_it_cannot_build():
    state = _state()
    with pytest.raises(NotEvaluable, match="model_type"):
        build_causal_lm({k: v for k, v in CONFIG.items() if k != "model_type"}, state)
    with pytest.raises(NotEvaluable, match="no-such-arch"):
        build_causal_lm({**CONFIG, "model_type": "no-such-arch"}, state)
    with pytest.raises(NotEvaluable, match="missing"):
        build_causal_lm(CONFIG, {k: v for k, v in state.items() if "q_proj" not in k})
    with pytest.raises(NotEvaluable, match="unexpected"):
        build_causal_lm(CONFIG, {**state, "stray.weight": torch.zeros(1)})


def test_dare_and_magnitude_keep_and_rescale():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 64, generator=gen)
    ft = base + torch.randn(64, 64, generator=gen) * 0.1
    delta = ft - base
    approx = dare(ft, base, keep=0.25, name="w") - base
    kept = approx != 0
    assert 0.18 < kept.float().mean().item() < 0.32
    torch.testing.assert_close(approx[kept], (delta * 4)[kept], rtol=1e-2, atol=1e-3)  # bf16 values
    mag = magnitude(ft, base, keep=0.1) - base
    kept = mag != 0
    assert kept.sum().item() == round(0.1 * 64 * 64)
    assert delta[kept].abs().min() >= delta[~kept].abs().max()
    q = magnitude(ft, base, keep=0.1, value_bits=4) - base
    levels = (q[q != 0].abs() / q.abs().max() * 7).round()
    assert levels.max().item() == 7 and levels.min().item() >= 1


def test_equal_byte_budget():
    assert mask_entropy_bits(100, 0) == 0.0 and mask_entropy_bits(100, 50) == pytest.approx(100.0)
    numel = 4096 * 512
    assert sparse_bytes(numel, 1000, 16) == math.ceil((16_000 + mask_entropy_bits(numel, 1000)) / 8)
    budget = 40_000
    kept = kept_for_budget(numel, budget, value_bits=4)
    assert sparse_bytes(numel, kept, 4) <= budget < sparse_bytes(numel, kept + 1, 4)
    assert kept_for_budget(numel, budget, value_bits=16) < kept


def test_a_config_without_sizes_is_not_built_at_its_default_size() -> None:
    """{"model_type": "llama"} alone means Llama's defaults (billions of parameters): refused before any
    memory is allocated for it, not built for a checkpoint of a few weights."""
    with pytest.raises(NotEvaluable, match="describes .* parameters but the checkpoint holds 64 weights"):
        build_causal_lm({"model_type": "llama"}, {"model.embed_tokens.weight": torch.zeros(8, 8)})


def test_a_bos_outside_the_vocabulary_is_not_evaluable_and_says_why(model):
    model.config.bos_token_id = 50256  # GPT-2's, in a config whose vocabulary is far smaller
    try:
        with pytest.raises(NotEvaluable, match="bos_token_id 50256 is outside its vocabulary"):
            bits_per_byte(model, None, TEXT[:30], window=16)
    finally:
        model.config.bos_token_id = 1


def test_an_unknown_architecture_says_so_in_a_short_message():
    with pytest.raises(NotEvaluable) as caught:
        build_causal_lm({"model_type": "no-such-architecture"}, {})
    assert "no-such-architecture" in str(caught.value) and len(str(caught.value)) < 420
