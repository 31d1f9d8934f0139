"""Exact (bit-for-bit) tensor codecs: the public entry points the worker and the SDK call.

``encode_tensor`` picks the encoding from what it is given (``delta`` when a parent tensor of the same
shape exists, ``delta-rows`` when the parent has fewer rows and the same trailing dims, ``plain``
otherwise); ``decode_tensor`` inverts it given the same parent. Payloads are self-describing (magic
with the format version, codec id, dtypes, sizes), so bytes written by any version of deltazoo decode
forever: format 1 (``DZT1``, XOR + zstd) is still read by ``compression.exact_legacy``.

Format 2 (``DZT2``, written now) codes a delta as the integer difference of bit patterns
``child − parent`` (wrapping, zigzag-mapped so that small changes either way are small numbers) and
partitions it by the parent's top byte (sign and exponent of a float), where the size of a change in
units of the last place is decided; each partition's byte planes are zstd (Huffman) frames. A parent
of another float dtype is first cast to the child's dtype (torch, round to nearest even) and the
payload records the parent's dtype. ``plain`` codes the raw byte planes. Layout: docs/FORMAT.md.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compression.dtypes import DTYPES, dtype_info
from compression.exact_errors import CodecError
from compression.exact_legacy import MAGIC_V1, decode_v1
from compression.exact_planes import decode_planes, encode_planes, uint_dtype

__all__ = ["CodecError", "EncodedTensor", "decode_tensor", "encode_tensor"]

MAGIC = b"DZT2"
CHUNK_ELEMS = 1 << 20
MIN_GROUP = 4096
# Dtype codes stored in format-2 payloads; append only, never reorder.
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
_HEADER = struct.Struct("<4s c B B x I I Q")  # magic, codec id, dtype, parent dtype, chunk, min group, elems
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
    return int(np.prod(dims, dtype=np.int64))


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
    import torch

    with warnings.catch_warnings():  # read-only buffers are fine: the cast allocates anew
        warnings.simplefilter("ignore", UserWarning)
        src = torch.frombuffer(parent_raw, dtype=getattr(torch, _TORCH_FLOATS[parent_dtype]))
    cast = src.to(getattr(torch, _TORCH_FLOATS[dtype]))
    return cast.view(getattr(torch, f"uint{8 * cast.element_size()}")).numpy().view(udt)


def _context(parent: np.ndarray, dtype: str) -> np.ndarray | None:
    """Per element, what the decoder knows that predicts the size of a change: the parent's top bits."""
    info = dtype_info(dtype)
    if info.itemsize >= 2 and info.is_float:
        return (parent >> (8 * info.itemsize - 8)).astype(np.uint8)
    if info.itemsize == 1 and info.is_float:
        return parent >> np.uint8(info.mantissa_bits)
    return None


def _zigzag_delta(child: np.ndarray, parent: np.ndarray) -> np.ndarray:
    bits = 8 * child.dtype.itemsize
    d = (child - parent).view(np.dtype(f"<i{child.dtype.itemsize}"))
    return ((d << 1) ^ (d >> (bits - 1))).view(child.dtype)


def _unzigzag_add(z: np.ndarray, parent: np.ndarray) -> np.ndarray:
    signed = np.dtype(f"<i{z.dtype.itemsize}")
    return parent + ((z >> 1) ^ (-(z & 1).view(signed)).view(z.dtype))


def _header(codec: str, dtype: str, parent_dtype: str | None, n: int) -> bytes:
    parent_code = NO_PARENT if parent_dtype is None else DTYPE_CODES.index(parent_dtype)
    return _HEADER.pack(
        MAGIC, _CODEC_IDS[codec], DTYPE_CODES.index(dtype), parent_code, CHUNK_ELEMS, MIN_GROUP, n
    )


def _plain(raw: Buffer, dtype: str, n: int) -> EncodedTensor:
    symbols = np.frombuffer(raw, dtype=uint_dtype(dtype_info(dtype).itemsize))
    body = encode_planes(symbols, None, CHUNK_ELEMS, MIN_GROUP)
    return EncodedTensor("plain", _header("plain", dtype, None, n) + body)


def encode_tensor(
    raw: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None = None,
    parent_dtype: str | None = None,
    parent_shape: Shape | None = None,
) -> EncodedTensor:
    """Encode one tensor's raw little-endian bytes, against ``parent_raw`` when given.

    The parent is used when its dtype is the child's or both are floats (then it is cast to the
    child's dtype), and its shape equals the child's (``delta``) or has fewer rows with the same
    trailing dims (``delta-rows``); otherwise the tensor is coded ``plain``.
    """
    n = _check(raw, dtype, shape, "tensor")
    if parent_raw is None:
        return _plain(raw, dtype, n)
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
        return _plain(raw, dtype, n)
    parent = _as_child_dtype(parent_raw, parent_dtype, dtype)
    if parent is None:
        return _plain(raw, dtype, n)
    child = np.frombuffer(raw, dtype=parent.dtype)
    shared = parent.size
    z = _zigzag_delta(child[:shared], parent)
    body = encode_planes(z, _context(parent, dtype), CHUNK_ELEMS, MIN_GROUP)
    if same:
        return EncodedTensor("delta", _header("delta", dtype, parent_dtype, n) + body)
    tail = encode_planes(child[shared:], None, CHUNK_ELEMS, MIN_GROUP)
    head = _header("delta-rows", dtype, parent_dtype, n) + struct.pack("<Q", shared)
    return EncodedTensor("delta-rows", head + body + tail)


def decode_tensor(
    encoding: str,
    payload: Buffer,
    dtype: str,
    shape: Shape,
    parent_raw: Buffer | None = None,
    parent_dtype: str | None = None,
    parent_shape: Shape | None = None,
) -> bytes:
    """Inverse of ``encode_tensor``; returns the tensor's raw bytes (checked against dtype and shape)."""
    if dtype not in DTYPES:
        raise CodecError(f"unsupported dtype {dtype!r}; deltazoo stores {', '.join(DTYPE_CODES)}")
    n = _numel(shape, "tensor")
    itemsize = dtype_info(dtype).itemsize
    buf = memoryview(payload).cast("B")
    magic = bytes(buf[:4])
    if magic == MAGIC_V1:
        out = decode_v1(bytes(buf), itemsize, parent_raw)
    elif magic == MAGIC:
        out = _decode_v2(buf, encoding, dtype, n, parent_raw, parent_dtype, parent_shape)
    else:
        raise CodecError(
            f"not a deltazoo tensor payload (magic {magic!r}, expected {MAGIC!r} or {MAGIC_V1!r})"
        )
    if len(out) != n * itemsize:
        raise CodecError(
            f"payload decodes to {len(out)} bytes but shape {list(shape)} of {dtype} needs {n * itemsize}"
        )
    return out


def _decode_v2(
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
    _, cid, dcode, pcode, chunk, min_group, count = _HEADER.unpack_from(buf)
    codec = _ENCODINGS.get(cid)
    if codec is None:
        raise CodecError(f"corrupt payload: unknown codec id {cid!r}")
    if codec != encoding:
        raise CodecError(f"payload is {codec!r} but was asked to decode as {encoding!r}")
    if dcode >= len(DTYPE_CODES) or DTYPE_CODES[dcode] != dtype:
        held = DTYPE_CODES[dcode] if dcode < len(DTYPE_CODES) else f"code {dcode}"
        raise CodecError(f"payload holds a {held} tensor but {dtype} was asked")
    if count != n:
        raise CodecError(f"payload holds {count} elements but the shape asks for {n}")
    if chunk == 0:
        raise CodecError("corrupt payload: chunk size 0")
    udt = uint_dtype(dtype_info(dtype).itemsize)
    offset = _HEADER.size
    if codec == "plain":
        out, offset = decode_planes(buf, offset, n, udt.itemsize, None, chunk, min_group)
        return _finish(out, buf, offset)
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
    z, offset = decode_planes(buf, offset, shared, udt.itemsize, _context(parent, dtype), chunk, min_group)
    head = _unzigzag_add(z, parent)
    if codec == "delta":
        return _finish(head, buf, offset)
    tail, offset = decode_planes(buf, offset, n - shared, udt.itemsize, None, chunk, min_group)
    return _finish(np.concatenate([head, tail]), buf, offset)


def _finish(out: np.ndarray, buf: memoryview, offset: int) -> bytes:
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    return out.tobytes()
