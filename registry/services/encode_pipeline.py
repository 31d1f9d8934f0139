"""The tensors of one safetensors file encoded side by side: read → hash → (dedup) → encode → verify → write.

Lanes are threads: the C codecs (``compression._exact16_delta``, ``_exact16_plain``, ``_narrow``), zstd,
hashlib and file I/O release the GIL, so ``threads`` lanes keep that many cores busy. The unit of work
of a lane is a *chunk*: a tensor up to ``chunk_bytes`` is one unit, a larger one (stored in chunks,
``registry.services.chunks``) is one unit per chunk, so the lanes share out the chunks of one big
tensor as they share out small tensors. The database is touched only by the calling thread (the session is
not thread-safe), in tensor order:

1. a lane reads a tensor's bytes (one ranged read of the staged object) and hashes them; a chunked
   tensor is read and hashed chunk by chunk, and its bytes are not kept (read again per chunk in 3);
2. the caller, in order, looks for a stored twin (``same``, no encode) or an earlier tensor of this run
   with the same bytes still being encoded (``same`` of it, recorded after it);
3. otherwise lanes rebuild the parent's bytes (``reconstruct`` for a whole tensor, the same elements
   through a ``RangeReader`` for a chunk; not re-hashed, see ``encode_and_store``), encode, decode the
   payload and compare it to the input byte for byte, hash the payload and write the blob
   (content-addressed, so a write that an interrupted run already made is simply repeated);
4. the caller records rows strictly in tensor order, so what a checkpoint commits is always a prefix of
   the file's tensors and a resumed run starts after it and stores exactly the same bytes.

Memory bound: at most ``window = IN_FLIGHT_PER_LANE * threads`` units run at once and at most ``window``
tensors are read ahead. A unit holds at most one chunk's raw bytes, the parent's same elements, the
payload and the decoded check (about 4 chunks); a hashed small tensor waiting for its turn holds its
bytes (at most a chunk). So the lanes hold at most ``window * 5 * chunk_bytes`` (2 lanes, 8 MiB chunks:
160 MiB), whatever the size of the tensors or the file. Tensors stored whole before chunks existed
(a parent larger than a chunk) are rebuilt whole, once per child tensor.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from deltazoo.compression.codecs import decode_tensor, encode_tensor
from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.registry.objectstore import ObjectStore, blob_key
from deltazoo.registry.services.chunks import CodedChunk, RangeReader, chunk_ranges, code_chunk, parent_mode
from deltazoo.registry.services.storage import CorruptStoreError, Recipe, reconstruct

IN_FLIGHT_PER_LANE = 2


@dataclass(frozen=True)
class Digest:
    raw: bytes  # empty for a chunked tensor: its chunks are read again when they are encoded
    sha256: str


@dataclass(frozen=True)
class Coded:
    """What a lane produced for one whole tensor: the blob is already in the object store."""

    encoding: str
    blob: str
    size: int
    uses_parent: bool


@dataclass
class ParentRef:
    """The parent tensor a child is coded against (no database row: lanes may not touch the session)."""

    tensor_id: int
    depth: int
    dtype: str
    shape: list[int]
    recipe: Recipe


@dataclass
class Slot:
    """One tensor moving through the pipeline, in file order."""

    entry: TensorEntry
    digest: Future[Digest] | None
    chunked: bool = False
    sha256: str | None = None
    parent: ParentRef | None = None
    twin: object | None = None  # a stored Tensor row, or the Slot of an earlier tensor with these bytes
    row: object | None = None  # set by ``record``: what a later twin of this slot points at
    mode: str = "plain"  # a chunked tensor's encoding against ``parent`` (delta, delta-rows or plain)
    units: deque[Callable[[], Any]] = field(default_factory=deque)  # lane work not yet submitted
    coded: list[Future[Any]] = field(default_factory=list)  # Coded, or one CodedChunk per chunk

    @property
    def classified(self) -> bool:
        return self.sha256 is not None

    def whole(self) -> Coded:
        """The coded whole tensor (raises what its lane raised)."""
        result: Coded = self.coded[0].result()
        return result

    def chunks(self) -> list[CodedChunk]:
        """The coded chunks, in order (raises what a lane raised)."""
        return [f.result() for f in self.coded]


def read_and_hash(read_at: Callable[[int, int], bytes], offset: int, entry: TensorEntry) -> Digest:
    raw = read_at(offset + entry.begin, entry.nbytes) if entry.nbytes else b""
    return Digest(raw, hashlib.sha256(raw).hexdigest())


def hash_in_chunks(
    read_at: Callable[[int, int], bytes], offset: int, entry: TensorEntry, chunk_bytes: int
) -> Digest:
    digest = hashlib.sha256()
    start = offset + entry.begin
    for a in range(0, entry.nbytes, chunk_bytes):
        digest.update(read_at(start + a, min(chunk_bytes, entry.nbytes - a)))
    return Digest(b"", digest.hexdigest())


def encode_and_store(
    store: ObjectStore, entry: TensorEntry, raw: bytes, path: str, parent: ParentRef | None
) -> Coded:
    """Encode one tensor (against ``parent`` when given), check the round trip, write the blob."""
    dtype, shape = entry.dtype, list(entry.shape)
    # not re-hashed: a wrong parent cannot slip through, since the payload is checked against the input
    # decoded with these very parent bytes, and every pull verifies each step of the chain
    parent_raw = reconstruct(store, parent.recipe, verify=False) if parent else None
    pdtype = parent.dtype if parent else None
    pshape = parent.shape if parent else None
    encoded = encode_tensor(raw, dtype, shape, parent_raw, pdtype, pshape)
    uses_parent = parent is not None and encoded.encoding != "plain"
    check = decode_tensor(
        encoded.encoding,
        encoded.payload,
        dtype,
        shape,
        parent_raw if uses_parent else None,
        pdtype if uses_parent else None,
        pshape if uses_parent else None,
    )
    if check != raw:
        raise CorruptStoreError(
            f"{path}: tensor {entry.name!r} did not round-trip through {encoded.encoding}"
        )
    del check, parent_raw
    sha = hashlib.sha256(encoded.payload).hexdigest()
    # written even when an object of that name exists: without a blob row it may be an orphan the
    # object-store sweep is about to delete; a fresh write makes it new again (payloads that repeat
    # are rare: equal inputs became ``same`` before any encode)
    store.put_bytes(blob_key(sha), encoded.payload)
    return Coded(encoded.encoding, sha, len(encoded.payload), uses_parent)


def encode_chunk_of(
    store: ObjectStore,
    read_at: Callable[[int, int], bytes],
    start: int,
    entry: TensorEntry,
    index: int,
    begin: int,
    end: int,
    parent: tuple[RangeReader, str] | None,
) -> CodedChunk:
    """Read elements ``[begin, end)`` of a staged tensor starting at byte ``start`` and code them
    (against the same elements of ``parent``'s reader top step when given)."""
    size = dtype_info(entry.dtype).itemsize
    raw = read_at(start + begin * size, (end - begin) * size)
    part = parent[0].elements(len(parent[0].steps) - 1, begin, end) if parent else None
    return code_chunk(store, index, begin, end, raw, entry.dtype, parent[1] if parent else None, part)


class FilePipeline:
    """Drives the lanes over one file's tensors; the caller's callbacks do all database work.

    ``classify(slot)`` runs in tensor order once the slot's bytes are hashed: it sets ``slot.twin`` (a
    stored or earlier tensor with the same bytes) or ``slot.parent`` (may stay None: ``plain``).
    ``record(slot)`` runs in tensor order once the slot is finished (twin found or every blob written).
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        threads: int,
        store: ObjectStore,
        path: str,
        read_at: Callable[[int, int], bytes],
        data_offset: int,
        chunk_bytes: int,
    ) -> None:
        self.pool, self.window = pool, max(1, threads) * IN_FLIGHT_PER_LANE
        self.store, self.path, self.read_at, self.data_offset = store, path, read_at, data_offset
        self.chunk_bytes = chunk_bytes
        self.running: set[Future[Any]] = set()

    def run(
        self,
        entries: list[TensorEntry],
        classify: Callable[[Slot], None],
        record: Callable[[Slot], None],
    ) -> None:
        todo = iter(entries)
        slots: deque[Slot] = deque()
        encoding: dict[str, Slot] = {}  # raw sha256 -> the slot being encoded with those bytes
        try:
            while True:
                self.running = {f for f in self.running if not f.done()}
                self._classify_ready(slots, encoding, classify)
                self._submit_units(slots)
                while len(slots) < self.window and len(self.running) < self.window:
                    entry = next(todo, None)
                    if entry is None:
                        break
                    slots.append(self._read(entry))
                if not slots:
                    return
                while slots and self._finished(slots[0]):
                    slot = slots.popleft()
                    if slot.coded:
                        for future in slot.coded:
                            future.result()  # raises what the lane raised
                        if encoding.get(slot.sha256 or "") is slot:
                            del encoding[slot.sha256 or ""]
                    record(slot)
                if slots and not self._finished(slots[0]):
                    assert self.running, "the head tensor waits for nothing"
                    wait(self.running, return_when=FIRST_COMPLETED)
        except BaseException:
            for future in self.running:  # an interrupted run leaves no lane writing after it returns
                future.cancel()
            wait(self.running)
            raise

    def _submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future = self.pool.submit(fn)
        self.running.add(future)
        return future

    def _read(self, entry: TensorEntry) -> Slot:
        if entry.nbytes > self.chunk_bytes:
            read = partial(hash_in_chunks, self.read_at, self.data_offset, entry, self.chunk_bytes)
            return Slot(entry, self._submit(read), chunked=True)
        return Slot(entry, self._submit(partial(read_and_hash, self.read_at, self.data_offset, entry)))

    def _classify_ready(
        self, slots: deque[Slot], encoding: dict[str, Slot], classify: Callable[[Slot], None]
    ) -> None:
        for slot in slots:
            if slot.classified:
                continue
            assert slot.digest is not None
            if not slot.digest.done():
                return  # strictly in order: a later tensor may be a twin of this one
            digest = slot.digest.result()
            slot.sha256 = digest.sha256
            slot.twin = encoding.get(digest.sha256)
            if slot.twin is None:
                classify(slot)
            if slot.twin is None:
                encoding[digest.sha256] = slot
                self._plan_units(slot, digest.raw)
            slot.digest = None  # the raw bytes now live only in the lane that encodes them

    def _plan_units(self, slot: Slot, raw: bytes) -> None:
        entry, parent = slot.entry, slot.parent
        if not slot.chunked:
            slot.units.append(partial(encode_and_store, self.store, entry, raw, self.path, parent))
            return
        shape = [int(d) for d in entry.shape]
        slot.mode, shared = parent_mode(parent.shape if parent else None, shape)
        reader = None
        if parent is not None and shared:
            reader = (RangeReader(self.store, parent.recipe, verify=False), parent.dtype)
        size = dtype_info(entry.dtype).itemsize
        start = self.data_offset + entry.begin
        numel = entry.nbytes // size
        for index, (begin, end) in enumerate(chunk_ranges(numel, size, self.chunk_bytes, shared)):
            against = reader if reader is not None and end <= shared else None
            slot.units.append(
                partial(encode_chunk_of, self.store, self.read_at, start, entry, index, begin, end, against)
            )

    def _submit_units(self, slots: deque[Slot]) -> None:
        for slot in slots:
            while slot.units and len(self.running) < self.window:
                slot.coded.append(self._submit(slot.units.popleft()))
            if len(self.running) >= self.window:
                return

    @staticmethod
    def _finished(slot: Slot) -> bool:
        return slot.classified and not slot.units and all(f.done() for f in slot.coded)
