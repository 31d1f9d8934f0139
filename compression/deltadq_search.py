"""DeltaDQ ``select=search``: the importance draw of each group chosen on calibration inputs.

``select=importance`` (``deltadq_alloc.importance_keep``) draws, in each group of m columns, one entry
per sub-block of m/n, ∝ |Δ|, and stores its unbiased Horvitz–Thompson value. At 1:32 that draw is the
main loss (the values' 4-bit rounding costs little): one draw per group is a noisy estimate of the row.

``select=search`` draws ``draws`` such candidates per group (seeds ``DRAW_STRIDE`` apart, so the draws
of different profile seeds do not overlap) and, row by row, keeps the candidate of each group that lowers

    eᵀ (H + ρ · mean(diag H) · I) e,      e = ŵ − d,   ρ = ridge / 100,

the output error of the row on the calibration inputs (``H = XᵀX / N``, ``compression.calibration``)
plus ρ times a weight-space error. Groups are visited in order, each choosing the best of its
candidates with the rest of the row fixed (coordinate descent, ``SWEEPS`` passes; a candidate replaces
the current one only when it lowers the error). Values are not refit: every kept value is still the
Horvitz–Thompson value of its own draw, so the packed layout and the dequantization are unchanged.
The ridge term is what keeps this from fitting the calibration text alone (ridge=0 is a pure output
fit, ridge → ∞ prefers, among the draws, the one closest to the delta in weight space).
Deterministic given the seed and the calibration (float64 sums; a near-tie between two draws could
resolve differently under another BLAS build, which changes the artifact's bytes, never its validity).
Cost: about ``SWEEPS`` · rows · cols² multiply-adds per layer (float64), plus the draws.
"""

from __future__ import annotations

import torch
from deltazoo.compression.deltadq_alloc import importance_keep

SWEEPS = 2
MAX_DRAWS = 256
# Draw k of a tensor is seeded with seed + k · DRAW_STRIDE (mod 2⁶³), the 64-bit golden-ratio constant
# with its top bit cleared: the draws of nearby profile seeds (tensor seeds a few apart) never coincide.
DRAW_STRIDE = 0x1E3779B97F4A7C15


def search_keep(
    delta3: torch.Tensor, hessian: torch.Tensor, n: int, mix: int, seed: int, draws: int, ridge: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[rows, groups, n]`` (ascending) and Horvitz–Thompson values of the chosen draws.

    ``hessian`` is the layer's ``[cols, cols]`` input matrix; draw k is ``importance_keep`` seeded with
    ``seed + k · DRAW_STRIDE`` (so ``draws=1`` is exactly ``select=importance``).
    """
    rows, groups, m = delta3.shape
    cols = groups * m
    if not 1 <= draws <= MAX_DRAWS:
        raise ValueError(f"draws={draws} must be between 1 and {MAX_DRAWS}")
    if hessian.dim() != 2 or tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"calibration matrix is {list(hessian.shape)}, expected [{cols}, {cols}]")
    if not torch.isfinite(hessian).all():
        raise ValueError("calibration matrix has non-finite entries")
    cand = [importance_keep(delta3, n, mix, (seed + k * DRAW_STRIDE) % (1 << 63)) for k in range(draws)]
    pos = torch.stack([c[0] for c in cand], dim=2)  # [rows, groups, draws, n]
    val = torch.stack([c[1] for c in cand], dim=2).to(torch.float64)
    if draws == 1:
        return pos[:, :, 0], val[:, :, 0].to(torch.float32)
    h = hessian.detach().cpu().to(torch.float64)
    mean = h.diagonal().mean().item()
    h = h + ridge / 100 * (mean if mean > 0 else 1.0) * torch.eye(cols, dtype=torch.float64)
    d = delta3.to(torch.float64)

    def group_errors(g: int) -> torch.Tensor:
        """``[rows, draws, m]``: every candidate of group g minus the delta there."""
        dense = torch.zeros((rows, draws, m), dtype=torch.float64)
        return dense.scatter_(-1, pos[:, g], val[:, g]) - d[:, g].unsqueeze(1)

    chosen = torch.zeros((rows, groups), dtype=torch.long)
    err = torch.cat([group_errors(g)[:, 0] for g in range(groups)], dim=1)  # [rows, cols]
    arange = torch.arange(rows)
    for _ in range(SWEEPS):
        for g in range(groups):
            span = slice(g * m, (g + 1) * m)
            he = err @ h[:, span]  # [rows, m]: (H e) restricted to the group
            h_gg = h[span, span]
            cand_err = group_errors(g)
            step = cand_err - err[:, span].unsqueeze(1)  # [rows, draws, m]
            # error change of replacing the group's current candidate: 2 stepᵀ H e + stepᵀ H_gg step
            change = 2 * (step * he.unsqueeze(1)).sum(-1) + ((step @ h_gg) * step).sum(-1)
            best = change.argmin(dim=1)
            better = change[arange, best] < 0
            chosen[:, g] = torch.where(better, best, chosen[:, g])
            err[:, span] = cand_err[arange, chosen[:, g]]
    index = chosen.reshape(rows, groups, 1, 1).expand(rows, groups, 1, n)
    return pos.gather(2, index).squeeze(2), val.gather(2, index).squeeze(2).to(torch.float32)
