"""The encode rule: turn a committed version's staged uploads into stored tensors and blobs.

Per safetensors file: the exact header bytes become a blob; then, tensors (and the chunks of large ones)
side by side in a few lanes (ranged reads of the staged object, so memory is bounded by a few chunks per
lane, see ``encode_pipeline``), bytes already stored anywhere become ``same``, otherwise the tensor is
coded against the parent version's tensor of the same name (``delta`` / ``delta-rows``) or alone
(``plain``). Every payload is decoded and compared with the input before it is trusted. Other files are
stored zstd-compressed.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from deltazoo.compression.other_files import compress_stream
from deltazoo.compression.safetensors_io import SafetensorsError, TensorEntry, read_header
from deltazoo.registry.db import after_commit
from deltazoo.registry.errors import BadRequest
from deltazoo.registry.models import File, Model, Tensor, Version
from deltazoo.registry.objectstore import ObjectStore, WriteBatch, blob_key, delete_objects
from deltazoo.registry.repositories import BlobRepository, FileRepository, TensorRepository, visible_from
from deltazoo.registry.staged_reads import StagedReads
from deltazoo.services.chunks import DEFAULT_CHUNK_BYTES
from deltazoo.services.encode_pipeline import FilePipeline, ParentRef, Slot
from deltazoo.services.encode_split import tensor_range
from deltazoo.services.lossy import record_served_sha256
from deltazoo.services.storage import CorruptStoreError, put_blob, resolve_recipes
from deltazoo.services.tensor_rows import TensorRowWriter
from sqlalchemy import ColumnElement, event, update
from sqlalchemy.orm import Session

Progress = Callable[[float], None]  # job progress, 0..1

ParentRefs = dict[str | tuple[str, str], ParentRef]  # name, and (file path, name), -> the parent's tensor


@dataclass
class EncodeTotals:
    stored_bytes: int = 0
    tensors: int = 0
    encodings: dict[str, int] = field(default_factory=dict)


def twin_scope(session: Session, version: Version) -> ColumnElement[bool]:
    """Models a ``same`` twin of this version's tensors may come from (``repositories.visible_from``):
    another namespace's private tensor is never named by, nor pinned by, this version."""
    model = session.get(Model, version.model_id)
    assert model is not None
    return visible_from(model)


def staged_tensor_names(store: ObjectStore, file: File) -> set[str]:
    assert file.staging_key is not None
    header = read_header(lambda o, n: store.get_range(file.staging_key, o, n), file.size)  # type: ignore[arg-type]
    return {t.name for t in header.tensors}


def check_related_base(session: Session, store: ObjectStore, version: Version, base_ref: str) -> None:
    """Refuse a base that shares no tensor name with the upload: it is certainly not this model's base.

    An adapter is exempt: its tensors (``lora_A``/``lora_B``) never share a name with its base."""
    if version.parent_version_id is None or version.relation == "adapter":
        return
    base_names = set(TensorRepository(session).by_name(version.parent_version_id))
    if not base_names:
        return
    names: set[str] = set()
    tensors = TensorRepository(session)
    for f in FileRepository(session).for_version(version.id):
        if f.kind != "safetensors":
            continue
        if f.staging_key:
            names |= staged_tensor_names(store, f)
        elif f.source_file_id:
            names |= {t.name for t in tensors.for_file(f.source_file_id)}
    if names and not names & base_names:
        raise BadRequest(
            f"base {base_ref} shares no tensor name with this upload, so it is not its base; "
            "push without --base or name the model it was fine-tuned from",
            code="unrelated_base",
        )


def _store_other_file(session: Session, store: ObjectStore, key: str) -> tuple[str, int, bool]:
    """A staged non-tensor file into a blob in its stored form (``compression.other_files``) without
    holding it whole in memory."""
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        for out in compress_stream(store.iter_chunks(key)):
            digest.update(out)
            spool.write(out)
        size = spool.tell()
        sha = digest.hexdigest()
        blobs = BlobRepository(session)
        if blobs.get(sha) is None or not store.exists(blob_key(sha)):
            spool.seek(0)
            store.put_file(blob_key(sha), spool, size)  # type: ignore[arg-type]
        return sha, size, blobs.add_reference(sha, size)


def _copy_file(session: Session, version: Version, file: File) -> None:
    """A file whose bytes a ready version already holds: reuse its blobs, tensors become ``same``. When
    that version was deleted meanwhile, its deleter staged the bytes for this file
    (``services.dedup_handover``): the file is reloaded with its staging key, to encode as an upload."""
    source = FileRepository(session).lock_source(file.source_file_id) if file.source_file_id else None
    if source is None:
        session.refresh(file)
        if file.staging_key is None:
            raise CorruptStoreError(
                f"{file.path}: the stored copy it was deduplicated against is gone; push again"
            )
        return
    blobs = BlobRepository(session)
    for sha in (source.header_blob, source.blob):
        if sha:
            blobs.add_reference(sha, 0)
    file.header_blob, file.blob = source.header_blob, source.blob
    for t in TensorRepository(session).for_file(source.id):
        session.add(
            Tensor(
                version_id=version.id,
                file_id=file.id,
                name=t.name,
                dtype=t.dtype,
                shape=t.shape,
                sha256=t.sha256,
                offset_begin=t.offset_begin,
                offset_end=t.offset_end,
                encoding="same",
                blob=None,
                stored_bytes=0,
                depth=t.depth,
                parent_tensor_id=t.id,
            )
        )


def _tensor_row(version: Version, file: File, entry: TensorEntry, sha: str) -> Tensor:
    return Tensor(
        version_id=version.id,
        file_id=file.id,
        name=entry.name,
        dtype=entry.dtype,
        shape=list(entry.shape),
        sha256=sha,
        offset_begin=entry.begin,
        offset_end=entry.end,
        stored_bytes=0,
    )


def _encode_safetensors(
    session: Session,
    store: ObjectStore,
    version: Version,
    file: File,
    parents: ParentRefs,
    max_depth: int,
    totals: EncodeTotals,
    after_tensor: Callable[[int], None],
    pool: ThreadPoolExecutor,
    threads: int,
    chunk_bytes: int,
    add_stored: Callable[[int], None],
    part: tuple[int, int] | None = None,
) -> None:
    """One staged safetensors file (``part``: only range ``(index, count)`` of its tensors,
    ``encode_split.tensor_range``; the first range stores the header); ``add_stored(n)`` counts bytes
    of the blobs it names."""
    key = file.staging_key
    assert key is not None

    # the lanes' ranged reads of the staged file; with direct_io around the page cache, through one
    # reused aligned buffer per read in flight (a chunk each: lanes x chunk_bytes in all)
    with StagedReads(store, key) as staged:
        read_at = staged.read_at
        try:
            header = read_header(read_at, file.size)
        except SafetensorsError as exc:
            raise CorruptStoreError(f"{file.path}: {exc}") from None
        if file.header_blob is None and (part is None or part[0] == 0):
            file.header_blob, _ = put_blob(session, store, header.header_bytes)
            parent = version.parent_version_id
            # the parent's own header is reused (its readers may see the parent); any other header counts
            # in full even when stored before (tensor_rows.py says why)
            shared = parent is not None and FileRepository(session).has_header_blob(parent, file.header_blob)
            add_stored(0 if shared else header.header_size)
        entries = list(header.tensors) if part is None else tensor_range(header.tensors, *part)
        tensors = TensorRepository(session)
        scope = twin_scope(session, version)
        done = {t.name for t in tensors.for_file(file.id)}  # committed by an interrupted run (or other parts)
        skipped = sum(entry.nbytes for entry in entries if entry.name in done)
        if skipped:  # one step of progress (and one checkpoint) for them all, not a commit per tensor
            after_tensor(skipped)
        blobs = WriteBatch(store)  # the lanes' blob writes, durable before the rows naming them are written
        rows = TensorRowWriter(session, add_stored, after_tensor, blobs.flush)

        def classify(batch: list[Slot]) -> None:
            rows.write()  # a twin may be a tensor of this run recorded since the last batch
            stored = tensors.stored_with_shas((slot.sha256 for slot in batch if slot.sha256), scope)
            for slot in batch:
                assert slot.sha256 is not None
                slot.twin = stored.get(slot.sha256)
                if slot.twin is None:
                    parent = parent_of(parents, file.path, slot.entry.name)
                    slot.parent = (
                        parent if parent is not None and parent.depth < max_depth else None
                    )  # re-anchor

        def record(slot: Slot) -> None:
            assert slot.sha256 is not None
            row = _tensor_row(version, file, slot.entry, slot.sha256)
            same_as, chunks = None, []
            if not slot.coded:
                twin = slot.twin.row if isinstance(slot.twin, Slot) else slot.twin  # of this run, or stored
                assert isinstance(twin, Tensor)
                row.encoding, row.parent_tensor_id, row.depth = "same", twin.id, twin.depth
                same_as = twin if isinstance(slot.twin, Slot) else None  # its id is known once it is written
            elif slot.chunked:
                chunks = slot.chunks()
                uses_parent = any(c.encoding != "plain" for c in chunks)
                _set_coded(
                    row, slot.mode if uses_parent else "plain", None, sum(c.stored_bytes for c in chunks)
                )
                _set_parent(row, slot.parent if uses_parent else None)
                row.chunks = len(chunks)
            else:
                coded = slot.whole()
                _set_coded(row, coded.encoding, coded.blob, coded.size)
                _set_parent(row, slot.parent if coded.uses_parent else None)
            slot.row = row
            totals.tensors += 1
            totals.encodings[row.encoding] = totals.encodings.get(row.encoding, 0) + 1
            rows.add(row, slot.entry.nbytes, same_as, [c.row() for c in chunks])

        todo = [e for e in entries if e.name not in done]
        pipeline = FilePipeline(
            pool, threads, store, file.path, read_at, header.header_size, chunk_bytes, version.lossy, blobs
        )
        with blobs:
            try:
                pipeline.run(todo, classify, record)
            except BaseException:
                with contextlib.suppress(Exception):  # keep what was recorded: a resumed run starts after it
                    rows.write()
                raise
            rows.write()


def _add_stored(version: Version, nbytes: int) -> None:
    version.stored_bytes += nbytes


class Advance:
    """Job progress over ``total`` bytes, and a checkpoint, after every tensor."""

    def __init__(self, total: int, progress: Progress, checkpoint: Callable[[], None]) -> None:
        self.total, self.done, self.progress, self.checkpoint = max(1, total), 0, progress, checkpoint

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        self.progress(min(0.99, self.done / self.total))
        self.checkpoint()


class StoredTally:
    """Bytes newly stored by one part of a split encode, added to the version's total with one atomic
    ``UPDATE`` just before each commit (parts on other workers add to the same row at the same time; the
    row is locked only while committing, and what is added is exactly what that commit stores)."""

    def __init__(self, session: Session, version_id: int) -> None:
        self.session, self.version_id, self.pending, self.added = session, version_id, 0, 0
        event.listen(session, "before_commit", self.flush)

    def add(self, nbytes: int) -> None:
        self.pending += nbytes
        self.added += nbytes

    def flush(self, _session: Session | None = None) -> None:
        if self.pending:
            total = Version.stored_bytes + self.pending
            self.session.execute(
                update(Version).where(Version.id == self.version_id).values(stored_bytes=total)
            )
            self.pending = 0

    def close(self) -> None:
        event.remove(self.session, "before_commit", self.flush)


def encode_file(
    session: Session,
    store: ObjectStore,
    version: Version,
    file: File,
    max_depth: int,
    progress: Progress,
    checkpoint: Callable[[], None] = lambda: None,
    threads: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    part: tuple[int, int] | None = None,
) -> EncodeTotals:
    """Encode one staged safetensors file of ``version``, or with ``part = (index, count)`` one range
    of its tensors (one part of a split encode, ``services.encode_split``): its tensors are stored
    exactly as ``encode_version`` stores them; the version stays ``processing`` (its last encode run
    marks it ready)."""
    totals = EncodeTotals()
    advance = Advance(file.size // (part[1] if part else 1), progress, checkpoint)
    tally = StoredTally(session, version.id)
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="deltazoo-encode") as pool:
            _encode_safetensors(
                session,
                store,
                version,
                file,
                _parent_refs(session, version),
                max_depth,
                totals,
                advance,
                pool,
                threads,
                chunk_bytes,
                tally.add,
                part,
            )
        tally.flush()
    finally:
        tally.close()
    totals.stored_bytes = tally.added
    return totals


def _set_coded(row: Tensor, encoding: str, blob: str | None, size: int) -> None:
    row.encoding, row.blob, row.stored_bytes = encoding, blob, size


def _set_parent(row: Tensor, parent: ParentRef | None) -> None:
    row.parent_tensor_id = parent.tensor_id if parent else None
    row.depth = parent.depth + 1 if parent else 0


def _parent_refs(session: Session, version: Version) -> ParentRefs:
    """The parent version's tensors by (file path, name) and by name, with their decode recipes resolved
    in one pass. A name held by several files of the parent (``w`` in two shards) is matched by its file
    first: by name alone it would be whichever came last."""
    if version.parent_version_id is None:
        return {}
    rows = TensorRepository(session).for_version(version.parent_version_id)
    paths = {f.id: f.path for f in FileRepository(session).for_version(version.parent_version_id)}
    recipes = resolve_recipes(session, rows)
    refs: ParentRefs = {}
    for t in rows:
        ref = ParentRef(t.id, t.depth, t.dtype, list(t.shape), recipes[t.id])
        refs.setdefault(t.name, ref)
        refs[(paths.get(t.file_id, ""), t.name)] = ref
    return refs


def parent_of(parents: ParentRefs, path: str, name: str) -> ParentRef | None:
    """The parent tensor of tensor ``name`` of file ``path``: the same name in the same file, else in any."""
    return parents.get((path, name)) or parents.get(name)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def stored_note(files: list[File]) -> str | None:
    """What a ready version should say about files it could not read as tensors (None: nothing)."""
    pickles = [f.path for f in files if f.path.lower().endswith(_PICKLE_SUFFIXES)]
    named = ", ".join(pickles[:3]) + (" ..." if len(pickles) > 3 else "")
    kept = f"{named} kept as opaque bytes, never unpickled"
    if not any(f.kind == "safetensors" for f in files):
        return (
            f"no safetensors weights: its {len(files)} files are stored as opaque bytes "
            "(no tensors deduplicated, no delta against a base, nothing to evaluate)"
            + (f"; {kept}" if pickles else "")
        )
    return kept if pickles else None


def encode_version(
    session: Session,
    store: ObjectStore,
    version: Version,
    max_depth: int,
    progress: Progress,
    checkpoint: Callable[[], None] = lambda: None,
    threads: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    encoded: Collection[int] = (),
) -> EncodeTotals:
    """Encode every file of ``version`` (status ``processing``) and mark it ``ready``.

    ``encoded``: ids of weight files a split encode's parts have finished (``encode_split.encoded_files``):
    their tensors are committed and their header stored, so they are not read again.

    ``checkpoint`` is called after every tensor: the job wrapper may commit there (so a long encode
    does not hold the database's write lock, and its progress is visible). Work committed by an
    interrupted run is found again and skipped, so the job can simply be run again. ``threads`` lanes
    encode the tensors of a file side by side (``services.encode_pipeline``); the stored
    bytes do not depend on it. Tensors larger than ``chunk_bytes`` are stored in chunks
    (``services.chunks``), and each chunk is a unit of work of the lanes: the encode's peak
    memory is a few chunks per lane (plus a parent tensor stored whole before chunks existed), not the
    largest tensor.
    """
    files = FileRepository(session).for_version(version.id)
    parents: ParentRefs | None = None  # resolved once, if a file still has tensors to encode
    totals = EncodeTotals()
    advance = Advance(sum(f.size for f in files), progress, checkpoint)

    for file in files:
        if file.staging_key is None and file.header_blob is None and file.blob is None:
            _copy_file(session, version, file)  # or, its source deleted meanwhile, takes the staged bytes
        if file.staging_key is None:
            advance(file.size)
        elif file.kind == "other":
            if file.blob is None:
                file.blob, size, _ = _store_other_file(session, store, file.staging_key)
                version.stored_bytes += size
            advance(file.size)
        elif file.id in encoded and file.header_blob is not None:
            advance(file.size)
            if version.lossy:
                record_served_sha256(session, store, file)
        else:
            if parents is None:
                parents = _parent_refs(session, version)
            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="deltazoo-encode") as pool:
                _encode_safetensors(
                    session,
                    store,
                    version,
                    file,
                    parents,
                    max_depth,
                    totals,
                    advance,
                    pool,
                    threads,
                    chunk_bytes,
                    partial(_add_stored, version),
                )
            if version.lossy:
                record_served_sha256(session, store, file)
    staged = [f.staging_key for f in files if f.staging_key]
    for file in files:
        file.staging_key = None
    version.logical_bytes = sum(f.size for f in files)
    version.status, version.status_message = "ready", stored_note(files)
    session.flush()
    shared = FileRepository(session).referenced_staging_keys(staged)  # an LFS object another commit names
    after_commit(session, partial(delete_objects, store, [k for k in staged if k not in shared]))
    totals.stored_bytes = version.stored_bytes
    return totals
