"""DeltaDQ select=importance (unbiased importance-sampled dropout) and alloc=sensitivity (byte budget)."""

from __future__ import annotations

import pytest
import torch
from deltazoo.compression.deltadq import build_artifact, compress_delta, parse_profile
from deltazoo.compression.deltadq_alloc import Choice, allocate, importance_keep, inclusion


def _heavy_delta(rows: int = 4, cols: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) ** 3 * 0.01  # heavy-tailed, like fine-tune deltas


@pytest.mark.parametrize(("n", "mix"), [(1, 0), (2, 0), (1, 30)])
def test_importance_estimator_is_unbiased_over_seeds(n, mix):
    delta = _heavy_delta()
    delta[0, :32] = 0.0  # an all-zero group: uniform draw, value 0
    delta3 = delta.reshape(4, 2, 32)
    total = torch.zeros_like(delta3)
    seeds = 4000
    for seed in range(seeds):
        pos, values = importance_keep(delta3, n, mix, seed)
        assert pos.shape == (4, 2, n) and bool((pos.diff(dim=-1) > 0).all())
        total.scatter_add_(-1, pos, values)
    mean = total / seeds
    # standard error of the mean per entry: |d| * sqrt(1/p - 1) / sqrt(seeds)
    p = inclusion(delta3.reshape(4, 2, n, 32 // n), mix).reshape(4, 2, 32)
    se = delta3.abs() * (1 / p.clamp_min(1e-9) - 1).sqrt() / seeds**0.5
    assert bool(((mean - delta3).abs() <= 5 * se + 1e-7).all())
    assert float((mean - delta3).abs().max()) < 0.2 * float(delta3.abs().max())


def test_importance_has_less_variance_than_uniform_dropout():
    delta3 = _heavy_delta().reshape(4, 2, 32)
    p_imp = inclusion(delta3.reshape(4, 2, 1, 32), 0).reshape(4, 2, 32)
    var_imp = float((delta3.square() * (1 / p_imp - 1)).sum())
    var_uniform = float((delta3.square() * (32 - 1)).sum())
    assert var_imp < 0.8 * var_uniform


def test_importance_profile_packs_and_reproduces():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(6, 64, generator=gen)
    ft = (base + _heavy_delta(6, 64)).to(torch.bfloat16)
    base = base.to(torch.bfloat16)
    a = compress_delta(ft, base, "deltadq:n=2,m=32,bits=8,select=importance", "w")
    b = compress_delta(ft, base, "deltadq:n=2,m=32,bits=8,select=importance", "w")
    assert torch.equal(a.to_dense(), b.to_dense()) and (a.n, a.m, a.bits) == (2, 32, 8)
    cols = a.to_dense().ne(0).nonzero()[:, 1] % 32
    assert bool(cols.lt(16).any()) and bool(cols.ge(16).any())  # one per sub-block of 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deltadq:n=3,m=32,select=importance", "n dividing m"),
        ("deltadq:select=importance,rescale=sum", "rescale=mn"),
        ("deltadq:select=importance,mix=101", "percentage"),
        ("deltadq:mix=10", "only applies to select=importance"),
        ("deltadq:alloc=sensitivity,fit=refit", "alloc=sensitivity picks"),
        ("deltadq:alloc=greedy", "alloc='greedy' is not one of"),
    ],
)
def test_new_options_reject_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_profile(text)


def test_new_options_parse_canonically():
    p = parse_profile("deltadq:alloc=sensitivity,mix=25,select=importance,n=1,m=32,bits=4")
    assert str(p) == "deltadq:n=1,m=32,bits=4,select=importance,mix=25,alloc=sensitivity"
    assert parse_profile(str(p)) == p and p.needs_calibration
    assert not parse_profile("deltadq:select=importance").needs_calibration


def test_allocate_respects_the_budget_and_prefers_sensitive_layers():
    def opts(weight: float) -> list[Choice]:
        return [Choice(n, 32, 4, 100 * n, weight / n) for n in (1, 2, 4)]

    choices = {"quiet": opts(1.0), "loud": opts(100.0), "mid": opts(10.0)}
    for budget in (300, 450, 600, 777, 1200):
        chosen = allocate(choices, budget)
        assert sum(c.nbytes for c in chosen.values()) <= budget
    chosen = allocate(choices, 600)
    assert chosen["loud"].n >= chosen["mid"].n >= chosen["quiet"].n
    assert chosen["loud"].n > 1
    with pytest.raises(ValueError, match="below the cheapest"):
        allocate(choices, 299)


def test_alloc_artifact_stays_within_the_uniform_bytes_and_needs_calibration():
    gen = torch.Generator().manual_seed(2)
    base = {f"l{i}.weight": torch.randn(32, 64, generator=gen) for i in range(3)}
    scale = {"l0.weight": 0.001, "l1.weight": 0.01, "l2.weight": 0.1}
    ft = {k: (v + _heavy_delta(32, 64, i) * scale[k] * 100).to(torch.bfloat16)
          for i, (k, v) in enumerate(base.items())}
    base = {k: v.to(torch.bfloat16) for k, v in base.items()}
    x = torch.randn(256, 64, generator=gen)
    hessians = dict.fromkeys(base, x.T @ x / 256)
    uniform = build_artifact(base, ft, "deltadq:n=1,m=32,bits=4")
    alloc = build_artifact(base, ft, "deltadq:n=1,m=32,bits=4,alloc=sensitivity", calibration=hessians)
    assert alloc.profile == "deltadq:n=1,m=32,bits=4,alloc=sensitivity"
    assert sum(d.nbytes for d in alloc.packed.values()) <= sum(d.nbytes for d in uniform.packed.values())
    err = {
        name: sum(float((a.packed[k].to_dense() - ft[k].float() + base[k]).square().sum()) for k in ft)
        for name, a in (("uniform", uniform), ("alloc", alloc))
    }
    assert err["alloc"] < err["uniform"]
    with pytest.raises(ValueError, match="needs calibration"):
        build_artifact(base, ft, "deltadq:alloc=sensitivity")
    with pytest.raises(ValueError, match="build the whole artifact"):
        compress_delta(ft["l0.weight"], base["l0.weight"], "deltadq:alloc=sensitivity", "l0.weight")
