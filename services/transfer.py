"""Uploads in (validated while they stream to a staging object) and dense files out (rebuilt tensor by
tensor, any byte range)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.other_files import decompress_range
from deltazoo.compression.safetensors_io import (
    SafetensorsError,
    SafetensorsStreamValidator,
    TooManyTensors,
    is_index_file,
    validate_index,
)
from deltazoo.registry.errors import BadRequest, Conflict, NotFound, Unprocessable
from deltazoo.registry.models import File, Version
from deltazoo.registry.objectstore import ObjectNotFound, ObjectStore, blob_key, new_staging_key
from deltazoo.registry.repositories import FileRepository, TensorRepository
from deltazoo.services.chunks import RangeReader
from deltazoo.services.storage import (
    SHA_RE,
    CorruptStoreError,
    Recipe,
    read_blob,
    reconstruct,
    resolve_recipes,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from deltazoo.direct_io import DirectWriter

if TYPE_CHECKING:
    from deltazoo.registry.s3_parts import StreamedPut

MAX_INDEX_BYTES = 64 << 20
STREAM_FROM = 8 << 20  # files larger than this stream to an S3 store while they arrive
SEND_PIECE = 8 << 20  # the most bytes of one decoded piece handed to the HTTP server at once


def check_named(file: File, claimed: str | None) -> None:
    """A file declared without sha256 is named by the upload that carries its last byte."""
    if claimed is not None and not SHA_RE.match(claimed):
        raise BadRequest(
            f"{file.path}: Deltazoo-Sha256 {claimed!r} is not 64 lowercase hex digits", code="invalid_sha256"
        )
    if not file.sha256 and claimed is None:
        raise BadRequest(
            f"{file.path} was declared without sha256: send it in the Deltazoo-Sha256 header of the "
            "request that carries the last byte",
            code="sha256_required",
        )


@dataclass
class HeaderLimits:
    """What one uploaded safetensors header may declare; ``create_app`` sets it from the server's settings
    (``DELTAZOO_MAX_TENSORS``), so a header of a million tensors is refused while it arrives, before its
    entries are checked one by one (the commit counts every file of the version against the same limit)."""

    max_tensors: int = 100_000


HEADER_LIMITS = HeaderLimits()


class UploadSink:
    """Receives one file's bytes chunk by chunk: hashes, validates and spools them, then stages them.

    Memory holds at most the spool's in-memory part (8 MiB; with ``direct``, the writer's two aligned
    8 MiB buffers) and a safetensors header.
    """

    def __init__(
        self,
        file: File,
        spool: BinaryIO | DirectWriter | None = None,
        scratch_dir: Path | None = None,
        direct: bool = False,
    ) -> None:
        """``spool`` (default: a temporary file, in ``scratch_dir`` when given: the object store's own,
        so staging renames it instead of copying) receives the bytes; a resumed upload passes its part
        file. ``direct`` (``objectstore.stages_direct``): the scratch file is written around the page
        cache (``DirectWriter``), so staging a big file fills no page cache."""
        self.file = file
        self.sha = hashlib.sha256()
        self.size = 0
        self.validator = (
            SafetensorsStreamValidator(expected_size=file.size, max_tensors=HEADER_LIMITS.max_tensors)
            if file.kind == "safetensors"
            else None
        )
        if spool is None and scratch_dir is not None and direct:
            scratch_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=scratch_dir, prefix="upload-")
            os.close(fd)
            spool = DirectWriter(name, size_hint=file.size)
        elif spool is None and scratch_dir is not None:
            scratch_dir.mkdir(parents=True, exist_ok=True)
            spool = tempfile.NamedTemporaryFile(dir=scratch_dir, prefix="upload-", delete=False)  # type: ignore[assignment]  # noqa: SIM115
        elif spool is None:
            spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # type: ignore[assignment]  # noqa: SIM115
        self.spool: BinaryIO | DirectWriter = spool  # type: ignore[assignment]  # closed in finish/close
        self.streamed: StreamedPut | None = None
        self.key: str | None = None

    def stream_to(self, store: ObjectStore, fd: int | None = None) -> None:
        """Send the bytes to their staging object while they arrive, when ``store`` can (S3: parts go
        out as the spool grows, so staging is done soon after the last byte, not started then).
        ``fd``: a readable descriptor of the spool, handed over (default: one of the spool's own)."""
        if self.file.size <= STREAM_FROM:  # small: one write at the end
            if fd is not None:
                os.close(fd)
            return
        key = new_staging_key()
        streamed = store.streamed_put(key, os.dup(self.spool.fileno()) if fd is None else fd, self.file.size)
        if streamed is not None:
            self.key, self.streamed = key, streamed
            streamed.grown(self.size)  # a resumed upload: what its part file holds already

    def feed(self, chunk: bytes) -> None:
        self.account(chunk)
        self.spool.write(chunk)
        if self.streamed is not None and self.streamed.wants(self.size):
            assert not isinstance(self.spool, DirectWriter)  # streamed: an S3 store, never direct
            self.spool.flush()  # the part is read from the file
            self.streamed.grown(self.size)

    def account(self, chunk: bytes) -> None:
        """Count, hash and validate ``chunk`` without spooling it (a resumed upload replays its part file)."""
        self.size += len(chunk)
        if self.size > self.file.size:
            raise BadRequest(
                f"{self.file.path}: more than the declared {self.file.size} bytes arrived; "
                "declare the real size",
                code="size_mismatch",
            )
        self.sha.update(chunk)
        if self.validator is not None:
            try:
                self.validator.feed(chunk)
            except TooManyTensors as exc:
                raise Unprocessable(f"{self.file.path}: {exc}", code="too_many_tensors") from None
            except SafetensorsError as exc:
                raise BadRequest(f"{self.file.path}: {exc}", code="invalid_safetensors") from None

    def finish(self, store: ObjectStore, key: str | None = None, claimed: str | None = None) -> str:
        """Check the whole file and write it to a staging object (``key``, default a new one); returns
        its key. ``claimed``: the sha256 the client names with the last byte (``Deltazoo-Sha256``), needed
        when the file was declared without one (``File.sha256`` empty)."""
        try:
            if self.validator is not None:
                try:
                    self.validator.finish()
                except SafetensorsError as exc:
                    raise BadRequest(f"{self.file.path}: {exc}", code="invalid_safetensors") from None
            if self.size != self.file.size:
                raise BadRequest(
                    f"{self.file.path}: {self.size} bytes arrived but {self.file.size} were declared",
                    code="size_mismatch",
                )
            for expected in (self.file.sha256, claimed):
                if expected and self.sha.hexdigest() != expected:
                    raise BadRequest(
                        f"{self.file.path}: sha256 of the bytes is {self.sha.hexdigest()}, "
                        f"declared {expected}; upload the file that was declared",
                        code="sha256_mismatch",
                    )
            check_named(self.file, claimed)
            if is_index_file(self.file.path):
                if self.size > MAX_INDEX_BYTES:
                    raise BadRequest(f"{self.file.path}: index file larger than {MAX_INDEX_BYTES} bytes")
                try:
                    validate_index(self._spooled())
                except SafetensorsError as exc:
                    raise BadRequest(f"{self.file.path}: {exc}", code="invalid_index") from None
            if self.streamed is not None:
                assert not isinstance(self.spool, DirectWriter)
                self.spool.flush()
                streamed, self.streamed = self.streamed, None
                streamed.complete(self.size)
                assert self.key is not None
                return self.key
            key = key or new_staging_key()
            path = self._spool_path()
            if path is None:
                assert not isinstance(self.spool, DirectWriter)  # a direct spool is a file of its own
                self.spool.seek(0)
                store.put_file(key, self.spool, self.size)  # type: ignore[arg-type]
            else:  # a file of its own (the scratch spool or a resumable upload's part file)
                self.spool.close()
                store.put_path(key, path)  # renamed into a local store: the bytes are not copied
            return key
        finally:
            self.close()

    def _spooled(self) -> bytes:
        """Every byte spooled (a small file: an index)."""
        if isinstance(self.spool, DirectWriter):
            self.spool.close()
            return self.spool.path.read_bytes()
        self.spool.seek(0)
        return self.spool.read()

    def _spool_path(self) -> Path | None:
        if isinstance(self.spool, DirectWriter):
            return self.spool.path if self.spool.path.is_file() else None
        name = getattr(self.spool, "name", None)
        return Path(name) if isinstance(name, str) and os.path.isfile(name) else None

    def close(self) -> None:
        """Close the spool (a scratch spool that was not staged is deleted; a direct one is stopped
        without writing what it still holds) and give up a streamed write that did not complete."""
        if self.streamed is not None:
            self.streamed.abort()
            self.streamed = None
        if isinstance(self.spool, DirectWriter):
            self.spool.abort()
        else:
            self.spool.close()
        path = self._spool_path()
        if path is not None and path.name.startswith("upload-"):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Segment:
    start: int  # offset in the file
    end: int
    header: bytes | None = None
    recipe: Recipe | None = None
    blob: str | None = None  # a zstd-compressed "other" file


@dataclass(frozen=True)
class FilePlan:
    path: str
    size: int
    sha256: str
    segments: tuple[Segment, ...]


def require_ready(version: Version, ref: str, what: str) -> None:
    """409 ``version_not_ready`` unless ``version`` is ready: until then its files are declarations."""
    if version.status != "ready":
        raise Conflict(f"{ref} is {version.status}; {what} once it is ready", code="version_not_ready")


def plan_file(session: Session, store: ObjectStore, version: Version, path: str, ref: str) -> FilePlan:
    """Everything needed to stream ``path`` of a ready version, with no database access afterwards."""
    require_ready(version, ref, "files can be downloaded")
    file = FileRepository(session).get(version.id, path)
    if file is None:
        raise NotFound(f"{ref} has no file {path!r}", code="file_not_found")
    try:
        return file_plan(session, store, file)
    except (CorruptStoreError, ObjectNotFound):
        # a delete of this version that committed while its rows were being read looks like damage;
        # it is not: say what happened (404) where the version is gone, a 500 only where it is not
        still = session.scalar(select(Version.id).where(Version.id == version.id))
        if still is None:
            raise NotFound(
                f"{ref} was deleted while {path!r} was being read", code="version_not_found"
            ) from None
        raise


def file_plan(session: Session, store: ObjectStore, file: File) -> FilePlan:
    """How a stored file's bytes are rebuilt: its header and tensors (or its one blob), in file order."""
    if file.kind != "safetensors":
        assert file.blob is not None
        return FilePlan(file.path, file.size, file.sha256, (Segment(0, file.size, blob=file.blob),))
    assert file.header_blob is not None
    header = read_blob(store, file.header_blob)
    tensors = TensorRepository(session).for_file(file.id)
    recipes = resolve_recipes(session, tensors)
    base = len(header)
    segments = [Segment(0, base, header=header)]
    segments += [
        Segment(base + t.offset_begin, base + t.offset_end, recipe=recipes[t.id])
        for t in tensors
        if t.offset_end > t.offset_begin
    ]
    return FilePlan(file.path, file.size, file.sha256, tuple(segments))


DECODE_AHEAD = max(3, os.cpu_count() or 1)  # pieces of one download decoded ahead of the stream
_decode_pool: ThreadPoolExecutor | None = None
_decode_pool_lock = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """Threads shared by every download: the decoders release the GIL, so they use every core."""
    global _decode_pool
    with _decode_pool_lock:
        if _decode_pool is None:
            _decode_pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="deltazoo-decode")
        return _decode_pool


@dataclass(frozen=True)
class Piece:
    """One unit of a download: bytes ``[lo, hi)`` of what ``decode`` returns (a whole tensor or one
    chunk of a chunked one), of ``data`` (the header), or of the zstd ``blob`` (streamed)."""

    lo: int
    hi: int
    decode: Callable[[], bytes] | None = None
    data: bytes | None = None
    blob: str | None = None


def _pieces(store: ObjectStore, seg: Segment, lo: int, hi: int, verify: bool = True) -> Iterator[Piece]:
    """The pieces of bytes ``[lo, hi)`` of one segment: a chunked tensor gives one per overlapping chunk
    (all sharing one ``RangeReader``), so chunks are decoded ahead like whole tensors. ``verify``: each
    piece checked against its recorded sha256 (``iter_file``)."""
    if seg.header is not None:
        yield Piece(lo, hi, data=seg.header)
    elif seg.recipe is None:
        yield Piece(lo, hi, blob=seg.blob)
    elif not seg.recipe.steps[-1].chunks:
        yield Piece(lo, hi, decode=partial(reconstruct, store, seg.recipe, verify=verify, verify_below=False))
    else:
        reader = RangeReader(store, seg.recipe, verify=verify, verify_below=False)
        top = len(seg.recipe.steps) - 1
        step = seg.recipe.steps[top]
        size = dtype_info(step.dtype).itemsize
        for chunk in step.chunks:
            a, b = chunk.begin * size, chunk.end * size
            if a < hi and b > lo:
                yield Piece(max(lo, a) - a, min(hi, b) - a, decode=partial(reader.chunk, top, chunk.begin))


def iter_file(
    store: ObjectStore,
    plan: FilePlan,
    start: int = 0,
    end: int | None = None,
    ahead: int = DECODE_AHEAD,
    verify: bool = True,
) -> Iterator[bytes | memoryview]:
    """The bytes ``[start, end)`` of a planned file, rebuilding only the tensors (and, of a chunked
    tensor, the chunks) that overlap.

    Up to ``ahead`` pieces (a tensor stored whole, or one chunk) are decoded on the shared decode
    threads while the stream sends the current one, so a download runs at the decoders' speed on every
    core, its memory bounded by ``ahead + 1`` pieces (a chunk each, or a tensor stored whole, which is
    no larger than a chunk unless written before chunks existed) and the parent LRU. A stream closed
    early cancels what it queued.

    A decoded piece is yielded as the ``bytes`` object the decoder returned when it is sent whole (the
    HTTP server writes it without a copy), else in slices of at most ``SEND_PIECE`` bytes. Every byte
    yielded was checked against a recorded sha256: the tensor's, or its chunk's (the steps of its chain
    below it are not hashed again: a wrong parent decodes to a wrong tensor, which that check refuses).

    ``verify=False`` hashes nothing: for a client that checks the whole file against its sha256 itself
    (the SDK says so, ``schemas.CLIENT_VERIFIES``), so each byte is hashed once, there. A payload
    damaged in the store still fails its stream's crc32 as it is decoded, and anything else wrong fails
    that client's check; nothing unchecked enters the shared raw cache.
    """
    end = plan.size if end is None else end
    pieces = (
        piece
        for seg in plan.segments
        if seg.end > start and seg.start < end
        for piece in _pieces(
            store, seg, max(start, seg.start) - seg.start, min(end, seg.end) - seg.start, verify
        )
    )
    queued: deque[tuple[Piece, Future[bytes] | None]] = deque()

    def fill() -> None:
        while sum(1 for _, f in queued if f is not None) < ahead + 1:
            piece = next(pieces, None)
            if piece is None:
                return
            decoded = decode_pool().submit(piece.decode) if piece.decode is not None else None
            queued.append((piece, decoded))

    try:
        while True:
            fill()
            if not queued:
                return
            piece, decoded = queued.popleft()
            if piece.data is not None:
                yield piece.data[piece.lo : piece.hi]
            elif piece.blob is not None:
                yield from decompress_range(store.iter_chunks(blob_key(piece.blob)), piece.lo, piece.hi)
            else:
                assert decoded is not None
                raw = decoded.result()
                del decoded
                if piece.lo == 0 and piece.hi == len(raw) <= SEND_PIECE:
                    yield raw
                else:
                    view = memoryview(raw)
                    for a in range(piece.lo, piece.hi, SEND_PIECE):
                        yield view[a : min(piece.hi, a + SEND_PIECE)]
                    del view
                del raw
    finally:
        for _, future in queued:
            if future is not None:
                future.cancel()
