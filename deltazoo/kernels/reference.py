"""Torch reference for ``x @ ΔŴᵀ`` computed from the packed form, on any device.

The dense delta is never built: the kept entries of a row are decoded to (column, value) pairs,
the matching columns of ``x`` are gathered and the products summed. Rows are processed in chunks
so that the gathered block stays under ``_GATHER_BUDGET`` elements whatever the batch size.
"""

from __future__ import annotations

import torch

from deltazoo.compression.packed import PackedDelta

from .stacked import StackedDeltas

_GATHER_BUDGET = 1 << 22  # elements of the gathered x block [batch, row chunk, kept per row]


def _check_x(x: torch.Tensor, cols: int) -> None:
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(
            f"x must be [batch, {cols}] (the delta's input features); got {list(x.shape)}. "
            "Flatten leading dimensions first, e.g. x.reshape(-1, x.shape[-1])"
        )


def decode_entries(delta: PackedDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns (int64) and float32 values of the kept entries, both ``[rows, kept_per_row]``."""
    q, columns = delta.codes()
    values = q.to(torch.float32) * delta.entry_scales(columns)
    return columns.long(), values


def delta_matmul_reference(x: torch.Tensor, delta: PackedDelta) -> torch.Tensor:
    """``x @ ΔŴᵀ`` in float32, ``[batch, rows]``, from the packed delta ``ΔŴ [rows, cols]``."""
    _check_x(x, delta.cols)
    delta = delta.to(x.device)
    columns, values = decode_entries(delta)
    xf = x.to(torch.float32)
    batch, kept = x.shape[0], delta.kept_per_row
    out = torch.empty((batch, delta.rows), dtype=torch.float32, device=x.device)
    if kept == 0 or batch == 0:
        return out.zero_()
    chunk = max(1, _GATHER_BUDGET // max(1, batch * kept))
    for r0 in range(0, delta.rows, chunk):
        cols = columns[r0 : r0 + chunk]  # [r, kept]
        gathered = xf[:, cols]  # [batch, r, kept]
        out[:, r0 : r0 + chunk] = (gathered * values[r0 : r0 + chunk]).sum(-1)
    return out


def batched_delta_matmul_reference(
    x: torch.Tensor, deltas: StackedDeltas, delta_ids: torch.Tensor
) -> torch.Tensor:
    """Row ``b`` of the result is ``x[b] @ ΔŴ[delta_ids[b]]ᵀ`` (zeros where the id is -1), float32."""
    _check_x(x, deltas.cols)
    ids = check_delta_ids(delta_ids, x.shape[0], deltas.num_deltas).to(x.device)
    out = torch.zeros((x.shape[0], deltas.rows), dtype=torch.float32, device=x.device)
    for d in torch.unique(ids[ids >= 0]).tolist():  # one pass per distinct delta, not per token
        sel = (ids == d).nonzero().squeeze(1)
        out[sel] = delta_matmul_reference(x[sel], deltas.delta(d))
    return out


def check_delta_ids(delta_ids: torch.Tensor, batch: int, num_deltas: int) -> torch.Tensor:
    """Validate per-token delta ids (``-1`` = base only) and return them as int32 ``[batch]``."""
    if delta_ids.dim() != 1 or delta_ids.shape[0] != batch:
        raise ValueError(f"delta_ids must be [batch={batch}], one id per token; got {list(delta_ids.shape)}")
    if delta_ids.dtype.is_floating_point or delta_ids.dtype == torch.bool:
        raise ValueError(f"delta_ids must be integers (-1 = base only); got {delta_ids.dtype}")
    if batch:
        lo, hi = int(delta_ids.min()), int(delta_ids.max())
        if lo < -1 or hi >= num_deltas:
            raise ValueError(
                f"delta_ids must lie in [-1, {num_deltas - 1}] ({num_deltas} deltas loaded); got [{lo}, {hi}]"
            )
    return delta_ids.to(torch.int32)
