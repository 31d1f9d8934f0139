"""Random packed deltas in the v1 layout, for kernel tests and benchmarks (no encoder needed)."""

from __future__ import annotations

import torch

from deltazoo.compression.packed import PackedDelta, index_bits, pack_code_rows


def random_packed_delta(
    shape: tuple[int, int], *, n: int = 1, m: int = 32, bits: int = 4,
    scale_granularity: str = "tensor", group_size: int = 0, scale: float = 1e-2,
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> PackedDelta:
    """A valid ``PackedDelta`` with uniform random codes, random sorted in-group positions and
    positive fp16 scales around ``scale``. Built on the CPU (seeded by ``generator``), then moved."""
    rows, cols = shape
    groups = cols // m
    codes = torch.randint(0, 1 << bits, (rows, groups * n), generator=generator, dtype=torch.int32)
    order = torch.rand((rows, groups, m), generator=generator).argsort(-1)[..., :n]
    positions = order.sort(-1).values.reshape(rows, groups * n).to(torch.int32)
    if scale_granularity == "tensor":
        scales_shape: tuple[int, ...] = (1,)
    elif scale_granularity == "row":
        scales_shape = (rows,)
    else:
        scales_shape = (rows, cols // group_size)
    scales = (scale * (0.5 + torch.rand(scales_shape, generator=generator))).to(torch.float16)
    delta = PackedDelta(
        shape=(rows, cols), n=n, m=m, bits=bits,
        values=pack_code_rows(codes, bits), indices=pack_code_rows(positions, index_bits(m)), scales=scales,
        scale_granularity=scale_granularity, group_size=group_size if scale_granularity == "group" else 0,
    )
    delta.validate("random delta")
    return delta.to(device)
