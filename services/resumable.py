"""Resumable uploads: a file sent in parts (``Content-Range: bytes a-b/total``), kept between parts.

The received bytes of a file live in one part file on the API's disk (``<home>/uploads``). A part must
start where the received bytes end; it is hashed and validated as it streams in, appended, and when the
last byte has arrived the whole file is checked (size, sha256, safetensors structure) and staged like a
one-request upload. A part cut off mid-way keeps what arrived, so the client asks for the received
offset (``GET .../uploads/{path}``) and sends only the rest. On an S3 store the received bytes also
stream to their staging object part by part as they arrive, so the last byte leaves little to send.
The hash and validator state of each file (and that stream) is kept in memory between parts; after an
API restart it is rebuilt by reading the part file once.
In a local store with ``direct_io`` each part is appended around the page cache (``DirectWriter`` in
append mode: a part file that ends on a 4096-byte boundary, as the client's 64 MiB parts leave it, is
continued with ``O_DIRECT``; one cut off mid-block gets its next part buffered), and a replay reads the
part file through one reused aligned buffer.
A resumed upload must reach the same API host (another one reports 0 bytes received).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from deltazoo.registry.errors import Conflict
from deltazoo.registry.models import File
from deltazoo.registry.objectstore import ObjectStore, stages_direct
from deltazoo.services.transfer import UploadSink

from deltazoo.direct_io import DirectReader, DirectWriter

_REPLAY_CHUNK = 8 << 20


class PartialUploads:
    """The part files under ``root`` and, per file being uploaded, its running hash and validator."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sinks: dict[int, UploadSink] = {}  # file id -> state after its last part (spool closed)
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def path(self, file: File) -> Path:
        return self.root / f"{file.id}-{file.sha256[:16]}.part"

    def received(self, file: File) -> int:
        part = self.path(file)
        return part.stat().st_size if part.exists() else 0

    def begin(self, file: File, start: int, store: ObjectStore | None = None) -> UploadSink:
        """A sink appending to ``file``'s part file; ``start`` must be the bytes received so far. With
        ``store``, the bytes also stream to their staging object as they arrive (``UploadSink.stream_to``;
        the stream lives with the sink between parts)."""
        with self._lock:
            if file.id in self._busy:
                raise Conflict(
                    f"{file.path}: another part of this file is being received; wait for it to end",
                    code="upload_in_progress",
                )
            self._busy.add(file.id)
        try:
            received = self.received(file)
            if start != received:
                raise Conflict(
                    f"{file.path}: {received} bytes are received; send the part starting at byte {received} "
                    "(GET .../uploads/{path} tells the offset)",
                    code="upload_offset_mismatch",
                )
            direct = store is not None and stages_direct(store)
            sink = self._sinks.pop(file.id, None)
            if sink is None or sink.size != received:
                sink = self._replay(file, direct)
            if direct:
                sink.spool = DirectWriter(self.path(file), append=True, size_hint=file.size)
            else:
                sink.spool = self.path(file).open("ab")
            if store is not None and sink.streamed is None:
                sink.stream_to(store, os.open(self.path(file), os.O_RDONLY))
            return sink
        except BaseException:
            self._release(file)
            raise

    def _replay(self, file: File, direct: bool = False) -> UploadSink:
        """Rebuild the hash and validator state from the part file (after an API restart)."""
        sink = UploadSink(file)
        sink.close()
        part = self.path(file)
        if part.exists():
            with DirectReader(part, direct=direct) as reader:
                offset = 0
                while chunk := reader.read_at(offset, _REPLAY_CHUNK):
                    sink.account(bytes(chunk))
                    offset += len(chunk)
        return sink

    def keep(self, file: File, sink: UploadSink) -> int:
        """End a part (complete or cut off): what arrived stays; returns the bytes received."""
        sink.spool.close()
        with self._lock:
            self._sinks[file.id] = sink
            self._busy.discard(file.id)
        return sink.size

    def complete(self, file: File, sink: UploadSink) -> UploadSink:
        """The last part arrived: a sink reading the whole part file, for ``UploadSink.finish``."""
        sink.spool.close()
        sink.spool = self.path(file).open("rb")
        return sink

    def rewind(self, file: File, offset: int) -> None:
        """Drop what arrived after ``offset`` (the last part could not be staged: it is sent again)."""
        with self._lock:
            sink = self._sinks.pop(file.id, None)
            self._busy.discard(file.id)
        if sink is not None:
            sink.close()
        part = self.path(file)
        if part.exists():
            with part.open("r+b") as f:
                f.truncate(offset)

    def abandon(self, file: File) -> None:
        """A one-request upload replaces an unfinished resumable one (409 while a part streams in)."""
        with self._lock:
            if file.id in self._busy:
                raise Conflict(
                    f"{file.path}: a part of a resumable upload of this file is streaming in; "
                    "wait for it to end",
                    code="upload_in_progress",
                )
        self.discard(file)

    def discard(self, file: File) -> None:
        """Forget ``file``'s upload (finished, rejected, or replaced by a one-request upload)."""
        with self._lock:
            sink = self._sinks.pop(file.id, None)
            self._busy.discard(file.id)
        if sink is not None:
            sink.close()
        self.path(file).unlink(missing_ok=True)

    def sweep(self, awaiting: set[int], horizon: int) -> list[Path]:
        """Delete the part files of files that wait for no bytes any more (their version was committed,
        deleted or expired): file ids up to ``horizon`` not in ``awaiting``. Ids above the horizon are
        newer than the caller's query and left alone. Returns the deleted paths."""
        removed = []
        for part in self.root.glob("*.part"):
            head = part.name.split("-", 1)[0]
            if not head.isdigit():
                continue
            file_id = int(head)
            with self._lock:
                if file_id in awaiting or file_id > horizon or file_id in self._busy:
                    continue
                sink = self._sinks.pop(file_id, None)
            if sink is not None:
                sink.close()
            part.unlink(missing_ok=True)
            removed.append(part)
        return removed

    def _release(self, file: File) -> None:
        with self._lock:
            self._busy.discard(file.id)


@lru_cache(maxsize=8)
def partial_uploads(root: Path) -> PartialUploads:
    """One ``PartialUploads`` per directory in this process."""
    return PartialUploads(root)


def partials_for(home: Path) -> PartialUploads:
    """The part files of a deltazoo home (``<home>/uploads``)."""
    return partial_uploads(Path(home).resolve() / "uploads")
