"""Ranged reads of one staged object by the encode's lanes, around the page cache where the store
stages that way (a local store with ``direct_io``), with the next range read ahead."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from deltazoo.registry.objectstore import LocalObjectStore, ObjectNotFound, ObjectStore

from deltazoo.direct_io import DirectReader

AHEAD = 2  # ranges read ahead at once, each on its own thread (one direct read leaves the disk idle)
AHEAD_MIN = 8 << 20  # the least a read ahead covers (a header read is followed by the first chunk)


class StagedReads:
    """``read_at(offset, length) -> bytes`` of one object, from any thread; close when done.

    In a local store with ``direct_io`` each read goes around the page cache (the upload wrote the
    staged bytes that way too, so none of them is ever pulled into it) into the aligned buffer of a
    ``DirectReader`` from a free list, and is copied out. A read from the disk is synchronous, where the
    page cache would have read ahead: so after each read the range that follows it (as long, at least
    ``AHEAD_MIN``) is read ahead on one of ``AHEAD`` threads, unless a caller already read from there,
    and a later read inside it is served from it. The lanes read tensors and chunks in file order, so they
    find their bytes read while they coded the previous ones.

    Memory: one reader buffer per read in flight (one per lane and one per read-ahead thread; each the
    largest range it read, a chunk) and ``AHEAD`` ranges read ahead: about
    ``(lanes + 2 * AHEAD) * chunk_bytes``. Elsewhere each read is ``store.get_range``.
    """

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.key = store, key
        self._path = store.path_of(key) if isinstance(store, LocalObjectStore) and store.direct_io else None
        self._size = self._path.stat().st_size if self._path is not None and self._path.is_file() else 0
        self._free: list[DirectReader] = []
        self._ahead: dict[int, tuple[int, Future[bytes]]] = {}  # start -> (end, the bytes)
        self._started: set[int] = set()  # offsets callers read from (no read ahead from there)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def read_at(self, offset: int, length: int) -> bytes:
        if self._path is None:
            return self.store.get_range(self.key, offset, length)
        with self._lock:
            self._started.add(offset)
            ahead = next(
                (
                    (start, done)
                    for start, (end, done) in self._ahead.items()
                    if start <= offset and offset + length <= end
                ),
                None,
            )
            if ahead is not None and offset + length == self._ahead[ahead[0]][0]:
                del self._ahead[ahead[0]]  # its last bytes: nobody else will want it
        data = None
        if ahead is not None:
            try:
                got = ahead[1].result()
            except Exception:  # read again below: the caller sees its own read's error
                got = b""
            skip = offset - ahead[0]
            if len(got) >= skip + length:
                data = (
                    got if (skip, len(got)) == (0, length) else bytes(memoryview(got)[skip : skip + length])
                )
        if data is None:
            data = self._read(offset, length)
        self._read_ahead(offset + length, max(length, AHEAD_MIN))
        return data

    def _read(self, offset: int, length: int) -> bytes:
        with self._lock:
            reader = self._free.pop() if self._free else None
        if reader is None:
            assert self._path is not None
            try:
                reader = DirectReader(self._path)
            except FileNotFoundError:
                raise ObjectNotFound(self.key) from None
        try:
            return bytes(reader.read_at(offset, length))
        finally:
            with self._lock:
                keep = not self._closed
                if keep:
                    self._free.append(reader)
            if not keep:
                reader.close()

    def _read_ahead(self, offset: int, length: int) -> None:
        length = min(length, self._size - offset)
        with self._lock:
            if self._closed or length <= 0 or offset in self._started or offset in self._ahead:
                return
            if len(self._ahead) >= AHEAD:  # the oldest was skipped by the lanes: drop it
                del self._ahead[min(self._ahead)]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(AHEAD, thread_name_prefix="deltazoo-read-ahead")
            self._ahead[offset] = (offset + length, self._pool.submit(self._read, offset, length))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            pool, self._pool = self._pool, None
            self._ahead.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for reader in free:
            reader.close()

    def __enter__(self) -> StagedReads:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
