"""The decoders of format 4/5 (``DZT4``, ``DZT5``), format 6 (``DZT6``) and format 7 (``DZT7``, ELF)
payloads, their header checked against what the caller asks; dispatched by
``compression.codecs.decode_tensor``.
"""

from __future__ import annotations

import numpy as np
from deltazoo.compression import elf32, exact16_delta, exact16_plain, exact32, exact_any
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.payload import (
    HEADER,
    MAGIC,
    NO_PARENT,
    PLAIN16,
    V5_SHIFT,
    Buffer,
    Shape,
    layout,
    parent_for,
    read_header,
    shared_elements,
)


def decode_v45(
    buf: memoryview,
    encoding: str,
    dtype: str,
    n: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    threads: int,
    out: memoryview | None = None,
) -> bytes | memoryview:
    """``out``: where a format-5 ``plain`` or ``delta`` stream is decoded (returned in place of new bytes);
    other payloads ignore it."""
    codec, pcode, flags = read_header(buf, encoding, dtype, n)
    v5 = bytes(buf[:4]) == MAGIC
    if v5 and flags not in (0, PLAIN16):
        raise CodecError(f"corrupt payload: unknown format-5 flags {flags:#x}")
    plain16 = v5 and flags == PLAIN16
    if plain16 and dtype not in exact16_plain.FLOATS:
        raise CodecError(f"corrupt payload: format-5 plain streams code BF16 and F16, not {dtype}")
    if plain16 and codec == "plain":  # the decoded bytes as they are: no copy
        if pcode != NO_PARENT:
            raise CodecError(f"corrupt payload: a plain payload with parent dtype code {pcode}")
        data, offset = exact16_plain.decode(buf, HEADER.size, n, dtype, out=out)
        if offset != len(buf):
            raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
        return data
    parent, shared, offset = None, n, HEADER.size
    if codec != "plain":
        parent = parent_for(codec, dtype, pcode, parent_raw, parent_dtype, parent_shape)
        shared, offset = shared_elements(buf, offset, codec, n, parent)

    # only a format-5 delta is one stream decoded in place (delta-rows is two; format 4 decodes apart)
    into = out if v5 and codec == "delta" else None

    def stream(with_parent: bool, at: int, count: int, par: np.ndarray | None) -> tuple[np.ndarray, int]:
        if v5 and with_parent:
            if dtype not in V5_SHIFT:
                raise CodecError(f"corrupt payload: format 5 codes BF16 and F16 deltas, not {dtype}")
            assert par is not None
            return exact16_delta.decode_stream(
                buf, at, count, par, V5_SHIFT[dtype], threads=threads, out=into
            )
        return exact_any.decode_stream(layout(dtype, with_parent), buf, at, count, par, threads=threads)

    if codec == "plain":
        elements, offset = stream(False, offset, n, None)
    else:
        elements, offset = stream(True, offset, shared, parent)
    if codec == "delta-rows" and plain16:
        rows, offset = exact16_plain.decode(buf, offset, n - shared, dtype)
        elements = np.concatenate([elements, np.frombuffer(rows, "<u2")])
    elif codec == "delta-rows":
        tail, offset = stream(False, offset, n - shared, None)
        elements = np.concatenate([elements, tail])
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    if into is not None:
        return into
    if type(elements.base) is bytes and len(elements.base) == elements.nbytes:  # format 5 decodes into a
        return elements.base  # bytes object of its own: handed over as it is, not copied
    return elements.tobytes()


def decode_v5_as_f16(
    buf: memoryview,
    encoding: str,
    n: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    out: memoryview | None = None,
) -> bytes | memoryview | None:
    """The BF16 payload of a narrowed F16 tensor, decoded straight to F16 when it is one format-5 delta stream
    against an F16 parent (``exact16_delta.decode_stream_f16``: one pass, no bf16 copy of the parent or the
    result); None for any other payload, or where that kernel cannot: the caller then decodes it as BF16 and
    widens it, which gives the same bytes and names any fault. Checks the header and parent as
    ``decode_v45`` does."""
    if bytes(buf[:4]) != MAGIC or parent_dtype != "F16":
        return None
    codec, pcode, flags = read_header(buf, encoding, "BF16", n)
    if codec != "delta" or flags != 0:
        return None
    parent = parent_for(codec, "F16", pcode, parent_raw, parent_dtype, parent_shape)  # F16 bits, not cast
    shared, offset = shared_elements(buf, HEADER.size, codec, n, parent)
    got = exact16_delta.decode_stream_f16(buf, offset, shared, parent, out)
    if got is None:
        return None
    elements, offset = got
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    if out is not None:  # decoded into out (``out``: as ``decode_v45`` takes it)
        return out
    return elements.base  # the bytes object the kernel decoded into: handed over as it is, not copied


def decode_v6(
    buf: memoryview,
    encoding: str,
    dtype: str,
    n: int,
    parent_raw: Buffer | None,
    parent_dtype: str | None,
    parent_shape: Shape | None,
    out: memoryview | None = None,
) -> bytes | memoryview:
    """``out``: where a ``plain`` or ``delta`` tensor is decoded (returned in place of new bytes); a
    ``delta-rows`` one ignores it."""
    codec, pcode, flags = read_header(buf, encoding, dtype, n)
    if dtype != "F32":
        raise CodecError(f"corrupt payload: format 6 codes F32 tensors, not {dtype}")
    if flags:
        raise CodecError(f"corrupt payload: unknown format-6 flags {flags:#x}")
    offset = HEADER.size
    if codec == "plain":
        if pcode != NO_PARENT:
            raise CodecError(f"corrupt payload: a plain payload with parent dtype code {pcode}")
        data, offset = exact32.decode_stream_bytes(buf, offset, n, None, out=out)
    else:
        # A BF16 parent is handed over as stored (exact32 reads each as its f32): no widened copy of it.
        parent_as = "BF16" if parent_dtype == "BF16" else dtype
        parent = parent_for(codec, parent_as, pcode, parent_raw, parent_dtype, parent_shape)
        shared, offset = shared_elements(buf, offset, codec, n, parent)
        into = out if codec == "delta" else None
        data, offset = exact32.decode_stream_bytes(buf, offset, shared, parent, out=into)
        if codec == "delta-rows":
            rows, offset = exact32.decode_stream_bytes(buf, offset, n - shared, None)
            data = bytes(data) + bytes(rows)
    if offset != len(buf):
        raise CodecError(f"corrupt payload: {len(buf) - offset} unexpected bytes after the last frame")
    return data


def decode_elf(buf: memoryview, encoding: str, dtype: str, n: int) -> bytes:
    """A format-7 (ELF) payload: always ``plain`` F32, no parent, no flags."""
    codec, pcode, flags = read_header(buf, encoding, dtype, n)
    if dtype != "F32" or codec != "plain" or flags or pcode != NO_PARENT:
        raise CodecError(f"corrupt payload: format 7 codes plain F32 tensors, not a {codec} {dtype} one")
    return elf32.decode(buf, HEADER.size, n)
