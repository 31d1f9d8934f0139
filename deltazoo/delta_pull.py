"""Delta-only pulls: rebuild a version's files from its manifest and the ancestors already cached.

For every tensor of a safetensors file (manifest order = offset order), the raw bytes come from:

1. a cached tensor with the same sha256 (no bytes on the wire), else
2. ``same``: the parent tensor's raw bytes (resolved the same way, recursively), else
3. the tensor's blob (``GET /v1/blobs/{sha}``, through ``blob_fetch``) decoded against its parent's raw
   bytes, the chain down to a cached or ``plain`` tensor decoded by ``compression.chain`` (the server's
   decoder); an uncached parent costs its own blob.

A file is rebuilt in pieces, in order: a chunk of a chunked tensor coded against a cached one (the
common fine-tune: its blob decoded against the same elements of the cached parent, read in place from
the cached file mapped into memory), or a whole tensor otherwise. The blobs of ``BATCH`` consecutive
chunks come in one request, fetched on threads of their own as soon as the first of those chunks is
queued, so the next blobs arrive while earlier chunks decode. Up to ``_QUEUED`` pieces of each file are
decoded ahead (or wait, decoded) while one is written, on ``_AHEAD`` threads shared by every file of the
pull (one per core: the files rebuilt side by side do not multiply the decoders, their threads nor their
heaps), so a delta-only pull decodes on every core; two more queued than there are threads let the
decoders run on while the writer hashes (1 GiB bf16 on 2 cores: 2.58 -> 2.07 s against a queue of
``_AHEAD``). Each piece's size is checked as it is written and the file's sha256 (taken while it is
written, not by reading it again) and size before it is renamed into the cache: that one hash proves every
byte, so the pieces are not hashed again on their own. Memory is bounded by ``_QUEUED + 1`` pieces per file
being rebuilt (a chunk, or one tensor and its parent chain) and ``_QUEUED // BATCH + 2`` batches of blobs
per file (``BATCH`` blobs each, ~2 MiB per 8 MiB bf16 chunk).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deltazoo.blob_fetch import BlobFetcher, Fetched
from deltazoo.cache import Cache
from deltazoo.compression.chain import Chunk, Step, decode_chain, decode_chunk
from deltazoo.compression.codecs import CodecError
from deltazoo.compression.dtypes import dtype_info
from deltazoo.compression.other_files import decompress_stream
from deltazoo.download import HashingWriter, download
from deltazoo.errors import IntegrityError
from deltazoo.models import FileInfo
from deltazoo.refs import Ref
from deltazoo.transport import Transport, progress_bar
from deltazoo.upload import PARALLEL_FILES

_MAX_DEPTH = 64
_AHEAD = max(2, os.cpu_count() or 1)  # threads that rebuild pieces
_QUEUED = _AHEAD + 2  # pieces rebuilt (or being rebuilt) ahead of the one being written
BATCH = 4  # chunks whose blobs one request fetches (8 MiB chunks: ~8 MiB of bf16 delta blobs)


@dataclass(frozen=True)
class _Piece:
    """Bytes ``[begin, end)`` of a tensor's raw bytes, as ``build`` returns them; a chunk decoded from
    one blob also names it (``blob``) and decodes it once fetched (``decode``), so that the blobs of
    neighbouring chunks can be fetched in one request."""

    tensor: dict[str, Any]
    begin: int
    end: int
    build: Callable[[], bytes]
    blob: str | None = None
    decode: Callable[[bytes | bytearray | memoryview], bytes] | None = None


class _Batch:
    """The blobs of a few consecutive chunks, fetched in one request on the fetch thread; its buffer goes
    back to the fetcher once each chunk is decoded (``done``)."""

    def __init__(self, fetched: Future[Fetched], blobs: BlobFetcher, count: int) -> None:
        self._fetched = fetched
        self._blobs = blobs
        self._left = count
        self._lock = threading.Lock()

    def part(self, index: int) -> bytes | bytearray | memoryview:
        return self._fetched.result().parts[index]

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last and self._fetched.done() and self._fetched.exception() is None:
            self._blobs.give_back(self._fetched.result())


def _version_path(ref: Ref) -> str:
    return f"/v1/models/{ref.org}/{ref.name}/versions/{ref.rev}"


class DeltaPuller:
    """Rebuilds files of one pull; holds the cached tensors it may read parents from."""

    def __init__(self, transport: Transport, cache: Cache, *, quiet: bool = False) -> None:
        self.transport = transport
        self.cache = cache
        self.quiet = quiet
        self._local: dict[str, tuple[Path, int, int]] = {}
        self._manifests: dict[str, dict[str, Any]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._fetcher: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.blobs = BlobFetcher(transport)
        self._mapped: dict[Path, mmap.mmap] = {}  # cached files that chunks' parents are read from
        self._mapped_lock = threading.Lock()

    def __enter__(self) -> DeltaPuller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the rebuild threads (started by the first file rebuilt), end their connections and close
        the cached files read."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
            fetcher, self._fetcher = self._fetcher, None
        for threads in (pool, fetcher):  # waits for the pieces being rebuilt, the batches being fetched
            if threads is not None:
                threads.shutdown(cancel_futures=True)
        self.blobs.close()
        with self._mapped_lock:
            mapped, self._mapped = self._mapped, {}
        for mapping in mapped.values():
            with contextlib.suppress(BufferError):  # a view kept by a traceback: unmapped when freed
                mapping.close()

    def _rebuild_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_AHEAD, thread_name_prefix="deltazoo-rebuild")
            return self._pool

    def _fetch_pool(self) -> ThreadPoolExecutor:
        """Threads that fetch batches of blobs (waiting on the socket, the GIL released): one per file
        rebuilt side by side."""
        with self._pool_lock:
            if self._fetcher is None:
                self._fetcher = ThreadPoolExecutor(PARALLEL_FILES, thread_name_prefix="deltazoo-fetch")
            return self._fetcher

    def hold(self, files: list[FileInfo], *, ref: str | None = None) -> None:
        """Make the tensors of these cached files (of version ``ref``, when known) available as parents.

        A file's tensor index comes from ``ref``'s manifest (each tensor's sha256 and offsets, as the
        server recorded them) instead of hashing every tensor of the cached file: a wrong entry would
        rebuild a wrong file, which the pulled file's own sha256 refuses."""
        for f in files:
            if f.kind != "safetensors" and not f.path.endswith(".safetensors"):
                continue
            blob = self.cache.blob_path(f.sha256)
            listed = self._listed_tensors(ref, f.path) if ref and not self.cache.has_tensor_index(f) else None
            for sha, (begin, end) in self.cache.tensor_index(f, listed=listed).items():
                self._local[sha] = (blob, begin, end)

    def _listed_tensors(self, ref: str, path: str) -> dict[str, tuple[int, int]] | None:
        """``{sha256: (begin, end)}`` of a file's tensors in ``ref``'s manifest (offsets after the
        header), or None when the manifest does not list them."""
        entry = next((e for e in self.manifest(ref)["files"] if e["path"] == path), None)
        if entry is None or entry.get("tensors") is None:
            return None
        return {t["sha256"]: (int(t["offset"][0]), int(t["offset"][1])) for t in entry["tensors"]}

    def manifest(self, ref: str) -> dict[str, Any]:
        if ref not in self._manifests:
            self._manifests[ref] = self.transport.json("GET", f"{_version_path(Ref.parse(ref))}/manifest")
        return self._manifests[ref]

    # --- raw bytes of one tensor -----------------------------------------------------------------

    def _read_local(self, sha256: str) -> bytes:
        """A cached tensor's raw bytes, whole (a chunk's parent is read in place: ``_parent_part``)."""
        path, begin, end = self._local[sha256]
        with path.open("rb", buffering=0) as f:
            f.seek(begin)
            return f.read(end - begin)

    def _parent_part(self, sha256: str, lo: int, hi: int) -> memoryview:
        """Bytes ``[lo, hi)`` of a cached tensor, read in place: the cached file is mapped once per pull
        (read-only; cached files are never written again, only replaced or removed, which leaves the
        mapping valid), so a chunk's parent is neither copied nor a new buffer to fault in."""
        path, begin, end = self._local[sha256]
        with self._mapped_lock:
            mapping = self._mapped.get(path)
            if mapping is None:
                with path.open("rb") as f:
                    mapping = self._mapped[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if begin + hi > min(end, len(mapping)):
            raise IntegrityError(
                f"cached file {path.name} ends before a tensor it indexed; pull again without the cache "
                "(delete it)",
                code="size_mismatch",
            )
        return memoryview(mapping)[begin + lo : begin + hi]

    def _entry_of(self, parent: dict[str, Any]) -> dict[str, Any]:
        """The manifest entry of a tensor's parent (``{ref, file, name, ...}``)."""
        for f in self.manifest(parent["ref"])["files"]:
            if f["path"] != parent["file"]:
                continue
            for t in f.get("tensors") or ():
                if t["name"] == parent["name"]:
                    return dict(t)
        raise IntegrityError(
            f"manifest of {parent['ref']} has no tensor {parent['name']} in {parent['file']}; "
            "the server's manifest is inconsistent",
            code="manifest_inconsistent",
        )

    def _chain(self, tensor: dict[str, Any]) -> tuple[list[Step], bytes | None]:
        """The steps that rebuild ``tensor``, bottom first, and the raw bytes below the first of them:
        the chain stops at a tensor cached here (its bytes are read, not fetched) or at a ``plain`` one."""
        steps, held = self._chain_steps(tensor)
        return steps, self._read_local(held) if held is not None else None

    def _chain_steps(self, tensor: dict[str, Any]) -> tuple[list[Step], str | None]:
        """``_chain``'s steps, and the sha256 of the cached tensor the first of them stands for (its
        bytes not read yet), or None when the chain starts at a ``plain`` step."""
        steps: list[Step] = []
        node = tensor  # a manifest entry, or a parent reference with its sha256, dtype and shape
        for _ in range(_MAX_DEPTH + 1):
            if node["sha256"] in self._local:
                held = Step("plain", None, node["dtype"], tuple(node["shape"]), node["sha256"])
                return [held, *reversed(steps)], node["sha256"]
            entry = node if "encoding" in node else self._entry_of(node)
            if entry["encoding"] != "same":
                chunks = tuple(
                    Chunk(c["begin"], c["end"], c["encoding"], c["blob"], c["sha256"])
                    for c in entry.get("chunks") or ()
                )
                steps.append(
                    Step(
                        entry["encoding"],
                        entry.get("blob"),
                        entry["dtype"],
                        tuple(entry["shape"]),
                        entry["sha256"],
                        chunks,
                    )
                )
                if entry["encoding"] == "plain":
                    return list(reversed(steps)), None
            if not entry.get("parent"):
                raise IntegrityError(
                    f"tensor {entry['name']} is '{entry['encoding']}' without a parent", code="bad_manifest"
                )
            node = entry["parent"]
        raise IntegrityError(
            f"tensor {tensor['name']}: parent chain deeper than {_MAX_DEPTH}", code="chain_too_deep"
        )

    def raw(self, tensor: dict[str, Any], *, verify: bool = True) -> bytes:
        """The raw bytes of a manifest tensor entry (each step of its chain decoded by
        ``compression.chain``, as the server does), checked against its sha256 unless ``verify`` is
        false (a whole file's pull hashes the file instead)."""
        steps, below = self._chain(tensor)
        self._check_top(tensor, steps)
        try:
            if below is not None and len(steps) == 1:
                return below  # held here already, read by the sha256 it was indexed under
            start = 1 if below is not None else 0
            return decode_chain(self.blobs.fetch, steps, start=start, raw=below, verify=verify)
        except CodecError as exc:
            raise self._rebuilt_wrong(tensor, exc) from None

    @staticmethod
    def _check_top(tensor: dict[str, Any], steps: list[Step]) -> None:
        if steps[-1].sha256 != tensor["sha256"]:
            raise IntegrityError(
                f"tensor {tensor['name']} rebuilt with a wrong sha256; pull again without "
                "the cache (delete it) and report this",
                code="sha256_mismatch",
            )

    @staticmethod
    def _rebuilt_wrong(tensor: dict[str, Any], exc: Exception) -> IntegrityError:
        return IntegrityError(
            f"tensor {tensor['name']} rebuilt wrong ({exc}); pull again without the cache (delete it) "
            "and report this",
            code="sha256_mismatch",
        )

    def _pieces(self, tensor: dict[str, Any]) -> list[_Piece]:
        """How one tensor is rebuilt: chunk by chunk when it is chunked and coded against a cached
        tensor (or alone), else whole. Unchecked: the file's sha256 proves them."""
        nbytes = tensor["offset"][1] - tensor["offset"][0]
        if tensor["sha256"] not in self._local and tensor.get("encoding") != "same" and tensor.get("chunks"):
            steps, held = self._chain_steps(tensor)
            self._check_top(tensor, steps)
            top = steps[-1]
            chunked_alone = len(steps) == 1 and held is None
            if chunked_alone or (len(steps) == 2 and held is not None):
                parent = steps[0] if held is not None else None
                item = dtype_info(top.dtype).itemsize
                pitem = dtype_info(parent.dtype).itemsize if parent is not None else 0
                return [
                    _Piece(
                        tensor,
                        c.begin * item,
                        c.end * item,
                        partial(self._chunk_raw, tensor, top, c, parent, held, pitem, None),
                        c.blob,
                        partial(self._chunk_raw, tensor, top, c, parent, held, pitem),
                    )
                    for c in top.chunks
                ]
        return [_Piece(tensor, 0, nbytes, partial(self.raw, tensor, verify=False))]

    def _chunk_raw(
        self,
        tensor: dict[str, Any],
        step: Step,
        chunk: Chunk,
        parent: Step | None,
        held: str | None,
        pitem: int,
        payload: bytes | bytearray | memoryview | None,
    ) -> bytes:
        """One chunk's raw bytes from its blob (``payload``, fetched already, else fetched here)."""
        part = None
        if chunk.encoding != "plain" and held is not None:
            part = self._parent_part(held, chunk.begin * pitem, chunk.end * pitem)
        fetch = self.blobs.fetch_scratch if payload is None else lambda _: payload
        try:
            raw = decode_chunk(fetch, step, chunk, parent, part, check=False)
        except CodecError as exc:
            raise self._rebuilt_wrong(tensor, exc) from None
        # the payload lies in a reused buffer: keep no view of it
        return raw if type(raw) is bytes else bytes(raw)

    # --- whole files -----------------------------------------------------------------------------

    def pull_file(self, ref: str, file: FileInfo, *, bar: Any = None) -> Path:
        """Rebuild one file of ``ref`` into the cache's blobs from its manifest entry; ``bar`` is the
        pull's progress bar over all of its files (else the file gets a bar of its own)."""
        entry = next((f for f in self.manifest(ref)["files"] if f["path"] == file.path), None)
        if entry is None:
            raise IntegrityError(f"manifest of {ref} lacks {file.path}", code="manifest_inconsistent")
        other = entry.get("tensors") is None or not entry.get("header_blob")
        stored = self._fetch_stored(entry["blob"], file) if other else None
        tmp = self.cache.incomplete_path(file.sha256)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with HashingWriter(tmp, size=file.size) as out:
            if stored is not None:
                self._unpack_other(stored, out)
            else:
                self._pull_safetensors(entry, out, file, bar)
        try:
            return self.cache.install(tmp, file.sha256, file.size, out.hexdigest())
        except IntegrityError as exc:  # the one check of every rebuilt byte: say where they came from
            if stored is not None or exc.code != "sha256_mismatch":
                raise
            raise IntegrityError(
                f"{file.path} rebuilt from the cached ancestors does not match its sha256 "
                f"{file.sha256[:12]} (a cached file is damaged, or the server's manifest is wrong); "
                "pull again without the cache (delete it) and report this",
                code="sha256_mismatch",
            ) from None

    def _fetch_stored(self, blob: str, file: FileInfo) -> Path:
        """A non-tensor file's blob (its stored form) through the one downloader: resumed after an
        interruption and checked against the blob's name, its sha256."""
        path = self.cache.root / "blobs" / f"{blob}.stored"
        if path.is_file():  # checked when it was renamed into place
            return path
        url = f"/v1/blobs/{quote(blob)}"
        return download(self.transport, url, path, sha256=blob, what=f"{file.path} (stored)")

    def _unpack_other(self, stored: Path, out: HashingWriter) -> None:
        with stored.open("rb") as f:
            for piece in decompress_stream(iter(lambda: f.read(1 << 20), b"")):
                out.write(piece)
        stored.unlink()

    def _rebuilt_in_order(self, tensors: list[dict[str, Any]]) -> Iterator[tuple[_Piece, bytes]]:
        """Each piece of ``tensors`` with its raw bytes, in order; up to ``_QUEUED`` of them fetched and
        decoded on the pull's rebuild threads meanwhile (the decoders and sockets release the GIL)."""
        tasks = self._tasks(tensors)
        pool = self._rebuild_pool()
        queued: deque[tuple[_Piece, Future[bytes]]] = deque()
        try:
            while True:
                while len(queued) < _QUEUED and (task := next(tasks, None)) is not None:
                    piece, build = task
                    queued.append((piece, pool.submit(build)))
                if not queued:
                    return
                piece, future = queued.popleft()
                yield piece, future.result()
        finally:
            for _, future in queued:
                future.cancel()

    def _tasks(self, tensors: list[dict[str, Any]]) -> Iterator[tuple[_Piece, Callable[[], bytes]]]:
        """Each piece of ``tensors`` in order with the call that rebuilds it: the blobs of up to ``BATCH``
        consecutive chunks are fetched in one request, started on the fetch threads when the first of
        them is asked for (so the next blobs arrive while these chunks decode)."""
        group: list[_Piece] = []
        for piece in (piece for t in tensors for piece in self._pieces(t)):
            if piece.blob is None:
                yield from self._batched(group)
                group = []
                yield piece, piece.build
                continue
            group.append(piece)
            if len(group) == BATCH:
                yield from self._batched(group)
                group = []
        yield from self._batched(group)

    def _batched(self, group: list[_Piece]) -> Iterator[tuple[_Piece, Callable[[], bytes]]]:
        if len(group) < 2 or not self.blobs.batches:
            yield from ((piece, piece.build) for piece in group)
            return
        fetched = self._fetch_pool().submit(self.blobs.fetch_many, [p.blob for p in group if p.blob])
        batch = _Batch(fetched, self.blobs, len(group))
        for index, piece in enumerate(group):
            yield piece, partial(self._from_batch, piece, batch, index)

    @staticmethod
    def _from_batch(piece: _Piece, batch: _Batch, index: int) -> bytes:
        assert piece.decode is not None  # a piece with a blob decodes it
        try:
            return piece.decode(batch.part(index))
        finally:
            batch.done()

    def _pull_safetensors(
        self, entry: dict[str, Any], out: HashingWriter, file: FileInfo, shared: Any = None
    ) -> None:
        header = self.transport.get_bytes(f"/v1/blobs/{entry['header_blob']}")
        tensors = sorted(entry["tensors"], key=lambda t: t["offset"][0])
        bar = (
            shared
            if shared is not None
            else progress_bar(file.size, f"rebuild {file.path}", quiet=self.quiet)
        )
        try:
            out.write(header)
            bar.update(len(header))
            position = 0
            for piece, data in self._rebuilt_in_order(tensors):
                t = piece.tensor
                begin = t["offset"][0] + piece.begin
                if begin != position:
                    raise IntegrityError(
                        f"{file.path}: tensor {t['name']} starts at {begin}, expected {position}",
                        code="manifest_inconsistent",
                    )
                if len(data) != piece.end - piece.begin or t["offset"][0] + piece.end > t["offset"][1]:
                    raise IntegrityError(
                        f"{file.path}: tensor {t['name']} is {len(data)} bytes at {piece.begin}, expected "
                        f"{piece.end - piece.begin} of {t['offset'][1] - t['offset'][0]}",
                        code="size_mismatch",
                    )
                out.write(data)
                bar.update(len(data))
                position = begin + len(data)
        finally:
            if shared is None:
                bar.close()
