"""Blobs and tensor reconstruction.

A tensor's raw bytes are rebuilt by walking its chain of parents down to a ``plain`` tensor and
decoding forward. ``resolve_recipes`` turns tensor rows into ``Recipe`` objects (everything needed to
decode, no database), so a download can stream after the request's session is gone. Hot raw tensors
are kept in an LRU cache bounded in bytes (keyed by the sha256 of the raw bytes, so it can never be
stale).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from deltazoo.compression.codecs import decode_tensor
from deltazoo.compression.dtypes import dtype_info
from deltazoo.registry.models import Tensor
from deltazoo.registry.objectstore import ObjectStore, blob_key
from deltazoo.registry.repositories import BlobRepository, TensorChunkRepository, TensorRepository
from sqlalchemy.orm import Session


class CorruptStoreError(RuntimeError):
    """Stored bytes do not decode to what the registry recorded (a bug or a damaged store)."""


def put_blob(session: Session, store: ObjectStore, data: bytes) -> tuple[str, bool]:
    """Store ``data`` content-addressed and count one reference; returns (sha256, newly stored)."""
    sha = hashlib.sha256(data).hexdigest()
    blobs = BlobRepository(session)
    if blobs.get(sha) is None or not store.exists(blob_key(sha)):
        store.put_bytes(blob_key(sha), data)
    return sha, blobs.add_reference(sha, len(data))


def get_blob(store: ObjectStore, sha256: str) -> bytes:
    return store.get(blob_key(sha256))


@dataclass(frozen=True)
class Chunk:
    """Elements ``[begin, end)`` of a chunked step, coded alone (``plain``) or against the same
    elements of the step before (``delta``)."""

    begin: int
    end: int
    encoding: str  # plain | delta
    blob: str
    sha256: str  # of the chunk's raw bytes


@dataclass(frozen=True)
class Step:
    encoding: str  # plain | delta | delta-rows
    blob: str | None  # None when the step is chunked
    dtype: str
    shape: tuple[int, ...]
    sha256: str  # of the raw bytes this step yields
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """Decode steps from a plain tensor to the wanted one (``steps[-1].sha256`` = the tensor's)."""

    steps: tuple[Step, ...]
    nbytes: int

    @property
    def sha256(self) -> str:
        return self.steps[-1].sha256


class RawCache:
    """An LRU of raw tensor bytes keyed by their sha256, bounded in total bytes."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            if self.max_bytes <= 0:
                return
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


RAW_CACHE = RawCache(64 << 20)  # resized from settings.tensor_cache_mb when a server starts


def resolve_recipes(session: Session, tensors: Iterable[Tensor]) -> dict[int, Recipe]:
    """Recipes for ``tensors`` (by tensor id), loading parent chains level by level."""
    repo = TensorRepository(session)
    known: dict[int, Tensor] = {t.id: t for t in tensors}
    wanted = list(known)
    frontier = {t.parent_tensor_id for t in known.values() if t.parent_tensor_id is not None}
    while frontier - known.keys():
        loaded = repo.get_many(frontier - known.keys())
        known.update(loaded)
        frontier = {t.parent_tensor_id for t in loaded.values() if t.parent_tensor_id is not None}
    chunked = TensorChunkRepository(session).for_tensors(t.id for t in known.values() if t.chunks)
    memo: dict[int, tuple[Step, ...]] = {}

    def steps_of(tid: int, seen: frozenset[int] = frozenset()) -> tuple[Step, ...]:
        if tid in memo:
            return memo[tid]
        if tid in seen:
            raise CorruptStoreError(f"tensor {tid} is its own ancestor")
        t = known[tid]
        if t.encoding == "same":
            assert t.parent_tensor_id is not None
            result = steps_of(t.parent_tensor_id, seen | {tid})
        else:
            chunks = tuple(Chunk(c.begin, c.end, c.encoding, c.blob, c.sha256) for c in chunked.get(t.id, ()))
            if t.blob is None and (not chunks or len(chunks) != t.chunks):
                raise CorruptStoreError(f"tensor {t.name!r} ({t.encoding}) has no blob")
            step = Step(t.encoding, t.blob, t.dtype, tuple(t.shape), t.sha256, chunks)
            if t.encoding == "plain":
                result = (step,)
            else:
                assert t.parent_tensor_id is not None
                result = steps_of(t.parent_tensor_id, seen | {tid}) + (step,)
        memo[tid] = result
        return result

    return {tid: Recipe(steps_of(tid), known[tid].offset_end - known[tid].offset_begin) for tid in wanted}


def decode_chunk(
    store: ObjectStore,
    step: Step,
    chunk: Chunk,
    parent: Step | None,
    parent_part: bytes | memoryview | None,
    verify: bool = True,
) -> bytes:
    """The raw bytes of one chunk (``parent_part``: the parent step's raw bytes of the same elements,
    needed for a ``delta`` chunk), checked against the chunk's sha256 unless ``verify`` is False."""
    n = [chunk.end - chunk.begin]
    payload = get_blob(store, chunk.blob)
    if chunk.encoding == "plain":
        raw = decode_tensor("plain", payload, step.dtype, n)
    else:
        if parent is None or parent_part is None:
            raise CorruptStoreError(f"a {chunk.encoding} chunk of tensor {step.sha256} has no parent")
        raw = decode_tensor(chunk.encoding, payload, step.dtype, n, parent_part, parent.dtype, n)
    if verify and hashlib.sha256(raw).hexdigest() != chunk.sha256:
        raise CorruptStoreError(f"a chunk of tensor {step.sha256} does not match its recorded sha256")
    return raw


def decode_chunked(
    store: ObjectStore, step: Step, parent: Step | None, parent_raw: bytes | None, verify: bool = True
) -> bytes:
    """A chunked step decoded whole, given the whole parent's raw bytes."""
    out = bytearray()
    pitem = dtype_info(parent.dtype).itemsize if parent else 0
    view = memoryview(parent_raw) if parent_raw is not None else None
    for chunk in step.chunks:
        part = view[chunk.begin * pitem : chunk.end * pitem] if view is not None else None
        part = part if chunk.encoding != "plain" else None
        out += decode_chunk(store, step, chunk, parent, part, verify)
    return bytes(out)


def reconstruct(
    store: ObjectStore, recipe: Recipe, cache: RawCache = RAW_CACHE, verify: bool = True
) -> bytes:
    """The raw bytes of a tensor, decoded forward through its recipe (checked against its sha256).

    With ``verify=False`` nothing is hashed and nothing decoded is cached (the cache holds only checked
    bytes, which every caller may trust)."""
    hit = cache.get(recipe.sha256)
    if hit is not None:
        return hit
    start = len(recipe.steps) - 1
    raw: bytes | None = None
    while start > 0:  # find the deepest step already cached
        raw = cache.get(recipe.steps[start - 1].sha256)
        if raw is not None:
            break
        start -= 1
    for i in range(start, len(recipe.steps)):
        step = recipe.steps[i]
        parent = recipe.steps[i - 1] if i > 0 else None
        if step.chunks:
            raw = decode_chunked(store, step, parent, raw, verify)
        else:
            assert step.blob is not None
            raw = decode_tensor(
                step.encoding,
                get_blob(store, step.blob),
                step.dtype,
                list(step.shape),
                parent_raw=raw if parent else None,
                parent_dtype=parent.dtype if parent else None,
                parent_shape=list(parent.shape) if parent else None,
            )
        if verify and hashlib.sha256(raw).hexdigest() != step.sha256:
            raise CorruptStoreError(f"decoded tensor does not match its recorded sha256 {step.sha256}")
        if verify and i < len(recipe.steps) - 1:
            cache.put(step.sha256, raw)
    assert raw is not None
    if verify:
        cache.put(recipe.sha256, raw)
    return raw
