"""Torch reference for packed deltas: against the dense ``to_dense()`` delta, and its error messages."""

from __future__ import annotations

import pytest
import torch
from deltazoo.compression.packed import PackedFormatError

from deltazoo.kernels import (
    batched_delta_matmul_reference,
    delta_matmul,
    delta_matmul_reference,
    linear_with_delta,
    random_packed_delta,
    stack_deltas,
)
from deltazoo.kernels import reference as reference_module

GRANULARITIES = ("tensor", "row", "group")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_reference_matches_dense(bits: int, m: int, granularity: str) -> None:
    g = _gen(bits * 100 + m)
    n = 2 if m >= 8 else 1
    delta = random_packed_delta((12, 128), n=n, m=m, bits=bits, scale_granularity=granularity,
                                group_size=64, generator=g)
    x = torch.randn(5, 128, generator=g)
    expected = x @ delta.to_dense().T
    torch.testing.assert_close(delta_matmul_reference(x, delta), expected, rtol=1e-5, atol=1e-6)


def test_reference_chunks_rows_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gen(1)
    delta = random_packed_delta((37, 64), n=1, m=8, bits=4, generator=g)
    x = torch.randn(3, 64, generator=g)
    whole = delta_matmul_reference(x, delta)
    monkeypatch.setattr(reference_module, "_GATHER_BUDGET", 40)  # 40 // (3 * 8) = 1 row per chunk
    torch.testing.assert_close(delta_matmul_reference(x, delta), whole, rtol=0, atol=0)


def test_batched_reference_routes_each_token_to_its_delta() -> None:
    g = _gen(2)
    deltas = [random_packed_delta((16, 64), n=1, m=16, bits=3, scale_granularity="row", generator=g)
              for _ in range(3)]
    x = torch.randn(7, 64, generator=g)
    ids = torch.tensor([2, -1, 0, 1, 2, 0, -1])
    out = batched_delta_matmul_reference(x, stack_deltas(deltas), ids)
    for b, d in enumerate(ids.tolist()):
        expected = torch.zeros(16) if d < 0 else x[b] @ deltas[d].to_dense().T
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


def test_linear_with_delta_equals_the_dense_fine_tune() -> None:
    g = _gen(3)
    delta = random_packed_delta((24, 64), n=1, m=32, bits=4, scale_granularity="group", group_size=32,
                                generator=g)
    w, bias = torch.randn(24, 64, generator=g), torch.randn(24, generator=g)
    x = torch.randn(2, 3, 64, generator=g)
    expected = torch.nn.functional.linear(x, w + delta.to_dense(), bias)
    torch.testing.assert_close(linear_with_delta(x, w, delta, bias=bias, backend="torch"), expected,
                               rtol=1e-5, atol=1e-5)


def test_stacking_refuses_mixed_layouts() -> None:
    a = random_packed_delta((8, 64), n=1, m=32, bits=4, generator=_gen(4))
    b = random_packed_delta((8, 64), n=1, m=32, bits=3, generator=_gen(5))
    with pytest.raises(PackedFormatError, match="bits=3 .* same profile"):
        stack_deltas([a, b])


def test_bad_inputs_say_what_to_do() -> None:
    delta = random_packed_delta((8, 64), n=1, m=32, bits=4, generator=_gen(6))
    with pytest.raises(ValueError, match=r"x must be \[batch, 64\].*reshape"):
        delta_matmul_reference(torch.randn(2, 3, 64), delta)
    with pytest.raises(ValueError, match=r"delta_ids must lie in \[-1, 0\]"):
        batched_delta_matmul_reference(torch.randn(2, 64), stack_deltas([delta]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="backend must be one of"):
        delta_matmul(torch.randn(2, 64), delta, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass delta_ids"):
        linear_with_delta(torch.randn(2, 64), torch.randn(8, 64), stack_deltas([delta, delta]))
