"""Blobs and tensor reconstruction.

A tensor's raw bytes are rebuilt by walking its chain of parents down to a ``plain`` tensor and
decoding forward (``compression.chain``, which the SDK's delta-only pulls use too). ``resolve_recipes``
turns tensor rows into ``Recipe`` objects (everything needed to decode, no database), so a download can
stream after the request's session is gone. Hot raw tensors are kept in an LRU cache bounded in bytes
(keyed by the sha256 of the raw bytes, so it can never be stale).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from deltazoo.compression import chain
from deltazoo.compression.chain import Chunk, FetchBlob, Step
from deltazoo.registry.errors import NotFound
from deltazoo.registry.models import Blob, Tensor
from deltazoo.registry.objectstore import ObjectStore, blob_key
from deltazoo.registry.repositories import BlobRepository, TensorChunkRepository, TensorRepository
from deltazoo.services.access import Principal, can_read_blob
from sqlalchemy.orm import Session

SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")  # a blob's name, and a declared file's sha256


class CorruptStoreError(RuntimeError):
    """Stored bytes do not decode to what the registry recorded (a bug or a damaged store)."""


def put_blob(session: Session, store: ObjectStore, data: bytes) -> tuple[str, bool]:
    """Store ``data`` content-addressed and count one reference; returns (sha256, newly stored)."""
    sha = hashlib.sha256(data).hexdigest()
    blobs = BlobRepository(session)
    if blobs.get(sha) is None or not store.exists(blob_key(sha)):
        store.put_bytes(blob_key(sha), data)
    return sha, blobs.add_reference(sha, len(data))


def readable_blob(session: Session, viewer: Principal, sha256: str) -> Blob:
    """A stored blob that a model ``viewer`` may read refers to; any other name (not a sha256, unknown,
    or held only by private models it may not read) is missing, all with the same answer."""
    blob = BlobRepository(session).get(sha256) if SHA_RE.match(sha256) else None
    if blob is None or not can_read_blob(session, viewer, sha256):
        raise NotFound(f"no blob {sha256}; blob names come from a version's manifest", code="blob_not_found")
    return blob


def read_blob(store: ObjectStore, sha256: str) -> bytes:
    """A stored blob's bytes, as written by ``put_blob`` (raw: a tensor blob is still encoded)."""
    return store.get(blob_key(sha256))


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

    def __len__(self) -> int:
        """How many items it holds."""
        return len(self._items)

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
            chunks = tuple(
                Chunk(c.begin, c.end, c.encoding, c.blob, c.sha256) for c in chunked.get(t.id, ())
            )
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


def blob_reader(store: ObjectStore) -> FetchBlob:
    """``compression.chain``'s blob source for this store."""
    return lambda sha256: read_blob(store, sha256)


def decode_chunk(
    store: ObjectStore,
    step: Step,
    chunk: Chunk,
    parent: Step | None,
    parent_part: bytes | memoryview | None,
    *,
    check: bool = True,
) -> bytes:
    """The raw bytes of one chunk (``compression.chain.decode_chunk`` over this store)."""
    return chain.decode_chunk(blob_reader(store), step, chunk, parent, parent_part, check=check)


def reconstruct(
    store: ObjectStore,
    recipe: Recipe,
    cache: RawCache = RAW_CACHE,
    verify: bool = True,
    verify_below: bool = True,
) -> bytes:
    """The raw bytes of a tensor, decoded forward through its recipe (checked against its sha256) by
    ``compression.chain`` from the deepest step the cache holds.

    With ``verify=False`` nothing is hashed and nothing decoded is cached (the cache holds only checked
    bytes, which every caller may trust); ``verify_below=False`` checks (and caches) only the tensor
    itself, not the steps of its chain below it: a download, whose bytes the top's sha256 proves."""
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
    raw = chain.decode_chain(
        blob_reader(store),
        recipe.steps,
        start=start,
        raw=raw,
        verify=verify,
        verify_below=verify_below,
        keep=cache.put,
    )
    if verify:
        cache.put(recipe.sha256, raw)
    return raw
