"""Blob bodies of a delta-only pull, each read with one ``readinto`` on a connection of the thread's own.

A delta-only pull fetches one blob per chunk (about 2 MiB for 8 MiB of raw bytes) on its rebuild
threads. Through httpx each body arrives in 64 KiB pieces parsed by h11 in Python, under the GIL, each
byte copied about four times, and every blob is a new buffer the decoder's thread faults in page by
page. Here each rebuild thread keeps one keep-alive ``http.client`` connection to the server and reads a
body of known length with ``readinto`` into a buffer it reuses: the socket reads release the GIL for the
whole body, each byte is copied once (socket to buffer), and no buffer is allocated per blob.

``fetch_many`` asks for a few blobs in one request (``GET /v1/blobs?sha256=A&sha256=B``): the server
spends more CPU on a request than on sending a 2 MiB blob, so a pull asks for the blobs of four chunks
at once, into a buffer that goes back to a small free list once they are decoded.

Only the plain case is taken here: ``http://`` without a proxy or a caller's httpx transport, and a 200
answer. Anything else (an error status, a redirect, a connection that fails twice, https, a proxy, a
test transport) goes through ``Transport.get_bytes``, with its retries, backoff and typed errors, so
every failure reads exactly as it does on the SDK's one HTTP path.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from deltazoo.schemas import BLOB_SIZES
from deltazoo.transport import Transport

T = TypeVar("T")
_SPARE_BUFFERS = 8  # ``fetch_many`` buffers kept for the next batches (a few per file being rebuilt)

#: a failure on a connection that served an earlier blob may only mean the server closed it while idle
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _direct(transport: Transport) -> bool:
    """Whether blobs may come over a connection of our own: plain http, the default httpx transport
    (not a caller's or a test's), and no proxy in the environment for this host (httpx would use it)."""
    parts = urlsplit(transport.url)
    if transport.offline or transport.custom_transport or parts.scheme != "http" or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


@dataclass
class Fetched:
    """The blobs of one ``fetch_many``, in the order asked; ``buffer`` (when they lie in one) goes back
    through ``BlobFetcher.give_back`` once no part of it is needed."""

    parts: list[bytes | bytearray | memoryview]
    buffer: bytearray | None = None


def _with_headroom(n: int) -> int:
    """The size of a new reused buffer for ``n`` bytes: the next blobs (batches) are about as large, rarely
    exactly, and a buffer a few bytes too small would be replaced, a new one faulted in, every time."""
    return n + n // 4


class BlobFetcher:
    """``GET /v1/blobs/{sha256}`` for the rebuild threads of one pull; ``close`` ends their connections."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.direct = _direct(transport)
        parts = urlsplit(transport.url)
        self._host, self._port, self._prefix = parts.hostname or "", parts.port, parts.path.rstrip("/")
        # User-Agent, Authorization: as every other request (httpx names them in lower case)
        headers = {name.lower(): value for name, value in transport.http.headers.items()}
        headers["accept-encoding"] = "identity"  # the stored bytes as they are, counted as such
        self._headers = headers
        self._local = threading.local()
        #: whether the server answers ``fetch_many``'s one request (false after any other answer: a
        #: server older than it, a blob the caller may not read); each blob is then fetched alone
        self.batches = self.direct
        self._spare: list[bytearray] = []
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def fetch(self, sha256: str) -> bytes | bytearray:
        """The blob's bytes, the caller's to keep."""
        data = self._get(sha256, scratch=False)
        assert not isinstance(data, memoryview)  # only a scratch fetch answers with the thread's buffer
        return data

    def fetch_scratch(self, sha256: str) -> bytes | bytearray | memoryview:
        """The blob's bytes in this thread's reused buffer: valid until this thread's next fetch, so the
        caller must be done with them (decoded into bytes of their own) before it fetches again."""
        return self._get(sha256, scratch=True)

    def fetch_many(self, names: list[str]) -> Fetched:
        """The blobs ``names``, in one request where the server allows, else one by one (``fetch``)."""
        if self.batches:
            path = f"{self._prefix}/v1/blobs?" + "&".join(f"sha256={name}" for name in names)
            try:
                fetched = self._on_own_connection(lambda c: self._read_many(c, path, len(names)))
            except (OSError, http.client.HTTPException):
                pass  # each blob alone, through the SDK's one HTTP path where this one fails again
            else:
                if fetched is not None:
                    self.transport.count("bytes_downloaded", sum(len(part) for part in fetched.parts))
                    return fetched
                self.batches = False
        return Fetched([self.fetch(name) for name in names])

    def give_back(self, fetched: Fetched) -> None:
        """``fetched``'s buffer for a later batch: its parts are no longer read."""
        if fetched.buffer is not None:
            with self._lock:
                if len(self._spare) < _SPARE_BUFFERS:
                    self._spare.append(fetched.buffer)
            fetched.buffer = None

    def _read_many(self, connection: http.client.HTTPConnection, path: str, count: int) -> Fetched | None:
        connection.request("GET", path, headers=self._headers)
        response = connection.getresponse()
        length = response.getheader("Content-Length", "")
        sizes = response.getheader(BLOB_SIZES, "").split(",")
        plain = response.status == 200 and not response.chunked and length.isdigit()
        plain = plain and response.getheader("Content-Encoding", "identity") == "identity"
        if not plain or len(sizes) != count or not all(n.isdigit() for n in sizes):
            response.read()  # drained: the connection stays usable
            if response.will_close:
                self._drop(connection)
            return None
        n = int(length)
        if sum(map(int, sizes)) != n:
            raise http.client.HTTPException(f"blob sizes {sizes} do not add up to {n} bytes")
        buffer = self._spare_buffer(n)
        view = memoryview(buffer)[:n]
        self._read_into(response, view)
        if response.will_close:
            self._drop(connection)
        parts: list[bytes | bytearray | memoryview] = []
        at = 0
        for size in map(int, sizes):
            parts.append(view[at : at + size])
            at += size
        return Fetched(parts, buffer)

    def _spare_buffer(self, n: int) -> bytearray:
        with self._lock:
            for i, buffer in enumerate(self._spare):
                if len(buffer) >= n:
                    return self._spare.pop(i)
            if len(self._spare) == _SPARE_BUFFERS:  # all too small: make room for a larger one
                self._spare.pop(0)
        return bytearray(_with_headroom(n))

    @staticmethod
    def _read_into(response: http.client.HTTPResponse, view: memoryview) -> None:
        got = 0
        while got < len(view):
            step = response.readinto(view[got:])
            if not step:
                raise http.client.IncompleteRead(bytes(0), len(view) - got)
            got += step

    def _get(self, sha256: str, *, scratch: bool) -> bytes | bytearray | memoryview:
        path = f"/v1/blobs/{sha256}"
        if self.direct:
            try:
                body = self._on_own_connection(lambda c: self._read(c, self._prefix + path, scratch))
            except (OSError, http.client.HTTPException):
                body = None
            if body is not None:  # else not a plain 200, or failed: the SDK's one HTTP path says why
                self.transport.count("bytes_downloaded", len(body))
                return body
        return self.transport.get_bytes(path)

    def _on_own_connection(self, request: Callable[[http.client.HTTPConnection], T]) -> T:
        """``request`` on this thread's connection; once more on a new one when a connection that served
        an earlier blob failed as one the server closed while idle does. A failed connection is dropped;
        the last try's error is raised."""
        connection, reused = self._connection(fresh=False)
        try:
            return request(connection)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(connection)
            if not (reused and isinstance(exc, _STALE)):
                raise
        connection, _ = self._connection(fresh=True)
        try:
            return request(connection)
        except (OSError, http.client.HTTPException):
            self._drop(connection)
            raise

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (a new one when ``fresh`` or none is open) and whether it served
        a blob before."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and not fresh:
            return connection, True
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.transport.timeout)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def _read(
        self, connection: http.client.HTTPConnection, path: str, scratch: bool
    ) -> bytes | bytearray | memoryview | None:
        connection.request("GET", path, headers=self._headers)
        response = connection.getresponse()
        length = response.getheader("Content-Length", "")
        encoded = response.getheader("Content-Encoding", "identity") != "identity"
        if response.status != 200 or encoded or response.chunked or not length.isdigit():
            response.read()  # drained: the connection stays usable
            if response.will_close:
                self._drop(connection)
            return None
        n = int(length)
        buffer = self._buffer(n) if scratch else bytearray(n)
        view = memoryview(buffer)[:n]
        self._read_into(response, view)
        if response.will_close:
            self._drop(connection)
        return view if scratch else buffer

    def _buffer(self, n: int) -> bytearray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < n:
            buffer = self._local.buffer = bytearray(_with_headroom(n))
        return buffer
