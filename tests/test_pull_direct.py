"""Pulled files written around the page cache (``HashingWriter`` over ``DirectWriter``) land as before."""

from __future__ import annotations

import hashlib
import os

import pytest

from deltazoo.direct_io import ALIGN, MIN_DIRECT, DirectWriter
from deltazoo.download import HashingWriter, install


def _payload(n: int) -> bytes:
    return (os.urandom(1 << 16) * (n // (1 << 16) + 1))[:n]


@pytest.mark.parametrize("size", [MIN_DIRECT, MIN_DIRECT + ALIGN * 3 + 17, 1000])
def test_direct_and_buffered_write_the_same_file(tmp_path, size):
    data = _payload(size)
    files = {}
    for direct in (True, False):
        tmp = tmp_path / f"{direct}.incomplete"
        with HashingWriter(tmp, size=size, direct=direct) as out:
            if direct and size >= MIN_DIRECT:
                assert isinstance(out.file, DirectWriter)  # O_DIRECT where the filesystem takes it
            for i in range(0, size, 65537):  # pieces of odd sizes, as the network gives them
                out.write(memoryview(data)[i : i + 65537])
            digest = out.hexdigest()
        assert digest == hashlib.sha256(data).hexdigest()
        files[direct] = install(
            tmp, tmp_path / f"{direct}.bin", size=size, sha256=digest, digest=digest, what="f"
        )
    assert files[True].read_bytes() == files[False].read_bytes() == data
    assert not os.access(files[True], os.W_OK) or os.geteuid() == 0
    assert oct(files[True].stat().st_mode & 0o222) == oct(files[False].stat().st_mode & 0o222)


def test_small_unknown_and_resumed_stay_buffered(tmp_path):
    assert not HashingWriter(tmp_path / "a", size=1000, direct=True).direct
    assert not HashingWriter(tmp_path / "b", size=None, direct=True).direct
    part = tmp_path / "c"
    part.write_bytes(b"x" * 5000)
    with HashingWriter(part, "ab", size=MIN_DIRECT, direct=True) as out:
        assert not out.direct
        out.write(b"y" * 10)
        assert out.hexdigest() == hashlib.sha256(b"x" * 5000 + b"y" * 10).hexdigest()
    assert part.stat().st_size == 5010


def test_setting_turns_direct_off(tmp_path, monkeypatch):
    from deltazoo.settings import get_settings

    monkeypatch.setenv("DELTAZOO_DIRECT_IO", "0")
    get_settings.cache_clear()
    try:
        out = HashingWriter(tmp_path / "d", size=MIN_DIRECT)
        assert not out.direct
        out.close()
    finally:
        monkeypatch.delenv("DELTAZOO_DIRECT_IO")
        get_settings.cache_clear()


def test_error_mid_write_keeps_the_bytes_given(tmp_path):
    """A connection lost mid-download: every byte received stays in the part file, to resume from."""
    tmp = tmp_path / "e"
    data = _payload(MIN_DIRECT + 12345)
    with pytest.raises(RuntimeError), HashingWriter(tmp, size=2 * MIN_DIRECT, direct=True) as out:
        out.write(data)
        raise RuntimeError("connection lost")
    assert tmp.read_bytes() == data
