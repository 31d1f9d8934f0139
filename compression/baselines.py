"""Baselines for the lossy benchmark (never a served profile): DARE and Magnitude pruning of deltas.

Both return the dense approximation of the fine-tune tensor (base + sparse delta, in the fine-tune's
dtype), so that the same bits-per-byte evaluation can score them next to DeltaDQ.

* DARE (Yu et al.): keep each delta entry with probability ``keep`` (seeded), rescale kept by 1/keep.
* Magnitude: keep the ``keep`` fraction of entries with the largest |Δ| in the tensor, no rescale.

How bytes are counted, so that comparisons are at equal bytes: an unstructured sparse delta of
``numel`` entries keeping ``kept`` costs

    kept × value_bits                       (the kept values: 16 for bf16, or k-bit codes)
  + numel × H2(kept / numel)                (the keep mask at its entropy bound: what an ideal
                                             entropy coder of the positions reaches; a random mask
                                             cannot be coded smaller on average)
  + 16 when value_bits < 16                 (one fp16 min-max scale per tensor)

bits, rounded up to whole bytes. This is generous to the baselines: it assumes a perfect position
coder, while DeltaDQ pays its in-group index (ceil(log2 m) bits per kept entry) and 32-bit row padding
as stored.
"""

from __future__ import annotations

import math

import torch
from deltazoo.compression.deltadq import tensor_seed


def mask_entropy_bits(numel: int, kept: int) -> float:
    """numel × H2(kept/numel): the entropy bound of a keep mask, in bits."""
    if kept <= 0 or kept >= numel:
        return 0.0
    p = kept / numel
    return numel * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def sparse_bytes(numel: int, kept: int, value_bits: int = 16) -> int:
    """Bytes of an unstructured sparse delta under the counting rule of this module's docstring."""
    bits = kept * value_bits + mask_entropy_bits(numel, kept) + (16 if value_bits < 16 else 0)
    return math.ceil(bits / 8)


def kept_for_budget(numel: int, budget_bytes: int, value_bits: int = 16) -> int:
    """The largest ``kept ≤ numel / 2`` whose ``sparse_bytes`` fits ``budget_bytes`` (0 if none)."""
    lo, hi = 0, numel // 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sparse_bytes(numel, mid, value_bits) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _quantize_dense(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor uniform symmetric min-max k-bit quantize-dequantize (as DeltaDQ's default)."""
    qmax = (1 << (bits - 1)) - 1
    scale = (values.abs().max() / qmax).to(torch.float16).to(torch.float32)
    if scale <= 0:
        return torch.zeros_like(values)
    return torch.round(values / scale).clamp_(-qmax, qmax) * scale


def _finish(base: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor, value_bits: int) -> torch.Tensor:
    kept = delta[mask]
    kept = _quantize_dense(kept, value_bits) if value_bits < 16 else kept.to(torch.bfloat16).float()
    sparse = torch.zeros_like(delta)
    sparse[mask] = kept
    return (base.to(torch.float32) + sparse).to(base.dtype)


def _delta(finetune: torch.Tensor, base: torch.Tensor, keep: float) -> torch.Tensor:
    if finetune.shape != base.shape:
        raise ValueError(f"fine-tune shape {list(finetune.shape)} differs from base {list(base.shape)}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must be in (0, 1]")
    return finetune.to(torch.float32) - base.to(torch.float32)


def dare(
    finetune: torch.Tensor, base: torch.Tensor, keep: float, name: str = "", seed: int = 0,
    value_bits: int = 16,
) -> torch.Tensor:
    """DARE: random drop with probability 1 − keep, kept entries × 1/keep; the dense approximation."""
    delta = _delta(finetune, base, keep)
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    mask = torch.rand(delta.shape, generator=gen) < keep
    return _finish(base, delta / keep, mask, value_bits)


def magnitude(
    finetune: torch.Tensor, base: torch.Tensor, keep: float, value_bits: int = 16
) -> torch.Tensor:
    """Magnitude pruning: keep the round(keep × numel) largest |Δ| of the tensor; the dense approximation."""
    delta = _delta(finetune, base, keep)
    k = max(1, round(keep * delta.numel()))
    flat = delta.abs().flatten()
    mask = torch.zeros(flat.shape, dtype=torch.bool)
    mask[flat.topk(k, sorted=False).indices] = True
    return _finish(base, delta, mask.reshape(delta.shape), value_bits)
