"""Large tensors in chunks: memory bounded by the chunk, not the tensor, when encoding and reading.

A tensor larger than the chunk size (``settings.tensor_chunk_mb``, 8 MiB by default) is coded as element
ranges of at most that many bytes (``tensor_chunk`` rows), each on its own: ``delta`` against the same
elements of the parent tensor (same shape; for ``delta-rows`` the elements the parent has, which in row-
major order are its first ones), else ``plain``. Each chunk's payload is decoded and compared with its
input before it is trusted. A chunk is the unit of work of the encode lanes (``encode_pipeline``) and of
a download's decode-ahead (``transfer.iter_file``). A Range read decodes only the chunks it overlaps
and, for a ``delta`` chunk, only the same elements of the parent (recursively), so a 16-byte read of a 2
GB tensor decodes a few chunks (bound: chain depth x (chunk payload + 2 chunks of raw bytes)), and a
whole-file read streams chunk by chunk, a few chunks decoded ahead. Tensors stored whole (smaller ones,
and those written before chunks existed) are decoded whole as before (their size bounds the memory).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from deltazoo.compression.codecs import decode_tensor, encode_tensor
from deltazoo.compression.dtypes import dtype_info
from deltazoo.registry.models import TensorChunk
from deltazoo.registry.objectstore import BlobSink, ObjectStore, blob_key
from deltazoo.registry.repositories import BlobRepository
from deltazoo.services.storage import (
    RAW_CACHE,
    CorruptStoreError,
    RawCache,
    Recipe,
    Step,
    decode_chunk,
    reconstruct,
)
from sqlalchemy.orm import Session

DEFAULT_CHUNK_BYTES = 8 << 20
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
    is decoded whole once per reader. Safe to share between threads (the decode-ahead of a download and
    the encode lanes of a child tensor each share one). With ``verify=False`` (the encoder reading a
    parent: its output is checked against the input anyway) nothing decoded is hashed (a whole step nor
    a chunk; a payload damaged in the store still fails its stream's crc32 when decoded), and nothing
    is cached. With ``verify_below=False`` (a download) only the top step's chunks are checked
    against their sha256 (and cached): they prove the bytes sent, whatever the steps below decoded to,
    so a delta chunk costs one sha256, not one per step of its chain."""

    def __init__(
        self,
        store: ObjectStore,
        recipe: Recipe,
        cache: RawCache = RAW_CACHE,
        verify: bool = True,
        verify_below: bool = True,
    ) -> None:
        self.store = store
        self.steps = recipe.steps
        self.cache = cache
        self.verify = verify
        self.verify_below = verify_below
        self._whole: tuple[int, bytes] | None = None
        self._whole_lock = threading.Lock()

    def elements(self, i: int, begin: int, end: int) -> bytes:
        """Raw bytes of elements ``[begin, end)`` of step ``i``."""
        step = self.steps[i]
        size = dtype_info(step.dtype).itemsize
        if not step.chunks:
            whole = self._whole_step(i)
            return whole if begin == 0 and end * size == len(whole) else whole[begin * size : end * size]
        parts: list[bytes | memoryview] = []
        for chunk in step.chunks:
            if chunk.end <= begin or chunk.begin >= end:
                continue
            raw = self.chunk(i, chunk.begin)
            if chunk.begin >= begin and chunk.end <= end:
                parts.append(raw)  # a whole chunk: no copy
                continue
            lo, hi = max(begin, chunk.begin) - chunk.begin, min(end, chunk.end) - chunk.begin
            parts.append(memoryview(raw)[lo * size : hi * size])
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]  # the same elements as one chunk of the step (a delta's parent): not copied
        return b"".join(parts)

    def chunk(self, i: int, begin: int) -> bytes:
        """The decoded chunk of step ``i`` that starts at element ``begin``."""
        step = self.steps[i]
        chunk = next(c for c in step.chunks if c.begin == begin)
        key = f"{chunk.sha256}:{step.sha256}:{chunk.begin}:{chunk.end}"
        hit = self.cache.get(key)  # verified bytes: any reader may use them
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
        check = self.verify and (self.verify_below or i == len(self.steps) - 1)
        raw = decode_chunk(self.store, step, chunk, parent, part, check=check)  # checked: sha256
        if check:
            self.cache.put(key, raw)
        return raw

    def _whole_step(self, i: int) -> bytes:
        with self._whole_lock:
            if self._whole is None or self._whole[0] != i:
                step = self.steps[i]
                nbytes = _numel(step.shape) * dtype_info(step.dtype).itemsize
                recipe = Recipe(self.steps[: i + 1], nbytes)
                top = i == len(self.steps) - 1
                whole = reconstruct(
                    self.store,
                    recipe,
                    self.cache,
                    verify=self.verify and (self.verify_below or top),
                    verify_below=self.verify_below,
                )
                self._whole = (i, whole)
            return self._whole[1]


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def parent_mode(parent_shape: list[int] | None, shape: list[int]) -> tuple[str, int]:
    """(encoding of a tensor of ``shape`` against a parent of ``parent_shape``, how many leading elements
    the parent covers)."""
    if parent_shape is None:
        return "plain", 0
    pshape = [int(d) for d in parent_shape]
    if pshape == shape:
        return "delta", _numel(shape)
    if len(shape) >= 1 and len(pshape) == len(shape) and pshape[1:] == shape[1:] and pshape[0] < shape[0]:
        return "delta-rows", _numel(pshape)
    return "plain", 0


@dataclass(frozen=True)
class CodedChunk:
    """One chunk coded, checked and its payload written (the blob row is the caller's: lanes have no
    database session)."""

    index: int
    begin: int
    end: int
    encoding: str  # plain | delta
    blob: str
    sha256: str  # of the chunk's raw bytes
    stored_bytes: int

    def row(self, tensor_id: int | None = None) -> TensorChunk:
        return TensorChunk(
            tensor_id=tensor_id,
            index=self.index,
            begin=self.begin,
            end=self.end,
            encoding=self.encoding,
            blob=self.blob,
            sha256=self.sha256,
            stored_bytes=self.stored_bytes,
        )


def code_chunk(
    store: BlobSink,
    index: int,
    begin: int,
    end: int,
    raw: bytes,
    dtype: str,
    parent_dtype: str | None,
    parent_part: bytes | None,
    lossy: bool = False,
    sha256: str | None = None,
) -> CodedChunk:
    """Code elements ``[begin, end)`` (against ``parent_part``, the parent's same elements, when given;
    ``lossy``: F32 as ELF, whose ``raw`` is already what ELF serves), compare the decoded payload with
    the input byte for byte, and write the payload's blob. ``sha256``: of ``raw``, when the caller
    hashed it already."""
    n = [end - begin]
    pdtype = parent_dtype if parent_part is not None else None
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
    if check != raw:
        raise CorruptStoreError(f"chunk {index} of a tensor did not round-trip through {encoded.encoding}")
    del check
    blob = hashlib.sha256(encoded.payload).hexdigest()
    # written even when it exists: without a blob row it may be an orphan the sweep is about to delete
    store.put_bytes(blob_key(blob), encoded.payload, cold=uses_parent)  # a delta: read when pulled
    sha = sha256 or hashlib.sha256(raw).hexdigest()
    return CodedChunk(index, begin, end, encoded.encoding, blob, sha, len(encoded.payload))


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
        coded = code_chunk(store, index, begin, end, reader.elements(top, begin, end), dtype, None, None)
        BlobRepository(session).add_reference(coded.blob, coded.stored_bytes)
        out.append(coded.row())
    return out
