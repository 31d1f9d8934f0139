"""deltazoo.direct_io: files written and read around the page cache hold exactly the bytes given."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from deltazoo import direct_io
from deltazoo.direct_io import ALIGN, BUFFER, DirectReader, DirectWriter

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER - 1, BUFFER, BUFFER + 1, 3 * BUFFER + 17]


def _pieces(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("direct", [True, False])
def test_writer_stores_exactly_the_bytes(tmp_path: Path, size: int, direct: bool) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    with DirectWriter(path, direct=direct) as out:
        for piece in _pieces(data, 256_000):
            assert out.write(piece) == len(piece)
    assert path.read_bytes() == data
    assert out.size == size


def _takes_o_direct(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | direct_io._O_DIRECT))
    except OSError:
        return False
    return True


def test_writer_is_direct_on_a_disk_and_small_files_are_not(tmp_path: Path) -> None:
    with DirectWriter(tmp_path / "small.bin", size_hint=1000) as small:
        assert small.direct is False
    with DirectWriter(tmp_path / "big.bin") as big:
        assert big.direct == _takes_o_direct(tmp_path)


def test_writer_falls_back_where_o_direct_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & direct_io._O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    data = os.urandom(BUFFER + 5)
    with DirectWriter(tmp_path / "f.bin") as out:
        out.write(data)
    assert out.direct is False
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_failed_write_is_raised_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = DirectWriter(tmp_path / "f.bin")
    if not out.direct:
        out.abort()
        pytest.skip(f"{tmp_path} refuses O_DIRECT")

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(os, "pwrite", full)
    out.write(os.urandom(BUFFER + 1))
    with pytest.raises(OSError, match="disk full"):
        out.close()
    assert out.fd == -1


def test_abort_stops_the_writer(tmp_path: Path) -> None:
    out = DirectWriter(tmp_path / "f.bin")
    out.write(os.urandom(2 * BUFFER + 3))
    out.abort()
    assert out.fd == -1
    out.abort()  # twice is harmless


@pytest.mark.parametrize("direct", [True, False])
def test_reader_reads_any_range(tmp_path: Path, direct: bool) -> None:
    data = os.urandom(5 * ALIGN + 123)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with DirectReader(path, direct=direct) as reader:
        for offset, length in [(0, 1), (1, ALIGN), (ALIGN - 1, 2), (100, 3 * ALIGN + 7), (0, len(data))]:
            assert bytes(reader.read_at(offset, length)) == data[offset : offset + length]
        assert bytes(reader.read_at(len(data) - 10, 100)) == data[-10:]  # past the end: what there is
        assert bytes(reader.read_at(len(data) + ALIGN, 10)) == b""


@pytest.mark.parametrize("first", [0, ALIGN, BUFFER, 2 * BUFFER, 5, ALIGN + 1, BUFFER + 3])
@pytest.mark.parametrize("direct", [True, False])
def test_append_continues_the_file(tmp_path: Path, first: int, direct: bool) -> None:
    """Parts appended one after another (a resumable upload's): direct when the file ends on a block
    boundary, buffered when it does not; the file holds exactly the bytes of every part in order."""
    path = tmp_path / "f.bin"
    data = os.urandom(first + BUFFER + ALIGN + 9)
    if first:
        path.write_bytes(data[:first])
    with DirectWriter(path, append=True, direct=direct) as out:
        assert out.offset == first
        assert out.direct == (direct and first % ALIGN == 0 and _takes_o_direct(tmp_path))
        for piece in _pieces(data[first:], 300_000):
            out.write(piece)
    assert path.read_bytes() == data
    assert out.size == len(data) - first
    with DirectWriter(path, append=True, direct=direct) as again:  # ends mid-block now: buffered
        assert again.direct is False
        again.write(b"tail")
    assert path.read_bytes() == data + b"tail"


def test_append_creates_a_missing_file(tmp_path: Path) -> None:
    data = os.urandom(BUFFER + 1)
    with DirectWriter(tmp_path / "new.bin", append=True) as out:
        out.write(data)
    assert out.offset == 0
    assert (tmp_path / "new.bin").read_bytes() == data


def test_abort_of_an_append_keeps_the_bytes_before_it(tmp_path: Path) -> None:
    """Abort drops what was not yet written but never what the file held before."""
    path = tmp_path / "f.bin"
    head = os.urandom(BUFFER)
    path.write_bytes(head)
    out = DirectWriter(path, append=True)
    out.write(os.urandom(100))
    out.abort()
    assert path.read_bytes()[: len(head)] == head


def _cached(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return direct_io.cached(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", SIZES)
def test_write_whole_stores_exactly_the_bytes_around_the_cache(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        direct = direct_io.write_whole(fd, data)
    finally:
        os.close(fd)
    assert direct == _takes_o_direct(tmp_path)
    if direct and size >= ALIGN:
        assert not _cached(path)  # written around the page cache: none of it is there
    assert path.read_bytes() == data
    assert _cached(path) or size < ALIGN  # read buffered just now: it is


def test_write_whole_declines_where_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    real = fcntl.fcntl

    def refusing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & direct_io._O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refusing)
    fd = os.open(tmp_path / "f.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert direct_io.write_whole(fd, os.urandom(ALIGN)) is False
    finally:
        os.close(fd)
    assert (tmp_path / "f.bin").stat().st_size == 0  # nothing written: the caller writes it buffered


def test_read_around_cache_reads_uncached_files_direct_and_leaves_cached_ones(tmp_path: Path) -> None:
    if not _takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = os.urandom(2 * BUFFER + 3 * ALIGN + 17)
    cold, warm = tmp_path / "cold.bin", tmp_path / "warm.bin"
    fd = os.open(cold, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert direct_io.write_whole(fd, data)
    finally:
        os.close(fd)
    warm.write_bytes(data)
    for offset, length, piece in [(0, len(data), BUFFER), (1, ALIGN, 100), (ALIGN - 1, BUFFER + 2, 1 << 20)]:
        pieces = direct_io.read_around_cache(cold, offset, length, piece)
        assert pieces is not None
        got = list(pieces)
        assert b"".join(got) == data[offset : offset + length]
        assert all(len(p) <= piece for p in got)
    past = direct_io.read_around_cache(cold, len(data) - 5, 100)
    assert past is not None and b"".join(past) == data[-5:]  # past the end: what there is
    assert not _cached(cold)  # reading it brought nothing into the page cache
    assert direct_io.read_around_cache(warm, 0, len(data)) is None  # cached: read it as usual
    with pytest.raises(FileNotFoundError):
        direct_io.read_around_cache(tmp_path / "missing.bin", 0, 1)
