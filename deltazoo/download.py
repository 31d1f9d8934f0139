"""The SDK's one downloader: every file the SDK saves from the server comes through ``download``.

The body goes to ``<target>.incomplete``, hashed while it is written; a part left by an interrupted
download (this process or an earlier one) is resumed with ``Range``. Before the file is renamed into
place it is checked: its size (given, or the server's ``Content-Length`` / ``Content-Range``) and its
sha256 (given, or the server's sha256 ``ETag``). Wrong bytes are deleted and raise ``IntegrityError``,
so a file that looks complete is complete. Files land read-only: the cache links them into place.
A download whose sha256 is given says so (``Deltazoo-Client-Verifies: sha256``): the server then
rebuilds a version's file without hashing each piece of it as well.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import httpx

from deltazoo.direct_io import MIN_DIRECT, DirectWriter
from deltazoo.errors import ClientError, DeltazooConnectionError, IntegrityError
from deltazoo.schemas import CLIENT_VERIFIES
from deltazoo.settings import get_settings
from deltazoo.transport import Transport, progress_bar

RESUME_ATTEMPTS = 5  # dropped connections survived per download, each resumed where it stopped
WRITE_BUFFER = 4 << 20  # the network's small pieces reach the disk in writes this large
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class HashingWriter:
    """A binary file opened for writing that hashes what is written to it (no second read to check it).

    ``size``: the file's expected length. A new file of a known size of at least ``MIN_DIRECT`` is
    written around the page cache (``DirectWriter``; the client's ``direct_io`` setting, or ``direct``,
    turns that off), so a pull touches no fresh page-cache pages. A resumed download (``"ab"``) stays
    buffered: its part held may end mid-block, and it is hashed again by a buffered read anyway.
    The hash is taken on the caller's thread over the bytes given, before they are copied out.
    """

    def __init__(
        self, path: Path, mode: str = "wb", *, size: int | None = None, direct: bool | None = None
    ) -> None:
        self.sha = hashlib.sha256()
        if mode == "ab" and path.exists():  # a resumed download: hash the part already held, once
            with path.open("rb") as f:
                while block := f.read(1 << 22):
                    self.sha.update(block)
        if direct is None:
            direct = get_settings().direct_io
        self.file: Any
        if mode == "wb" and direct and size is not None and size >= MIN_DIRECT:
            self.file = DirectWriter(path, size_hint=size)
        else:
            self.file = path.open(mode, buffering=WRITE_BUFFER)

    @property
    def direct(self) -> bool:
        return isinstance(self.file, DirectWriter) and self.file.direct

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        return self.file.write(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # after an error too: every byte received is kept, for a resumed download


def incomplete_path(target: Path) -> Path:
    """Where a download of ``target`` is written until it is checked."""
    return target.with_name(target.name + ".incomplete")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def install(
    tmp: Path, target: Path, *, size: int | None, sha256: str | None, digest: str | None = None, what: str
) -> Path:
    """Check ``tmp`` (``size`` and ``sha256`` where known) and rename it, read-only, to ``target``;
    delete it and raise ``IntegrityError`` when it is wrong. ``digest`` is the sha256 taken while
    ``tmp`` was written (``HashingWriter``); without it the file is read again to hash it. ``what``
    names the file in the error."""
    actual_size = tmp.stat().st_size
    if size is not None and actual_size != size:
        tmp.unlink()
        raise IntegrityError(
            f"downloaded {actual_size} bytes for {what}, expected {size}; pull again", code="size_mismatch"
        )
    if sha256 is not None:
        actual = digest or sha256_file(tmp)
        if actual != sha256:
            tmp.unlink()
            raise IntegrityError(
                f"downloaded bytes of {what} hash to {actual[:12]}, expected {sha256[:12]}; pull again",
                code="sha256_mismatch",
            )
    os.chmod(tmp, 0o444)
    os.replace(tmp, target)
    return target


def _whole_size(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size, from ``Content-Range`` (a 206) or ``Content-Length`` plus ``offset``."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def download(
    transport: Transport,
    url: str,
    target: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    what: str | None = None,
    bar: Any = None,
    before: int = 0,
    quiet: bool = True,
) -> Path:
    """``GET url`` into ``target`` (see the module's docstring); returns ``target``.

    ``bar`` is a progress bar shared with other files, ``before`` the bytes counted on it before this
    file; without one the file gets its own (unless ``quiet``).
    """
    what = what or target.name
    tmp = incomplete_path(target)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    own = bar is None
    if own:
        bar = progress_bar(size, f"pull {what}", quiet=quiet)
    digest: str | None = None
    expected_size, expected_sha = size, sha256
    try:
        for attempt in range(RESUME_ATTEMPTS + 1):
            have = tmp.stat().st_size if tmp.exists() else 0
            if size is not None and have > size:
                tmp.unlink()
                have = 0
            bar.n = before + have
            bar.refresh()
            if size is not None and have == size:
                tmp.touch()  # an empty file has no byte to fetch; it is created here
                break  # an earlier download got every byte; only the checks are left
            headers = {"Range": f"bytes={have}-"} if have else {}
            if sha256 is not None:  # every byte is hashed here: the server need not hash them too
                headers[CLIENT_VERIFIES] = "sha256"
            try:
                with transport.stream("GET", url, headers=headers) as response:
                    resumed = bool(have) and response.status_code == 206
                    if not resumed:
                        have = 0
                        bar.n = before
                    expected_size = size if size is not None else _whole_size(response, have)
                    etag = response.headers.get("ETag", "").strip('"')
                    if expected_sha is None and _SHA256.match(etag):
                        expected_sha = etag
                    with HashingWriter(tmp, "ab" if resumed else "wb", size=expected_size) as out:
                        for chunk in transport.iter_body(response):
                            out.write(chunk)
                            bar.update(len(chunk))
                        digest = out.hexdigest()
                break
            except ClientError as exc:
                if exc.status != 416 or not have:
                    raise
                tmp.unlink()  # the part held is not a prefix the server can continue: start again
            except DeltazooConnectionError:
                if attempt == RESUME_ATTEMPTS:
                    raise
        else:
            raise IntegrityError(f"the server would not send {what} from its first byte; pull again")
        return install(tmp, target, size=expected_size, sha256=expected_sha, digest=digest, what=what)
    finally:
        if own:
            bar.close()
