"""Delta-only pulls: rebuild a version's files from its manifest and the ancestors already cached.

For every tensor of a safetensors file (manifest order = offset order), the raw bytes come from:

1. a cached tensor with the same sha256 (no bytes on the wire), else
2. ``same``: the parent tensor's raw bytes (resolved the same way, recursively), else
3. the tensor's blob (``GET /v1/blobs/{sha}``) decoded by ``compression.codecs.decode_tensor`` against
   its parent's raw bytes (resolved recursively; an uncached parent costs its own blob).

The file's sha256 is taken as it is written (no second read) and checked with its size before it is
renamed into the cache; a tensor rebuilt only as a parent is checked against its own sha256. Memory is
bounded by one tensor and its parent chain.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import zstandard

from deltazoo.cache import Cache, HashingWriter
from deltazoo.compression.codecs import decode_tensor
from deltazoo.compression.dtypes import dtype_info
from deltazoo.errors import IntegrityError
from deltazoo.models import FileInfo, Ref
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

    def _parent_raw(self, parent: dict[str, Any], depth: int) -> bytes:
        if parent["sha256"] in self._local:
            return self._read_local(parent["sha256"])
        manifest = self.manifest(parent["ref"])
        for f in manifest["files"]:
            if f["path"] != parent["file"]:
                continue
            for t in f.get("tensors") or ():
                if t["name"] == parent["name"]:
                    return self.raw(t, depth + 1)
        raise IntegrityError(
            f"manifest of {parent['ref']} has no tensor {parent['name']} in {parent['file']}; "
            "the server's manifest is inconsistent",
            code="manifest_inconsistent",
        )

    def raw(self, tensor: dict[str, Any], depth: int = 0, verify: bool = True) -> bytes:
        """The raw bytes of a manifest tensor entry, checked against its sha256 unless ``verify`` is
        False (a tensor written into a file whose own sha256 is checked as it is written)."""
        if depth > _MAX_DEPTH:
            raise IntegrityError(
                f"tensor {tensor['name']}: parent chain deeper than {_MAX_DEPTH}", code="chain_too_deep"
            )
        sha = tensor["sha256"]
        if sha in self._local:
            return self._read_local(sha)
        parent = tensor.get("parent")
        encoding = tensor["encoding"]
        if encoding == "same":
            if not parent:
                raise IntegrityError(
                    f"tensor {tensor['name']} is 'same' without a parent", code="bad_manifest"
                )
            data = self._parent_raw(parent, depth)
        elif tensor.get("chunks"):
            parent_raw = self._parent_raw(parent, depth) if parent and encoding != "plain" else None
            data = self._chunked(tensor, parent, parent_raw)
        else:
            payload = self.transport.get_bytes(f"/v1/blobs/{tensor['blob']}")
            parent_raw = self._parent_raw(parent, depth) if parent and encoding != "plain" else None
            data = decode_tensor(
                encoding,
                payload,
                tensor["dtype"],
                tensor["shape"],
                parent_raw,
                parent["dtype"] if parent else None,
                parent["shape"] if parent else None,
            )
        if verify and hashlib.sha256(data).hexdigest() != sha:
            raise IntegrityError(
                f"tensor {tensor['name']} rebuilt with a wrong sha256; pull again without "
                "the cache (delete it) and report this",
                code="sha256_mismatch",
            )
        return data

    def _chunked(
        self, tensor: dict[str, Any], parent: dict[str, Any] | None, parent_raw: bytes | None
    ) -> bytes:
        """A tensor stored in chunks: each an element range, coded alone or against the same elements
        of the parent."""
        out = bytearray()
        view = memoryview(parent_raw) if parent_raw is not None else None
        pitem = dtype_info(parent["dtype"]).itemsize if parent else 0
        for chunk in tensor["chunks"]:
            n = [chunk["end"] - chunk["begin"]]
            payload = self.transport.get_bytes(f"/v1/blobs/{chunk['blob']}")
            if chunk["encoding"] == "plain":
                out += decode_tensor("plain", payload, tensor["dtype"], n)
                continue
            if view is None or parent is None:
                raise IntegrityError(
                    f"tensor {tensor['name']}: a delta chunk without a parent", code="bad_manifest"
                )
            part = view[chunk["begin"] * pitem : chunk["end"] * pitem]
            out += decode_tensor(chunk["encoding"], payload, tensor["dtype"], n, part, parent["dtype"], n)
        return bytes(out)

    # --- whole files -----------------------------------------------------------------------------

    def pull_file(self, ref: str, file: FileInfo, *, bar: Any = None) -> Path:
        """Rebuild one file of ``ref`` into the cache's blobs from its manifest entry; ``bar`` is the
        pull's progress bar over all of its files (else the file gets a bar of its own)."""
        entry = next((f for f in self.manifest(ref)["files"] if f["path"] == file.path), None)
        if entry is None:
            raise IntegrityError(f"manifest of {ref} lacks {file.path}", code="manifest_inconsistent")
        tmp = self.cache.incomplete_path(file.sha256)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with HashingWriter(tmp) as out:
            if entry.get("tensors") is None or not entry.get("header_blob"):
                self._pull_other(entry, out)
            else:
                self._pull_safetensors(entry, out, file, bar)
        return self.cache.install(tmp, file.sha256, file.size, out.hexdigest())

    def _pull_other(self, entry: dict[str, Any], out: HashingWriter) -> None:
        dctx = zstandard.ZstdDecompressor()
        with (
            self.transport.stream("GET", f"/v1/blobs/{quote(entry['blob'])}") as response,
            dctx.stream_writer(out, closefd=False) as writer,  # type: ignore[arg-type]  # has write/flush
        ):
            for chunk in self.transport.iter_body(response):
                writer.write(chunk)

    def _rebuilt_in_order(self, tensors: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Each tensor with its raw bytes, in order; up to ``_AHEAD`` of them fetched and decoded on other
        threads meanwhile (the decoders and sockets release the GIL): memory ``_AHEAD + 1`` tensors."""
        with ThreadPoolExecutor(_AHEAD, thread_name_prefix="deltazoo-rebuild") as pool:
            queued: deque[tuple[dict[str, Any], Future[bytes]]] = deque()
            todo = iter(tensors)
            try:
                while True:
                    while len(queued) < _AHEAD and (t := next(todo, None)) is not None:
                        # not hashed here: the file's sha256, taken as it is written, covers them
                        queued.append((t, pool.submit(self.raw, t, 0, False)))
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
