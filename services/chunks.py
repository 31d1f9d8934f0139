"""Large tensors in chunks: memory bounded by the chunk, not the tensor, when encoding and reading.

A tensor larger than the chunk size (``settings.tensor_chunk_mb``, 8 MiB by default) is coded as
element ranges of at most that many bytes (``tensor_chunk`` rows), each on its own: ``delta`` against
the same elements of the parent tensor (same shape; for ``delta-rows`` the elements the parent has,
which in row-major order are its first ones), else ``plain``. Each chunk's payload is decoded and
checked against its sha256 before it is trusted. A Range read decodes only the chunks it overlaps and,
for a ``delta`` chunk, only the same elements of the parent (recursively), so a 16-byte read of a 2 GB
tensor decodes a few chunks (bound: chain depth x (chunk payload + 2 chunks of raw bytes)), and a
whole-file read streams chunk by chunk. Tensors stored whole (smaller ones, and those written before
chunks existed) are decoded whole as before (their size bounds the memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from deltazoo.compression import elf32
from deltazoo.compression.codecs import decode_tensor, encode_tensor
from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.registry.models import File, Tensor, TensorChunk, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import TensorRepository
from deltazoo.services.encode_pipeline import ParentRef
from deltazoo.services.storage import (
    RAW_CACHE,
    CorruptStoreError,
    RawCache,
    Recipe,
    Step,
    decode_chunk,
    put_blob,
    reconstruct,
)
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

DEFAULT_CHUNK_BYTES = 8 << 20
HASH_READ = 8 << 20
SEND_CHUNK = 1 << 20
ReadAt = Callable[[int, int], bytes]  # (offset in the tensor's raw bytes, length) -> bytes


def chunk_ranges(numel: int, itemsize: int, chunk_bytes: int, split_at: int = 0) -> list[tuple[int, int]]:
    """Element ranges of at most ``chunk_bytes`` covering ``numel`` elements, with a boundary at
    ``split_at`` (the parent's element count for ``delta-rows``) so no range straddles it."""
    per = max(1, chunk_bytes // itemsize)
    starts = set(range(0, numel, per))
    if 0 < split_at < numel:
        starts.add(split_at)
    ordered = sorted(starts)
    return list(zip(ordered, [*ordered[1:], numel], strict=True))


class RangeReader:
    """Raw bytes of element ranges of the steps of one recipe, decoding only overlapping chunks.

    Decoded chunks go to the shared LRU (``storage.RAW_CACHE``, bounded in bytes); a step stored whole
    is decoded whole once per reader."""

    def __init__(self, store: ObjectStore, recipe: Recipe, cache: RawCache = RAW_CACHE) -> None:
        self.store = store
        self.steps = recipe.steps
        self.cache = cache
        self._whole: tuple[int, bytes] | None = None

    def elements(self, i: int, begin: int, end: int) -> bytes:
        """Raw bytes of elements ``[begin, end)`` of step ``i``."""
        step = self.steps[i]
        size = dtype_info(step.dtype).itemsize
        if not step.chunks:
            return self._whole_step(i)[begin * size : end * size]
        out = bytearray()
        for chunk in step.chunks:
            if chunk.end <= begin or chunk.begin >= end:
                continue
            raw = memoryview(self.chunk(i, chunk.begin))
            lo, hi = max(begin, chunk.begin) - chunk.begin, min(end, chunk.end) - chunk.begin
            out += raw[lo * size : hi * size]
        return bytes(out)

    def chunk(self, i: int, begin: int) -> bytes:
        """The decoded chunk of step ``i`` that starts at element ``begin``."""
        step = self.steps[i]
        chunk = next(c for c in step.chunks if c.begin == begin)
        key = f"{chunk.sha256}:{step.sha256}:{chunk.begin}:{chunk.end}"
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        parent = self.steps[i - 1] if i > 0 else None
        part = None
        if chunk.encoding != "plain":
            if parent is None:
                raise CorruptStoreError(
                    f"a {chunk.encoding} chunk of tensor {step.sha256} has no parent step"
                )
            part = self.elements(i - 1, chunk.begin, chunk.end)
        raw = decode_chunk(self.store, step, chunk, parent, part)
        self.cache.put(key, raw)
        return raw

    def _whole_step(self, i: int) -> bytes:
        if self._whole is None or self._whole[0] != i:
            step = self.steps[i]
            nbytes = _numel(step.shape) * dtype_info(step.dtype).itemsize
            self._whole = (i, reconstruct(self.store, Recipe(self.steps[: i + 1], nbytes), self.cache))
        return self._whole[1]

    def iter_bytes(self, lo: int, hi: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[lo, hi)`` of the recipe's tensor, in pieces of at most a chunk."""
        top = len(self.steps) - 1
        step = self.steps[top]
        if not step.chunks:
            raw = memoryview(self._whole_step(top))
            for a in range(lo, hi, SEND_CHUNK):
                yield raw[a : min(hi, a + SEND_CHUNK)]
            return
        size = dtype_info(step.dtype).itemsize
        for chunk in step.chunks:
            a, b = chunk.begin * size, chunk.end * size
            if b <= lo or a >= hi:
                continue
            raw = memoryview(self.chunk(top, chunk.begin))
            for x in range(max(lo, a) - a, min(hi, b) - a, SEND_CHUNK):
                yield raw[x : min(min(hi, b) - a, x + SEND_CHUNK)]


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def streamed_sha256(read: ReadAt, nbytes: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, nbytes, HASH_READ):
        digest.update(read(offset, min(HASH_READ, nbytes - offset)))
    return digest.hexdigest()


def _parent_mode(parent: ParentRef | None, shape: list[int]) -> tuple[str, int]:
    """(encoding of the tensor against ``parent``, how many leading elements the parent covers)."""
    if parent is None:
        return "plain", 0
    pshape = [int(d) for d in parent.shape]
    if pshape == shape:
        return "delta", _numel(shape)
    if len(shape) >= 1 and len(pshape) == len(shape) and pshape[1:] == shape[1:] and pshape[0] < shape[0]:
        return "delta-rows", _numel(pshape)
    return "plain", 0


def _served_by_elf(read: ReadAt) -> ReadAt:
    def served(offset: int, length: int) -> bytes:
        return elf32.served(read(offset, length))

    return served


def encode_large_tensor(
    session: Session,
    store: ObjectStore,
    version: Version,
    file: File,
    entry: TensorEntry,
    read: ReadAt,
    parents: dict[str, ParentRef],
    max_depth: int,
    chunk_bytes: int,
    twins: ColumnElement[bool],
    lossy: bool = False,
) -> Tensor:
    """Store one tensor larger than ``chunk_bytes`` (``same`` when its bytes are already stored in a
    model ``twins`` allows, else in chunks); reads the staged bytes chunk by chunk (twice: hash, code).
    With ``lossy`` an F32 tensor is read as ELF serves it and its chunks coded as ELF."""
    name, dtype, shape = entry.name, entry.dtype, [int(d) for d in entry.shape]
    if lossy and dtype == "F32":  # chunks and hash reads are whole elements: aligned piece by piece
        read = _served_by_elf(read)
    sha = streamed_sha256(read, entry.nbytes)
    row = Tensor(
        version_id=version.id,
        file_id=file.id,
        name=name,
        dtype=dtype,
        shape=shape,
        sha256=sha,
        offset_begin=entry.begin,
        offset_end=entry.end,
        stored_bytes=0,
    )
    twin = TensorRepository(session).stored_with_sha(sha, twins)
    if twin is not None:
        row.encoding, row.parent_tensor_id, row.depth = "same", twin.id, twin.depth
        session.add(row)
        session.flush()
        return row
    parent = parents.get(name)
    if parent is not None and parent.depth >= max_depth:
        parent = None  # re-anchor: a chain this deep decodes too slowly
    mode, shared = _parent_mode(parent, shape)
    reader = RangeReader(store, parent.recipe) if parent and shared else None
    size = dtype_info(dtype).itemsize
    chunks: list[TensorChunk] = []
    for index, (begin, end) in enumerate(chunk_ranges(_numel(shape), size, chunk_bytes, shared)):
        raw = read(begin * size, (end - begin) * size)
        parent_part = reader.elements(len(reader.steps) - 1, begin, end) if reader and end <= shared else None
        chunk, new = _encode_chunk(session, store, index, begin, end, raw, dtype, parent, parent_part, lossy)
        version.stored_bytes += chunk.stored_bytes if new else 0
        chunks.append(chunk)
    uses_parent = any(c.encoding != "plain" for c in chunks)
    row.encoding = mode if uses_parent else "plain"
    row.blob, row.chunks = None, len(chunks)
    row.stored_bytes = sum(c.stored_bytes for c in chunks)
    row.parent_tensor_id = parent.tensor_id if (uses_parent and parent) else None
    row.depth = parent.depth + 1 if (uses_parent and parent) else 0
    session.add(row)
    session.flush()
    for c in chunks:
        c.tensor_id = row.id
    session.add_all(chunks)
    session.flush()
    return row


def _encode_chunk(
    session: Session,
    store: ObjectStore,
    index: int,
    begin: int,
    end: int,
    raw: bytes,
    dtype: str,
    parent: ParentRef | None,
    parent_part: bytes | None,
    lossy: bool = False,
) -> tuple[TensorChunk, bool]:
    """One chunk coded and checked, its payload stored; returns it and whether the blob is new."""
    n = [end - begin]
    pdtype = parent.dtype if parent is not None and parent_part is not None else None
    encoded = encode_tensor(raw, dtype, n, parent_part, pdtype, n if pdtype else None, lossy=lossy)
    uses_parent = encoded.encoding != "plain"
    check = decode_tensor(
        encoded.encoding,
        encoded.payload,
        dtype,
        n,
        parent_part if uses_parent else None,
        pdtype if uses_parent else None,
        n if uses_parent else None,
    )
    sha = hashlib.sha256(raw).hexdigest()
    if hashlib.sha256(check).hexdigest() != sha:
        raise CorruptStoreError(f"chunk {index} of a tensor did not round-trip through {encoded.encoding}")
    blob_sha, new = put_blob(session, store, encoded.payload)
    chunk = TensorChunk(
        index=index,
        begin=begin,
        end=end,
        encoding=encoded.encoding,
        blob=blob_sha,
        sha256=sha,
        stored_bytes=len(encoded.payload),
    )
    return chunk, new


def plain_chunks_of(
    session: Session, store: ObjectStore, recipe: Recipe, dtype: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[TensorChunk]:
    """A tensor's bytes re-coded alone, chunk by chunk (a copy detached from a deleted model)."""
    reader = RangeReader(store, recipe)
    top = len(recipe.steps) - 1
    step: Step = recipe.steps[top]
    size = dtype_info(dtype).itemsize
    out = []
    for index, (begin, end) in enumerate(chunk_ranges(_numel(step.shape), size, chunk_bytes)):
        raw = reader.elements(top, begin, end)
        out.append(_encode_chunk(session, store, index, begin, end, raw, dtype, None, None)[0])
    return out
