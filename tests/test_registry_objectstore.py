"""Both object stores behave the same: put (streamed), get, ranged get, chunks, exists, delete."""

from __future__ import annotations

import io
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
