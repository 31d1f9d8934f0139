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
