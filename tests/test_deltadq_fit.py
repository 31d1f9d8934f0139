"""Calibrated DeltaDQ fits (fit=refit|gptq|obs, select=obs) and input Hessian collection."""

from __future__ import annotations

import pytest
import torch
from deltazoo.compression.calibration import collect_hessians
from deltazoo.compression.deltadq import build_artifact, compress_delta, parse_profile
from deltazoo.compression.deltadq_fit import damped, refit
from deltazoo.compression.packed import index_bits, unpack_code_rows


def _layer(rows: int = 24, cols: int = 128, tokens: int = 2048, seed: int = 0):
    """A weight pair and the Hessian of strongly correlated inputs (low-rank mixing plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, cols, generator=gen)
    x = torch.randn(tokens, 8, generator=gen) @ mix + 0.1 * torch.randn(tokens, cols, generator=gen)
    base = torch.randn(rows, cols, generator=gen)
    ft = base + 0.01 * torch.randn(rows, cols, generator=gen)
    return ft, base, x.T @ x / tokens


def _output_error(ft, base, h, profile, hessian=None) -> float:
    approx = compress_delta(ft, base, profile, "w.weight", hessian).to_dense().double()
    e = (ft - base).double() - approx
    return float(((e @ h.double()) * e).sum())


def test_refit_lowers_output_error_below_the_paper_rescale():
    ft, base, h = _layer()
    paper = _output_error(ft, base, h, "deltadq:n=1,m=16,bits=4")
    refit_err = _output_error(ft, base, h, "deltadq:n=1,m=16,bits=4,fit=refit", h)
    gptq = _output_error(ft, base, h, "deltadq:n=1,m=16,bits=4,fit=gptq", h)
    obs = _output_error(ft, base, h, "deltadq:n=1,m=16,bits=4,fit=obs", h)
    assert refit_err < 0.5 * paper
    assert obs <= gptq * (1 + 1e-9)  # the grid contains the min-max scale that gptq uses


def test_calibrated_fits_keep_the_seeded_random_mask():
    ft, base, h = _layer()
    a = compress_delta(ft, base, "deltadq:n=1,m=16,bits=4", "w.weight")
    b = compress_delta(ft, base, "deltadq:n=1,m=16,bits=4,fit=obs", "w.weight", h)
    assert torch.equal(a.indices, b.indices) and a.seed == b.seed


def test_refit_is_the_least_squares_optimum():
    ft, base, h = _layer(rows=3, cols=32)
    hd = damped(h, 32, "w")
    delta = (ft - base).float()
    columns = torch.tensor([[0, 5, 9, 31], [1, 2, 3, 4], [7, 8, 20, 30]])
    got = refit(delta, columns, hd)
    root = torch.linalg.cholesky(hd)  # ‖Lᵀ(d − ŵ)‖² = (d − ŵ)ᵀH(d − ŵ)
    for r in range(3):
        a = root.T[:, columns[r]]
        want = torch.linalg.lstsq(a, root.T @ delta[r].double()).solution
        assert torch.allclose(got[r].double(), want, rtol=1e-4, atol=1e-7)


def test_anchor_pulls_toward_the_paper_values():
    ft, base, h = _layer()
    hd = damped(h, 128, "w")
    delta = (ft - base).float()
    columns = torch.arange(0, 128, 16).repeat(4, 1)
    anchor = delta[:4].gather(1, columns) * 16
    free = refit(delta[:4], columns, hd)
    pulled = refit(delta[:4], columns, hd, anchor, 1e6)
    assert (pulled - anchor).abs().max() < 1e-3 * anchor.abs().max()
    assert (free - anchor).abs().max() > 0.1 * anchor.abs().max()


def test_select_obs_with_identity_hessian_is_magnitude_selection():
    ft, base, _ = _layer()
    eye = torch.eye(128)
    obs = compress_delta(ft, base, "deltadq:n=2,m=16,bits=8,select=obs,fit=refit", "w.weight", eye)
    mag = compress_delta(ft, base, "deltadq:n=2,m=16,bits=8,select=magnitude", "w.weight")
    bits = index_bits(16)
    assert torch.equal(unpack_code_rows(obs.indices, 16, bits), unpack_code_rows(mag.indices, 16, bits))


def test_calibrated_profiles_without_calibration_say_what_to_do():
    ft, base, h = _layer()
    with pytest.raises(ValueError, match="needs calibration"):
        compress_delta(ft, base, "deltadq:n=1,m=16,bits=4,fit=obs", "w.weight")
    with pytest.raises(ValueError, match="needs calibration"):
        build_artifact({"w.weight": base}, {"w.weight": ft}, "deltadq:n=1,m=16,bits=4,fit=obs")
    with pytest.raises(ValueError, match="no calibration matrix for w.weight"):
        build_artifact({"w.weight": base}, {"w.weight": ft}, "deltadq:n=1,m=16,bits=4,fit=obs", {})
    with pytest.raises(ValueError, match=r"expected \[128, 128\]"):
        compress_delta(ft, base, "deltadq:n=1,m=16,bits=4,fit=obs", "w.weight", torch.eye(64))
    assert parse_profile("deltadq:n=1,m=32,bits=4").needs_calibration is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deltadq:select=obs", "add fit=refit"),
        ("deltadq:fit=obs,rescale=none", "drop rescale=none"),
        ("deltadq:anchor=10", "only applies to fit=refit"),
    ],
)
def test_calibrated_option_mistakes(text, message):
    with pytest.raises(ValueError, match=message):
        parse_profile(text)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def test_collect_hessians_matches_the_layer_inputs():
    model = _tiny_llama()
    text = "def f(x):\n    return x * 2\n" * 3  # 84 bytes: 5 full windows of 15 and one of 9
    hs = collect_hessians(model, text, window=16)
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(hs) == linear
    ids = torch.tensor(list(text.encode()))
    rows = []
    with torch.no_grad():
        for w in torch.split(ids, 15):
            hidden = model.model(input_ids=torch.cat([torch.tensor([1]), w])[None]).last_hidden_state
            rows.append(hidden[0, 1:])  # BOS positions are left out
    x = torch.cat(rows).double()
    assert torch.allclose(hs["lm_head.weight"].double(), x.T @ x / len(x), rtol=1e-4, atol=1e-6)
    q = hs["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q, hs["model.layers.0.self_attn.k_proj.weight"]) and torch.allclose(q, q.T)


def test_collect_hessians_refuses_empty_input():
    with pytest.raises(ValueError, match="empty text"):
        collect_hessians(_tiny_llama(), "")
