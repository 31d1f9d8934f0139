"""Decoder for format-1 payloads (magic ``DZT1``), written by deltazoo's first exact codec.

Format 1 is ``b"DZT1"`` + one codec id byte + body:

* ``P`` (plain): one zstd frame of the raw tensor bytes;
* ``D`` (delta): one zstd frame of ``child XOR parent`` as little-endian unsigned elements;
* ``R`` (delta-rows): u64 byte length of the shared rows, a zstd frame of their XOR with the parent,
  then a zstd frame of the remaining rows' raw bytes.

Nothing writes format 1 any more; stores may hold it, so it decodes forever.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard
from deltazoo.compression.exact_errors import CodecError

MAGIC_V1 = b"DZT1"


def _unzstd(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt format-1 payload: {exc}") from None


def decode_v1(
    payload: bytes, itemsize: int, parent_raw: bytes | bytearray | memoryview | None
) -> bytes:
    kind, body = payload[4:5], payload[5:]
    if kind == b"P":
        return _unzstd(body)
    if kind not in (b"D", b"R"):
        raise CodecError(f"corrupt format-1 payload: unknown codec id {kind!r}")
    if parent_raw is None:
        raise CodecError("this delta payload needs its parent tensor: pass parent_raw")
    udt = np.dtype(f"<u{itemsize}")
    parent = np.frombuffer(parent_raw, dtype=udt)
    if kind == b"D":
        x = np.frombuffer(_unzstd(body), dtype=udt)
        if x.size != parent.size:
            raise CodecError(f"format-1 delta holds {x.size} elements but the parent has {parent.size}")
        return (x ^ parent).tobytes()
    if len(body) < 8:
        raise CodecError("corrupt format-1 payload: truncated delta-rows header")
    (shared,) = struct.unpack("<Q", body[:8])
    try:
        obj = zstandard.ZstdDecompressor().decompressobj()
        head = obj.decompress(body[8:])
        rest = _unzstd(obj.unused_data)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt format-1 payload: {exc}") from None
    if len(head) != shared or shared != len(parent_raw):
        raise CodecError(f"format-1 delta-rows shares {shared} bytes but the parent has {len(parent_raw)}")
    x = np.frombuffer(head, dtype=udt)
    return (x ^ parent).tobytes() + rest
