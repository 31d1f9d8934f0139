"""DeltaDQ beyond uniform N:M: importance-sampled kept entries and a per-layer byte budget.

``select=importance`` (unbiased, variance-reduced balanced dropout). Each group of m columns is cut
into n consecutive sub-blocks of b = m/n; in each sub-block ONE entry j is drawn with probability

    p_j = (1 − α) · |d_j| / Σ_block |d|  +  α / b          (α = mix / 100)

and stored as the Horvitz–Thompson value d_j / p_j, so that E[ŵ_j] = p_j · d_j / p_j = d_j for every
entry (unbiased, like the paper's × m/n, which is the case α = 1). Its variance Σ d_j² (1/p_j − 1)
is smallest at α = 0 (p ∝ |d|): every kept value of a block then has the same magnitude Σ_block |d|.
Positions stay ascending (one per sub-block) and the draw is seeded like the random mask, so the
packed format is unchanged.

``alloc=sensitivity`` (per-layer n, m, bits under the profile's byte budget). For every packable
layer each candidate of ``CANDIDATES`` (plus the profile's own n:m/bits) is built, and its output
error on the calibration inputs is measured: ``tr(E H Eᵀ) / tr(W H Wᵀ)`` with E the dequantized delta
minus the true delta and W the fine-tuned weight (noise relative to the layer's output signal). A
Lagrangian sweep then picks, per layer, the candidate minimising ``error + λ · bytes`` with the
smallest λ whose total bytes fit the budget (the bytes of the profile's own n:m/bits on every layer),
and a greedy pass spends what is left on the upgrades of best error decrease per byte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from deltazoo.compression.packed import PackedDelta

# (n, m, bits) tried per layer by alloc=sensitivity (those whose m divides the row length). No 2-bit:
# its min-max levels {-1, 0, +1} zero most kept values, which LOWERS the output error on calibration
# inputs (shrinkage) yet ruins bits-per-byte (zoo coder: 2-bit picked on 10 of 14 layers before this).
CANDIDATES = tuple(
    (n, m, bits) for n, m in ((1, 64), (1, 32), (2, 32), (4, 32), (8, 32)) for bits in (3, 4)
)


def importance_keep(
    delta3: torch.Tensor, n: int, mix: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[rows, groups, n]`` (ascending) and Horvitz–Thompson values of ``delta3``."""
    rows, groups, m = delta3.shape
    if m % n:
        raise ValueError(f"select=importance draws one entry per sub-block: n={n} must divide m={m}")
    b = m // n
    blocks = delta3.reshape(rows, groups, n, b)
    p = inclusion(blocks, mix)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand((rows, groups, n, 1), generator=gen, dtype=torch.float64)
    cdf = p.to(torch.float64).cumsum(-1)
    idx = (cdf < u * cdf[..., -1:]).sum(-1, keepdim=True).clamp_(max=b - 1)
    p_kept = p.gather(-1, idx)
    d_kept = blocks.gather(-1, idx)
    values = torch.where(p_kept > 0, d_kept / p_kept.clamp_min(1e-30), torch.zeros_like(d_kept))
    offsets = (torch.arange(n) * b).reshape(1, 1, n)
    return idx.squeeze(-1) + offsets, values.squeeze(-1)


def inclusion(blocks: torch.Tensor, mix: int) -> torch.Tensor:
    """Draw probabilities of each entry within its sub-block (last dimension), float32, summing to 1."""
    b = blocks.shape[-1]
    mag = blocks.abs().to(torch.float32)
    total = mag.sum(-1, keepdim=True)
    uniform = torch.full_like(mag, 1.0 / b)
    share = torch.where(total > 0, mag / total.clamp_min(1e-30), uniform)
    alpha = mix / 100
    return (1 - alpha) * share + alpha * uniform


@dataclass(frozen=True)
class Choice:
    """One candidate of one layer: its (n, m, bits), packed bytes and relative output error."""

    n: int
    m: int
    bits: int
    nbytes: int
    error: float


def layer_choices(
    name: str,
    finetune: torch.Tensor,
    base: torch.Tensor,
    hessian: torch.Tensor,
    options: list[tuple[int, int, int]],
    build: Callable[[int, int, int], PackedDelta],
) -> list[Choice]:
    """Every option's bytes and ``tr(E H Eᵀ) / tr(W H Wᵀ)`` on this layer (``build`` packs one option)."""
    cols = finetune.shape[1]
    if hessian.dim() != 2 or tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"{name}: calibration matrix is {list(hessian.shape)}, expected [{cols}, {cols}]")
    h = hessian.detach().cpu().to(torch.float32)
    w = finetune.detach().cpu().to(torch.float32)
    delta = w - base.detach().cpu().to(torch.float32)
    signal = float(((w @ h) * w).sum())
    if not signal > 0:
        raise ValueError(f"{name}: layer output energy on the calibration text is {signal}; recalibrate")
    out = []
    for n, m, bits in options:
        packed = build(n, m, bits)
        err = packed.to_dense(torch.float32) - delta
        out.append(Choice(n, m, bits, packed.nbytes, float(((err @ h) * err).sum()) / signal))
    return out


def allocate(choices: Mapping[str, list[Choice]], budget: int) -> dict[str, Choice]:
    """Per layer, the choice of least total error whose summed bytes stay within ``budget``."""
    if not choices:
        return {}
    floor = sum(min(c.nbytes for c in cs) for cs in choices.values())
    if floor > budget:
        raise ValueError(f"byte budget {budget} is below the cheapest allocation ({floor} bytes)")

    def pick(lam: float) -> dict[str, Choice]:
        return {k: min(cs, key=lambda c: (c.error + lam * c.nbytes, c.nbytes)) for k, cs in choices.items()}

    def total(sel: Mapping[str, Choice]) -> int:
        return sum(c.nbytes for c in sel.values())

    lo, hi = 0.0, 1.0
    while total(pick(hi)) > budget:
        hi *= 4
    if total(pick(lo)) <= budget:
        best = pick(lo)
    else:
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(pick(mid)) > budget else (lo, mid)
        best = pick(hi)
    while True:  # greedy: spend the rest on the best error decrease per byte that still fits
        left = budget - total(best)
        gains = [
            ((best[k].error - c.error) / max(1, c.nbytes - best[k].nbytes), k, c)
            for k, cs in choices.items()
            for c in cs
            if c.error < best[k].error and c.nbytes - best[k].nbytes <= left
        ]
        if not gains:
            return best
        _, k, c = max(gains, key=lambda g: g[0])
        best[k] = c
