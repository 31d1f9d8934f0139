"""Packed low-bit N:M sparse deltas: the in-memory form and the on-disk container (format version 1).

A ``PackedDelta`` holds one 2-D delta ``ΔŴ`` of shape ``[rows, cols]`` kept in an ``n:m`` pattern:
every row is cut into ``cols // m`` groups of ``m`` consecutive columns and each group keeps exactly
``n`` entries. Kept entries are listed row by row, group by group, and inside a group by ascending
in-group position. For the j-th kept entry of a row:

* ``values``: a ``bits``-bit unsigned code ``u``; the signed level is ``q = u - 2**(bits-1)``;
* ``indices``: the in-group position ``p`` (``index_bits(m) = ceil(log2 m)`` bits; 0 bits when m == 1);
* the entry's column is ``group * m + p`` and its value is ``q * scale``, where ``scale`` is
  ``scales[0]`` (granularity ``tensor``), ``scales[row]`` (``row``) or
  ``scales[row, column // group_size]`` (``group``).

Both code streams are LSB-first bitstreams, one per row, each row padded with zero bits to a
multiple of 32 bits so that a kernel can read rows with aligned 32-bit loads:
``values`` is ``uint8[rows, row_bytes(kept_per_row, bits)]``, ``indices`` likewise with
``index_bits(m)``. Scales are float16. See docs/FORMAT.md for the container.

This module depends on torch and safetensors only; ``deltazoo.kernels`` imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_NAME = "deltazoo.packed-delta"
FORMAT_VERSION = 1
SCALE_GRANULARITIES = ("tensor", "row", "group")


class PackedFormatError(ValueError):
    """A packed delta or its container is malformed."""


def index_bits(m: int) -> int:
    """Bits of one in-group position for groups of ``m`` (0 when m == 1)."""
    return 0 if m <= 1 else math.ceil(math.log2(m))


def row_bytes(count: int, bits: int) -> int:
    """Bytes of one row's bitstream of ``count`` codes of ``bits`` bits, padded to 32 bits."""
    return ((count * bits + 31) // 32) * 4


def pack_code_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes ``[rows, count]`` (< 2**bits) into LSB-first rows of ``row_bytes`` bytes."""
    rows, count = codes.shape
    stride = row_bytes(count, bits)
    if bits == 0 or count == 0:
        return torch.zeros((rows, stride), dtype=torch.uint8, device=codes.device)
    shifts = torch.arange(bits, device=codes.device, dtype=torch.int32)
    bitplane = ((codes.to(torch.int32).unsqueeze(-1) >> shifts) & 1).to(torch.uint8)
    flat = bitplane.reshape(rows, count * bits)
    padded = torch.zeros((rows, stride * 8), dtype=torch.uint8, device=codes.device)
    padded[:, : count * bits] = flat
    weights = (1 << torch.arange(8, device=codes.device, dtype=torch.int32)).to(torch.int32)
    packed = (padded.reshape(rows, stride, 8).to(torch.int32) * weights).sum(-1)
    return packed.to(torch.uint8)


def unpack_code_rows(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_code_rows``: ``uint8[rows, stride]`` to int32 codes ``[rows, count]``."""
    rows = packed.shape[0]
    if bits == 0 or count == 0:
        return torch.zeros((rows, count), dtype=torch.int32, device=packed.device)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    bitstream = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(rows, -1)
    planes = bitstream[:, : count * bits].reshape(rows, count, bits)
    weights = (1 << torch.arange(bits, device=packed.device, dtype=torch.int32)).to(torch.int32)
    return (planes * weights).sum(-1).to(torch.int32)


@dataclass(frozen=True)
class PackedDelta:
    """One 2-D delta in the N:M low-bit packed layout described in this module's docstring."""

    shape: tuple[int, int]
    n: int
    m: int
    bits: int
    values: torch.Tensor  # uint8 [rows, row_bytes(kept_per_row, bits)]
    indices: torch.Tensor  # uint8 [rows, row_bytes(kept_per_row, index_bits(m))]
    scales: torch.Tensor  # float16 [1] | [rows] | [rows, cols // group_size]
    scale_granularity: str = "tensor"
    group_size: int = 0  # columns per scale for granularity "group"; a multiple of m
    seed: int = 0
    dtype: str = "bfloat16"  # dtype of the dense tensor the delta applies to

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
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.indices, self.scales))

    def validate(self, name: str = "delta") -> None:
        """Raise ``PackedFormatError`` naming ``name`` when fields disagree with each other."""
        rows, cols = self.shape
        if not (1 <= self.n <= self.m):
            raise PackedFormatError(f"{name}: n={self.n} must be between 1 and m={self.m}")
        if cols % self.m:
            raise PackedFormatError(f"{name}: m={self.m} does not divide the row length {cols}")
        if not (1 <= self.bits <= 8):
            raise PackedFormatError(f"{name}: bits={self.bits} must be between 1 and 8")
        if self.scale_granularity not in SCALE_GRANULARITIES:
            raise PackedFormatError(f"{name}: unknown scale granularity {self.scale_granularity!r}")
        expect = {
            "values": (self.values, torch.uint8, (rows, row_bytes(self.kept_per_row, self.bits))),
            "indices": (self.indices, torch.uint8, (rows, row_bytes(self.kept_per_row, index_bits(self.m)))),
            "scales": (self.scales, torch.float16, self._scales_shape()),
        }
        for field, (tensor, dtype, shape) in expect.items():
            if tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise PackedFormatError(
                    f"{name}: {field} is {tensor.dtype}{list(tensor.shape)}, expected {dtype}{list(shape)}"
                )

    def _scales_shape(self) -> tuple[int, ...]:
        rows, cols = self.shape
        if self.scale_granularity == "tensor":
            return (1,)
        if self.scale_granularity == "row":
            return (rows,)
        if self.group_size <= 0 or self.group_size % self.m or cols % self.group_size:
            raise PackedFormatError(
                f"group_size={self.group_size} must be a positive multiple of m={self.m} dividing {cols}"
            )
        return (rows, cols // self.group_size)

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed levels ``q`` and columns of the kept entries, both int32 ``[rows, kept_per_row]``."""
        count = self.kept_per_row
        q = unpack_code_rows(self.values, count, self.bits) - (1 << (self.bits - 1))
        pos = unpack_code_rows(self.indices, count, index_bits(self.m))
        group = torch.arange(count, device=pos.device, dtype=torch.int32) // self.n
        return q, group * self.m + pos

    def entry_scales(self, columns: torch.Tensor) -> torch.Tensor:
        """float32 scale of every kept entry, ``[rows, kept_per_row]``."""
        scales = self.scales.to(torch.float32)
        if self.scale_granularity == "tensor":
            return scales.expand(columns.shape)
        if self.scale_granularity == "row":
            return scales[:, None].expand(columns.shape)
        return torch.gather(scales, 1, (columns // self.group_size).long())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense delta ``ΔŴ`` (zeros where dropped)."""
        q, columns = self.codes()
        values = q.to(torch.float32) * self.entry_scales(columns)
        dense = torch.zeros(self.shape, dtype=torch.float32, device=self.values.device)
        dense.scatter_(1, columns.long(), values)
        return dense.to(dtype)

    def to(self, device: torch.device | str) -> PackedDelta:
        return PackedDelta(
            shape=self.shape, n=self.n, m=self.m, bits=self.bits,
            values=self.values.to(device), indices=self.indices.to(device), scales=self.scales.to(device),
            scale_granularity=self.scale_granularity, group_size=self.group_size, seed=self.seed,
            dtype=self.dtype,
        )


@dataclass(frozen=True)
class PackedArtifact:
    """A serving profile of one fine-tune: packed deltas for linear weights, exact tensors for the rest.

    The fine-tune is approximated as ``base[name] + packed[name].to_dense()`` for names in ``packed``,
    ``dense[name]`` for names in ``dense`` (kept exact, or new in the fine-tune), and ``base[name]``
    for every other tensor.
    """

    profile: str
    packed: Mapping[str, PackedDelta]
    dense: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str]

    def apply_to(self, base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reconstruct the approximate fine-tune state dict from a base state dict."""
        out = dict(base)
        for name, delta in self.packed.items():
            if name not in base:
                raise PackedFormatError(f"{name}: packed delta has no base tensor to apply to")
            w = base[name]
            if tuple(w.shape) != delta.shape:
                raise PackedFormatError(f"{name}: base is {list(w.shape)}, delta is {list(delta.shape)}")
            out[name] = (w.to(torch.float32) + delta.to(w.device).to_dense()).to(w.dtype)
        out.update(self.dense)
        return out

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.packed.values()) + sum(
            t.numel() * t.element_size() for t in self.dense.values()
        )


_FIELDS = ("values", "indices", "scales")


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
    **{getattr(torch, a): n for a, n in (
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
        ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
    ) if hasattr(torch, a)},
}


def save_artifact(artifact: PackedArtifact, path: str | Path) -> None:
    """Write ``artifact`` as a safetensors container (docs/FORMAT.md, "Packed delta container").

    The bytes are a function of the artifact alone: the header is JSON with sorted keys and no
    spaces, padded with spaces to a multiple of 8 bytes, and tensors follow in safetensors' own order
    (larger element size first, then name), so every tensor starts aligned to its element size.
    """
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, object]] = {}
    for name, d in artifact.packed.items():
        d.validate(name)
        for field in _FIELDS:
            tensors[f"{name}:{field}"] = getattr(d, field)
        entries[name] = {
            "kind": "packed", "shape": list(d.shape), "n": d.n, "m": d.m, "bits": d.bits,
            "scale_granularity": d.scale_granularity, "group_size": d.group_size, "seed": d.seed,
            "dtype": d.dtype,
        }
    for name, t in artifact.dense.items():
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise PackedFormatError(f"{name}: dtype {t.dtype} cannot be stored in a safetensors container")
        tensors[f"{name}:dense"] = t
        entries[name] = {"kind": "dense"}
    metadata = {
        **{k: str(v) for k, v in artifact.metadata.items()},
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "profile": artifact.profile,
        "entries": json.dumps(entries, sort_keys=True),
    }
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key in order:
        t = tensors[key]
        size = t.numel() * t.element_size()
        dtype = _SAFETENSORS_DTYPES[t.dtype]
        header[key] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for key in order:  # one tensor in memory at a time
            t = tensors[key].detach().contiguous().cpu().reshape(-1)
            f.write(t.view(torch.uint8).numpy().tobytes())


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> PackedArtifact:
    """Read a container written by ``save_artifact`` (any format version up to this one)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT_NAME:
            raise PackedFormatError(f"{path}: not a deltazoo packed delta (format={meta.get('format')!r})")
        version = int(meta.get("format_version", "0"))
        if not 1 <= version <= FORMAT_VERSION:
            raise PackedFormatError(
                f"{path}: format version {version} is newer than this deltazoo reads ({FORMAT_VERSION}); "
                "upgrade deltazoo"
            )
        try:
            entries = json.loads(meta["entries"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise PackedFormatError(f"{path}: missing or malformed 'entries' metadata") from exc
        keys = set(f.keys())
        packed: dict[str, PackedDelta] = {}
        dense: dict[str, torch.Tensor] = {}
        for name, e in entries.items():
            needed = [f"{name}:dense"] if e.get("kind") == "dense" else [f"{name}:{x}" for x in _FIELDS]
            missing = [k for k in needed if k not in keys]
            if missing:
                raise PackedFormatError(f"{path}: entry {name} lacks tensors {missing}")
            if e.get("kind") == "dense":
                dense[name] = f.get_tensor(f"{name}:dense")
                continue
            d = PackedDelta(
                shape=(int(e["shape"][0]), int(e["shape"][1])), n=int(e["n"]), m=int(e["m"]),
                bits=int(e["bits"]),
                values=f.get_tensor(f"{name}:values"), indices=f.get_tensor(f"{name}:indices"),
                scales=f.get_tensor(f"{name}:scales"),
                scale_granularity=str(e.get("scale_granularity", "tensor")),
                group_size=int(e.get("group_size", 0)), seed=int(e.get("seed", 0)),
                dtype=str(e.get("dtype", "bfloat16")),
            )
            d.validate(name)
            packed[name] = d
    rest = {k: v for k, v in meta.items() if k not in ("format", "format_version", "profile", "entries")}
    return PackedArtifact(profile=meta.get("profile", ""), packed=packed, dense=dense, metadata=rest)
