"""Delta-only pulls: rebuild a version's files from its manifest and the ancestors already cached.

For every tensor of a safetensors file (manifest order = offset order), the raw bytes come from:

1. a cached tensor with the same sha256 (no bytes on the wire), else
2. ``same``: the parent tensor's raw bytes (resolved the same way, recursively), else
3. the tensor's blob (``GET /v1/blobs/{sha}``) decoded against its parent's raw bytes, the chain down
   to a cached or ``plain`` tensor decoded by ``compression.chain`` (the server's decoder); an uncached
   parent costs its own blob.

Each tensor's sha256 is checked as it is rebuilt, the file's sha256 and size before it is renamed
into the cache. Memory is bounded by one tensor and its parent chain.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deltazoo.cache import Cache
from deltazoo.compression.chain import Chunk, Step, decode_chain
from deltazoo.compression.codecs import CodecError
from deltazoo.compression.other_files import decompress_stream
from deltazoo.download import HashingWriter, download
from deltazoo.errors import IntegrityError
from deltazoo.models import FileInfo
from deltazoo.refs import Ref
from deltazoo.transport import Transport, progress_bar

_MAX_DEPTH = 64
_AHEAD = max(2, os.cpu_count() or 1)  # tensors rebuilt ahead of the one being written


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

    def hold(self, files: list[FileInfo]) -> None:
        """Make the tensors of these cached files available as parents."""
        for f in files:
            if f.kind != "safetensors" and not f.path.endswith(".safetensors"):
                continue
            blob = self.cache.blob_path(f.sha256)
            for sha, (begin, end) in self.cache.tensor_index(f).items():
                self._local[sha] = (blob, begin, end)

    def manifest(self, ref: str) -> dict[str, Any]:
        if ref not in self._manifests:
            self._manifests[ref] = self.transport.json("GET", f"{_version_path(Ref.parse(ref))}/manifest")
        return self._manifests[ref]

    # --- raw bytes of one tensor -----------------------------------------------------------------

    def _read_local(self, sha256: str) -> bytes:
        path, begin, end = self._local[sha256]
        with path.open("rb") as f:
            f.seek(begin)
            return f.read(end - begin)

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
        steps: list[Step] = []
        node = tensor  # a manifest entry, or a parent reference with its sha256, dtype and shape
        for _ in range(_MAX_DEPTH + 1):
            if node["sha256"] in self._local:
                held = Step("plain", None, node["dtype"], tuple(node["shape"]), node["sha256"])
                return [held, *reversed(steps)], self._read_local(node["sha256"])
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

    def raw(self, tensor: dict[str, Any]) -> bytes:
        """The raw bytes of a manifest tensor entry, checked against its sha256 (each step of its chain
        decoded by ``compression.chain``, as the server does)."""
        steps, below = self._chain(tensor)
        try:
            if below is not None and len(steps) == 1:
                data = below  # held here already, read by the sha256 it was indexed under
            else:
                data = decode_chain(self._fetch_blob, steps, start=1 if below is not None else 0, raw=below)
        except CodecError as exc:
            raise IntegrityError(
                f"tensor {tensor['name']} rebuilt wrong ({exc}); pull again without the cache (delete it) "
                "and report this",
                code="sha256_mismatch",
            ) from None
        if steps[-1].sha256 != tensor["sha256"]:
            raise IntegrityError(
                f"tensor {tensor['name']} rebuilt with a wrong sha256; pull again without "
                "the cache (delete it) and report this",
                code="sha256_mismatch",
            )
        return data

    def _fetch_blob(self, sha256: str) -> bytes:
        return self.transport.get_bytes(f"/v1/blobs/{sha256}")

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
        with HashingWriter(tmp) as out:
            if stored is not None:
                self._unpack_other(stored, out)
            else:
                self._pull_safetensors(entry, out, file, bar)
        return self.cache.install(tmp, file.sha256, file.size, out.hexdigest())

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

    def _rebuilt_in_order(self, tensors: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Each tensor with its raw bytes, in order; up to ``_AHEAD`` of them fetched and decoded on other
        threads meanwhile (the decoders and sockets release the GIL): memory ``_AHEAD + 1`` tensors."""
        with ThreadPoolExecutor(_AHEAD, thread_name_prefix="deltazoo-rebuild") as pool:
            queued: deque[tuple[dict[str, Any], Future[bytes]]] = deque()
            todo = iter(tensors)
            try:
                while True:
                    while len(queued) < _AHEAD and (t := next(todo, None)) is not None:
                        queued.append((t, pool.submit(self.raw, t)))
                    if not queued:
                        return
                    t, future = queued.popleft()
                    yield t, future.result()
            finally:
                for _, future in queued:
                    future.cancel()

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
            for t, data in self._rebuilt_in_order(tensors):
                begin, end = t["offset"]
                if begin != position:
                    raise IntegrityError(
                        f"{file.path}: tensor {t['name']} starts at {begin}, expected {position}",
                        code="manifest_inconsistent",
                    )
                if len(data) != end - begin:
                    raise IntegrityError(
                        f"{file.path}: tensor {t['name']} is {len(data)} bytes, expected {end - begin}",
                        code="size_mismatch",
                    )
                out.write(data)
                bar.update(len(data))
                position = end
        finally:
            if shared is None:
                bar.close()
