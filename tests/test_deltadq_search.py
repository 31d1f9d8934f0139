"""DeltaDQ select=search: the best of several importance draws per group on calibration inputs."""

from __future__ import annotations

import pytest
import torch
from deltazoo.compression.deltadq import build_artifact, compress_delta, parse_profile
from deltazoo.compression.deltadq_alloc import importance_keep
from deltazoo.compression.deltadq_search import DRAW_STRIDE, search_keep


def _layer(rows: int = 16, cols: int = 128, tokens: int = 1024, seed: int = 0):
    """Heavy-tailed delta, and the Hessian of correlated inputs (low-rank mixing plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(6, cols, generator=gen)
    x = torch.randn(tokens, 6, generator=gen) @ mix + 0.2 * torch.randn(tokens, cols, generator=gen)
    base = torch.randn(rows, cols, generator=gen)
    delta = torch.randn(rows, cols, generator=gen) ** 3 * 0.01
    return (base + delta).to(torch.bfloat16), base.to(torch.bfloat16), x.T @ x / tokens


def _row_errors(pos: torch.Tensor, val: torch.Tensor, delta3: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    rows = delta3.shape[0]
    dense = torch.zeros_like(delta3, dtype=torch.float64).scatter_(-1, pos, val.double())
    e = (dense - delta3.double()).reshape(rows, -1)
    return ((e @ h.double()) * e).sum(1)


@pytest.mark.parametrize(("n", "ridge"), [(1, 0), (1, 500), (2, 500)])
def test_search_never_does_worse_than_the_first_draw_on_its_objective(n, ridge):
    ft, base, h = _layer()
    delta3 = (ft.float() - base.float()).reshape(16, 4, 32)
    objective = h.double() + ridge / 100 * h.diagonal().mean().double() * torch.eye(128, dtype=torch.float64)
    first = importance_keep(delta3, n, 0, 7)
    pos, val = search_keep(delta3, h, n, 0, 7, draws=8, ridge=ridge)
    assert pos.shape == (16, 4, n) and bool((pos.diff(dim=-1) > 0).all())
    searched = _row_errors(pos, val, delta3, objective)
    start = _row_errors(*first, delta3, objective)
    assert bool((searched <= start * (1 + 1e-9)).all())
    assert float(searched.sum()) < 0.9 * float(start.sum())
    # every kept value is the Horvitz–Thompson value of one of the draws at that position
    draws = [importance_keep(delta3, n, 0, 7 + k * DRAW_STRIDE) for k in range(8)]
    assert all(
        any(torch.equal(pos[r, g], p[r, g]) and torch.equal(val[r, g], v[r, g]) for p, v in draws)
        for r in range(16) for g in range(4)
    )


def test_one_draw_is_select_importance():
    ft, base, h = _layer()
    a = compress_delta(ft, base, "deltadq:n=1,m=32,bits=4,select=importance", "w.weight")
    b = compress_delta(ft, base, "deltadq:n=1,m=32,bits=4,select=search,draws=1", "w.weight", h)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


def test_search_profile_is_deterministic_seeded_and_lowers_output_error():
    ft, base, h = _layer()
    delta = ft.float() - base.float()

    def out_err(packed) -> float:
        e = (packed.to_dense(torch.float32) - delta).double()
        return float(((e @ h.double()) * e).sum())

    profile = "deltadq:n=1,m=32,bits=4,select=search"
    a = compress_delta(ft, base, profile, "w.weight", h)
    b = compress_delta(ft, base, profile, "w.weight", h)
    c = compress_delta(ft, base, profile + ",seed=1", "w.weight", h)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert not torch.equal(a.indices, c.indices)
    imp = compress_delta(ft, base, "deltadq:n=1,m=32,bits=4,select=importance", "w.weight")
    assert a.nbytes == imp.nbytes
    assert out_err(a) < out_err(imp)


def test_search_needs_calibration_and_checks_it():
    ft, base, h = _layer()
    profile = parse_profile("deltadq:select=search,draws=4,ridge=300")
    assert profile.needs_calibration
    assert str(profile) == "deltadq:n=1,m=32,bits=4,select=search,draws=4,ridge=300"
    assert parse_profile(str(profile)) == profile
    with pytest.raises(ValueError, match="needs calibration"):
        compress_delta(ft, base, profile, "w.weight")
    with pytest.raises(ValueError, match=r"w\.weight: calibration matrix is \[64, 64\]"):
        compress_delta(ft, base, profile, "w.weight", h[:64, :64])
    with pytest.raises(ValueError, match="needs calibration"):
        build_artifact({"w.weight": base}, {"w.weight": ft}, profile)
    art = build_artifact({"w.weight": base}, {"w.weight": ft}, profile, calibration={"w.weight": h})
    assert art.profile == str(profile) and set(art.packed) == {"w.weight"}


def test_search_works_under_alloc_sensitivity():
    ft, base, h = _layer(rows=32)
    profile = "deltadq:n=1,m=32,bits=4,select=search,draws=2,alloc=sensitivity"
    art = build_artifact({"w.weight": base}, {"w.weight": ft}, profile, calibration={"w.weight": h})
    assert art.profile == profile
    assert set(art.packed) == {"w.weight"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deltadq:draws=4", "only apply to select=search"),
        ("deltadq:select=importance,ridge=100", "only apply to select=search"),
        ("deltadq:select=search,draws=0", "between 1 and 256"),
        ("deltadq:select=search,draws=257", "between 1 and 256"),
        ("deltadq:select=search,ridge=-1", "non-negative integer"),
        ("deltadq:select=search,fit=refit", "fit=minmax"),
        ("deltadq:n=3,m=32,select=search", "n dividing m"),
        ("deltadq:select=search,mix=101", "percentage"),
    ],
)
def test_search_options_reject_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_profile(text)
