"""Triton delta kernels against the torch reference and the dense delta.

Without a GPU the kernels run in the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
``deltazoo.kernels.triton_delta`` is first imported (deltazoo.kernels imports it lazily, so setting it
here at collection time is early enough). Shapes are small; arithmetic is float32 on the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

triton_delta = pytest.importorskip("deltazoo.kernels.triton_delta")

from deltazoo.kernels import (  # noqa: E402
    batched_delta_add_,
    batched_delta_matmul_reference,
    delta_matmul,
    delta_matmul_reference,
    linear_with_delta,
    random_packed_delta,
    stack_deltas,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_kernels_run_where_this_test_runs() -> None:
    # An import of triton_delta before TRITON_INTERPRET was set would build GPU-only kernels.
    assert torch.cuda.is_available() or triton_delta.is_interpreted(), (
        "deltazoo.kernels.triton_delta was imported before TRITON_INTERPRET=1 was set"
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("granularity", ["tensor", "row", "group"])
def test_triton_matches_reference_and_dense(bits: int, m: int, granularity: str) -> None:
    g = torch.Generator().manual_seed(bits * 1000 + m)
    n = 2 if m >= 8 else 1
    # 20 rows: a partial row block; 128 columns with m=4, n=1: 32 kept entries per row.
    delta = random_packed_delta((20, 128), n=n, m=m, bits=bits, scale_granularity=granularity,
                                group_size=64, generator=g, device=DEVICE)
    x = torch.randn(3, 128, generator=g).to(DEVICE)
    dense = x @ delta.to_dense().T
    got = delta_matmul(x, delta, backend="triton")
    torch.testing.assert_close(got, delta_matmul_reference(x, delta), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-5)


def test_triton_walks_several_blocks_of_kept_entries() -> None:
    # 2:4 over 512 columns keeps 256 entries per row: two BLOCK_C=128 passes; 3-bit codes straddle words.
    g = torch.Generator().manual_seed(7)
    delta = random_packed_delta((5, 512), n=2, m=4, bits=3, scale_granularity="row", generator=g,
                                device=DEVICE)
    x = torch.randn(2, 512, generator=g).to(DEVICE)
    torch.testing.assert_close(delta_matmul(x, delta, backend="triton"), x @ delta.to_dense().T,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,m,granularity", [(4, 32, "tensor"), (3, 32, "group"), (2, 8, "row")])
def test_one_launch_serves_several_deltas(bits: int, m: int, granularity: str) -> None:
    g = torch.Generator().manual_seed(11)
    deltas = [random_packed_delta((24, 64), n=1, m=m, bits=bits, scale_granularity=granularity,
                                  group_size=32, generator=g, device=DEVICE) for _ in range(4)]
    stack = stack_deltas(deltas)
    x = torch.randn(9, 64, generator=g).to(DEVICE)
    ids = torch.tensor([3, -1, 0, 1, 3, 2, -1, 0, 2], device=DEVICE)
    y0 = torch.randn(9, 24, generator=g).to(DEVICE)
    got = batched_delta_add_(y0.clone(), x, stack, ids, backend="triton")
    expected = y0 + batched_delta_matmul_reference(x, stack, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for b, d in enumerate(ids.tolist()):  # -1 rows are left exactly as they were
        if d < 0:
            assert torch.equal(got[b], y0[b])


def test_linear_with_delta_triton_equals_torch() -> None:
    g = torch.Generator().manual_seed(12)
    delta = random_packed_delta((16, 64), n=1, m=16, bits=4, generator=g, device=DEVICE)
    w, bias = torch.randn(16, 64, generator=g).to(DEVICE), torch.randn(16, generator=g).to(DEVICE)
    x = torch.randn(2, 2, 64, generator=g).to(DEVICE)
    torch.testing.assert_close(linear_with_delta(x, w, delta, bias=bias, backend="triton"),
                               linear_with_delta(x, w, delta, bias=bias, backend="torch"),
                               rtol=1e-5, atol=1e-5)


@gpu_only
def test_bf16_on_gpu_matches_fp32_reference() -> None:
    g = torch.Generator().manual_seed(13)
    delta = random_packed_delta((4096, 4096), n=1, m=32, bits=4, generator=g, device="cuda")
    w = (torch.randn(4096, 4096, generator=g) * 0.02).to("cuda", torch.bfloat16)
    x = torch.randn(8, 4096, generator=g).to("cuda", torch.bfloat16)
    got = linear_with_delta(x, w, delta, backend="triton").float()
    expected = x.float() @ (w.float() + delta.to_dense()).T
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_delta_linear_with_triton_backend_and_per_token_ids() -> None:
    from deltazoo.kernels import DeltaLinear

    g = torch.Generator().manual_seed(14)
    base = torch.nn.Linear(64, 32).to(DEVICE)
    deltas = [random_packed_delta((32, 64), n=1, m=32, bits=4, generator=g, device=DEVICE) for _ in range(2)]
    stack = stack_deltas(deltas)
    layer_triton = DeltaLinear(base, stack, backend="triton")
    layer_fused = DeltaLinear(base, stack, backend="triton", fused=True)
    layer_torch = DeltaLinear(base, stack, backend="torch")
    x = torch.randn(2, 3, 64, generator=g).to(DEVICE)
    per_token = torch.tensor([[0, 1, -1], [1, 1, 0]], device=DEVICE)
    for layer in (layer_triton, layer_fused, layer_torch):
        layer.set_delta_ids(per_token)
    with torch.no_grad():
        got = layer_triton(x)
        torch.testing.assert_close(got, layer_torch(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer_fused(x), got, rtol=1e-5, atol=1e-5)
        dense = torch.stack([base.weight.detach() + d.to_dense() for d in deltas])
        for b in range(2):
            for t in range(3):
                d = int(per_token[b, t])
                w = base.weight.detach() if d < 0 else dense[d]
                expected = x[b, t] @ w.T + base.bias.detach()
                torch.testing.assert_close(got[b, t], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,m,granularity", [(4, 32, "tensor"), (3, 8, "group"), (8, 64, "row")])
def test_fused_base_and_delta_kernel(bits: int, m: int, granularity: str) -> None:
    g = torch.Generator().manual_seed(15)
    deltas = [random_packed_delta((24, 192), n=1, m=m, bits=bits, scale_granularity=granularity,
                                  group_size=64, generator=g, device=DEVICE) for _ in range(3)]
    stack = stack_deltas(deltas)
    w, bias = torch.randn(24, 192, generator=g).to(DEVICE), torch.randn(24, generator=g).to(DEVICE)
    x = torch.randn(5, 192, generator=g).to(DEVICE)  # 192 columns: a partial BLOCK_K=128 tile
    ids = torch.tensor([2, -1, 0, 1, 0], device=DEVICE)
    for b_ in (bias, None):
        expected = linear_with_delta(x, w, stack, bias=b_, delta_ids=ids, backend="torch")
        got = linear_with_delta(x, w, stack, bias=b_, delta_ids=ids, backend="triton", fused=True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # 5 tokens: base GEMM + BGMV
        for t in range(5):  # one token at a time (a decode step): the fused kernel
            one = linear_with_delta(x[t : t + 1], w, stack, bias=b_, delta_ids=ids[t : t + 1],
                                    backend="triton", fused=True)
            torch.testing.assert_close(one, expected[t : t + 1], rtol=1e-5, atol=1e-4)


def test_fused_kernel_serves_one_token_inputs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # from 4 tokens up the fused kernel measured slower than base GEMM + BGMV on an H200
    g = torch.Generator().manual_seed(17)
    delta = random_packed_delta((16, 64), n=1, m=32, bits=4, generator=g, device=DEVICE)
    w = torch.randn(16, 64, generator=g).to(DEVICE)
    calls: list[int] = []
    real = triton_delta.fused_linear_delta

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return real(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(triton_delta, "fused_linear_delta", spy)
    for tokens in (1, 3):
        x = torch.randn(1, tokens, 64, generator=g).to(DEVICE)
        torch.testing.assert_close(linear_with_delta(x, w, delta, backend="triton", fused=True),
                                   linear_with_delta(x, w, delta, backend="torch"), rtol=1e-5, atol=1e-4)
    assert calls == [1]


@pytest.mark.parametrize("block_tokens,block_rows,block_cols", [
    (1, 4, 64), (2, 16, 128), (4, 8, 1024), (1, 1, 64), (8, 2, 128),
])
def test_fused_kernel_token_and_row_blocks(block_tokens: int, block_rows: int, block_cols: int) -> None:
    # 7 tokens: a partial token block for 2 and 4; 20 rows: a partial row block for 8 and 16
    g = torch.Generator().manual_seed(16)
    stack = stack_deltas([random_packed_delta((20, 160), n=1, m=32, bits=4, scale_granularity="row",
                                              generator=g, device=DEVICE) for _ in range(3)])
    w, bias = torch.randn(20, 160, generator=g).to(DEVICE), torch.randn(20, generator=g).to(DEVICE)
    x = torch.randn(7, 160, generator=g).to(DEVICE)
    ids = torch.tensor([1, -1, 0, 2, 2, -1, 0], dtype=torch.int32, device=DEVICE)
    y = triton_delta.fused_linear_delta(x, w, bias, stack, ids, block_rows=block_rows, block_cols=block_cols,
                                        block_tokens=block_tokens)
    expected = linear_with_delta(x, w, stack, bias=bias, delta_ids=ids, backend="torch")
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
