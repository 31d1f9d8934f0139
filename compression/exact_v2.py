"""Decoder for format-2 payloads (magic ``DZT2``): zigzag integer delta, byte planes partitioned by the
parent's top byte, zstd frames (``compression.exact_planes``). Nothing writes format 2 any more; stores
may hold it, so it decodes forever. The header has already been checked by ``compression.codecs``.
"""

from __future__ import annotations

import struct

import numpy as np
from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.exact_planes import decode_planes, uint_dtype

HEADER = struct.Struct("<4s c B B x I I Q")  # magic, codec id, dtype, parent dtype, chunk, min group, elems


def context(parent: np.ndarray, dtype: str) -> np.ndarray | None:
    """Format 2's context: floats of 2+ bytes, the parent's top byte; 1-byte floats, sign and exponent."""
    info = dtype_info(dtype)
    if info.itemsize >= 2 and info.is_float:
        return (parent >> (8 * info.itemsize - 8)).astype(np.uint8)
    if info.itemsize == 1 and info.is_float:
        return parent >> np.uint8(info.mantissa_bits)
    return None


def _unzigzag_add(z: np.ndarray, parent: np.ndarray) -> np.ndarray:
    signed = np.dtype(f"<i{z.dtype.itemsize}")
    return parent + ((z >> 1) ^ (-(z & 1).view(signed)).view(z.dtype))


def decode_v2(
    buf: memoryview, codec: str, dtype: str, n: int, parent: np.ndarray | None, shared: int
) -> tuple[np.ndarray, int]:
    """The elements and the offset past them; ``shared`` (delta-rows) was read by the caller."""
    _, _, _, _, chunk, min_group, _ = HEADER.unpack_from(buf)
    if chunk == 0:
        raise CodecError("corrupt payload: chunk size 0")
    width = dtype_info(dtype).itemsize
    offset = HEADER.size + (8 if codec == "delta-rows" else 0)
    if codec == "plain" or parent is None:
        return decode_planes(buf, offset, n, width, None, chunk, min_group)
    z, offset = decode_planes(buf, offset, shared, width, context(parent, dtype), chunk, min_group)
    head = _unzigzag_add(z, parent)
    if codec == "delta":
        return head, offset
    tail, offset = decode_planes(buf, offset, n - shared, width, None, chunk, min_group)
    assert tail.dtype == uint_dtype(width)
    return np.concatenate([head, tail]), offset
