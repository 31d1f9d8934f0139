"""Byte-plane coding of fixed-width symbols, optionally partitioned by a context the decoder knows.

This is the entropy-coding stage of the exact codecs (see docs/FORMAT.md, "Exact tensor payloads").
Symbols (unsigned little-endian integers of ``width`` bytes) are cut into chunks of ``chunk_elems``.
Inside a chunk, when a context array is given (one uint8 per symbol, derived from the parent tensor so
that the decoder can derive it too), the symbols are stably sorted by context and the sorted run is cut
into groups of whole context values holding at least ``min_group`` symbols each; each group's byte
planes (plane 0 = least significant byte) are then zstd frames of their own, so every frame sees the
one distribution its context implies and zstd's Huffman literal coder adapts to it.

A chunk is stored as ``u32 frame_length × (groups × width)`` followed by the frames, group-major,
plane-minor. The number of groups is not stored: the decoder recomputes it from the context counts.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import zstandard
from deltazoo.compression.exact_errors import CodecError

ZSTD_LEVEL = 1

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
        _local.cctx = cctx
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = zstandard.ZstdDecompressor()
        _local.dctx = dctx
    return dctx


def uint_dtype(width: int) -> np.dtype:
    return np.dtype(f"<u{width}")


def split_planes(symbols: np.ndarray) -> np.ndarray:
    """uint8[width, n]: row b is byte b (least significant first) of every symbol."""
    width = symbols.dtype.itemsize
    if width == 1:
        return symbols.reshape(1, -1)
    planes = np.empty((width, symbols.size), dtype=np.uint8)
    for b in range(width):
        np.bitwise_and(symbols >> (8 * b), 0xFF, out=planes[b], casting="unsafe")
    return planes


def join_planes(planes: np.ndarray) -> np.ndarray:
    """Inverse of ``split_planes``."""
    width = planes.shape[0]
    out = planes[0].astype(uint_dtype(width))
    for b in range(1, width):
        out |= planes[b].astype(out.dtype) << (8 * b)
    return out


def group_bounds(counts: np.ndarray, min_group: int) -> list[int]:
    """Cut points over the context-sorted symbols: runs of whole context values, each ≥ min_group.

    A short tail joins the previous group. ``counts`` has one entry per context value (256).
    """
    total = int(counts.sum())
    bounds = [0]
    acc = 0
    for c in np.cumsum(counts[counts > 0]).tolist():
        if c - acc >= min_group:
            bounds.append(c)
            acc = c
    if bounds[-1] != total:
        if len(bounds) > 1:
            bounds[-1] = total
        else:
            bounds.append(total)
    return bounds


def _sorted_run(
    symbols: np.ndarray, ctx: np.ndarray | None, min_group: int
) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    if ctx is None or symbols.size == 0:
        return symbols, None, [0, symbols.size]
    order = np.lexsort((ctx,))  # stable; faster than argsort(kind="stable") on uint8
    bounds = group_bounds(np.bincount(ctx, minlength=256), min_group)
    return symbols[order], order, bounds


def encode_planes(symbols: np.ndarray, ctx: np.ndarray | None, chunk_elems: int, min_group: int) -> bytes:
    """Code ``symbols`` (1-D unsigned array) chunk by chunk; see the module docstring."""
    width = symbols.dtype.itemsize
    cctx = _compressor()
    parts: list[bytes] = []
    for start in range(0, symbols.size, chunk_elems):
        stop = min(start + chunk_elems, symbols.size)
        chunk_ctx = None if ctx is None else ctx[start:stop]
        run, _, bounds = _sorted_run(symbols[start:stop], chunk_ctx, min_group)
        planes = split_planes(run)
        frames = [
            cctx.compress(planes[b, lo:hi].tobytes())
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            for b in range(width)
        ]
        parts.append(struct.pack(f"<{len(frames)}I", *(len(f) for f in frames)))
        parts.extend(frames)
    return b"".join(parts)


def decode_planes(
    buf: memoryview,
    offset: int,
    count: int,
    width: int,
    ctx: np.ndarray | None,
    chunk_elems: int,
    min_group: int,
) -> tuple[np.ndarray, int]:
    """Inverse of ``encode_planes``: returns ``count`` symbols and the offset just past them in ``buf``."""
    out = np.empty(count, dtype=uint_dtype(width))
    dctx = _decompressor()
    for start in range(0, count, chunk_elems):
        stop = min(start + chunk_elems, count)
        n = stop - start
        if ctx is None:
            order, bounds = None, [0, n]
        else:
            chunk_ctx = ctx[start:stop]
            order = np.lexsort((chunk_ctx,))
            bounds = group_bounds(np.bincount(chunk_ctx, minlength=256), min_group)
        n_frames = (len(bounds) - 1) * width
        table_end = offset + 4 * n_frames
        if table_end > len(buf):
            raise CodecError(f"corrupt payload: truncated frame table in chunk at element {start}")
        lengths = struct.unpack_from(f"<{n_frames}I", buf, offset)
        offset = table_end
        planes = np.empty((width, n), dtype=np.uint8)
        frame = 0
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            for b in range(width):
                end = offset + lengths[frame]
                if end > len(buf):
                    raise CodecError(
                        f"corrupt payload: frame {frame} of chunk at element {start} is truncated"
                    )
                try:
                    data = dctx.decompress(buf[offset:end], max_output_size=hi - lo)
                except zstandard.ZstdError as exc:
                    raise CodecError(
                        f"corrupt payload: zstd frame {frame} of chunk at element {start}: {exc}"
                    ) from None
                if len(data) != hi - lo:
                    raise CodecError(
                        f"corrupt payload: frame {frame} of chunk at element {start} holds {len(data)} bytes,"
                        f" expected {hi - lo}"
                    )
                planes[b, lo:hi] = np.frombuffer(data, dtype=np.uint8)
                offset = end
                frame += 1
        run = join_planes(planes)
        if order is None:
            out[start:stop] = run
        else:
            out[start:stop][order] = run
    return out, offset
