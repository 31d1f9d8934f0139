"""Blob bodies of a delta-only pull, each read with one ``readinto`` on a connection of the thread's own.

A delta-only pull fetches one blob per chunk (about 2 MiB for 8 MiB of raw bytes) on its rebuild
threads. Through httpx each body arrives in 64 KiB pieces parsed by h11 in Python, under the GIL, each
byte copied about four times, and every blob is a new buffer the decoder's thread faults in page by
page. Here each rebuild thread keeps one keep-alive ``http.client`` connection to the server and reads a
body of known length with ``readinto`` into a buffer it reuses: the socket reads release the GIL for the
whole body, each byte is copied once (socket to buffer), and no buffer is allocated per blob.

Only the plain case is taken here: ``http://`` without a proxy or a caller's httpx transport, and a 200
answer. Anything else (an error status, a redirect, a connection that fails twice, https, a proxy, a
test transport) goes through ``Transport.get_bytes``, with its retries, backoff and typed errors, so
every failure reads exactly as it does on the SDK's one HTTP path.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from urllib.parse import urlsplit

from deltazoo.transport import Transport

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


class BlobFetcher:
    """``GET /v1/blobs/{sha256}`` for the rebuild threads of one pull; ``close`` ends their connections."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.direct = _direct(transport)
        parts = urlsplit(transport.url)
        self._host, self._port, self._prefix = parts.hostname or "", parts.port, parts.path.rstrip("/")
        headers = dict(transport.http.headers)  # User-Agent, Authorization: as every other request
        headers["Accept-Encoding"] = "identity"  # the stored bytes as they are, counted as such
        self._headers = headers
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def fetch(self, sha256: str) -> bytes | bytearray:
        """The blob's bytes, the caller's to keep."""
        return self._get(sha256, scratch=False)

    def fetch_scratch(self, sha256: str) -> bytes | bytearray | memoryview:
        """The blob's bytes in this thread's reused buffer: valid until this thread's next fetch, so the
        caller must be done with them (decoded into bytes of their own) before it fetches again."""
        return self._get(sha256, scratch=True)

    def _get(self, sha256: str, *, scratch: bool) -> bytes | bytearray | memoryview:
        path = f"/v1/blobs/{sha256}"
        if self.direct:
            for fresh in (False, True):
                connection, reused = self._connection(fresh)
                try:
                    body = self._read(connection, self._prefix + path, scratch)
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(connection)
                    if reused and isinstance(exc, _STALE):  # closed by the server while idle
                        continue
                    break
                if body is None:  # not a plain 200: the SDK's one HTTP path says or retries why
                    break
                self.transport.count("bytes_downloaded", len(body))
                return body
        return self.transport.get_bytes(path)

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
        got = 0
        while got < n:
            step = response.readinto(view[got:])
            if not step:
                raise http.client.IncompleteRead(bytes(0), n - got)
            got += step
        if response.will_close:
            self._drop(connection)
        return view if scratch else buffer

    def _buffer(self, n: int) -> bytearray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < n:
            buffer = self._local.buffer = bytearray(n)
        return buffer
