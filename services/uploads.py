"""Receiving a declared file's bytes: in one request, or in resumable parts kept between requests.

The API streams a request body into ``feed`` (off the event loop, ``api/body_feed.py``) and tells the
upload how the body ended; what each ending does to the bytes received is decided here:

- a one-request upload (``WholeUpload``) replaces an unfinished resumable one; bad bytes drop it;
- a part (``PartUpload``, ``Content-Range``) must start where the received bytes end. Bad bytes drop
  the whole upload; a part cut off keeps what arrived, so the client resumes from there; after the last
  byte the whole file is checked and staged, and if staging fails for another reason than the bytes
  (the store did not answer) the last part is dropped so it can be sent again.

Either way the checked file is staged and recorded on the pending version (``versions.record_upload``).
A file declared without sha256 is named by the request that carries its last byte (``Deltazoo-Sha256``),
so a client hashes a large file while it sends it; the server compares that with its own hash.
"""

from __future__ import annotations

from deltazoo.registry.errors import BadRequest
from deltazoo.registry.models import File
from deltazoo.registry.objectstore import ObjectStore, stages_direct
from deltazoo.services.resumable import PartialUploads
from deltazoo.services.transfer import UploadSink, check_named
from deltazoo.services.versions import record_upload
from sqlalchemy.orm import Session


class WholeUpload:
    """A file sent in one request."""

    def __init__(
        self, partials: PartialUploads, file: File, store: ObjectStore, claimed: str | None = None
    ) -> None:
        """The bytes are spooled in the store's scratch directory (a local store renames the file into
        place, no copy; with ``direct_io`` they are written around the page cache), or stream to the
        store while they arrive (S3). ``claimed``: the client's ``Deltazoo-Sha256``, needed when the
        file was declared without sha256 (400 before any byte)."""
        check_named(file, claimed)
        partials.abandon(file)  # 409 while a part of a resumable upload of it streams in
        self.file, self.claimed = file, claimed
        self.sink = UploadSink(file, scratch_dir=store.scratch_dir(), direct=stages_direct(store))
        self.sink.stream_to(store)
        self.feed = self.sink.feed

    def reject(self) -> None:
        """The bytes were refused (``BadRequest``): nothing is kept."""
        self.sink.close()

    def finish(self, session: Session, store: ObjectStore) -> None:
        """Check the whole file, stage it and record it on its version (the sink is closed either way)."""
        key = self.sink.finish(store, claimed=self.claimed)
        record_upload(session, store, self.file, key, self.sink.sha.hexdigest())


class PartUpload:
    """Bytes ``[start, end)`` of a file sent in parts."""

    def __init__(
        self,
        partials: PartialUploads,
        file: File,
        start: int,
        end: int,
        store: ObjectStore,
        claimed: str | None = None,
    ) -> None:
        """``claimed``: as for ``WholeUpload``, on the part that carries the last byte (400 before any
        byte of it is read when it is missing, so the part can be sent again with it)."""
        if end == file.size:
            check_named(file, claimed)
        self.partials, self.file, self.start, self.end, self.claimed = partials, file, start, end, claimed
        self.sink = partials.begin(file, start, store)  # 409 unless ``start`` is the bytes received so far
        self.feed = self.sink.feed

    def too_much(self, header: str) -> BadRequest:
        return BadRequest(
            f"{self.file.path}: more bytes arrived than Content-Range {header!r} names",
            code="invalid_content_range",
        )

    def reject(self) -> None:
        """The bytes were refused: the whole upload starts again."""
        self.sink.close()  # the part file's writer (``discard`` forgets only sinks between parts)
        self.partials.discard(self.file)

    def keep(self) -> int:
        """The part ended early (cut off, or the request failed): what arrived stays; the bytes received."""
        return self.partials.keep(self.file, self.sink)

    def finish(self, session: Session, store: ObjectStore) -> int:
        """The part arrived whole: the bytes received so far, and once they are the whole file, the file
        checked, staged and recorded."""
        if self.sink.size < self.file.size:
            return self.partials.keep(self.file, self.sink)
        self.partials.complete(self.file, self.sink)
        try:
            key = self.sink.finish(store, claimed=self.claimed)
        except BadRequest:
            self.partials.discard(self.file)
            raise
        except BaseException:  # e.g. the store did not answer: the last part is sent again
            self.partials.rewind(self.file, self.start)
            raise
        self.partials.discard(self.file)
        record_upload(session, store, self.file, key, self.sink.sha.hexdigest())
        return self.file.size
