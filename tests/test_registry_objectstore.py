"""Both object stores behave the same: put (streamed), get, ranged get, chunks, exists, delete."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.registry.objectstore import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    blob_key,
)

from tests.services import S3Server
from tests.test_direct_io import _cached, _takes_o_direct


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects")
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = f"test-{secrets.token_hex(4)}"  # a bucket the store must create itself
        yield S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, bucket)


def test_round_trip(store: ObjectStore) -> None:
    data = secrets.token_bytes(3 * (1 << 20) + 17)  # several chunks
    key = blob_key("ab" + "0" * 62)
    assert not store.exists(key)
    store.put_file(key, io.BytesIO(data), len(data))
    assert store.exists(key)
    assert store.get(key) == data
    assert store.get_range(key, 1000, 5000) == data[1000:6000]
    assert store.get_range(key, len(data) - 3, 3) == data[-3:]
    assert b"".join(store.iter_chunks(key, 1 << 20)) == data
    store.put_bytes(key, b"replaced")
    assert store.get(key) == b"replaced"
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.get(key)
    store.ping()


def test_local_store_never_shows_a_half_written_object(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    class Broken(io.RawIOBase):
        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            raise OSError("connection dropped")

    with pytest.raises(OSError, match="dropped"):
        store.put_file("staging/x", Broken(), 10)  # type: ignore[arg-type]
    assert not store.exists("staging/x")
    assert list((tmp_path / "objects" / "tmp").iterdir()) == []
    with pytest.raises(ValueError, match="bad object key"):
        store.get("../etc/passwd")


def test_write_batch_makes_every_write_durable_by_flush(store: ObjectStore) -> None:
    """Writes from several threads (an encode's lanes) are all readable under their keys once the batch
    is flushed; a local store leaves no temporary file behind."""
    from concurrent.futures import ThreadPoolExecutor

    from deltazoo.registry.objectstore import WriteBatch

    blobs = {blob_key(f"{i:02x}" + "0" * 62): secrets.token_bytes(1000 + i) for i in range(12)}
    with WriteBatch(store) as batch, ThreadPoolExecutor(3) as lanes:
        list(lanes.map(lambda kv: batch.put_bytes(*kv), blobs.items()))
        batch.flush()
        assert all(store.get(key) == data for key, data in blobs.items())
    if isinstance(store, LocalObjectStore):
        assert list((store.root / "tmp").iterdir()) == []


def test_write_batch_flush_raises_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write whose fsync failed is never taken for durable: ``flush`` raises it, the object is not
    under its key and its temporary file is gone."""
    from deltazoo.registry import objectstore
    from deltazoo.registry.objectstore import WriteBatch

    def full_disk(fd: int) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(objectstore.os, "fsync", full_disk)
    store = LocalObjectStore(tmp_path / "objects")
    key = blob_key("cd" + "0" * 62)
    batch = WriteBatch(store)
    batch.put_bytes(key, b"payload")
    with pytest.raises(OSError, match="no space"):
        batch.flush()
    assert not store.exists(key)
    assert list((tmp_path / "objects" / "tmp").iterdir()) == []
    batch.flush()  # nothing left pending


def test_write_batch_cold_writes_off_the_writer_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold writes run on the batch's threads: a writer does not wait for the disk until 2 x SYNC_THREADS
    of them are queued, then waits (the bytes held stay bounded); a cold write that fails is raised by
    ``flush`` and leaves nothing under its key."""
    import threading
    import time

    from deltazoo.registry.objectstore import SYNC_THREADS, WriteBatch

    store = LocalObjectStore(tmp_path / "objects")
    disk = threading.Event()  # the disk answers once set
    real = store.write_temporary

    def slow_write(data: bytes | memoryview, cold: bool = False) -> Path:
        if cold:
            disk.wait(10)
            if bytes(data[:4]) == b"FAIL":
                raise OSError("no space left on device")
        return real(data, cold)

    monkeypatch.setattr(store, "write_temporary", slow_write)
    blobs = {
        blob_key(f"{i:02x}" + "0" * 62): b"cold" + secrets.token_bytes(100)
        for i in range(2 * SYNC_THREADS + 1)
    }
    done: list[str] = []
    with WriteBatch(store) as batch:

        def writer() -> None:
            for key, data in blobs.items():
                batch.put_bytes(key, data, cold=True)
                done.append(key)

        lane = threading.Thread(target=writer)
        lane.start()
        deadline = time.monotonic() + 10
        while len(done) < 2 * SYNC_THREADS and time.monotonic() < deadline:
            time.sleep(0.01)
        lane.join(0.3)
        assert lane.is_alive() and len(done) == 2 * SYNC_THREADS  # the last waits: the disk has not answered
        disk.set()
        lane.join(10)
        assert len(done) == len(blobs)
        batch.flush()
        assert all(store.get(key) == data for key, data in blobs.items())
        failed = blob_key("ee" + "0" * 62)
        batch.put_bytes(failed, b"FAIL" + bytes(10), cold=True)
        with pytest.raises(OSError, match="no space"):
            batch.flush()
        assert not store.exists(failed)
    assert list((tmp_path / "objects" / "tmp").iterdir()) == []


# --- S3: a write streamed in multipart parts from a growing local file (registry.s3_parts) ---------

MIB = 1 << 20


@pytest.fixture
def s3_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3ObjectStore:
    from deltazoo.registry import s3_parts

    monkeypatch.setattr(s3_parts, "PART_SIZE", 5 * MIB)  # S3's smallest part: a 12 MiB file has 3
    return S3ObjectStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, s3_server.bucket)


def _incomplete(store: S3ObjectStore, key: str) -> list[str]:
    return [u.upload_id for u in store.incomplete_uploads() if u.key == key]


def test_s3_write_streamed_while_the_file_grows(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    data = secrets.token_bytes(12 * MIB + 7)
    key = f"staging/{secrets.token_hex(8)}"
    spool = tmp_path / "spool"
    with spool.open("wb") as out:
        streamed = s3_store.streamed_put(key, os.open(spool, os.O_RDONLY), len(data))
        for start in range(0, len(data), MIB):  # as an upload arrives: write, flush, tell
            out.write(data[start : start + MIB])
            out.flush()
            streamed.grown(min(len(data), start + MIB))
        assert len(streamed.parts) == 2, "whole parts leave before the last byte arrives"
    streamed.complete(len(data))
    assert s3_store.get(key) == data
    assert _incomplete(s3_store, key) == []


def test_s3_part_that_fails_is_sent_again_with_the_whole_file(
    s3_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = secrets.token_bytes(11 * MIB)
    key = f"staging/{secrets.token_hex(8)}"
    spool = tmp_path / "spool"
    spool.write_bytes(data)
    real = s3_store.upload_part
    calls = []

    def flaky(key: str, upload_id: str, number: int, body: bytes) -> str:
        calls.append(number)
        if len(calls) == 1:
            raise ConnectionError("the store went away for a moment (test)")
        return real(key, upload_id, number, body)

    monkeypatch.setattr(s3_store, "upload_part", flaky)
    s3_store.put_path(key, spool)
    assert len(calls) > 3, "the whole file was not sent again"
    assert s3_store.get(key) == data
    assert _incomplete(s3_store, key) == [], "the failed multipart upload was left behind"


def test_s3_streamed_write_given_up_leaves_nothing(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    from tests.services import wait_until

    data = secrets.token_bytes(11 * MIB)
    key = f"staging/{secrets.token_hex(8)}"
    spool = tmp_path / "spool"
    spool.write_bytes(data)
    streamed = s3_store.streamed_put(key, os.open(spool, os.O_RDONLY), len(data) + MIB)
    streamed.grown(len(data))  # two parts sent, then the upload is refused (bad bytes)
    streamed.abort()
    wait_until(lambda: not _incomplete(s3_store, key), timeout=30, what="the multipart upload aborted")
    assert not s3_store.exists(key)


def test_s3_store_refuses_a_spool_shorter_than_declared(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"x" * MIB)
    streamed = s3_store.streamed_put("staging/short", os.open(spool, os.O_RDONLY), 2 * MIB)
    with pytest.raises(ValueError, match="expected"):
        streamed.complete(MIB)
    assert not s3_store.exists("staging/short")


@pytest.mark.parametrize("direct_io", [True, False])
def test_local_cold_objects_round_trip_and_stay_out_of_the_page_cache(
    tmp_path: Path, direct_io: bool
) -> None:
    """A cold object (an encode's delta payload) of ``DIRECT_MIN`` bytes or more is written around the
    page cache with ``direct_io`` and read back around it, whole or in pieces, through the store and
    through a ``WriteBatch``; smaller ones, warm ones and a store without ``direct_io`` use the cache."""
    from deltazoo.registry.objectstore import DIRECT_MIN, LocalObjectStore, WriteBatch

    store = LocalObjectStore(tmp_path / "objects", direct_io=direct_io)
    big, small = os.urandom(DIRECT_MIN + 12345), os.urandom(DIRECT_MIN - 1)
    store.put_bytes("blobs/aa/cold", big, cold=True)
    store.put_bytes("blobs/aa/small", small, cold=True)
    with WriteBatch(store) as batch:
        batch.put_bytes("blobs/bb/cold", big, cold=True)
        batch.put_bytes("blobs/bb/warm", big)

    def cached(key: str) -> bool:
        return _cached(store.path_of(key))

    around = direct_io and _takes_o_direct(tmp_path)
    for key in ("blobs/aa/cold", "blobs/bb/cold"):
        assert cached(key) is not around
        assert store.get(key) == big
        assert b"".join(store.iter_chunks(key, 1 << 20)) == big
        assert cached(key) is not around  # read whole, around the cache: still not in it
        assert store.get_range(key, 5, 10) == big[5:15]  # a small range reads through the cache
    assert store.get("blobs/aa/small") == small and cached("blobs/aa/small")
    assert cached("blobs/bb/warm") and store.get("blobs/bb/warm") == big
    with pytest.raises(ObjectNotFound):
        store.get("blobs/cc/missing")
    with pytest.raises(ObjectNotFound):
        list(store.iter_chunks("blobs/cc/missing"))
