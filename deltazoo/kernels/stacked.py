"""A set of packed deltas with one layout, stacked so that one kernel launch serves all of them.

Multi-tenant serving (Punica's BGMV, DeltaZip's SBMM) keeps one base weight resident and many
fine-tunes' deltas next to it; every token of a batch names the delta it uses. Deltas of one linear
layer share shape, ``n:m`` pattern, bits and scale granularity, so their packed buffers stack into
``values[num_deltas, rows, stride]`` and a kernel addresses delta ``d`` by one extra stride.
A single delta is the stack of one (a view, no copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deltazoo.compression.packed import PackedDelta, PackedFormatError


@dataclass(frozen=True)
class StackedDeltas:
    """``num_deltas`` packed deltas of one layout; field meanings follow ``PackedDelta``."""

    shape: tuple[int, int]
    n: int
    m: int
    bits: int
    scale_granularity: str
    group_size: int
    values: torch.Tensor  # uint8 [num_deltas, rows, value stride]
    indices: torch.Tensor  # uint8 [num_deltas, rows, index stride]
    scales: torch.Tensor  # float16 [num_deltas, 1] | [num_deltas, rows] | [num_deltas, rows, groups]

    @property
    def num_deltas(self) -> int:
        return self.values.shape[0]

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def kept_per_row(self) -> int:
        return (self.cols // self.m) * self.n

    @property
    def device(self) -> torch.device:
        return self.values.device

    def delta(self, i: int) -> PackedDelta:
        """The ``i``-th delta as a ``PackedDelta`` (views into the stacked buffers)."""
        if not 0 <= i < self.num_deltas:
            raise IndexError(f"delta id {i} out of range: {self.num_deltas} deltas are stacked")
        return PackedDelta(
            shape=self.shape, n=self.n, m=self.m, bits=self.bits,
            values=self.values[i], indices=self.indices[i], scales=self.scales[i],
            scale_granularity=self.scale_granularity, group_size=self.group_size,
        )

    def to(self, device: torch.device | str) -> StackedDeltas:
        return StackedDeltas(
            shape=self.shape, n=self.n, m=self.m, bits=self.bits,
            scale_granularity=self.scale_granularity, group_size=self.group_size,
            values=self.values.to(device), indices=self.indices.to(device), scales=self.scales.to(device),
        )


_LAYOUT_FIELDS = ("shape", "n", "m", "bits", "scale_granularity", "group_size")


def stack_deltas(deltas: Sequence[PackedDelta], name: str = "delta") -> StackedDeltas:
    """Stack deltas of identical layout; a single delta is stacked without copying its buffers.

    Raises ``PackedFormatError`` naming the first field on which two deltas disagree.
    """
    if not deltas:
        raise PackedFormatError(f"{name}: no deltas to stack")
    first = deltas[0]
    for i, d in enumerate(deltas):
        d.validate(f"{name}[{i}]")
        for field in _LAYOUT_FIELDS:
            if field == "group_size" and first.scale_granularity != "group":
                continue
            if getattr(d, field) != getattr(first, field):
                raise PackedFormatError(
                    f"{name}: delta {i} has {field}={getattr(d, field)!r} but delta 0 has "
                    f"{getattr(first, field)!r}; deltas served together must share one layout "
                    "(re-encode them with the same profile)"
                )
    if len(deltas) == 1:
        values = first.values.contiguous().unsqueeze(0)
        indices = first.indices.contiguous().unsqueeze(0)
        scales = first.scales.contiguous().unsqueeze(0)
    else:
        device = first.values.device
        values = torch.stack([d.values.to(device) for d in deltas])
        indices = torch.stack([d.indices.to(device) for d in deltas])
        scales = torch.stack([d.scales.to(device) for d in deltas])
    return StackedDeltas(
        shape=first.shape, n=first.n, m=first.m, bits=first.bits,
        scale_granularity=first.scale_granularity,
        group_size=first.group_size if first.scale_granularity == "group" else 0,
        values=values, indices=indices, scales=scales,
    )
