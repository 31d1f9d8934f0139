"""Activation-aware fitting of the kept values of an N:M delta (DeltaDQ ``fit=refit|gptq|obs``).

Given a layer's input Hessian ``H = XᵀX / N`` (``compression.calibration``), damped to
``H + λ·mean(diag H)·I``, the output error of a row approximation ``ŵ`` of the delta row ``d`` is
``(d − ŵ)ᵀ H (d − ŵ)``. For a kept column set ``K`` the best unquantized values are the least-squares
refit ``w_K = (H_KK)⁻¹ H_K: d`` (the exact per-row form of SparseGPT/OBS reconstruction). Then:

* ``refit``: ``w_K`` quantized with the profile's min-max scale;
* ``gptq``: kept values quantized one at a time in column order, each rounding error propagated to the
  not-yet-quantized kept values of its row through ``chol((H_KK)⁻¹)`` (GPTQ);
* ``obs``: ``gptq`` with the scale chosen by a grid search on output error (per tensor, or per row
  with ``scale=row``).

``select=obs`` keeps, in each group, the n entries of largest OBS saliency ``d_j² / [H⁻¹]_jj``.
Rows share H but not K: everything is batched over rows with ``[rows, k, k]`` blocks, in row chunks
that bound memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DAMP = 0.01
_CHUNK_ELEMENTS = 1 << 24  # rows · k · k per chunk (float64): 128 MiB
_GRID = torch.linspace(0.25, 1.0, 16).tolist()


def damped(h: torch.Tensor, cols: int, name: str) -> torch.Tensor:
    """``h`` checked against the row length, as float64 with λ·mean(diag)·I added."""
    if h.dim() != 2 or tuple(h.shape) != (cols, cols):
        raise ValueError(f"{name}: calibration matrix is {list(h.shape)}, expected [{cols}, {cols}]")
    h = h.detach().cpu().to(torch.float64)
    if not torch.isfinite(h).all():
        raise ValueError(f"{name}: calibration matrix has non-finite entries")
    mean = h.diagonal().mean().item()
    return h + DAMP * (mean if mean > 0 else 1.0) * torch.eye(cols, dtype=torch.float64)


def obs_positions(delta3: torch.Tensor, h: torch.Tensor, n: int) -> torch.Tensor:
    """In-group positions ``[rows, groups, n]`` (ascending) of the largest ``d_j² / [H⁻¹]_jj``."""
    rows, groups, m = delta3.shape
    inv_diag = torch.linalg.inv(h).diagonal().to(torch.float32).reshape(1, groups, m)
    saliency = delta3.square() / inv_diag
    return saliency.topk(n, dim=-1, sorted=False).indices.sort(dim=-1).values


def _chunks(rows: int, k: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, k * k))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _blocks(h: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``H_KK`` of every row: ``[rows, k, k]`` float64."""
    return h[columns[:, :, None], columns[:, None, :]]


def refit(
    delta: torch.Tensor,
    columns: torch.Tensor,
    h: torch.Tensor,
    anchor: torch.Tensor | None = None,
    strength: float = 0.0,
) -> torch.Tensor:
    """Least-squares kept values ``[rows, k]`` (float32) of ``delta [rows, cols]`` on ``columns``.

    With ``anchor`` (``[rows, k]``) minimises ``(d − ŵ)ᵀH(d − ŵ) + μ‖ŵ_K − anchor‖²`` instead, with
    ``μ = strength · mean(diag H)``: ``(H_KK + μI) ŵ_K = H_K: d + μ·anchor``.
    """
    hd = delta.to(torch.float64) @ h  # row r: (H d_r)ᵀ, H symmetric
    mu = strength * h.diagonal().mean().item() if anchor is not None else 0.0
    out = torch.empty(columns.shape, dtype=torch.float64)
    eye = torch.eye(columns.shape[1], dtype=torch.float64)
    for s in _chunks(*columns.shape):
        rhs = hd[s].gather(1, columns[s])
        if anchor is not None:
            rhs = rhs + mu * anchor[s].to(torch.float64)
        block = _blocks(h, columns[s]) + mu * eye
        out[s] = torch.linalg.solve(block, rhs.unsqueeze(-1)).squeeze(-1)
    return out.to(torch.float32)


def _gptq(w: torch.Tensor, upper: torch.Tensor, step: torch.Tensor, qmax: int) -> torch.Tensor:
    """Signed levels ``[rows, k]`` of ``w`` with per-entry ``step``, rounding error propagated."""
    w = w.clone()
    q = torch.empty_like(w)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    for i in range(w.shape[1]):  # over kept positions (k ≤ cols / m), vectorised over rows
        qi = torch.where(step[:, i] > 0, torch.round(w[:, i] / safe[:, i]).clamp(-qmax, qmax), 0.0)
        q[:, i] = qi
        err = (w[:, i] - qi * step[:, i]) / upper[:, i, i]
        w[:, i + 1 :] -= err[:, None] * upper[:, i, i + 1 :]
    return q


def _error(w: torch.Tensor, approx: torch.Tensor, hkk: torch.Tensor) -> torch.Tensor:
    """Per-row ``(w − approx)ᵀ H_KK (w − approx)``."""
    e = w - approx
    return torch.einsum("ri,rij,rj->r", e, hkk, e)


def quantize_fitted(
    w: torch.Tensor,
    columns: torch.Tensor,
    h: torch.Tensor,
    scales: torch.Tensor,
    per_entry: Callable[[torch.Tensor], torch.Tensor],
    qmax: int,
    grid: bool,
    mu: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ levels of refit values ``w [rows, k]``: (levels int32 ``[rows, k]``, fp16 ``scales``).

    ``scales`` are the min-max scales in the profile's granularity (``[1]``, ``[rows]`` or
    ``[rows, groups]``); ``per_entry`` expands such a tensor to ``[rows, k]``. With ``grid`` every
    multiplier α of ``_GRID`` is tried and the one of least output error kept: one α for the tensor
    when ``scales`` has one element, else one α per row.
    """
    rows, k = w.shape
    alphas = _GRID if grid else [1.0]
    w64 = w.to(torch.float64)
    candidates = [(scales.to(torch.float32) * a).to(torch.float16) for a in alphas]
    errs = torch.zeros((len(alphas), rows), dtype=torch.float64)
    levels = torch.zeros((len(alphas), rows, k), dtype=torch.int8)
    for s in _chunks(rows, k):
        hkk = _blocks(h, columns[s]) + mu * torch.eye(k, dtype=torch.float64)
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hkk)), upper=True)
        for a, cand in enumerate(candidates):
            step = per_entry(cand.to(torch.float32))[s].to(torch.float64)
            q = _gptq(w64[s], upper, step, qmax)
            errs[a, s] = _error(w64[s], q * step, hkk)
            levels[a, s] = q.to(torch.int8)
    if scales.numel() == 1:
        pick = torch.full((rows,), int(errs.sum(1).argmin()), dtype=torch.long)
    else:
        pick = errs.argmin(0)
    if scales.numel() == 1:
        chosen = candidates[int(pick[0])]
    else:
        chosen = torch.stack(candidates)[pick, torch.arange(rows)]
    return levels[pick, torch.arange(rows)].to(torch.int32), chosen
