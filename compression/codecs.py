"""Exact (bit-for-bit) tensor codecs: the public entry points the worker and the SDK call.

``encode_tensor`` picks the encoding from what it is given (``delta`` when a parent tensor of the same
shape exists, ``delta-rows`` when the parent has fewer rows, ``plain`` otherwise); ``decode_tensor``
inverts it given the same parent. Payloads are self-describing (magic, format version, codec id), so
bytes written by any version of deltazoo decode forever.

FIRST VERSION: XOR + zstd. The compression-core work replaces the internals, keeping this API.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from compression.dtypes import DTYPES, dtype_info

MAGIC = b"DZT1"


class CodecError(ValueError):
    """A tensor cannot be encoded as asked, or a payload is corrupt."""


@dataclass(frozen=True)
class EncodedTensor:
    encoding: str  # "delta" | "delta-rows" | "plain"
    payload: bytes


def _as_uint(raw: bytes | memoryview, dtype: str) -> np.ndarray:
    info = dtype_info(dtype)
    return np.frombuffer(raw, dtype=np.dtype(f"<u{info.itemsize}"))


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


def encode_tensor(
    raw: bytes | memoryview,
    dtype: str,
    shape: list[int] | tuple[int, ...],
    parent_raw: bytes | memoryview | None = None,
    parent_dtype: str | None = None,
    parent_shape: list[int] | tuple[int, ...] | None = None,
) -> EncodedTensor:
    """Encode one tensor's raw little-endian bytes, against ``parent_raw`` when given."""
    if dtype not in DTYPES:
        raise CodecError(f"unsupported dtype {dtype!r}")
    info = dtype_info(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * info.itemsize
    if len(raw) != expected:
        raise CodecError(f"{len(raw)} bytes do not hold shape {list(shape)} of {dtype}")
    if parent_raw is None or parent_dtype != dtype or parent_shape is None:
        return EncodedTensor("plain", MAGIC + b"P" + _zstd(bytes(raw)))
    if list(parent_shape) == list(shape):
        x = _as_uint(raw, dtype) ^ _as_uint(parent_raw, dtype)
        return EncodedTensor("delta", MAGIC + b"D" + _zstd(x.tobytes()))
    if len(shape) >= 1 and len(parent_shape) == len(shape) and list(parent_shape[1:]) == list(shape[1:]) \
            and parent_shape[0] < shape[0]:
        shared = len(parent_raw)
        x = _as_uint(raw[:shared], dtype) ^ _as_uint(parent_raw, dtype)
        head = struct.pack("<Q", shared)
        return EncodedTensor(
            "delta-rows", MAGIC + b"R" + head + _zstd(x.tobytes()) + b"" + _zstd(bytes(raw[shared:]))
        )
    return EncodedTensor("plain", MAGIC + b"P" + _zstd(bytes(raw)))


def decode_tensor(
    encoding: str,
    payload: bytes | memoryview,
    dtype: str,
    shape: list[int] | tuple[int, ...],
    parent_raw: bytes | memoryview | None = None,
    parent_dtype: str | None = None,
    parent_shape: list[int] | tuple[int, ...] | None = None,
) -> bytes:
    """Inverse of ``encode_tensor``; returns the tensor's raw bytes."""
    payload = bytes(payload)
    if payload[:4] != MAGIC:
        raise CodecError("not a deltazoo tensor payload")
    kind, body = payload[4:5], payload[5:]
    if kind == b"P":
        return _unzstd(body)
    if parent_raw is None:
        raise CodecError(f"{encoding} payload needs its parent tensor")
    if kind == b"D":
        x = np.frombuffer(_unzstd(body), dtype=_as_uint(parent_raw, dtype).dtype)
        return (x ^ _as_uint(parent_raw, dtype)).tobytes()
    if kind == b"R":
        (shared,) = struct.unpack("<Q", body[:8])
        dctx = zstandard.ZstdDecompressor()
        obj = dctx.decompressobj()
        head = obj.decompress(body[8:])
        rest = _unzstd(obj.unused_data)
        x = np.frombuffer(head, dtype=_as_uint(parent_raw, dtype).dtype)
        return (x ^ _as_uint(parent_raw, dtype)).tobytes() + rest
    raise CodecError(f"unknown codec id {kind!r}")
