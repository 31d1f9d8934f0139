"""Write and read big files around the page cache (``O_DIRECT``), through buffers that are reused.

Why: on a VM that hands freed memory back to its host (virtio-balloon free page reporting, the default
on Firecracker-style VMs such as this project's machines), every page the guest touches again after a
couple of idle seconds costs a host fault: writing 1 GiB into fresh page cache measured 2.2-2.6 s of
system CPU here, against 0.19 s when the pages had been freed a moment before and 0.06-0.33 s with
``O_DIRECT`` (``dd bs=4M``, see BENCHMARKS.md "Fresh memory"). A push stages each file once and the
encode job reads it once; a pull writes each file once: through the page cache, each of those bytes
first costs a fresh page. Here they go straight between the disk and a few aligned buffers that stay
faulted in for the life of the process.

Each takes ``direct`` (the client's or the server's ``direct_io`` setting, ``DELTAZOO_DIRECT_IO``):
with it off every big file goes through the page cache, as any program's would.
``DirectWriter`` copies what it is given into aligned 8 MiB buffers and a thread of its own writes each
full one (the caller hashes or decodes the next while the disk writes). ``read_at`` reads a range into
a reused aligned buffer. Where the filesystem refuses ``O_DIRECT`` (tmpfs on older kernels, some FUSE
and network filesystems) both fall back to ordinary buffered I/O, with the same results.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import mmap
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

ALIGN = 4096  # the logical block size O_DIRECT needs on every disk this runs on (512 divides it)
BUFFER = 8 << 20  # one write; two of them per writer (one filling, one being written)
MIN_DIRECT = 16 << 20  # smaller files gain nothing worth a thread and two buffers: buffered
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _aligned_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _aligned_down(n: int) -> int:
    return n // ALIGN * ALIGN


class _BufferShelf:
    """Page-aligned anonymous buffers of one size, kept after use so their pages stay faulted in."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
                return
        buf.close()


_WRITE_BUFFERS = _BufferShelf(BUFFER, keep=8)
_READ_BUFFERS = _BufferShelf(BUFFER, keep=8)


def open_direct(path: Path | str, flags: int, mode: int = 0o644, *, direct: bool = True) -> tuple[int, bool]:
    """``os.open(path, flags)`` with ``O_DIRECT`` where asked (``direct``: the settings' ``direct_io``),
    the platform has it and the filesystem takes it; the descriptor and whether it is direct."""
    if direct and _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


def write_whole(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write ``data`` from the start of the empty file open at ``fd`` around the page cache, through
    the shelf's aligned buffers (the last block padded, the file cut back to ``len(data)``), without
    ``DirectWriter``'s thread: one object written whole. False, with nothing written, where the
    filesystem refuses ``O_DIRECT`` (the caller writes it buffered)."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    view = memoryview(data).cast("B")
    buf = _WRITE_BUFFERS.take()
    try:
        out = memoryview(buf)
        try:
            for start in range(0, len(view), BUFFER):
                piece = view[start : start + BUFFER]
                out[: len(piece)] = piece
                padded = _aligned_up(len(piece))
                out[len(piece) : padded] = bytes(padded - len(piece))
                done = 0
                while done < padded:
                    done += os.pwrite(fd, out[done:padded], start + done)
        finally:
            out.release()
    finally:
        _WRITE_BUFFERS.give(buf)
    if len(view) % ALIGN:
        os.ftruncate(fd, len(view))
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return True


def cached(fd: int) -> bool:
    """Whether the first block of the file open at ``fd`` is in the page cache (``mincore`` of a
    mapping of it: nothing is read, nothing brought in; a read that may not wait, ``RWF_NOWAIT``,
    starts a read-ahead of what it misses). True where that cannot be asked."""
    libc = _libc()
    if libc is None:
        return True
    try:
        mapped = mmap.mmap(fd, ALIGN, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return True
    try:
        first = ctypes.c_char.from_buffer(mapped)  # the mapping's address; no page is touched
        resident = (ctypes.c_ubyte * 1)()
        ok = libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(ALIGN), resident) == 0
        del first
        return not ok or bool(resident[0] & 1)
    finally:
        mapped.close()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "mincore") else None


def read_around_cache(
    path: Path | str, offset: int, length: int, piece: int = BUFFER
) -> Iterator[bytes] | None:
    """Bytes ``[offset, offset + length)`` of the file at ``path``, in pieces of at most ``piece``,
    read around the page cache when its first block is not in it (``cached``): bytes nobody keeps
    cached are not cached by reading them (each fresh page cost ~2 ms per MiB on this project's VMs,
    "Fresh memory" in BENCHMARKS.md). None when it is cached, or the filesystem refuses ``O_DIRECT``:
    read it as usual. Raises ``FileNotFoundError`` at once for a missing file."""
    fd, direct = open_direct(path, os.O_RDONLY)
    try:
        around = direct and not cached(fd)  # a mapping of a direct descriptor still shows the page cache
    except BaseException:
        os.close(fd)
        raise
    if not around:
        os.close(fd)
        return None
    return _iter_direct(fd, offset, length, min(piece, BUFFER - ALIGN))


def _iter_direct(fd: int, offset: int, length: int, piece: int) -> Iterator[bytes]:
    """``read_around_cache``'s pieces, through one of the shelf's aligned buffers (``fd`` is closed
    at the end); stops early at the end of the file."""
    buf = _READ_BUFFERS.take()
    try:
        end = offset + length
        while offset < end:
            want = min(piece, end - offset)
            start, skip = _aligned_down(offset), offset % ALIGN
            view = memoryview(buf)
            try:
                filled = _fill(fd, view[: _aligned_up(offset + want) - start], start)
                got = bytes(view[skip : max(skip, min(filled, skip + want))])
            finally:
                view.release()
            if got:
                yield got
            if len(got) < want:
                return
            offset += want
    finally:
        os.close(fd)
        _READ_BUFFERS.give(buf)


def _fill(fd: int, view: memoryview, offset: int, direct: bool = True) -> int:
    """Read into ``view`` from ``offset`` (both aligned when ``direct``) until it is full or the file
    ends; how many bytes came (a direct read that stops short, off a block boundary, is the end of the
    file: a next direct read from there would be refused)."""
    filled = 0
    while filled < len(view):
        n = os.preadv(fd, [view[filled:]], offset + filled)
        filled += n
        if n == 0 or (direct and filled % ALIGN):
            break
    return filled


class DirectWriter:
    """A file written in pieces of any size, from its start (or, ``append``, from its end), around the
    page cache where it can be.

    ``write`` copies the piece into the current aligned buffer; a full buffer goes to the writer thread
    while the next fills. ``close`` writes the last, partial block padded to a whole one and cuts the
    file back to its true length (the bytes on disk are exactly those written); ``fsync`` there makes
    them durable. An error of the writer thread is raised by the next ``write`` or by ``close``.
    ``size_hint`` (the file's expected length, when known): a file under ``MIN_DIRECT`` is written
    buffered, without the thread.

    ``append``: the file (created when missing) keeps its bytes and the new ones follow them
    (``offset``: where they start). ``O_DIRECT`` needs that offset on a block boundary; a file whose
    length is not a whole number of blocks (an upload part cut off mid-way) is appended to buffered.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        size_hint: int | None = None,
        exclusive: bool = False,
        direct: bool = True,
        append: bool = False,
    ) -> None:
        if append:
            flags = os.O_WRONLY | os.O_CREAT
        else:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        small = size_hint is not None and size_hint < MIN_DIRECT
        self.fd, self.direct = open_direct(path, flags, direct=direct and not small)
        self.offset = os.fstat(self.fd).st_size if append else 0
        if self.direct and self.offset % ALIGN:  # O_DIRECT cannot start mid-block
            os.close(self.fd)
            self.fd, self.direct = os.open(path, flags, 0o644), False
        if append and not self.direct:
            os.lseek(self.fd, self.offset, os.SEEK_SET)
        self.path = Path(path)
        self.size = 0  # bytes given to this writer (the file ends at ``offset + size``)
        self._buf: mmap.mmap | None = None
        self._filled = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._written = self.offset  # where the thread writes next (a multiple of ALIGN until close)
        if self.direct:
            self._thread = threading.Thread(target=self._drain, name="direct-writer", daemon=True)
            self._thread.start()

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        if not self.direct:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
            self.size += done
            return done
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            if self._buf is None:
                self._buf, self._filled = _WRITE_BUFFERS.take(), 0
            step = min(len(view), BUFFER - self._filled)
            self._buf[self._filled : self._filled + step] = view[:step]
            self._filled += step
            view = view[step:]
            if self._filled == BUFFER:
                self._queue.put((self._buf, BUFFER))
                self._buf = None
        self.size += n
        return n

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            buf, length = item
            try:
                if self._error is None:
                    self._write_all(buf, length)
            except BaseException as exc:  # raised again on the caller's thread
                self._error = exc
            finally:
                _WRITE_BUFFERS.give(buf)

    def _write_all(self, buf: mmap.mmap, length: int) -> None:
        view = memoryview(buf)[:length]
        try:
            done = 0
            while done < length:
                done += os.pwrite(self.fd, view[done:], self._written + done)
        finally:
            view.release()
        self._written += length

    def close(self, *, fsync: bool = False) -> None:
        """Write what is left, stop the thread and close the file (``fsync`` first when asked)."""
        if self.fd < 0:
            return
        try:
            if self.direct:
                self._finish_direct()
            if self._error is not None:
                raise self._error
            if fsync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    def _finish_direct(self) -> None:
        buf, filled = self._buf, self._filled
        self._buf = None
        if buf is not None:  # the last piece: padded to a whole block, cut back below
            padded = _aligned_up(filled)
            buf[filled:padded] = bytes(padded - filled)
            self._queue.put((buf, padded))
        self._queue.put(None)
        assert self._thread is not None
        self._thread.join()
        if self._error is None and self._written != self.offset + self.size:
            os.ftruncate(self.fd, self.offset + self.size)

    def abort(self) -> None:
        """Stop without finishing (the caller removes the file)."""
        if self.fd < 0:
            return
        if self.direct and self._thread is not None:
            if self._buf is not None:
                _WRITE_BUFFERS.give(self._buf)
                self._buf = None
            self._error = self._error or OSError(errno.ECANCELED, "write aborted")
            self._queue.put(None)
            self._thread.join()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DirectReader:
    """Reads ranges of one file around the page cache into a buffer it reuses (one reader per thread).

    ``read_at`` returns a view that stays valid until the next ``read_at`` of the same reader (copy it,
    ``bytes(view)``, to keep it). Where the file cannot be opened ``O_DIRECT`` it reads buffered.
    """

    def __init__(self, path: Path | str, *, direct: bool = True) -> None:
        self.fd, self.direct = open_direct(path, os.O_RDONLY, direct=direct)
        self._buf: mmap.mmap | None = None

    def read_at(self, offset: int, length: int) -> memoryview:
        start = _aligned_down(offset) if self.direct else offset
        end = _aligned_up(offset + length) if self.direct else offset + length
        if self._buf is None or len(self._buf) < end - start:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, _aligned_up(max(end - start, ALIGN)))
        view = memoryview(self._buf)
        got = _fill(self.fd, view[: end - start], start, self.direct)
        have = max(0, min(got - (offset - start), length))
        return view[offset - start : offset - start + have]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._buf is not None:
            with contextlib.suppress(BufferError):  # a view the caller still holds keeps it mapped
                self._buf.close()
            self._buf = None

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
