"""Sending a push's files: side by side, one progress bar over all of them, large files in resumable
parts (``Content-Range``) that continue from the byte the server holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deltazoo.errors import DeltazooConnectionError, ServerError, UsageError
from deltazoo.models import FileInfo
from deltazoo.progress import BarShare
from deltazoo.refs import Ref
from deltazoo.rest_paths import file_path, version_path
from deltazoo.transport import Transport, progress_bar

_CHUNK = 1 << 20
PARALLEL_FILES = 4  # files of one pull or push in flight at once


class Uploader:
    """Uploads files of one version through ``transport``; files over ``part_bytes`` go in parts."""

    def __init__(self, transport: Transport, part_bytes: int) -> None:
        self.transport, self.part_bytes = transport, part_bytes

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
        if file.size > self.part_bytes:
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

        self.transport.json(
            "PUT",
            file_path(ref, file.path),
            content=body,
            headers={"Content-Length": str(file.size), "Content-Type": "application/octet-stream"},
        )

    def upload_parts(self, ref: Ref, file: FileInfo, local: Path, bar: Any, before: int) -> None:
        """Send ``local`` in parts (``Content-Range``); after a dropped connection or a 5xx, ask the
        server how many bytes it holds and send only the rest."""
        url = file_path(ref, file.path)
        status_url = f"{version_path(ref)}/uploads/{quote(file.path)}"
        received = int(self.transport.json("GET", status_url)["received"])
        failures = 0
        while True:
            start, end = received, min(file.size, received + self.part_bytes)
            bar.n = before + start
            bar.refresh()

            def body(start: int = start, end: int = end) -> Iterator[bytes]:
                bar.n = before + start  # a re-sent part counts from its start again
                with local.open("rb") as f:
                    f.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = f.read(min(_CHUNK, left))
                        if not chunk:
                            raise UsageError(f"{local} shrank while it was uploaded; push it again")
                        left -= len(chunk)
                        self.transport.count("bytes_uploaded", len(chunk))
                        bar.update(len(chunk))
                        yield chunk

            headers = {
                "Content-Range": f"bytes {start}-{end - 1}/{file.size}",
                "Content-Length": str(end - start),
                "Content-Type": "application/octet-stream",
            }
            try:
                answer = self.transport.json("PUT", url, content=body, headers=headers, idempotent=False)
            except (DeltazooConnectionError, ServerError):
                failures += 1
                if failures > self.transport.max_retries:
                    raise
                time.sleep(self.transport._delay(failures - 1, None))
                received = int(self.transport.json("GET", status_url)["received"])
                continue
            if end == file.size:
                return
            received, failures = int(answer["received"]), 0
