"""Triton kernels that apply packed N:M low-bit deltas straight from their packed layout.

``_delta_bgmv_kernel`` adds the deltas to an output that torch's base GEMM already produced;
``_fused_gemv_delta_kernel`` computes base and delta in one pass (one-token decode steps: 1.01-1.05x
the base GEMV alone on an H200, where base GEMM + BGMV costs 1.4x). Each serves both
the single-delta case (a stack of one, every token using delta 0) and the multi-tenant case (Punica
BGMV / DeltaZip SBMM: token ``b`` uses delta ``delta_ids[b]``, ``-1`` = base only).

Program ``(r, b)`` owns output rows ``r*BLOCK_R ...`` of token ``b``. It walks the rows' kept
entries ``BLOCK_C`` at a time, reads their codes from the packed 32-bit words (two words when a code
straddles a word boundary: 3-bit values, 3- and 5-bit indices), gathers the matching columns of
``x`` and accumulates ``Σ q·scale·x`` in float32. The dense delta is never formed. Arithmetic is
float32 whatever the storage dtype (the Triton interpreter, used by the CPU tests with
``TRITON_INTERPRET=1``, has no bf16 arithmetic; the kernel tests also pass compiled on an H200,
bf16 included: BENCHMARKS.md, GPU delta path).

This module imports triton at import time; ``deltazoo.kernels`` imports it only when triton is
installed and a kernel is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltazoo.compression.packed import index_bits

from .stacked import StackedDeltas

_GRANULARITY = {"tensor": 0, "row": 1, "group": 2}


@triton.jit
def _read_codes(row_words, j, mask, BITS: tl.constexpr):
    """Codes ``j`` (``[BLOCK_C]``) of the LSB-first ``BITS``-bit streams of rows ``row_words``."""
    bit = j * BITS
    word = bit // 32
    shift = (bit % 32).to(tl.uint32)
    lo = tl.load(row_words + word[None, :], mask=mask, other=0).to(tl.uint32, bitcast=True)
    codes = lo >> shift[None, :]
    if 32 % BITS != 0:  # a code may straddle two words
        cross = (bit % 32 + BITS) > 32
        hi = tl.load(row_words + word[None, :] + 1, mask=mask & cross[None, :], other=0)
        hi_shift = tl.where(cross, 32 - shift, 0).to(tl.uint32)
        codes = codes | (hi.to(tl.uint32, bitcast=True) << hi_shift[None, :])
    return (codes & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def _delta_rows(
    x_row, d, rows, rmask, C, stride_xk,
    val_ptr, idx_ptr, scale_ptr, val_sd, val_sr, idx_sd, idx_sr, sc_sd, sc_sr,
    N: tl.constexpr, M: tl.constexpr, BITS: tl.constexpr, IBITS: tl.constexpr,
    GRAN: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """float32 ``[BLOCK_R]``: rows ``rows`` of delta ``d`` dotted with the input row at ``x_row``."""
    vrow = val_ptr + d * val_sd + rows[:, None].to(tl.int64) * val_sr
    irow = idx_ptr + d * idx_sd + rows[:, None].to(tl.int64) * idx_sr
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        j = c0 + tl.arange(0, BLOCK_C)
        mask = rmask[:, None] & (j < C)[None, :]
        q = _read_codes(vrow, j, mask, BITS) - (1 << (BITS - 1))
        if IBITS > 0:  # noqa: SIM108 (a constexpr branch: the m == 1 kernel has no index stream)
            pos = _read_codes(irow, j, mask, IBITS)
        else:
            pos = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int32)
        col = (j // N)[None, :] * M + pos
        xv = tl.load(x_row + col * stride_xk, mask=mask, other=0.0).to(tl.float32)
        prod = q.to(tl.float32) * xv
        if GRAN == 2:
            sp = scale_ptr + d * sc_sd + rows[:, None].to(tl.int64) * sc_sr + col // GROUP
            prod = prod * tl.load(sp, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(prod, axis=1)
    if GRAN == 0:
        acc = acc * tl.load(scale_ptr + d * sc_sd).to(tl.float32)
    if GRAN == 1:
        acc = acc * tl.load(scale_ptr + d * sc_sd + rows * sc_sr, mask=rmask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _delta_bgmv_kernel(
    x_ptr, y_ptr, ids_ptr, val_ptr, idx_ptr, scale_ptr,
    R, C,
    stride_xb, stride_xk, stride_yb, stride_yr,
    val_sd, val_sr, idx_sd, idx_sr, sc_sd, sc_sr,
    N: tl.constexpr, M: tl.constexpr, BITS: tl.constexpr, IBITS: tl.constexpr,
    GRAN: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y[b, rows] += x[b] · ΔŴ[ids[b]][rows]ᵀ``; program (r, b)."""
    pid_r = tl.program_id(0)
    b = tl.program_id(1)
    d = tl.load(ids_ptr + b).to(tl.int64)
    if d >= 0:
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        acc = _delta_rows(x_ptr + b.to(tl.int64) * stride_xb, d, rows, rmask, C, stride_xk,
                          val_ptr, idx_ptr, scale_ptr, val_sd, val_sr, idx_sd, idx_sr, sc_sd, sc_sr,
                          N, M, BITS, IBITS, GRAN, GROUP, BLOCK_R, BLOCK_C)
        yp = y_ptr + b.to(tl.int64) * stride_yb + rows * stride_yr
        y = tl.load(yp, mask=rmask, other=0.0).to(tl.float32)
        tl.store(yp, (y + acc).to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _fused_gemv_delta_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, ids_ptr, val_ptr, idx_ptr, scale_ptr,
    B, R, K, C,
    stride_xb, stride_xk, stride_wr, stride_wk, stride_yb, stride_yr,
    val_sd, val_sr, idx_sd, idx_sr, sc_sd, sc_sr,
    HAS_BIAS: tl.constexpr,
    N: tl.constexpr, M: tl.constexpr, BITS: tl.constexpr, IBITS: tl.constexpr,
    GRAN: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y[b, rows] = x[b] · (W_base + ΔŴ[ids[b]])[rows]ᵀ + bias`` in one pass (small batches).

    Program (r, t) owns rows ``r*BLOCK_R ...`` of tokens ``t*BLOCK_B ...``: each ``W_base`` tile is
    read once and multiplied with every token of the block, then each token adds its own delta."""
    pid_r = tl.program_id(0)
    tok0 = tl.program_id(1) * BLOCK_B
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    sel = tl.arange(0, BLOCK_B)
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_wr
    acc = tl.zeros([BLOCK_B, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        w = tl.load(w_rows + k[None, :] * stride_wk, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = w.to(tl.float32)
        for i in tl.static_range(BLOCK_B):
            b = tl.minimum(tok0 + i, B - 1)  # past the batch: a copy of the last token, never stored
            xv = tl.load(x_ptr + b.to(tl.int64) * stride_xb + k * stride_xk, mask=kmask, other=0.0)
            part = tl.sum(w * xv.to(tl.float32)[None, :], axis=1)
            acc = tl.where((sel == i)[:, None], acc + part[None, :], acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    for i in range(BLOCK_B):
        b = tok0 + i
        d = tl.load(ids_ptr + b, mask=b < B, other=-1).to(tl.int64)
        if d >= 0:
            part = _delta_rows(x_ptr + b.to(tl.int64) * stride_xb, d, rows, rmask, C, stride_xk,
                               val_ptr, idx_ptr, scale_ptr, val_sd, val_sr, idx_sd, idx_sr, sc_sd, sc_sr,
                               N, M, BITS, IBITS, GRAN, GROUP, BLOCK_R, BLOCK_C)
            acc = tl.where((sel == i)[:, None], acc + part[None, :], acc)
    toks = tok0 + sel
    yp = y_ptr + toks[:, None].to(tl.int64) * stride_yb + rows[None, :] * stride_yr
    tl.store(yp, acc.to(y_ptr.dtype.element_ty), mask=(toks < B)[:, None] & rmask[None, :])


def _words(packed: torch.Tensor) -> torch.Tensor:
    """View ``uint8[..., stride]`` rows (stride a multiple of 4) as int32 words."""
    if packed.shape[-1] == 0:  # m == 1: no index stream; the kernel never reads it
        return torch.zeros(1, dtype=torch.int32, device=packed.device)
    return packed.contiguous().view(torch.int32)


def is_interpreted() -> bool:
    """True when this module's kernels were built by the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return type(_delta_bgmv_kernel).__name__ == "InterpretedFunction"


def _require_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not is_interpreted():
        raise RuntimeError(
            "the Triton delta kernels need CUDA tensors; on a CPU use backend='torch', or set "
            "TRITON_INTERPRET=1 before deltazoo.kernels.triton_delta is first imported"
        )


def _delta_args(deltas: StackedDeltas, block_kept: int) -> tuple[list[object], dict[str, int]]:
    """Pointer/stride arguments and constexprs of the packed buffers, shared by both kernels."""
    vals, idxs = _words(deltas.values), _words(deltas.indices)
    scales = deltas.scales.contiguous()
    args: list[object] = [
        vals, idxs, scales,
        vals.stride(0) if vals.dim() == 3 else 0, vals.stride(1) if vals.dim() == 3 else 0,
        idxs.stride(0) if idxs.dim() == 3 else 0, idxs.stride(1) if idxs.dim() == 3 else 0,
        scales.stride(0), scales.stride(1) if scales.dim() > 1 else 0,
    ]
    meta = dict(
        N=deltas.n, M=deltas.m, BITS=deltas.bits, IBITS=index_bits(deltas.m),
        GRAN=_GRANULARITY[deltas.scale_granularity], GROUP=max(1, deltas.group_size),
        BLOCK_C=min(block_kept, triton.next_power_of_2(max(1, deltas.kept_per_row))),
    )
    return args, meta


def delta_bgmv_add_(
    y: torch.Tensor, x: torch.Tensor, deltas: StackedDeltas, delta_ids: torch.Tensor,
    block_rows: int = 16, block_kept: int = 128,
) -> torch.Tensor:
    """In place ``y[b] += x[b] @ ΔŴ[delta_ids[b]]ᵀ`` for ``x [batch, cols]``, ``y [batch, rows]``.

    ``delta_ids`` is int32 ``[batch]`` and must already lie in ``[-1, num_deltas)`` (not re-checked,
    to keep the launch free of device synchronisation). Returns ``y``.
    """
    _require_device(x)
    batch, rows, kept = x.shape[0], deltas.rows, deltas.kept_per_row
    if batch == 0 or rows == 0 or kept == 0:
        return y
    (vals, idxs, scales, *strides), meta = _delta_args(deltas, block_kept)
    grid = (triton.cdiv(rows, block_rows), batch)
    _delta_bgmv_kernel[grid](
        x, y, delta_ids, vals, idxs, scales, rows, kept,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), *strides,
        BLOCK_R=block_rows, **meta,
    )
    return y


def fused_linear_delta(
    x: torch.Tensor, w_base: torch.Tensor, bias: torch.Tensor | None, deltas: StackedDeltas,
    delta_ids: torch.Tensor, block_rows: int | None = None, block_cols: int = 1024, block_kept: int = 128,
    block_tokens: int | None = None, num_warps: int = 4,
) -> torch.Tensor:
    """``x[b] @ (W_base + ΔŴ[delta_ids[b]])ᵀ + bias`` in one launch, GEMV-style: one program per
    ``block_rows`` rows and ``block_tokens`` tokens (default: the batch rounded up to a power of two,
    at most 4), so each ``W_base`` tile is read once per token block.

    Measured on an H200 (BENCHMARKS.md, GPU delta path; CUDA graphs, bf16): with one token it costs
    1.01-1.05x ``F.linear`` alone (defaults: 2 rows, 1024 columns a tile, 4 warps); from 4 tokens up it
    is slower than ``F.linear`` + the BGMV kernel, so ``linear_with_delta(fused=True)`` sends only
    one-token inputs here. Same id contract as ``delta_bgmv_add_``; the result has ``x``'s dtype."""
    _require_device(x)
    batch, rows, cols = x.shape[0], deltas.rows, deltas.cols
    y = torch.empty((batch, rows), dtype=x.dtype, device=x.device)
    if batch == 0 or rows == 0:
        return y
    if block_tokens is None:
        block_tokens = min(4, triton.next_power_of_2(batch))
    if block_rows is None:
        block_rows = 2 if block_tokens == 1 else 4
    (vals, idxs, scales, *strides), meta = _delta_args(deltas, block_kept)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(batch, block_tokens))
    _fused_gemv_delta_kernel[grid](
        x, w_base, bias if bias is not None else w_base, y, delta_ids, vals, idxs, scales,
        batch, rows, cols, deltas.kept_per_row,
        x.stride(0), x.stride(1), w_base.stride(0), w_base.stride(1), y.stride(0), y.stride(1), *strides,
        HAS_BIAS=bias is not None, BLOCK_B=block_tokens, BLOCK_R=block_rows,
        BLOCK_K=min(block_cols, triton.next_power_of_2(max(1, cols))), num_warps=num_warps, **meta,
    )
    return y
