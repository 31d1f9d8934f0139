"""Tensor codecs, exact (bit for bit) unless asked otherwise: the entry points the worker and the SDK call.

``encode_tensor`` picks the encoding from what it is given (``delta`` when a parent tensor of the same
shape exists, ``delta-rows`` when the parent has fewer rows and the same trailing dims, ``plain``
otherwise); ``decode_tensor`` inverts it given the same parent. Payloads are self-describing (magic with
the format number, codec id, dtypes, sizes), so every format written by default since format 4 decodes
forever. What is written now, by dtype (docs/ARCHITECTURE.md has the module map):

* BF16, F16: format 5 (``DZT5``): deltas by ``compression.exact16_delta`` (the zigzagged 16-bit difference
  ``child − parent`` as a token Huffman-coded with a table per parent exponent, extra bits inline, in
  byte-aligned segments); ``plain`` and the new rows of ``delta-rows`` (header flag ``PLAIN16``) by
  ``compression.exact16_plain`` (exponent and top mantissa bit Huffman-coded, sign and the other mantissa
  bits as a packed plane).
* F32: format 6 (``DZT6``, ``compression.exact32``): the zigzagged 32-bit difference as a Huffman token per
  parent exponent with its low bits in a raw plane apart; plain F32 as exponent-and-top-mantissa-bit
  symbols plus a raw plane.
* Every other dtype (F64, F8, integers, bool): format 4 (``DZT4``, ``compression.exact_any``): the integer
  difference of bit patterns as a sign-and-magnitude token per parent exponent (interleaved rANS) plus raw
  low bits packed apart, in chunks of 2^18 elements. Format 4 was also the default for BF16/F16 before
  format 5 and for F32 before format 6, so stores hold it for every dtype; ``version=4`` and ``version=5``
  still write it (for readers older than format 5 or 6).
* A float tensor whose values a narrower float dtype holds bit for bit (bf16 weights saved as f32, say) is
  coded in that dtype inside a ``DZTN`` payload (``compression.narrow``).
* Only on an explicit lossy request (``lossy=True``): F32 as ELF, format 7 (``DZT7``,
  ``compression.elf32``), within 2⁻²⁴ of every value (not bit for bit).

Formats 1-3 (``DZT1``-``DZT3``) were written only before format 4 became the default (2026-11-22) and no
deployment holds them; they are refused by name. A parent of another float dtype is first cast to the
child's dtype (torch, round to nearest even) and the payload records the parent's dtype. Layout:
docs/FORMAT.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from deltazoo.compression import elf32, exact16_delta, exact16_plain, exact32, exact_any, narrow
from deltazoo.compression.dtypes import DTYPES, dtype_info, uint_dtype
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.payload import (
    DTYPE_CODES,
    MAGIC,
    MAGIC_RAW,
    MAGIC_V4,
    MAGIC_V6,
    PLAIN16,
    RAW_HEADER,
    RETIRED,
    V5_SHIFT,
    Buffer,
    Shape,
    as_child_dtype,
    check_dtype_code,
    check_tensor,
    header,
    layout,
    numel,
)
from deltazoo.compression.payload_decode import decode_elf, decode_v5_as_f16, decode_v6, decode_v45

__all__ = [
    "PLAIN16",
    "CodecError",
    "EncodedTensor",
    "decode_tensor",
    "decode_tensor_into",
    "encode_tensor",
    "layout",
    "smaller_as_is",
]

VERSIONS = (4, 5, 6)  # formats encode_tensor can write (6: 5, and F32 in format 6)


@dataclass(frozen=True)
class EncodedTensor:
    encoding: str  # "delta" | "delta-rows" | "plain"
    payload: bytes


def _plain(raw: Buffer, dtype: str, n: int, threads: int, version: int = 6) -> EncodedTensor:
    if version == 6 and dtype == "F32":
        head = header("plain", dtype, None, n, MAGIC_V6)
        return EncodedTensor("plain", exact32.encode_stream(np.frombuffer(raw, "<u4"), None, prefix=head))
    if version >= 5 and dtype in exact16_plain.FLOATS:  # one thread: it runs near memory-copy speed
        head = header("plain", dtype, None, n, MAGIC, PLAIN16)
        return EncodedTensor("plain", exact16_plain.encode(raw, dtype, head))
    elems = np.frombuffer(raw, dtype=uint_dtype(dtype_info(dtype).itemsize))
    body = exact_any.encode_stream(layout(dtype, False), elems, None, threads=threads)
    return EncodedTensor("plain", header("plain", dtype, None, n) + body)


def encode_tensor(
    raw: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None = None,
    parent_dtype: str | None = None,
    parent_shape: Shape | None = None,
    *,
    threads: int = 1,
    version: int = 6,
    narrowing: bool = True,
    lossy: bool = False,
) -> EncodedTensor:
    """Encode one tensor's raw little-endian bytes, against ``parent_raw`` when given.

    The parent is used when its dtype is the child's or both are floats (then it is cast to the
    child's dtype), and its shape equals the child's (``delta``) or has fewer rows with the same
    trailing dims (``delta-rows``); otherwise the tensor is coded ``plain``. ``threads`` > 1 codes the
    2^18-element chunks of a format-4 tensor, or runs of segments of a format-5 delta, side by side (same
    bytes as one thread; format-5 plain streams and format 6 run on one thread). ``version`` 4 writes
    format 4 only (for readers older than format 5); 5 writes F32 in format 4 (for readers older than
    format 6); 6 (the default) codes F32 in format 6 (``compression.exact32``). With version 5 or 6, a
    float tensor whose every element a narrower
    float dtype holds bit for bit (bf16 weights saved as f32, say) is coded in that dtype inside a
    ``DZTN`` payload (``compression.narrow``; ``narrowing=False`` turns this off).

    ``lossy=True`` (an explicit archival request, never a default) codes an F32 tensor that no narrower
    dtype holds as an ELF payload (format 7, ``compression.elf32``, no parent): it decodes to
    ``elf32.served(raw)``, within 2⁻²⁴ of each value, not to ``raw``. Other dtypes are coded exactly.
    """
    if version not in VERSIONS:
        raise CodecError(f"version must be one of {VERSIONS}, not {version!r}")
    n = check_tensor(raw, dtype, shape, "tensor")
    if version >= 5 and narrowing:
        if parent_raw is not None:  # checked here: a wrong parent must not pass as a narrow one
            check_tensor(parent_raw, parent_dtype, parent_shape, "parent tensor")
        held = narrow.narrowest(raw, dtype)
        if held is not None:  # code the values in the narrowest float dtype that holds them all
            inner_dtype, inner_raw = held
            inner = encode_tensor(
                inner_raw,
                inner_dtype,
                shape,
                parent_raw,
                parent_dtype,
                parent_shape,
                version=version,
                narrowing=False,
            )
            head = narrow.HEADER.pack(
                narrow.MAGIC_NARROW, DTYPE_CODES.index(dtype), DTYPE_CODES.index(inner_dtype)
            )
            return EncodedTensor(inner.encoding, head + inner.payload)
    if lossy and dtype == "F32":
        return EncodedTensor("plain", elf32.encode(raw, header("plain", dtype, None, n, elf32.MAGIC_ELF)))
    if parent_raw is None:
        return _plain(raw, dtype, n, threads, version)
    check_tensor(parent_raw, parent_dtype, parent_shape, "parent tensor")
    assert parent_dtype is not None and parent_shape is not None
    shape, parent_shape = [int(d) for d in shape], [int(d) for d in parent_shape]
    same = parent_shape == shape
    grown = (
        len(shape) >= 1
        and len(parent_shape) == len(shape)
        and parent_shape[1:] == shape[1:]
        and parent_shape[0] < shape[0]
    )
    if not (same or grown):
        return _plain(raw, dtype, n, threads, version)
    parent = as_child_dtype(parent_raw, parent_dtype, dtype)
    if parent is None:
        return _plain(raw, dtype, n, threads, version)
    child = np.frombuffer(raw, dtype=parent.dtype)
    shared = parent.size
    if version == 6 and dtype == "F32":
        return _encode_f32(child, parent, same, dtype, parent_dtype, n)
    magic = MAGIC if version >= 5 and dtype in V5_SHIFT else MAGIC_V4
    if magic == MAGIC and same:  # the header goes in ahead of the stream: no copy of the body after
        head = header("delta", dtype, parent_dtype, n, magic)
        payload = exact16_delta.encode_stream(child, parent, V5_SHIFT[dtype], threads=threads, prefix=head)
        return EncodedTensor("delta", payload)
    if magic == MAGIC:
        body = exact16_delta.encode_stream(child[:shared], parent, V5_SHIFT[dtype], threads=threads)
    else:
        body = exact_any.encode_stream(layout(dtype, True), child[:shared], parent, threads=threads)
    if same:
        return EncodedTensor("delta", header("delta", dtype, parent_dtype, n, magic) + body)
    if magic == MAGIC:  # BF16/F16: the new rows as a plain stream of exact16_plain
        head = header("delta-rows", dtype, parent_dtype, n, magic, PLAIN16) + struct.pack("<Q", shared)
        return EncodedTensor("delta-rows", exact16_plain.encode(child[shared:], dtype, head + body))
    tail = exact_any.encode_stream(layout(dtype, False), child[shared:], None, threads=threads)
    head = header("delta-rows", dtype, parent_dtype, n, magic) + struct.pack("<Q", shared)
    return EncodedTensor("delta-rows", head + body + tail)


def smaller_as_is(encoded: EncodedTensor, raw: Buffer, dtype: str) -> EncodedTensor:
    """``encoded``, or ``raw`` (the bytes ``encoded`` decodes to) as they are (``DZTR``, ``plain``: no parent
    needed to read them) where those take less: a scalar or a small bias, whose stream's tables outweigh
    its data. What the service stores: a tensor never takes more than its own bytes and an 8-byte header."""
    stored = RAW_HEADER.size + memoryview(raw).nbytes
    if len(encoded.payload) <= stored:
        return encoded
    return EncodedTensor("plain", RAW_HEADER.pack(MAGIC_RAW, DTYPE_CODES.index(dtype)) + bytes(raw))


def _encode_f32(
    child: np.ndarray, parent: np.ndarray, same: bool, dtype: str, parent_dtype: str, n: int
) -> EncodedTensor:
    """Format 6: the delta stream of the shared elements, then for ``delta-rows`` the new rows plain."""
    if same:
        head = header("delta", dtype, parent_dtype, n, MAGIC_V6)
        return EncodedTensor("delta", exact32.encode_stream(child, parent, prefix=head))
    shared = parent.size
    head = header("delta-rows", dtype, parent_dtype, n, MAGIC_V6) + struct.pack("<Q", shared)
    body = exact32.encode_stream(child[:shared], parent, prefix=head)
    return EncodedTensor("delta-rows", exact32.encode_stream(child[shared:], None, prefix=body))


def decode_tensor(
    encoding: str,
    payload: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None = None,
    parent_dtype: str | None = None,
    parent_shape: Shape | None = None,
    *,
    threads: int = 1,
) -> bytes:
    """Inverse of ``encode_tensor``; returns the tensor's raw bytes (checked against dtype and shape).
    ``threads`` > 1 decodes the chunks (format 4) or runs of segments (format 5) side by side."""
    out = _decode(encoding, payload, dtype, shape, parent_raw, parent_dtype, parent_shape, threads, None)
    return out if isinstance(out, bytes) else bytes(out)  # bytes from every decoder when not given out


def decode_tensor_into(
    out: Buffer,
    encoding: str,
    payload: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None = None,
    parent_dtype: str | None = None,
    parent_shape: Shape | None = None,
    *,
    threads: int = 1,
) -> None:
    """``decode_tensor`` into ``out``, a writable buffer of exactly the tensor's bytes (a slice of a whole
    file's buffer, say): the ``plain`` and ``delta`` streams of format 5 (BF16, F16) and format 6 (F32),
    and F16 deltas narrowed to BF16, are decoded straight into it, any other payload decoded and then
    copied. On an error ``out``'s bytes are undefined."""
    view = memoryview(out).cast("B")
    if view.readonly:
        raise ValueError("decode_tensor_into: out must be writable")
    itemsize = _itemsize(dtype)
    if len(view) != (need := numel(shape, "tensor") * itemsize):
        raise ValueError(
            f"decode_tensor_into: out holds {len(view)} bytes, a {dtype} {list(shape)} tensor needs {need}"
        )
    aligned = np.frombuffer(view, np.uint8).ctypes.data % itemsize == 0 if len(view) else True
    got = _decode(
        encoding,
        payload,
        dtype,
        shape,
        parent_raw,
        parent_dtype,
        parent_shape,
        threads,
        view if aligned else None,
    )  # the kernels store whole elements: only at their alignment
    if got is not view:
        view[:] = got


def _decode(
    encoding: str,
    payload: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    threads: int,
    into: memoryview | None,
) -> bytes | memoryview:
    itemsize = _itemsize(dtype)
    n = numel(shape, "tensor")
    buf = memoryview(payload).cast("B")
    magic = bytes(buf[:4])
    out: bytes | memoryview
    if magic == narrow.MAGIC_NARROW:
        out = _decode_narrowed(
            buf, encoding, dtype, shape, parent_raw, parent_dtype, parent_shape, threads, into
        )
    elif magic == MAGIC_RAW:
        out = _decode_raw(buf, encoding, dtype, n * itemsize)
    elif magic == elf32.MAGIC_ELF:
        out = decode_elf(buf, encoding, dtype, n)
    elif magic == MAGIC_V6:
        out = decode_v6(buf, encoding, dtype, n, parent_raw, parent_dtype, parent_shape, into)
    elif magic in (MAGIC, MAGIC_V4):
        out = decode_v45(buf, encoding, dtype, n, parent_raw, parent_dtype, parent_shape, threads, into)
    elif magic in RETIRED:
        raise CodecError(
            f"a format {magic[3] - 48} payload ({magic.decode()}) is no longer read: formats 1-3 were"
            " written only by deltazoo before 2026-11-22; decode it with that release and push it again"
        )
    else:
        raise CodecError(
            f"not a deltazoo tensor payload (magic {magic!r}, expected {MAGIC_V6!r}, {MAGIC!r},"
            f" {MAGIC_V4!r}, {MAGIC_RAW!r}, {elf32.MAGIC_ELF!r} or {narrow.MAGIC_NARROW!r})"
        )
    if len(out) != n * itemsize:
        raise CodecError(
            f"payload decodes to {len(out)} bytes but shape {list(shape)} of {dtype} needs {n * itemsize}"
        )
    return out


def _decode_raw(buf: memoryview, encoding: str, dtype: str, nbytes: int) -> memoryview:
    """A ``DZTR`` payload: the header, then the tensor's bytes as they are."""
    if encoding != "plain":
        raise CodecError(f"corrupt payload: a stored-as-is (DZTR) payload is plain, not {encoding}")
    if len(buf) < RAW_HEADER.size:
        raise CodecError("corrupt payload: truncated DZTR header")
    _, code = RAW_HEADER.unpack_from(buf)
    check_dtype_code(code, dtype)
    body = buf[RAW_HEADER.size :]
    if len(body) != nbytes:
        raise CodecError(f"corrupt payload: DZTR holds {len(body)} bytes, the tensor has {nbytes}")
    return body


def _itemsize(dtype: str) -> int:
    if dtype not in DTYPES:
        raise CodecError(f"unsupported dtype {dtype!r}; deltazoo stores {', '.join(DTYPE_CODES)}")
    return dtype_info(dtype).itemsize


def _decode_narrowed(
    buf: memoryview,
    encoding: str,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    threads: int,
    into: memoryview | None = None,
) -> bytes | memoryview:
    """``into``: where a BF16-narrowed F16 delta is decoded in one pass (other narrowed payloads: unused)."""
    if len(buf) < narrow.HEADER.size:
        raise CodecError("corrupt payload: truncated narrowed (DZTN) header")
    _, code, narrow_code = narrow.HEADER.unpack_from(buf)
    check_dtype_code(code, dtype)
    inner_dtype = DTYPE_CODES[narrow_code] if narrow_code < len(DTYPE_CODES) else None
    if inner_dtype not in narrow.CANDIDATES.get(dtype, ()):
        raise CodecError(f"corrupt payload: a {dtype} tensor cannot be narrowed to dtype code {narrow_code}")
    inner = buf[narrow.HEADER.size :]
    if bytes(inner[:4]) == narrow.MAGIC_NARROW:
        raise CodecError("corrupt payload: a narrowed payload inside a narrowed payload")
    assert inner_dtype is not None
    if (inner_dtype, dtype) == ("BF16", "F16") and threads <= 1:  # one pass, both casts in the kernel
        n = numel(shape, "tensor")
        f16 = decode_v5_as_f16(inner, encoding, n, parent_raw, parent_dtype, parent_shape, into)
        if f16 is not None:
            return f16
    raw = decode_tensor(
        encoding, inner, inner_dtype, shape, parent_raw, parent_dtype, parent_shape, threads=threads
    )
    return narrow.widen(raw, inner_dtype, dtype)
