"""Format 7 (``DZT7``): ELF, an opt-in bounded-error archival coding of float32 tensors (seed 003).

ELF ("exponent-less floating point") rests on two facts of trained weights: nearly all of them lie in
(−1, 1), and floats in [1, 2) share one exponent. Each value ``p`` of (−1, 1) is aligned to [1, 2) by the
float32 addition ``|p| + 1`` (round to nearest even); the shared exponent is dropped and the sign and the
23 mantissa bits ``m`` are kept. Decoding gives ``sign · ((1 + m·2⁻²³) − 1) = sign · m·2⁻²³``, exactly
representable, so the error is that of the one rounding: ``|p − decoded| ≤ 2⁻²⁴``.

Kept exactly, as *exceptions* (their positions and their 32 bits): every value ELF cannot align without
changing it in kind: ``|p| ≥ 1``, infinities and NaNs, −0 (its sign would be lost), subnormals (they would
become zero), and the values just below 1 that ``|p| + 1`` rounds up to 2. Aligning is idempotent (a
decoded value aligns to itself), so a decoded tensor codes to the same payload again.

The lossless stage reuses the exact coders: the aligned values, as signed integers ``±m``, are coded as a
format-6 delta stream against zero (``compression.exact32``: Huffman tokens of the zigzagged value's bit
length, its low bits in a raw plane; C kernel with a numpy twin), the exception gaps as a format-4 integer
stream (``compression.exact_any``) and their values as a format-6 plain stream.

Payload: the 16-byte header of formats 4–6 (magic ``DZT7``, codec id ``p``, dtype F32, no parent, flags 0,
element count), ``u64`` exception count ``k``; when ``k`` > 0 the gap stream (``k`` u64: each position minus
the previous one minus 1) and the exception value stream; then the stream of the ``n − k`` aligned values.
Layout: docs/FORMAT.md ("Format 7").
"""

from __future__ import annotations

import struct

import numpy as np
from deltazoo.compression import exact32, exact_any
from deltazoo.compression.exact_any_tokens import MODE_DELTA, Layout
from deltazoo.compression.exact_errors import CodecError

MAGIC_ELF = b"DZT7"
ERROR_BOUND = 2.0**-24  # the largest |original − decoded| of an aligned float32 value
_GAPS = Layout(8, MODE_DELTA, 0, 0)  # u64 integers, coded by magnitude
_COUNT = struct.Struct("<Q")
_ONE = np.uint32(0x3F800000)  # 1.0f


def align(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exception mask, signed mantissas ``±m`` as int32) of u32 float32 bit patterns."""
    exp = (bits >> np.uint32(23)) & np.uint32(0xFF)
    magnitude = (bits & np.uint32(0x7FFFFFFF)).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        shifted = (magnitude + np.float32(1.0)).view(np.uint32)  # |p| + 1, rounded to nearest even
    m = (shifted - _ONE).astype(np.int32)  # the mantissa when the sum stayed below 2
    negative = (bits >> np.uint32(31)).astype(bool)
    exceptional = (exp >= 127) | (shifted >= np.uint32(0x40000000))  # |p| >= 1, inf, NaN; rounded to 2
    exceptional |= (exp == 0) & (bits != 0)  # subnormals and -0 (+0 aligns to itself)
    return exceptional, np.where(negative, -m, m).astype(np.int32)


def served(raw: bytes | bytearray | memoryview) -> bytes:
    """The float32 tensor ``raw`` as ELF stores it (what a pull of a lossy version returns)."""
    bits = np.frombuffer(raw, "<u4")
    exceptional, signed = align(bits)
    out = (signed.astype(np.float32) * np.float32(2.0**-23)).view("<u4")
    return np.where(exceptional, bits, out).astype("<u4").tobytes()


def encode(raw: bytes | bytearray | memoryview, head: bytes) -> bytes:
    """``head`` (the payload header) + the ELF body of float32 tensor ``raw``."""
    bits = np.frombuffer(raw, "<u4")
    exceptional, signed = align(bits)
    where = np.flatnonzero(exceptional)
    parts = [head, _COUNT.pack(where.size)]
    if where.size:
        gaps = np.diff(where, prepend=-1).astype(np.uint64) - np.uint64(1)
        parts.append(exact_any.encode_stream(_GAPS, gaps, None))
        parts.append(exact32.encode_stream(bits[where], None))
    kept = signed[~exceptional].view("<u4")
    return exact32.encode_stream(kept, np.zeros(kept.size, "<u4"), prefix=b"".join(parts))


def decode(buf: memoryview, offset: int, n: int) -> bytes:
    """The served float32 bytes of a body at ``offset`` holding ``n`` elements (the whole rest of buf)."""
    if offset + _COUNT.size > len(buf):
        raise CodecError("corrupt payload: truncated format-7 exception count")
    (k,) = _COUNT.unpack_from(buf, offset)
    offset += _COUNT.size
    if k > n:
        raise CodecError(f"corrupt payload: {k} format-7 exceptions in {n} elements")
    where = np.empty(0, np.int64)
    values = np.empty(0, "<u4")
    if k:
        gaps, offset = exact_any.decode_stream(_GAPS, buf, offset, k, None)
        where = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if gaps.max() >= n or where[-1] >= n:
            raise CodecError("corrupt payload: a format-7 exception lies past the tensor")
        values, offset = exact32.decode_stream(buf, offset, k, None)
    kept, offset = exact32.decode_stream(buf, offset, n - k, np.zeros(n - k, "<u4"))
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    signed = kept.view(np.int32)
    if signed.size and int(np.abs(signed.astype(np.int64)).max()) >= 1 << 23:
        raise CodecError("corrupt payload: a format-7 mantissa has more than 23 bits")
    out = np.empty(n, "<u4")
    rest = np.ones(n, bool)
    rest[where] = False
    out[rest] = (signed.astype(np.float32) * np.float32(2.0**-23)).view("<u4")
    out[where] = values
    return out.tobytes()
