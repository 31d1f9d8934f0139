"""The stored form of a non-tensor file (config, tokenizer, model card, opaque weights): one zstd frame.

Written by the server's encoder, read by its downloads, evaluation and card reader, and by the SDK's
delta-only pulls; every one of them goes through these functions, so the format lives here only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import zstandard

LEVEL = 9


def compress_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The stored form of a file given as ``chunks``, in pieces (memory: zstd's window, not the file)."""
    compressor = zstandard.ZstdCompressor(level=LEVEL).compressobj()
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def decompress(stored: bytes, size: int) -> bytes:
    """A whole file of ``size`` bytes from its stored form."""
    return zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)


def decompress_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A file's bytes, in pieces, from its stored form given in pieces."""
    reader = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        out = reader.decompress(chunk)
        if out:
            yield out


def decompress_range(chunks: Iterable[bytes], lo: int, hi: int) -> Iterator[bytes]:
    """Bytes ``[lo, hi)`` of a file from its stored form given in pieces (stops once ``hi`` is reached)."""
    position = 0
    for out in decompress_stream(chunks):
        a, b = max(lo, position), min(hi, position + len(out))
        if a < b:
            yield out[a - position : b - position]
        position += len(out)
        if position >= hi:
            return
