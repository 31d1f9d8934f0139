"""HTTP plumbing of the SDK: one httpx client, retries with capped exponential backoff, byte counters.

Retry policy: a request is re-sent after a connection error, a 429, or a 5xx, with backoff
``min(cap, base * 2**attempt)`` (or the server's ``Retry-After``; an answer asking to wait longer than
the cap is raised at once: the user has to act), but only when re-sending is
harmless: GET/HEAD/PUT/DELETE always; a POST only when the request never reached the server
(connect error) or the server said 429 (it did nothing), unless the caller marks it idempotent.
Uploads pass a body *factory* so that every attempt re-sends the file from its start.

A connection refused before the server ever answered is not retried: nothing is listening there
(a typo in the URL, a server not started), and the user should hear so at once, not after seconds of
backoff. Once the server has answered, a refused connection is an outage (a restart) and is retried.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from tqdm.auto import tqdm

from deltazoo.errors import DeltazooConnectionError, UsageError, error_for_response, raise_for_status

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def bar_options(unit: str) -> dict[str, Any]:
    """tqdm options for ``unit``: ``"B"`` counts bytes in decimal units like the rest of deltazoo
    (``12.3MB/45.6MB``, a rate in MB/s); ``"%"`` is a job's progress out of 100, shown as a
    percentage and elapsed time (a rate of "%/s" means nothing)."""
    if unit == "%":
        return {"unit": "%", "bar_format": "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]"}
    if unit == "B":
        return {
            "unit": "B",
            "unit_scale": True,
            "unit_divisor": 1000,
            "bar_format": "{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        }
    return {"unit": unit}


def progress_bar(total: int | None, desc: str, *, quiet: bool, unit: str = "B") -> tqdm:
    """A tqdm bar on stderr (``bar_options``); silent when ``quiet`` or when stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        disable=quiet or not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        **bar_options(unit),
    )


def server_url(url: str) -> str:
    """The server's root URL, as given (``--url``, ``DELTAZOO_URL``) but for a trailing ``/``; what is
    surely a mistake is a usage error saying what to write."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        message = f"server URL {url!r} has no scheme: write http://{url} (or https://)"
        raise UsageError(message, code="invalid_url")
    if url.endswith("/v1"):
        message = f"server URL {url!r} ends in /v1: give the server's root, {url.removesuffix('/v1')}"
        raise UsageError(message, code="invalid_url")
    return url


class Transport:
    """The SDK's HTTP session against one deltazoo server."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        max_retries: int = 5,
        backoff: float = 0.25,
        backoff_cap: float = 8.0,
        timeout: float = 300.0,
        offline: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = server_url(url)
        self.offline = offline
        headers = {"User-Agent": "deltazoo-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=True,
        )
        #: whether the caller gave its own httpx transport (a test's, a mock): then every request uses it
        self.custom_transport = transport is not None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        #: bytes of file and blob bodies received (not JSON answers): what a pull cost on the wire
        self._counting = threading.Lock()  # downloads and uploads may run on several threads
        self.bytes_downloaded = 0
        #: bytes of file bodies sent
        self.bytes_uploaded = 0
        #: bytes of JSON answers received
        self.api_bytes = 0
        #: whether the server has answered once (a refused connection before that is not retried)
        self.reached = False

    def close(self) -> None:
        self.http.close()

    def count(self, counter: str, nbytes: int) -> None:
        """Add ``nbytes`` to ``bytes_downloaded``, ``bytes_uploaded`` or ``api_bytes`` (thread-safe)."""
        with self._counting:
            setattr(self, counter, getattr(self, counter) + nbytes)

    # --- retries ---------------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("Retry-After")
            if after and after.replace(".", "", 1).isdigit():
                return min(self.backoff_cap, float(after))
        return min(self.backoff_cap, self.backoff * (2**attempt))

    def _asks_too_long(self, response: httpx.Response) -> bool:
        """A Retry-After beyond the backoff cap (e.g. "too many pending versions: the oldest expires in
        20 h"): the caller has to act, so the error is raised at once instead of retried."""
        after = response.headers.get("Retry-After", "")
        return after.replace(".", "", 1).isdigit() and float(after) > self.backoff_cap

    def _unreachable(self, exc: httpx.TransportError) -> DeltazooConnectionError:
        return DeltazooConnectionError(
            f"cannot reach deltazoo at {self.url} ({type(exc).__name__}: {exc}): "
            "start it with `deltazoo serve` or set DELTAZOO_URL",
            code="unreachable",
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: Callable[[], Iterable[bytes]] | None = None,
        stream: bool = False,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send with retries; return the answer (2xx, or raises the typed error).

        With ``stream`` the body is not read: the caller must close the response.
        """
        if self.offline:
            raise DeltazooConnectionError(
                f"offline mode (--offline / DELTAZOO_OFFLINE) answers pulls of cached versions only; "
                f"this needs the server at {self.url}: run it without --offline",
                code="offline",
            )
        safe = method in _IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        while True:
            body = content() if content is not None else None
            request = self.http.build_request(
                method, path, json=json, params=params, headers=headers, content=body
            )
            try:
                response = self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                # a connect error means the request never left: any method may be re-sent, unless
                # the server was never reached at all (nothing listens there: say so at once)
                connect = isinstance(exc, httpx.ConnectError)
                if attempt < self.max_retries and (safe or connect) and (self.reached or not connect):
                    time.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise self._unreachable(exc) from exc
            self.reached = True
            if (
                response.status_code in _RETRY_STATUS
                and attempt < self.max_retries
                and (safe or response.status_code == 429)
                and not self._asks_too_long(response)
            ):
                response.close()
                time.sleep(self._delay(attempt, response))
                attempt += 1
                continue
            if not response.is_success:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from exc
                finally:
                    response.close()
                raise error_for_response(response)
            if not stream:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    response.close()
                    if attempt < self.max_retries and safe:
                        time.sleep(self._delay(attempt, None))
                        attempt += 1
                        continue
                    raise self._unreachable(exc) from exc
                response.close()
            return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        self.count("api_bytes", len(response.content))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @contextmanager
    def stream(
        self, method: str, path: str, *, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """An open streamed answer (status already checked); closed on exit."""
        # identity: Range offsets and byte counters then refer to the bytes as stored
        headers = {"Accept-Encoding": "identity", **(headers or {})}
        response = self.send(method, path, headers=headers, stream=True)
        try:
            raise_for_status(response)
            yield response
        finally:
            response.close()

    def iter_body(self, response: httpx.Response) -> Iterator[bytes]:
        """The body's pieces as they arrive (not joined into larger ones: that would copy every byte
        once more), counted in ``bytes_downloaded``; connection drops become typed errors."""
        try:
            for chunk in response.iter_bytes():
                self.count("bytes_downloaded", len(chunk))
                yield chunk
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def get_bytes(self, path: str) -> bytes:
        """A whole (small: one tensor's) body, counted in ``bytes_downloaded``."""
        response = self.send("GET", path, headers={"Accept-Encoding": "identity"})
        self.count("bytes_downloaded", response.num_bytes_downloaded)
        return response.content
