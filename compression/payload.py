"""What every exact tensor payload shares: the header (magic with the format number, codec id, dtype codes,
element count), the checks of a tensor and its parent, and the parent's cast to the child's dtype. Used by
``compression.codecs`` (encode, and the dispatch of decode) and ``compression.payload_decode``.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from deltazoo.compression import narrow
from deltazoo.compression.dtypes import DTYPES, dtype_info, uint_dtype
from deltazoo.compression.exact_any_tokens import MODE_DELTA, MODE_FLOAT, Layout
from deltazoo.compression.exact_errors import CodecError

MAGIC = b"DZT5"
MAGIC_V6 = b"DZT6"  # F32 payloads (compression.exact32)
MAGIC_V4 = b"DZT4"
MAGIC_RAW = b"DZTR"  # the tensor's bytes as they are, where coding them would take more (tiny tensors)
RAW_HEADER = struct.Struct("<4sB3x")  # magic, dtype code, 3 zero bytes
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
HEADER = struct.Struct("<4s c B B B Q")  # magic, codec id, dtype, parent dtype, flags, element count
# Format-5 header flag: the payload's plain streams (`p`, the new rows of `r`) of BF16/F16 are
# compression.exact16_plain streams (without it: format-4 streams, as format 5 first wrote them).
PLAIN16 = 1
CODEC_IDS = {"plain": b"p", "delta": b"d", "delta-rows": b"r"}
ENCODINGS = {v: k for k, v in CODEC_IDS.items()}
TORCH_FLOATS = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}

Shape = Sequence[int]
Buffer = bytes | bytearray | memoryview


V5_SHIFT = {"BF16": 7, "F16": 10}  # dtypes format 5 codes, with their mantissa bits


def numel(shape: Shape, what: str) -> int:
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise CodecError(f"{what} shape {dims} has a negative dimension")
    return math.prod(dims)  # exact, and ~40x faster than np.prod on a short list


def check_tensor(raw: Buffer, dtype: str | None, shape: Shape | None, what: str) -> int:
    """Validate a tensor's dtype, shape and byte length up front; return its element count."""
    if dtype not in DTYPES:
        raise CodecError(f"unsupported {what} dtype {dtype!r}; deltazoo stores {', '.join(DTYPE_CODES)}")
    if shape is None:
        raise CodecError(f"{what} shape is missing")
    n = numel(shape, what)
    expected = n * dtype_info(dtype).itemsize
    if len(raw) != expected:
        raise CodecError(f"{what} has {len(raw)} bytes but shape {list(shape)} of {dtype} needs {expected}")
    return n


def as_child_dtype(parent_raw: Buffer, parent_dtype: str, dtype: str) -> np.ndarray | None:
    """The parent's bit patterns in the child's dtype, or None when no exact cast is defined."""
    udt = uint_dtype(dtype_info(dtype).itemsize)
    if parent_dtype == dtype:
        return np.frombuffer(parent_raw, dtype=udt)
    if parent_dtype not in TORCH_FLOATS or dtype not in TORCH_FLOATS:
        return None
    if len(parent_raw) == 0:
        return np.empty(0, dtype=udt)
    fast = None  # the casts below, without torch, where they are exact or torch's own rounding
    if (parent_dtype, dtype) == ("F32", "BF16"):  # bf16 values saved as f32: nothing to round
        fast = narrow.bf16_of_f32(parent_raw)
    elif (parent_dtype, dtype) == ("F16", "BF16"):
        fast = narrow.bf16_rne_of_f16(parent_raw)
    elif (parent_dtype, dtype) == ("BF16", "F32"):  # widening is exact: the bf16 bits are the high half
        fast = np.frombuffer(narrow.widen(parent_raw, "BF16", "F32"), "<u4")  # one pass, not numpy's two
    if fast is not None:
        return fast
    import torch

    with warnings.catch_warnings():  # read-only buffers are fine: the cast allocates anew
        warnings.simplefilter("ignore", UserWarning)
        src = torch.frombuffer(parent_raw, dtype=getattr(torch, TORCH_FLOATS[parent_dtype]))
    cast = src.to(getattr(torch, TORCH_FLOATS[dtype]))
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


def header(
    codec: str, dtype: str, parent_dtype: str | None, n: int, magic: bytes = MAGIC_V4, flags: int = 0
) -> bytes:
    parent_code = NO_PARENT if parent_dtype is None else DTYPE_CODES.index(parent_dtype)
    return HEADER.pack(magic, CODEC_IDS[codec], DTYPE_CODES.index(dtype), parent_code, flags, n)


def read_header(buf: memoryview, encoding: str, dtype: str, n: int) -> tuple[str, int, int]:
    """(codec, parent dtype code, flags) of a format 4-7 payload, checked against what the caller asks."""
    if len(buf) < HEADER.size:
        raise CodecError(f"corrupt payload: {len(buf)} bytes is shorter than the {HEADER.size}-byte header")
    _, cid, dcode, pcode, flags, count = HEADER.unpack_from(buf)
    codec = ENCODINGS.get(cid)
    if codec is None:
        raise CodecError(f"corrupt payload: unknown codec id {cid!r}")
    if codec != encoding:
        raise CodecError(f"payload is {codec!r} but was asked to decode as {encoding!r}")
    check_dtype_code(dcode, dtype)
    if count != n:
        raise CodecError(f"payload holds {count} elements but the shape asks for {n}")
    return codec, pcode, flags


def check_dtype_code(code: int, dtype: str) -> None:
    """A payload's dtype code must name the dtype the caller asked for."""
    if code >= len(DTYPE_CODES) or DTYPE_CODES[code] != dtype:
        held = DTYPE_CODES[code] if code < len(DTYPE_CODES) else f"code {code}"
        raise CodecError(f"payload holds a {held} tensor but {dtype} was asked")


def shared_elements(buf: memoryview, offset: int, codec: str, n: int, parent: np.ndarray) -> tuple[int, int]:
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


def parent_for(
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
    check_tensor(parent_raw, parent_dtype, parent_shape, "parent tensor")
    parent = as_child_dtype(parent_raw, parent_dtype, dtype)
    assert parent is not None  # the encoder only wrote a delta for a castable parent
    return parent
