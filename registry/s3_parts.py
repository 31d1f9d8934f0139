"""Large S3 writes: a multipart upload sent from a local file, part by part on shared threads, while the
file is still growing (an upload streaming into the API) or at once (a file already whole).

Each part is read from the file with ``os.pread`` (one copy, from the page cache) and handed to the
``minio`` client as it is: no re-reading into a stream, no concatenation, no slicing. Over plain HTTP
``minio`` signs a body by hashing it with sha256 (a second pass over every byte the API already hashed);
large bodies are sent ``UNSIGNED-PAYLOAD`` instead, as ``minio`` itself does over HTTPS. What is staged is
the bytes whose sha256 the API checked when they arrived.

Memory: at most ``LANES`` parts in flight in the process (the threads read their part when they start).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from minio import Minio
from minio.datatypes import Part

if TYPE_CHECKING:
    from deltazoo.registry.objectstore import S3ObjectStore

PART_SIZE = 16 << 20
MAX_PARTS = 9_000  # S3 allows 10,000: a larger file gets larger parts
LANES = 4  # parts in flight in this process
UNSIGNED_FROM = 1 << 20  # bodies at least this large are not hashed for the request signature

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def part_pool() -> ThreadPoolExecutor:
    """Threads shared by every multipart write of the process (sockets and ``pread`` release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(LANES, thread_name_prefix="deltazoo-s3-part")
        return _pool


class UnsignedPayloadMinio(Minio):
    """``minio.Minio`` that signs large request bodies as ``UNSIGNED-PAYLOAD`` over plain HTTP too."""

    def _build_headers(  # type: ignore[override]
        self, host: str, headers: Any = None, body: bytes | None = None, creds: Any = None
    ) -> Any:
        if body is None or len(body) < UNSIGNED_FROM or creds is None:
            return super()._build_headers(host, headers, body, creds)
        headers, date = super()._build_headers(host, headers, None, creds)  # hashes nothing
        headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return headers, date


def part_size_for(total: int) -> int:
    return max(PART_SIZE, -(-total // MAX_PARTS))


class StreamedPut:
    """Writes ``total`` bytes of the file open at ``fd`` (this object closes it) to ``key``.

    ``grown(size)`` tells how many bytes the file holds so far (written and flushed): every whole part
    below that is sent in the background. ``complete(size)`` sends the rest and completes the object, or,
    when a background part failed (the store went away), sends the whole file again in one go and raises
    if that fails too. ``abort()`` gives up (in the background: it never blocks its caller).
    """

    def __init__(self, store: S3ObjectStore, key: str, fd: int, total: int) -> None:
        self.store, self.key, self.fd, self.total = store, key, fd, total
        self.part = part_size_for(total)
        self.sent_to = 0  # bytes handed to part uploads
        self.upload_id: str | None = None
        self.parts: list[Future[Part]] = []
        self.failed: BaseException | None = None
        self.closed = False

    def wants(self, size: int) -> bool:
        """Whether ``grown(size)`` would send a part (the caller flushes its file first)."""
        return not self.closed and self.failed is None and size - self.sent_to >= self.part

    def grown(self, size: int) -> None:
        while self.wants(size):
            self._send(self.part)

    def _send(self, length: int) -> None:
        """Queue bytes ``[sent_to, sent_to + length)`` as the next part (a failure is kept in ``failed``)."""
        if self.upload_id is None:
            try:
                self.upload_id = self.store.create_multipart(self.key)
            except Exception as exc:  # noqa: BLE001 - the store is away: complete() says so
                self.failed = exc
                return
        number = len(self.parts) + 1
        self.parts.append(part_pool().submit(self._send_part, number, self.sent_to, length))
        self.sent_to += length

    def _send_part(self, number: int, offset: int, length: int) -> Part:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"{self.key}: the spool holds {offset + len(data)} bytes, not {offset + length}")
        assert self.upload_id is not None
        return Part(number, self.store.upload_part(self.key, self.upload_id, number, data))

    def complete(self, size: int, *, again: bool = True) -> None:
        """All ``size`` bytes are in the file: finish the object. When a part failed (the store was away
        for a moment) the whole file is sent once more (``again``); raises if the store does not take it."""
        try:
            if size != self.total:
                raise ValueError(f"{self.key}: {size} bytes spooled, {self.total} expected")
            if self.upload_id is None and self.failed is None and size <= self.part:
                self.store.put_small(self.key, os.pread(self.fd, size, 0) if size else b"")
                return
            self.grown(size)
            if self.failed is None and size > self.sent_to:
                self._send(size - self.sent_to)
            done = self._settle()
            if self.failed is None and self.upload_id is not None:
                self.store.complete_multipart(self.key, self.upload_id, done)
                return
            self._abort_now()
            if not again:
                assert self.failed is not None
                raise self.failed
            StreamedPut(self.store, self.key, os.dup(self.fd), self.total).complete(size, again=False)
        finally:
            self._close()

    def _settle(self) -> list[Part]:
        done = []
        for future in self.parts:
            try:
                done.append(future.result())
            except (Exception, CancelledError) as exc:  # noqa: BLE001 - complete() resends the whole file
                self.failed = self.failed or exc
        return done

    def _abort_now(self) -> None:
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is not None:
            # a failure leaves it to the sweep of incomplete uploads (admin audit)
            with contextlib.suppress(Exception):
                self.store.abort_multipart(self.key, upload_id)

    def abort(self) -> None:
        """Give up: pending parts are cancelled, running ones awaited, the multipart upload aborted, in
        the background."""
        if self.closed:
            return
        for future in self.parts:
            future.cancel()

        def finish_abort() -> None:
            self._settle()
            self._abort_now()
            self._close()

        self.closed = True
        threading.Thread(target=finish_abort, name="deltazoo-s3-abort", daemon=True).start()

    def _close(self) -> None:
        self.closed = True
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
