"""The tensors of one safetensors file encoded side by side: read → hash → (dedup) → encode → verify → write.

Lanes are threads: the C codecs (``compression._exact16_delta``, ``_exact16_plain``, ``_narrow``), zstd,
hashlib and file I/O release the GIL, so ``threads`` lanes keep that many cores busy. The database is
touched only by the calling thread (the session is not thread-safe), in tensor order:

1. a lane reads a tensor's bytes (one ranged read of the staged object) and hashes them;
2. the caller, in order and a batch at a time (``LOOKUP_BATCH`` tensors, one query), looks for stored
   twins (``same``, no encode); a tensor whose bytes equal an earlier tensor of this run still being
   encoded becomes ``same`` of it, recorded after it;
3. otherwise a lane rebuilds the parent tensor (``reconstruct``; not re-hashed, see
   ``encode_and_store``), encodes, decodes the payload and compares it to the input (a byte
   comparison: the input's sha256 is already known), hashes the payload and writes the blob
   (content-addressed, so a write that an interrupted run already made is simply repeated);
4. the caller records rows strictly in tensor order, so what a checkpoint commits is always a prefix of
   the file's tensors and a resumed run starts after it and stores exactly the same bytes.

Memory: at most ``2 * threads`` tensors are in flight (read ahead or being encoded), or more while
they are small: up to ``2 * LOOKUP_BATCH`` tensors holding ``READ_AHEAD_BYTES`` of raw bytes together,
so that a file of tens of thousands of small tensors costs a few statements per batch, not per tensor.
Each holds its raw bytes, and a lane encoding one also holds the parent's raw bytes, the payload and
the decoded check, so the peak is about ``max(2 * threads tensor sizes, READ_AHEAD_BYTES) + 3 *
threads`` tensor sizes (plus the parent LRU), not the file.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from deltazoo.compression import elf32
from deltazoo.compression.codecs import decode_tensor, encode_tensor
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.registry.objectstore import ObjectStore, blob_key
from deltazoo.services.storage import CorruptStoreError, Recipe, reconstruct

IN_FLIGHT_PER_LANE = 2
LOOKUP_BATCH = 256  # tensors classified together: one dedup query (and one row flush) per batch
READ_AHEAD_BYTES = 64 << 20  # raw bytes small tensors may hold while they wait for their batch


@dataclass(frozen=True)
class Digest:
    raw: bytes
    sha256: str


@dataclass(frozen=True)
class Coded:
    """What a lane produced for one tensor: the blob is already in the object store."""

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
    sha256: str | None = None
    coded: Future[Coded] | None = None
    parent: ParentRef | None = None
    twin: object | None = None  # a stored Tensor row, or the Slot of an earlier tensor with these bytes
    row: object | None = None  # set by ``record``: what a later twin of this slot points at

    @property
    def classified(self) -> bool:
        return self.sha256 is not None


def read_and_hash(
    read_at: Callable[[int, int], bytes], offset: int, entry: TensorEntry, lossy: bool = False
) -> Digest:
    """A tensor's bytes and their sha256; with ``lossy`` an F32 tensor's bytes are those ELF serves
    (``compression.elf32.served``): a lossy version stores, deduplicates and hashes what it serves."""
    raw = read_at(offset + entry.begin, entry.nbytes) if entry.nbytes else b""
    if lossy and entry.dtype == "F32":
        raw = elf32.served(raw)
    return Digest(raw, hashlib.sha256(raw).hexdigest())


def encode_and_store(
    store: ObjectStore,
    entry: TensorEntry,
    raw: bytes,
    path: str,
    parent: ParentRef | None,
    lossy: bool = False,
) -> Coded:
    """Encode one tensor (against ``parent`` when given; ``lossy``: F32 as ELF, whose ``raw`` is already
    what ELF serves), check the round trip, write the blob."""
    dtype, shape = entry.dtype, list(entry.shape)
    # not re-hashed: a wrong parent cannot slip through, since the payload is checked against the input
    # decoded with these very parent bytes, and every pull verifies each step of the chain
    parent_raw = reconstruct(store, parent.recipe, verify=False) if parent else None
    pdtype = parent.dtype if parent else None
    pshape = parent.shape if parent else None
    encoded = encode_tensor(raw, dtype, shape, parent_raw, pdtype, pshape, lossy=lossy)
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


class FilePipeline:
    """Drives the lanes over one file's tensors; the caller's callbacks do all database work.

    ``classify(slots)`` runs in tensor order on a batch of consecutive slots once their bytes are
    hashed (at most ``LOOKUP_BATCH``; fewer at the end of the file or while large tensors fill the
    window): for each it sets ``slot.twin`` (a stored tensor with the same bytes) or ``slot.parent``
    (may stay None: ``plain``). A slot whose bytes an earlier slot of this run holds is not passed: it
    becomes ``same`` of that slot. ``record(slot)`` runs in tensor order once the slot is finished
    (twin found or blob written).
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        threads: int,
        store: ObjectStore,
        path: str,
        read_at: Callable[[int, int], bytes],
        data_offset: int,
        lossy: bool = False,
    ) -> None:
        self.pool, self.window = pool, max(1, threads) * IN_FLIGHT_PER_LANE
        self.store, self.path, self.read_at, self.data_offset = store, path, read_at, data_offset
        self.lossy = lossy

    def run(
        self,
        entries: list[TensorEntry],
        classify: Callable[[list[Slot]], None],
        record: Callable[[Slot], None],
    ) -> None:
        slots: deque[Slot] = deque()
        encoding: dict[str, Slot] = {}  # raw sha256 -> the slot being encoded with those bytes
        admitted, held = 0, 0  # entries read so far; raw bytes of the slots in ``slots``
        try:
            while True:
                while admitted < len(entries) and self._admits(len(slots), held, entries[admitted]):
                    entry = entries[admitted]
                    future = self.pool.submit(
                        read_and_hash, self.read_at, self.data_offset, entry, self.lossy
                    )
                    slots.append(Slot(entry, future))
                    admitted, held = admitted + 1, held + entry.nbytes
                if not slots:
                    return
                self._classify_ready(slots, encoding, classify, admitted == len(entries))
                while slots and self._finished(slots[0]):
                    slot = slots.popleft()
                    held -= slot.entry.nbytes
                    if slot.coded is not None:
                        slot.coded.result()  # raises what the lane raised
                        if encoding.get(slot.sha256 or "") is slot:
                            del encoding[slot.sha256 or ""]
                    record(slot)
                if slots and not self._finished(slots[0]):
                    self._wait_for_progress(slots)
        except BaseException:
            futures: list[Future[Any]] = [f for s in slots for f in (s.digest, s.coded) if f is not None]
            for future in futures:  # an interrupted run leaves no lane writing after it returns
                future.cancel()
            wait(futures)
            raise

    def _admits(self, in_flight: int, held: int, entry: TensorEntry) -> bool:
        """Room for one more tensor: the lanes' own window, or more small ones for a fuller batch."""
        if in_flight < self.window:
            return True
        return in_flight < 2 * LOOKUP_BATCH and held + entry.nbytes <= READ_AHEAD_BYTES

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
        for i in range(start, len(slots)):
            digest = slots[i].digest
            assert digest is not None
            if not digest.done() or len(run) == LOOKUP_BATCH:
                break
            run.append(slots[i])
        to_end = start + len(run) == len(slots)
        if not run or not (len(run) == LOOKUP_BATCH or (to_end and (all_admitted or start == 0))):
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
                raw = slot.digest.result().raw
                slot.coded = self.pool.submit(
                    encode_and_store, self.store, slot.entry, raw, self.path, slot.parent, self.lossy
                )
            slot.digest = None  # the raw bytes now live only in the lane that encodes them

    @staticmethod
    def _finished(slot: Slot) -> bool:
        if not slot.classified:
            return False
        if slot.coded is not None:
            return slot.coded.done()
        return True

    @staticmethod
    def _wait_for_progress(slots: deque[Slot]) -> None:
        pending: list[Future[Any]] = []
        for slot in slots:
            if slot.digest is not None and not slot.digest.done():
                pending.append(slot.digest)
                break  # the next to classify
        head = slots[0]
        if head.coded is not None:
            pending.append(head.coded)
        elif head.digest is not None:
            pending.append(head.digest)
        wait(pending, return_when=FIRST_COMPLETED)
