"""Exact (bit-for-bit) tensor codecs: the public entry points the worker and the SDK call.

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

Formats 1-3 (``DZT1``-``DZT3``) were written only before format 4 became the default (2026-11-22) and no
deployment holds them; they are refused by name. A parent of another float dtype is first cast to the
child's dtype (torch, round to nearest even) and the payload records the parent's dtype. Layout:
docs/FORMAT.md.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from deltazoo.compression import exact16_delta, exact16_plain, exact32, exact_any, narrow
from deltazoo.compression.dtypes import DTYPES, dtype_info, uint_dtype
from deltazoo.compression.exact_any_tokens import MODE_DELTA, MODE_FLOAT, Layout
from deltazoo.compression.exact_errors import CodecError

__all__ = ["CodecError", "EncodedTensor", "decode_tensor", "encode_tensor"]

MAGIC = b"DZT5"
MAGIC_V6 = b"DZT6"  # F32 payloads (compression.exact32)
MAGIC_V4 = b"DZT4"
RETIRED = (b"DZT1", b"DZT2", b"DZT3")  # formats no deployment holds: refused by name
# Dtype codes stored in payload headers; append only, never reorder.
DTYPE_CODES: tuple[str, ...] = (
    "F64",
    "F32",
    "F16",
    "BF16",
    "F8_E4M3",
    "F8_E5M2",
    "I64",
    "I32",
    "I16",
    "I8",
    "U64",
    "U32",
    "U16",
    "U8",
    "BOOL",
)
NO_PARENT = 0xFF
_HEADER = struct.Struct("<4s c B B B Q")  # magic, codec id, dtype, parent dtype, flags, element count
# Format-5 header flag: the payload's plain streams (`p`, the new rows of `r`) of BF16/F16 are
# compression.exact16_plain streams (without it: format-4 streams, as format 5 first wrote them).
PLAIN16 = 1
_CODEC_IDS = {"plain": b"p", "delta": b"d", "delta-rows": b"r"}
_ENCODINGS = {v: k for k, v in _CODEC_IDS.items()}
_TORCH_FLOATS = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}

Shape = Sequence[int]
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class EncodedTensor:
    encoding: str  # "delta" | "delta-rows" | "plain"
    payload: bytes


def _numel(shape: Shape, what: str) -> int:
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise CodecError(f"{what} shape {dims} has a negative dimension")
    return math.prod(dims)  # exact, and ~40x faster than np.prod on a short list


def _check(raw: Buffer, dtype: str | None, shape: Shape | None, what: str) -> int:
    """Validate a tensor's dtype, shape and byte length up front; return its element count."""
    if dtype not in DTYPES:
        raise CodecError(f"unsupported {what} dtype {dtype!r}; deltazoo stores {', '.join(DTYPE_CODES)}")
    if shape is None:
        raise CodecError(f"{what} shape is missing")
    n = _numel(shape, what)
    expected = n * dtype_info(dtype).itemsize
    if len(raw) != expected:
        raise CodecError(f"{what} has {len(raw)} bytes but shape {list(shape)} of {dtype} needs {expected}")
    return n


def _as_child_dtype(parent_raw: Buffer, parent_dtype: str, dtype: str) -> np.ndarray | None:
    """The parent's bit patterns in the child's dtype, or None when no exact cast is defined."""
    udt = uint_dtype(dtype_info(dtype).itemsize)
    if parent_dtype == dtype:
        return np.frombuffer(parent_raw, dtype=udt)
    if parent_dtype not in _TORCH_FLOATS or dtype not in _TORCH_FLOATS:
        return None
    if len(parent_raw) == 0:
        return np.empty(0, dtype=udt)
    fast = None  # the casts below, without torch, where they are exact or torch's own rounding
    if (parent_dtype, dtype) == ("F32", "BF16"):  # bf16 values saved as f32: nothing to round
        fast = narrow.bf16_of_f32(parent_raw)
    elif (parent_dtype, dtype) == ("F16", "BF16"):
        fast = narrow.bf16_rne_of_f16(parent_raw)
    elif (parent_dtype, dtype) == ("BF16", "F32"):  # widening is exact: the bf16 bits are the high half
        fast = np.frombuffer(parent_raw, "<u2").astype("<u4") << np.uint32(16)
    if fast is not None:
        return fast
    import torch

    with warnings.catch_warnings():  # read-only buffers are fine: the cast allocates anew
        warnings.simplefilter("ignore", UserWarning)
        src = torch.frombuffer(parent_raw, dtype=getattr(torch, _TORCH_FLOATS[parent_dtype]))
    cast = src.to(getattr(torch, _TORCH_FLOATS[dtype]))
    return cast.view(getattr(torch, f"uint{8 * cast.element_size()}")).numpy().view(udt)


def layout(dtype: str, with_parent: bool) -> Layout:
    """How format 4 tokenizes ``dtype``: floats by exponent (delta: the parent's), integers by
    magnitude."""
    info = dtype_info(dtype)
    if not info.is_float:
        return Layout(info.itemsize, MODE_DELTA, 0, 0)
    tbits = min(info.exponent_bits, 8)
    shift = info.mantissa_bits + info.exponent_bits - tbits
    return Layout(info.itemsize, MODE_DELTA if with_parent else MODE_FLOAT, shift, tbits)


_V5_SHIFT = {"BF16": 7, "F16": 10}  # dtypes format 5 codes, with their mantissa bits
VERSIONS = (4, 5, 6)  # formats encode_tensor can write (6: 5, and F32 in format 6)


def _header(
    codec: str, dtype: str, parent_dtype: str | None, n: int, magic: bytes = MAGIC_V4, flags: int = 0
) -> bytes:
    parent_code = NO_PARENT if parent_dtype is None else DTYPE_CODES.index(parent_dtype)
    return _HEADER.pack(magic, _CODEC_IDS[codec], DTYPE_CODES.index(dtype), parent_code, flags, n)


def _plain(raw: Buffer, dtype: str, n: int, threads: int, version: int = 6) -> EncodedTensor:
    if version == 6 and dtype == "F32":
        head = _header("plain", dtype, None, n, MAGIC_V6)
        return EncodedTensor("plain", exact32.encode_stream(np.frombuffer(raw, "<u4"), None, prefix=head))
    if version >= 5 and dtype in exact16_plain.FLOATS:  # one thread: it runs near memory-copy speed
        head = _header("plain", dtype, None, n, MAGIC, PLAIN16)
        return EncodedTensor("plain", exact16_plain.encode(raw, dtype, head))
    elems = np.frombuffer(raw, dtype=uint_dtype(dtype_info(dtype).itemsize))
    body = exact_any.encode_stream(layout(dtype, False), elems, None, threads=threads)
    return EncodedTensor("plain", _header("plain", dtype, None, n) + body)


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
    """
    if version not in VERSIONS:
        raise CodecError(f"version must be one of {VERSIONS}, not {version!r}")
    n = _check(raw, dtype, shape, "tensor")
    if version >= 5 and narrowing:
        if parent_raw is not None:  # checked here: a wrong parent must not pass as a narrow one
            _check(parent_raw, parent_dtype, parent_shape, "parent tensor")
        held = narrow.narrowest(raw, dtype)
        if held is not None:  # code the values in the narrowest float dtype that holds them all
            inner_dtype, inner_raw = held
            inner = encode_tensor(
                inner_raw, inner_dtype, shape, parent_raw, parent_dtype, parent_shape,
                version=version, narrowing=False,
            )
            head = narrow.HEADER.pack(
                narrow.MAGIC_NARROW, DTYPE_CODES.index(dtype), DTYPE_CODES.index(inner_dtype)
            )
            return EncodedTensor(inner.encoding, head + inner.payload)
    if parent_raw is None:
        return _plain(raw, dtype, n, threads, version)
    _check(parent_raw, parent_dtype, parent_shape, "parent tensor")
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
    parent = _as_child_dtype(parent_raw, parent_dtype, dtype)
    if parent is None:
        return _plain(raw, dtype, n, threads, version)
    child = np.frombuffer(raw, dtype=parent.dtype)
    shared = parent.size
    if version == 6 and dtype == "F32":
        return _encode_f32(child, parent, same, dtype, parent_dtype, n)
    magic = MAGIC if version >= 5 and dtype in _V5_SHIFT else MAGIC_V4
    if magic == MAGIC and same:  # the header goes in ahead of the stream: no copy of the body after
        head = _header("delta", dtype, parent_dtype, n, magic)
        payload = exact16_delta.encode_stream(child, parent, _V5_SHIFT[dtype], threads=threads, prefix=head)
        return EncodedTensor("delta", payload)
    if magic == MAGIC:
        body = exact16_delta.encode_stream(child[:shared], parent, _V5_SHIFT[dtype], threads=threads)
    else:
        body = exact_any.encode_stream(layout(dtype, True), child[:shared], parent, threads=threads)
    if same:
        return EncodedTensor("delta", _header("delta", dtype, parent_dtype, n, magic) + body)
    if magic == MAGIC:  # BF16/F16: the new rows as a plain stream of exact16_plain
        head = _header("delta-rows", dtype, parent_dtype, n, magic, PLAIN16) + struct.pack("<Q", shared)
        return EncodedTensor("delta-rows", exact16_plain.encode(child[shared:], dtype, head + body))
    tail = exact_any.encode_stream(layout(dtype, False), child[shared:], None, threads=threads)
    head = _header("delta-rows", dtype, parent_dtype, n, magic) + struct.pack("<Q", shared)
    return EncodedTensor("delta-rows", head + body + tail)


def _encode_f32(
    child: np.ndarray, parent: np.ndarray, same: bool, dtype: str, parent_dtype: str, n: int
) -> EncodedTensor:
    """Format 6: the delta stream of the shared elements, then for ``delta-rows`` the new rows plain."""
    if same:
        head = _header("delta", dtype, parent_dtype, n, MAGIC_V6)
        return EncodedTensor("delta", exact32.encode_stream(child, parent, prefix=head))
    shared = parent.size
    head = _header("delta-rows", dtype, parent_dtype, n, MAGIC_V6) + struct.pack("<Q", shared)
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
    if dtype not in DTYPES:
        raise CodecError(f"unsupported dtype {dtype!r}; deltazoo stores {', '.join(DTYPE_CODES)}")
    n = _numel(shape, "tensor")
    itemsize = dtype_info(dtype).itemsize
    buf = memoryview(payload).cast("B")
    magic = bytes(buf[:4])
    if magic == narrow.MAGIC_NARROW:
        out = _decode_narrowed(buf, encoding, dtype, shape, parent_raw, parent_dtype, parent_shape, threads)
    elif magic == MAGIC_V6:
        out = _decode_v6(buf, encoding, dtype, n, parent_raw, parent_dtype, parent_shape)
    elif magic in (MAGIC, MAGIC_V4):
        out = _decode_v45(buf, encoding, dtype, n, parent_raw, parent_dtype, parent_shape, threads)
    elif magic in RETIRED:
        raise CodecError(
            f"a format {magic[3] - 48} payload ({magic.decode()}) is no longer read: formats 1-3 were"
            " written only by deltazoo before 2026-11-22; decode it with that release and push it again"
        )
    else:
        raise CodecError(
            f"not a deltazoo tensor payload (magic {magic!r}, expected {MAGIC_V6!r}, {MAGIC!r},"
            f" {MAGIC_V4!r} or {narrow.MAGIC_NARROW!r})"
        )
    if len(out) != n * itemsize:
        raise CodecError(
            f"payload decodes to {len(out)} bytes but shape {list(shape)} of {dtype} needs {n * itemsize}"
        )
    return out


def _check_dtype_code(code: int, dtype: str) -> None:
    """A payload's dtype code must name the dtype the caller asked for."""
    if code >= len(DTYPE_CODES) or DTYPE_CODES[code] != dtype:
        held = DTYPE_CODES[code] if code < len(DTYPE_CODES) else f"code {code}"
        raise CodecError(f"payload holds a {held} tensor but {dtype} was asked")


def _decode_narrowed(
    buf: memoryview,
    encoding: str,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    threads: int,
) -> bytes:
    if len(buf) < narrow.HEADER.size:
        raise CodecError("corrupt payload: truncated narrowed (DZTN) header")
    _, code, narrow_code = narrow.HEADER.unpack_from(buf)
    _check_dtype_code(code, dtype)
    inner_dtype = DTYPE_CODES[narrow_code] if narrow_code < len(DTYPE_CODES) else None
    if inner_dtype not in narrow.CANDIDATES.get(dtype, ()):
        raise CodecError(f"corrupt payload: a {dtype} tensor cannot be narrowed to dtype code {narrow_code}")
    inner = buf[narrow.HEADER.size :]
    if bytes(inner[:4]) == narrow.MAGIC_NARROW:
        raise CodecError("corrupt payload: a narrowed payload inside a narrowed payload")
    assert inner_dtype is not None
    raw = decode_tensor(
        encoding, inner, inner_dtype, shape, parent_raw, parent_dtype, parent_shape, threads=threads
    )
    return narrow.widen(raw, inner_dtype, dtype)


def _decode_v45(
    buf: memoryview,
    encoding: str,
    dtype: str,
    n: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    threads: int,
) -> bytes:
    header = _HEADER
    if len(buf) < header.size:
        raise CodecError(f"corrupt payload: {len(buf)} bytes is shorter than the {header.size}-byte header")
    fields = header.unpack_from(buf)
    cid, dcode, pcode, count = fields[1], fields[2], fields[3], fields[-1]
    codec = _ENCODINGS.get(cid)
    if codec is None:
        raise CodecError(f"corrupt payload: unknown codec id {cid!r}")
    if codec != encoding:
        raise CodecError(f"payload is {codec!r} but was asked to decode as {encoding!r}")
    _check_dtype_code(dcode, dtype)
    if count != n:
        raise CodecError(f"payload holds {count} elements but the shape asks for {n}")
    v5 = bytes(buf[:4]) == MAGIC
    if v5 and fields[4] not in (0, PLAIN16):
        raise CodecError(f"corrupt payload: unknown format-5 flags {fields[4]:#x}")
    plain16 = v5 and fields[4] == PLAIN16
    if plain16 and dtype not in exact16_plain.FLOATS:
        raise CodecError(f"corrupt payload: format-5 plain streams code BF16 and F16, not {dtype}")
    if plain16 and codec == "plain":  # the decoded bytes as they are: no copy
        if pcode != NO_PARENT:
            raise CodecError(f"corrupt payload: a plain payload with parent dtype code {pcode}")
        data, offset = exact16_plain.decode(buf, header.size, n, dtype)
        if offset != len(buf):
            raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
        return data
    parent, shared, offset = None, n, header.size
    if codec != "plain":
        parent = _parent_for(codec, dtype, pcode, parent_raw, parent_dtype, parent_shape)
        shared, offset = _shared_elements(buf, offset, codec, n, parent)

    def stream(with_parent: bool, at: int, count: int, par: np.ndarray | None) -> tuple[np.ndarray, int]:
        if v5 and with_parent:
            if dtype not in _V5_SHIFT:
                raise CodecError(f"corrupt payload: format 5 codes BF16 and F16 deltas, not {dtype}")
            assert par is not None
            return exact16_delta.decode_stream(buf, at, count, par, _V5_SHIFT[dtype], threads=threads)
        return exact_any.decode_stream(layout(dtype, with_parent), buf, at, count, par, threads=threads)

    if codec == "plain":
        out, offset = stream(False, offset, n, None)
    else:
        out, offset = stream(True, offset, shared, parent)
    if codec == "delta-rows" and plain16:
        rows, offset = exact16_plain.decode(buf, offset, n - shared, dtype)
        out = np.concatenate([out, np.frombuffer(rows, "<u2")])
    elif codec == "delta-rows":
        tail, offset = stream(False, offset, n - shared, None)
        out = np.concatenate([out, tail])
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    if type(out.base) is bytes and len(out.base) == out.nbytes:  # format 5 decodes into a bytes object
        return out.base  # of its own: handed over as it is, not copied
    return out.tobytes()


def _decode_v6(
    buf: memoryview,
    encoding: str,
    dtype: str,
    n: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
) -> bytes:
    if len(buf) < _HEADER.size:
        raise CodecError(f"corrupt payload: {len(buf)} bytes is shorter than the {_HEADER.size}-byte header")
    _, cid, dcode, pcode, flags, count = _HEADER.unpack_from(buf)
    codec = _ENCODINGS.get(cid)
    if codec is None:
        raise CodecError(f"corrupt payload: unknown codec id {cid!r}")
    if codec != encoding:
        raise CodecError(f"payload is {codec!r} but was asked to decode as {encoding!r}")
    _check_dtype_code(dcode, dtype)
    if dtype != "F32":
        raise CodecError(f"corrupt payload: format 6 codes F32 tensors, not {dtype}")
    if count != n:
        raise CodecError(f"payload holds {count} elements but the shape asks for {n}")
    if flags:
        raise CodecError(f"corrupt payload: unknown format-6 flags {flags:#x}")
    offset = _HEADER.size
    if codec == "plain":
        if pcode != NO_PARENT:
            raise CodecError(f"corrupt payload: a plain payload with parent dtype code {pcode}")
        out, offset = exact32.decode_stream(buf, offset, n, None)
    else:
        parent = _parent_for(codec, dtype, pcode, parent_raw, parent_dtype, parent_shape)
        shared, offset = _shared_elements(buf, offset, codec, n, parent)
        out, offset = exact32.decode_stream(buf, offset, shared, parent)
        if codec == "delta-rows":
            rows, offset = exact32.decode_stream(buf, offset, n - shared, None)
            out = np.concatenate([out, rows])
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    return out.tobytes()


def _shared_elements(buf: memoryview, offset: int, codec: str, n: int, parent: np.ndarray) -> tuple[int, int]:
    """How many leading elements a delta payload codes against its parent (all ``n``, or a delta-rows
    header's count), checked against the parent; and the offset after that header."""
    shared = n
    if codec == "delta-rows":
        if len(buf) < offset + 8:
            raise CodecError("corrupt payload: truncated delta-rows header")
        (shared,) = struct.unpack_from("<Q", buf, offset)
        offset += 8
    if shared != parent.size or shared > n:
        raise CodecError(
            f"payload was coded against a parent of {shared} elements but the parent has {parent.size}"
        )
    return shared, offset


def _parent_for(
    codec: str,
    dtype: str,
    pcode: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
) -> np.ndarray:
    if parent_raw is None:
        raise CodecError(
            f"this {codec} payload needs its parent tensor: pass parent_raw, parent_dtype, parent_shape"
        )
    if pcode >= len(DTYPE_CODES):
        raise CodecError(f"corrupt payload: unknown parent dtype code {pcode}")
    if parent_dtype != DTYPE_CODES[pcode]:
        raise CodecError(
            f"payload was coded against a {DTYPE_CODES[pcode]} parent but a {parent_dtype} parent was given"
        )
    _check(parent_raw, parent_dtype, parent_shape, "parent tensor")
    parent = _as_child_dtype(parent_raw, parent_dtype, dtype)
    assert parent is not None  # the encoder only wrote a delta for a castable parent
    return parent
