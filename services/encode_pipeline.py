"""The tensors of one safetensors file encoded side by side: read → hash → (dedup) → encode → verify → write.

Lanes are threads: the C codecs (``compression._exact16_delta``, ``_exact16_plain``, ``_narrow``), zstd,
hashlib and file I/O release the GIL, so ``threads`` lanes keep that many cores busy. The unit of work
of a lane is a *chunk*: a tensor up to ``chunk_bytes`` is one unit, a larger one (stored in chunks,
``services.chunks``) is one unit per chunk, so the lanes share out the chunks of one big
tensor as they share out small tensors. The database is touched only by the calling thread (the session is
not thread-safe), in tensor order:

1. a lane reads a tensor's bytes (one ranged read of the staged object) and hashes them; a chunked
   tensor is read chunk by chunk, each chunk hashed for the tensor's sha256 and for its own (its chunk
   row's), and its chunks are kept for step 3 while the waiting slots hold at most ``READ_AHEAD_BYTES``
   (beyond that, or where a ``delta-rows`` split moves a boundary, a chunk is read again in 3);
2. the caller, in order and a batch at a time (``LOOKUP_BATCH`` tensors, one query), looks for stored
   twins (``same``, no encode); a tensor whose bytes equal an earlier tensor of this run still being
   encoded becomes ``same`` of it, recorded after it;
3. otherwise lanes rebuild the parent's bytes (``reconstruct`` for a whole tensor, the same elements
   through a ``RangeReader`` for a chunk; not re-hashed, see ``encode_and_store``), encode, decode the
   payload and compare it to the input byte for byte, hash the payload and write the blob
   (content-addressed, so a write that an interrupted run already made is simply repeated). So each
   input byte is read once and hashed once for its tensor (and once for its chunk when chunked), each
   payload hashed once;
4. the caller records rows strictly in tensor order, so what a checkpoint commits is always a prefix of
   the file's tensors and a resumed run starts after it and stores exactly the same bytes.

Memory bound: at most ``window = IN_FLIGHT_PER_LANE * threads`` units are submitted to the lanes at
once. A unit holds at most one chunk's raw bytes, the parent's same elements, the payload and the
decoded check (about 4 chunks): ``window * 4 * chunk_bytes`` (2 lanes, 8 MiB chunks: 128 MiB). Hashed
small tensors waiting for their lookup batch hold their bytes: at most ``window`` tensors, or more while
they total at most ``READ_AHEAD_BYTES`` (so a file of tens of thousands of small tensors costs a few
statements per batch, not per tensor); a chunked tensor keeps its chunks only within that budget (one
that does not fit holds one chunk while it is hashed). So the lanes hold about
``window * 4 * chunk_bytes + READ_AHEAD_BYTES`` whatever the size of the tensors or the file.
Tensors stored whole before chunks existed (a parent larger than a chunk) are rebuilt whole, once per
child tensor.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from deltazoo.compression import elf32
from deltazoo.compression.codecs import decode_tensor, encode_tensor, smaller_as_is
from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.registry.objectstore import BlobSink, ObjectStore, blob_key
from deltazoo.services.chunks import CodedChunk, RangeReader, chunk_ranges, code_chunk, parent_mode
from deltazoo.services.storage import CorruptStoreError, Recipe, reconstruct

IN_FLIGHT_PER_LANE = 2
LOOKUP_BATCH = 256  # tensors classified together: one dedup query (and one row flush) per batch
READ_AHEAD_BYTES = 64 << 20  # raw bytes small tensors may hold while they wait for their batch
HASH_STEP = 64 << 10  # bytes fed to a chunk's two hashes in turn: the second reads them from L1


@dataclass(frozen=True)
class Piece:
    """Elements ``[begin, end)`` of a chunked tensor as its hashing read them: their sha256, and their
    bytes when the pipeline could keep them (``b""``: read again when the chunk is encoded)."""

    begin: int
    end: int
    raw: bytes
    sha256: str


@dataclass(frozen=True)
class Digest:
    raw: bytes  # empty for a chunked tensor: its bytes, if kept, are in ``pieces``
    sha256: str
    pieces: tuple[Piece, ...] = ()


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
    holds: int = 0  # raw bytes its digest keeps while it waits (counted against READ_AHEAD_BYTES)
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


def read_and_hash(
    read_at: Callable[[int, int], bytes], offset: int, entry: TensorEntry, lossy: bool = False
) -> Digest:
    """A tensor's bytes and their sha256; with ``lossy`` an F32 tensor's bytes are those ELF serves
    (``compression.elf32.served``): a lossy version stores, deduplicates and hashes what it serves."""
    raw = read_at(offset + entry.begin, entry.nbytes) if entry.nbytes else b""
    if lossy and entry.dtype == "F32":
        raw = elf32.served(raw)
    return Digest(raw, hashlib.sha256(raw).hexdigest())


def hash_in_chunks(
    read_at: Callable[[int, int], bytes],
    offset: int,
    entry: TensorEntry,
    chunk_bytes: int,
    lossy: bool = False,
    keep: bool = False,
) -> Digest:
    """The sha256 of a chunked tensor, read a chunk at a time (``lossy``: as ``read_and_hash``), and of
    each chunk (``chunk_ranges`` without a split; ``keep``: with its bytes, so that encoding it reads
    nothing again)."""
    digest = hashlib.sha256()
    start = offset + entry.begin
    size = dtype_info(entry.dtype).itemsize
    pieces = []
    for begin, end in chunk_ranges(entry.nbytes // size, size, chunk_bytes):
        raw = read_at(start + begin * size, (end - begin) * size)
        if lossy and entry.dtype == "F32":
            raw = elf32.served(raw)
        own = hashlib.sha256()
        update_both(digest, own, raw)
        pieces.append(Piece(begin, end, raw if keep else b"", own.hexdigest()))
    return Digest(b"", digest.hexdigest(), tuple(pieces))


def update_both(first: Any, second: Any, data: bytes) -> None:
    """Feed ``data`` to two hashes ``HASH_STEP`` bytes at a time: the same digests as two whole passes,
    but the second hash finds each step still in L1 (a chunk's two sha256 took 1.76 s per GiB as two
    passes, 1.18 s interleaved, on this machine's 48 KiB L1d)."""
    view = memoryview(data)
    for at in range(0, len(view), HASH_STEP):
        step = view[at : at + HASH_STEP]
        first.update(step)
        second.update(step)


def encode_and_store(
    store: ObjectStore,
    entry: TensorEntry,
    raw: bytes,
    path: str,
    parent: ParentRef | None,
    lossy: bool = False,
    sink: BlobSink | None = None,
) -> Coded:
    """Encode one tensor (against ``parent`` when given; ``lossy``: F32 as ELF, whose ``raw`` is already
    what ELF serves), check the round trip, write the blob (to ``sink``, else ``store``)."""
    dtype, shape = entry.dtype, list(entry.shape)
    # not re-hashed: a wrong parent cannot slip through, since the payload is checked against the input
    # decoded with these very parent bytes, and every pull verifies each step of the chain
    parent_raw = reconstruct(store, parent.recipe, verify=False) if parent else None
    pdtype = parent.dtype if parent else None
    pshape = parent.shape if parent else None
    encoded = smaller_as_is(
        encode_tensor(raw, dtype, shape, parent_raw, pdtype, pshape, lossy=lossy), raw, dtype
    )
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
    (sink or store).put_bytes(blob_key(sha), encoded.payload, cold=uses_parent)  # a delta: see ``BlobSink``
    return Coded(encoded.encoding, sha, len(encoded.payload), uses_parent)


def encode_chunk_of(
    sink: BlobSink,
    read_at: Callable[[int, int], bytes],
    start: int,
    entry: TensorEntry,
    index: int,
    begin: int,
    end: int,
    parent: tuple[RangeReader, str] | None,
    lossy: bool = False,
    hashed: Piece | None = None,
) -> CodedChunk:
    """Code elements ``[begin, end)`` of a staged tensor starting at byte ``start`` (against the same
    elements of ``parent``'s reader top step when given; ``lossy``: as ``read_and_hash``). ``hashed``:
    the bytes ``hash_in_chunks`` kept of these very elements, with their sha256; otherwise they are
    read and hashed here (bytes read again are hashed again: the hash must
    be of the very bytes the payload was checked against)."""
    if hashed is not None and hashed.raw:
        raw, sha = hashed.raw, hashed.sha256
    else:
        size = dtype_info(entry.dtype).itemsize
        raw = read_at(start + begin * size, (end - begin) * size)
        if lossy and entry.dtype == "F32":
            raw = elf32.served(raw)
        sha = None
    part = parent[0].elements(len(parent[0].steps) - 1, begin, end) if parent else None
    pdtype = parent[1] if parent else None
    return code_chunk(sink, index, begin, end, raw, entry.dtype, pdtype, part, lossy, sha)


class FilePipeline:
    """Drives the lanes over one file's tensors; the caller's callbacks do all database work.

    ``classify(slots)`` runs in tensor order on a batch of consecutive slots once their bytes are
    hashed (at most ``LOOKUP_BATCH``; fewer at the end of the file or while large tensors fill the
    window): for each it sets ``slot.twin`` (a stored tensor with the same bytes) or ``slot.parent``
    (may stay None: ``plain``). A slot whose bytes an earlier slot of this run holds is not passed: it
    becomes ``same`` of that slot. ``record(slot)`` runs in tensor order once the slot is finished
    (twin found or every blob written to ``sink``: the store itself, or a ``WriteBatch`` whose flush
    the caller makes before the rows naming those blobs can commit).
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
        lossy: bool = False,
        sink: BlobSink | None = None,
    ) -> None:
        self.pool, self.window = pool, max(1, threads) * IN_FLIGHT_PER_LANE
        self.store, self.path, self.read_at, self.data_offset = store, path, read_at, data_offset
        self.sink: BlobSink = sink or store
        self.chunk_bytes, self.lossy = chunk_bytes, lossy
        self.running: set[Future[Any]] = set()

    def run(
        self,
        entries: list[TensorEntry],
        classify: Callable[[list[Slot]], None],
        record: Callable[[Slot], None],
    ) -> None:
        slots: deque[Slot] = deque()
        encoding: dict[str, Slot] = {}  # raw sha256 -> the slot being encoded with those bytes
        admitted, held = 0, 0  # entries read so far; raw bytes the slots in ``slots`` hold
        try:
            while True:
                self.running = {f for f in self.running if not f.done()}
                while admitted < len(entries) and self._admits(len(slots), held, entries[admitted]):
                    slots.append(self._read(entries[admitted], held))
                    admitted, held = admitted + 1, held + slots[-1].holds
                if not slots:
                    return
                self._classify_ready(slots, encoding, classify, admitted == len(entries))
                self._submit_units(slots)
                while slots and self._finished(slots[0]):
                    slot = slots.popleft()
                    held -= slot.holds
                    if slot.coded:
                        for future in slot.coded:
                            future.result()  # raises what the lane raised
                        if encoding.get(slot.sha256 or "") is slot:
                            del encoding[slot.sha256 or ""]
                    record(slot)
                if slots and not self._finished(slots[0]):
                    self._wait_for_progress(slots)
        except BaseException:
            for future in self.running:  # an interrupted run leaves no lane writing after it returns
                future.cancel()
            wait(self.running)
            raise

    def _admits(self, in_flight: int, held: int, entry: TensorEntry) -> bool:
        """Room for one more tensor: the lanes' own window, or more small ones for a fuller batch."""
        if in_flight < self.window:
            return True
        if entry.nbytes > self.chunk_bytes:
            return False  # read ahead by the window only: its hashing is a lane's work
        return in_flight < 2 * LOOKUP_BATCH and held + entry.nbytes <= READ_AHEAD_BYTES

    def _submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future = self.pool.submit(fn)
        self.running.add(future)
        return future

    def _read(self, entry: TensorEntry, held: int) -> Slot:
        """Submit the read and hash of ``entry``; a chunked tensor keeps its bytes for its encode when
        they fit in what the waiting slots may hold (``held`` so far), else they are read again."""
        if entry.nbytes > self.chunk_bytes:
            keep = held + entry.nbytes <= READ_AHEAD_BYTES
            read = partial(
                hash_in_chunks, self.read_at, self.data_offset, entry, self.chunk_bytes, self.lossy, keep
            )
            return Slot(entry, self._submit(read), chunked=True, holds=entry.nbytes if keep else 0)
        read = partial(read_and_hash, self.read_at, self.data_offset, entry, self.lossy)
        return Slot(entry, self._submit(read), holds=entry.nbytes)

    def _classify_ready(
        self,
        slots: deque[Slot],
        encoding: dict[str, Slot],
        classify: Callable[[list[Slot]], None],
        all_admitted: bool,
    ) -> None:
        """Classify the next batch of hashed slots, strictly in order (a later tensor may be a twin of
        an earlier one): a full batch, or a shorter one when no more can join it (the end of the file,
        or every slot in flight is waiting for it)."""
        start = next((i for i, slot in enumerate(slots) if not slot.classified), len(slots))
        run: list[Slot] = []
        failed = False  # a read failed: the batch stops before it, and it raises once it leads
        for i in range(start, len(slots)):
            digest = slots[i].digest
            assert digest is not None
            if not digest.done() or len(run) == LOOKUP_BATCH:
                break
            if digest.exception() is not None:
                if i == 0:
                    digest.result()  # raises: every tensor before it is recorded
                failed = True
                break
            run.append(slots[i])
        to_end = start + len(run) == len(slots)
        full = len(run) == LOOKUP_BATCH or failed
        if not run or not (full or (to_end and (all_admitted or start == 0))):
            return
        for slot in run:
            assert slot.digest is not None
            slot.sha256 = slot.digest.result().sha256
            slot.twin = encoding.get(slot.sha256)
        classify([slot for slot in run if slot.twin is None])
        for slot in run:
            assert slot.digest is not None and slot.sha256 is not None
            if slot.twin is None and (earlier := encoding.get(slot.sha256)) is not None:
                slot.twin, slot.parent = earlier, None  # an earlier slot of this batch has these bytes
            if slot.twin is None:
                encoding[slot.sha256] = slot
                self._plan_units(slot, slot.digest.result())
            slot.digest = None  # the raw bytes now live only in the lane work that encodes them

    def _plan_units(self, slot: Slot, digest: Digest) -> None:
        entry, parent = slot.entry, slot.parent
        if not slot.chunked:
            slot.units.append(
                partial(
                    encode_and_store, self.store, entry, digest.raw, self.path, parent, self.lossy, self.sink
                )
            )
            return
        hashed = {(piece.begin, piece.end): piece for piece in digest.pieces}
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
                partial(
                    encode_chunk_of,
                    self.sink,
                    self.read_at,
                    start,
                    entry,
                    index,
                    begin,
                    end,
                    against,
                    self.lossy,
                    hashed.get((begin, end)),  # none where a delta-rows split moved the boundary
                )
            )

    def _submit_units(self, slots: deque[Slot]) -> None:
        for slot in slots:
            while slot.units and len(self.running) < self.window:
                slot.coded.append(self._submit(slot.units.popleft()))
            if len(self.running) >= self.window:
                return

    def _wait_for_progress(self, slots: deque[Slot]) -> None:
        """Block until the loop can move on: the head tensor's work, the first digest still being
        computed among the slots not yet classified (a batch is classified once every digest it
        waits for is done, so an earlier done digest is no reason to wake), or, while units wait for
        room in the window, any lane's progress. Waking on every lane's progress otherwise would
        classify batches while the one before is half recorded (more, smaller writes); returning
        without waiting while only a later digest is pending made the caller's loop spin on the
        GIL (58,700 passes for a 256 MiB push, 0.2-0.3 CPU s)."""
        head = slots[0]
        pending = [f for f in head.coded if not f.done()]
        hashing = next(
            (
                slot.digest
                for slot in slots
                if not slot.classified and slot.digest is not None and not slot.digest.done()
            ),
            None,
        )
        if hashing is not None:
            pending.append(hashing)
        if any(slot.units for slot in slots):
            pending.extend(self.running)
        if pending or self.running:
            wait(pending or self.running, return_when=FIRST_COMPLETED)

    @staticmethod
    def _finished(slot: Slot) -> bool:
        return slot.classified and not slot.units and all(f.done() for f in slot.coded)
