"""Sending a push's files: side by side, one progress bar over all of them, large files in resumable
parts (``Content-Range``) that continue from the byte the server holds."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deltazoo.errors import ClientError, DeltazooConnectionError, ServerError, UsageError
from deltazoo.models import FileInfo
from deltazoo.progress import BarShare
from deltazoo.refs import Ref
from deltazoo.rest_paths import file_path, version_path
from deltazoo.transport import Transport, progress_bar

_CHUNK = 1 << 20
PARALLEL_FILES = 4  # files of one pull or push in flight at once
SHA256_HEADER = "Deltazoo-Sha256"  # names the bytes of a file declared without sha256


class Uploader:
    """Uploads files of one version through ``transport``; files over ``part_bytes`` go in parts."""

    def __init__(self, transport: Transport, part_bytes: int, outage_wait_s: float) -> None:
        """``outage_wait_s``: how long an upload waits for a server that stopped answering (an API
        restarted, a deploy), counted from its last answer (``DELTAZOO_OUTAGE_WAIT_S``); then it fails
        and the push, run again, resumes."""
        self.transport, self.part_bytes, self.outage_wait_s = transport, part_bytes, outage_wait_s

    def upload_all(self, ref: Ref, files: list[FileInfo], root: Path, *, quiet: bool) -> None:
        """Send ``files`` with one progress bar over all of them (bytes, not per file)."""
        if not files:
            return
        total = sum(f.size for f in files)
        n = len(files)
        bar = progress_bar(total, f"push {ref.model} ({n} file{'' if n == 1 else 's'})", quiet=quiet)
        lock = threading.Lock()
        try:  # shards side by side: the server validates, hashes and stages each on its own thread
            lanes = min(PARALLEL_FILES, len(files))
            with ThreadPoolExecutor(lanes, thread_name_prefix="deltazoo-push") as pool:
                futures = [
                    pool.submit(self.upload, ref, f, root / f.path, BarShare(bar, lock), 0) for f in files
                ]
                for future in futures:
                    future.result()
        finally:
            bar.close()

    def upload(self, ref: Ref, file: FileInfo, local: Path, bar: Any, before: int) -> None:
        """One file; ``bar`` counts every file of the push and ``before`` bytes precede this one."""
        if file.size > self.part_bytes or not file.sha256:
            self.upload_parts(ref, file, local, bar, before)
            return

        def body() -> Iterator[bytes]:
            bar.n = before  # a retry starts the file again
            bar.refresh()
            with local.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    self.transport.count("bytes_uploaded", len(chunk))
                    bar.update(len(chunk))
                    yield chunk

        answered_at = time.monotonic()
        while True:
            try:
                self.transport.json(
                    "PUT",
                    file_path(ref, file.path),
                    content=body,
                    headers={"Content-Length": str(file.size), "Content-Type": "application/octet-stream"},
                )
                return
            except (DeltazooConnectionError, ServerError):  # the transport's retries ran out: wait longer
                if time.monotonic() - answered_at > self.outage_wait_s:
                    raise
                time.sleep(self.transport.backoff_cap)

    def upload_parts(self, ref: Ref, file: FileInfo, local: Path, bar: Any, before: int) -> None:
        """Send ``local`` in parts (``Content-Range``); after a dropped connection or a 5xx, ask the
        server how many bytes it holds and send only the rest (waiting for it up to ``outage_wait_s``).

        A file declared without sha256 is hashed as its parts are sent, and the part with its last byte
        names it (``Deltazoo-Sha256``; that part is read once more, to hash it before its headers go)."""
        url = file_path(ref, file.path)
        status_url = f"{version_path(ref)}/uploads/{quote(file.path)}"
        digest = None if file.sha256 else RunningHash(local)
        status = self._status(status_url, time.monotonic())
        if digest is not None and status.get("complete") and self._claim_held(url, file, digest):
            bar.n = before + file.size  # a resumed push: the server had it whole, no byte sent again
            bar.refresh()
            return
        received = int(status["received"])
        resumed = received > 0
        failures, answered_at = 0, time.monotonic()
        while True:
            start, end = received, min(file.size, received + self.part_bytes)
            bar.n = before + start
            bar.refresh()
            headers = {
                "Content-Range": f"bytes {start}-{end - 1}/{file.size}",
                "Content-Length": str(end - start),
                "Content-Type": "application/octet-stream",
            }
            hashing = digest
            if digest is not None and end == file.size:
                digest.seek(end)
                headers[SHA256_HEADER] = digest.hexdigest()
                hashing = None

            def body(
                start: int = start, end: int = end, hashing: RunningHash | None = hashing
            ) -> Iterator[bytes]:
                bar.n = before + start  # a re-sent part counts from its start again
                if hashing is not None:
                    hashing.seek(start)
                with local.open("rb") as f:
                    f.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = f.read(min(_CHUNK, left))
                        if not chunk:
                            raise UsageError(f"{local} shrank while it was uploaded; push it again")
                        left -= len(chunk)
                        if hashing is not None:
                            hashing.update(chunk)
                        self.transport.count("bytes_uploaded", len(chunk))
                        bar.update(len(chunk))
                        yield chunk

            try:
                answer = self.transport.json("PUT", url, content=body, headers=headers, idempotent=False)
            except (DeltazooConnectionError, ServerError):
                failures += 1
                away = time.monotonic() - answered_at
                if failures > self.transport.max_retries and away > self.outage_wait_s:
                    raise
                time.sleep(self.transport._delay(failures - 1, None))
                received = self._held(status_url, answered_at)
                continue
            except ClientError as exc:
                # resumed onto bytes an earlier push sent of another file with this path and size: the
                # server dropped them; send the whole file once
                if exc.code != "sha256_mismatch" or digest is None or not resumed:
                    raise
                resumed = False
                received = int(self.transport.json("GET", status_url)["received"])
                continue
            if end == file.size:
                return
            received, failures, answered_at = int(answer["received"]), 0, time.monotonic()

    def _held(self, status_url: str, answered_at: float) -> int:
        """The bytes of a file the server holds (``_status``)."""
        return int(self._status(status_url, answered_at)["received"])

    def _status(self, status_url: str, answered_at: float) -> dict[str, Any]:
        """What the server holds of a file (``received`` bytes; ``complete``: a finished upload from an
        earlier push), asked again while it does not answer, up to ``outage_wait_s`` after
        ``answered_at`` (an API restarting mid-part comes back, its part files on disk)."""
        while True:
            try:
                return dict(self.transport.json("GET", status_url))
            except (DeltazooConnectionError, ServerError):
                if time.monotonic() - answered_at > self.outage_wait_s:
                    raise
                time.sleep(self.transport.backoff_cap)

    def _claim_held(self, url: str, file: FileInfo, digest: RunningHash) -> bool:
        """A resumed push of a file declared without sha256, which the server holds whole from the push
        before: name the sha256 of the local file (hashed here, no byte sent) and the server takes its
        held bytes if they hash the same; False when they differ (the file changed): send it."""
        digest.seek(file.size)
        headers = {"Content-Range": f"bytes */{file.size}", SHA256_HEADER: digest.hexdigest()}
        try:
            self.transport.json("PUT", url, content=lambda: b"", headers=headers)
        except ClientError as exc:
            if exc.code in ("held_bytes_differ", "nothing_held"):
                return False
            raise
        return True


class RunningHash:
    """The sha256 of a file's first ``upto`` bytes, taken from the bytes as they are sent. It moves back
    (hashing again from the start) only when the server holds fewer bytes than were hashed: after a
    part was cut off, or when a push resumes."""

    def __init__(self, local: Path) -> None:
        self.local = local
        self.sha = hashlib.sha256()
        self.upto = 0

    def seek(self, offset: int) -> None:
        """Hash up to ``offset`` (reading the file for bytes not sent by this process)."""
        if offset < self.upto:
            self.sha, self.upto = hashlib.sha256(), 0
        if offset > self.upto:
            with self.local.open("rb") as f:
                f.seek(self.upto)
                while self.upto < offset:
                    chunk = f.read(min(_CHUNK, offset - self.upto))
                    if not chunk:
                        raise UsageError(f"{self.local} shrank while it was uploaded; push it again")
                    self.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.upto += len(chunk)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()
