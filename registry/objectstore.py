"""Where bytes live: a local directory (embedded default) or an S3 bucket (full stack).

Keys: ``blobs/ab/<sha256>`` for content-addressed blobs, ``staging/<uuid>`` for uploads that are not
yet encoded. A local object is written to a temporary name, fsynced and renamed, so a half-written
object is never visible under its key. ``WriteBatch`` does the fsync and rename of many writes off the
writers' threads and waits for them all at once (the encode's blobs: durable before the rows naming
them commit).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from deltazoo.registry.settings import Settings

from deltazoo.direct_io import BUFFER, read_around_cache, write_whole

if TYPE_CHECKING:  # minio is imported only by an S3 store
    from deltazoo.registry.s3_parts import StreamedPut

CHUNK = 1 << 20
DIRECT_MIN = 1 << 20  # with ``direct_io``, cold objects this big or bigger bypass the page cache
SYNC_THREADS = 4  # a WriteBatch's fsyncs in flight at once (a filesystem commits them together)


def blob_key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def new_staging_key() -> str:
    return f"staging/{uuid.uuid4().hex}"


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime  # UTC


@dataclass(frozen=True)
class IncompleteUpload:
    """A write that never finished: an S3 multipart upload, or a local temporary file."""

    key: str
    upload_id: str
    initiated: datetime  # UTC


class BlobSink(Protocol):
    """Where an encode writes its blobs: an ``ObjectStore`` or a ``WriteBatch`` over one. ``cold``: an
    object that is read rarely (a delta's payload, read when that one version is pulled, where a base's
    is read for every child), which a local store with ``direct_io`` keeps out of the page cache."""

    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None: ...


class ObjectStore(Protocol):
    def put_file(self, key: str, fileobj: BinaryIO, length: int) -> None: ...
    def put_path(self, key: str, path: Path) -> None: ...
    def scratch_dir(self) -> Path | None: ...
    def streamed_put(self, key: str, fd: int, total: int) -> StreamedPut | None: ...
    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None: ...
    def get(self, key: str) -> bytes: ...
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def ping(self) -> None: ...
    def list_objects(self, prefix: str) -> Iterator[StoredObject]: ...
    def incomplete_uploads(self) -> Iterator[IncompleteUpload]: ...
    def abort_upload(self, upload: IncompleteUpload) -> None: ...


class LocalObjectStore:
    def __init__(self, root: Path, *, direct_io: bool = False) -> None:
        """``direct_io`` (the server's setting): uploads are staged and staged objects read by the
        encode around the page cache (``deltazoo.direct_io``; ``staged_reads``, ``services.transfer``);
        cold objects (``BlobSink``) of ``DIRECT_MIN`` bytes or more are written around it, and an object
        whose bytes are not in the page cache is read around it (``direct_io.read_around_cache``), so
        what the page cache holds is what was written through it: the bases every child reads."""
        self.root = Path(root)
        self.direct_io = direct_io
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def path_of(self, key: str) -> Path:
        """The file that holds (or would hold) the object ``key``."""
        return self._path(key)

    def put_file(self, key: str, fileobj: BinaryIO, length: int) -> None:
        self._path(key)  # a bad key is refused before any byte is written
        self.place(self._temporary(lambda out: shutil.copyfileobj(fileobj, out, CHUNK)), key)

    def write_temporary(self, data: bytes | memoryview, cold: bool = False) -> Path:
        """``data`` in a new temporary file, not yet fsynced nor visible under any key (``place``
        does both; an interrupted write is an incomplete upload the orphan sweep removes); ``cold``:
        around the page cache (``BlobSink``)."""
        if cold and self.direct_io and len(data) >= DIRECT_MIN:
            return self._temporary(lambda out: write_whole(out.fileno(), data) or out.write(data))
        return self._temporary(lambda out: out.write(data))

    def _temporary(self, write: Callable[[BinaryIO], object]) -> Path:
        """A new temporary file that ``write`` fills (removed again if it raises)."""
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def place(self, tmp: Path, key: str) -> None:
        """Make a temporary file (``write_temporary``) durable (fsync), then visible under ``key``
        (rename): an object is never seen half-written."""
        try:
            target = self._path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_path(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` by renaming it (no copy; ``path`` is gone after);
        a file on another filesystem is copied."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            try:
                os.replace(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self.put_file(key, f, os.fstat(f.fileno()).st_size)

    def scratch_dir(self) -> Path:
        """Where a file about to become an object is written, so ``put_path`` can rename it."""
        return self.root / "tmp"

    def streamed_put(self, key: str, fd: int, total: int) -> None:
        """None: a local upload is renamed into place once whole (``put_path``), never copied."""
        return None

    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None:
        self._path(key)  # a bad key is refused before any byte is written
        self.place(self.write_temporary(data, cold), key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            if (pieces := self._around_cache(path, BUFFER)) is not None:
                return b"".join(pieces)
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def _around_cache(self, path: Path, piece: int) -> Iterator[bytes] | None:
        """The whole file read around the page cache, when ``direct_io`` is on, it is big and its bytes
        are not cached (``direct_io.read_around_cache``); None: read it as usual."""
        if not self.direct_io or (size := path.stat().st_size) < DIRECT_MIN:
            return None
        return read_around_cache(path, 0, size, piece)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            pieces = self._around_cache(path, chunk_size)
            f = path.open("rb") if pieces is None else None
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        if f is None:
            assert pieces is not None
            yield from pieces
            return
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"object directory {self.root} is missing")

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """The objects under ``prefix`` (a folder such as ``blobs/``, or one object's key)."""
        top = self._path(prefix.rstrip("/"))
        if top.is_file():
            st = top.stat()
            yield StoredObject(prefix, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
            return
        if not top.is_dir():
            return
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                key = path.relative_to(self.root).as_posix()
                yield StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        """Temporary files of writes that were interrupted (a crash between write and rename)."""
        for path in sorted((self.root / "tmp").glob("*")):
            try:
                initiated = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:
                continue
            yield IncompleteUpload(f"tmp/{path.name}", path.name, initiated)

    def abort_upload(self, upload: IncompleteUpload) -> None:
        (self.root / "tmp" / upload.upload_id).unlink(missing_ok=True)


class S3ObjectStore:
    """An S3 bucket through the ``minio`` client; large writes go in parallel parts from a local file
    (``registry.s3_parts``), reads are ranged."""

    PART_SIZE = 16 * 1024 * 1024

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
    ) -> None:
        from deltazoo.registry.s3_parts import UnsignedPayloadMinio

        self.client = UnsignedPayloadMinio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self.bucket = bucket
        if not self.client.bucket_exists(bucket):
            from minio.error import S3Error

            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:  # another process made it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _not_found(self, exc: Exception, key: str) -> Exception:
        from minio.error import S3Error

        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject"):
            return ObjectNotFound(key)
        return exc

    def put_file(self, key: str, fileobj: BinaryIO, length: int) -> None:
        try:
            fd = fileobj.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):  # in memory: minio reads it
            self.client.put_object(self.bucket, key, fileobj, length=-1, part_size=self.PART_SIZE)
            return
        self.put_fd(key, fd, os.fstat(fd).st_size)

    def put_path(self, key: str, path: Path) -> None:
        """Upload the file at ``path`` (which stays where it is)."""
        with open(path, "rb") as f:
            self.put_fd(key, f.fileno(), os.fstat(f.fileno()).st_size)

    def put_fd(self, key: str, fd: int, size: int) -> None:
        """The ``size`` bytes of the file open at ``fd`` (from offset 0), in parallel parts."""
        from deltazoo.registry.s3_parts import StreamedPut

        StreamedPut(self, key, os.dup(fd), size).complete(size)

    def streamed_put(self, key: str, fd: int, total: int) -> StreamedPut:
        """A write of ``total`` bytes from the file at ``fd`` (closed by it) while that file grows."""
        from deltazoo.registry.s3_parts import StreamedPut

        return StreamedPut(self, key, fd, total)

    def scratch_dir(self) -> None:
        return None  # uploads are spooled wherever the system's temporary files go

    # --- multipart steps, for ``registry.s3_parts`` (minio has no public API for them) ---------------

    def create_multipart(self, key: str) -> str:
        headers = {"Content-Type": "application/octet-stream"}
        return self.client._create_multipart_upload(self.bucket, key, headers)  # noqa: SLF001

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return self.client._upload_part(self.bucket, key, data, None, upload_id, number)  # noqa: SLF001

    def complete_multipart(self, key: str, upload_id: str, parts: list[Any]) -> None:
        self.client._complete_multipart_upload(self.bucket, key, upload_id, parts)  # noqa: SLF001

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.client._abort_multipart_upload(self.bucket, key, upload_id)  # noqa: SLF001

    def put_small(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), length=len(data))

    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None:  # cold: local stores only
        self.client.put_object(self.bucket, key, io.BytesIO(data), length=len(data))

    def _read(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as exc:
            raise self._not_found(exc, key) from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get(self, key: str) -> bytes:
        return self._read(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._read(key, offset, length)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            raise self._not_found(exc, key) from exc
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket)

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.object_name is None or obj.is_dir:
                continue
            modified = obj.last_modified or datetime.now(UTC)
            yield StoredObject(obj.object_name, int(obj.size or 0), modified.astimezone(UTC))

    def incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        """Multipart uploads started and neither completed nor aborted (e.g. the store went away
        mid-upload, so the client's own abort failed too)."""
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            page = self.client._list_multipart_uploads(  # noqa: SLF001 - minio has no public listing
                self.bucket, key_marker=key_marker, upload_id_marker=upload_marker, max_uploads=1000
            )
            for up in page.uploads:
                initiated = up.initiated_time or datetime.now(UTC)
                yield IncompleteUpload(up.object_name, up.upload_id or "", initiated.astimezone(UTC))
            if not page.is_truncated:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    def abort_upload(self, upload: IncompleteUpload) -> None:
        self.client._abort_multipart_upload(self.bucket, upload.key, upload.upload_id)  # noqa: SLF001


class WriteBatch:
    """Writes that become durable together: ``put_bytes`` from any thread, ``flush`` waits until every
    write so far is durable under its key.

    In a local store a write goes to a temporary file on the writer's thread, and its fsync and rename
    run on the batch's own threads, so a writer (an encode lane) never waits for the disk; a cold write
    (around the page cache) runs whole on those threads, and its writer waits only while 2 × SYNC_THREADS
    are queued. The object appears under its key only once durable, as with ``put_bytes``. In S3 a
    write is durable when it returns: ``put_bytes`` is the store's. Use as a context manager (leaving it
    flushes)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.local = store if isinstance(store, LocalObjectStore) else None
        self._syncer = (
            ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="deltazoo-fsync") if self.local else None
        )
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._cold_slots = threading.BoundedSemaphore(2 * SYNC_THREADS)  # cold writes queued or running

    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None:
        if self.local is None or self._syncer is None:
            self.store.put_bytes(key, data, cold)
            return
        local = self.local
        if cold:  # a direct write waits on the disk: it runs on the batch's threads, a few at a time
            self._cold_slots.acquire()
            placed = self._syncer.submit(lambda: local.place(local.write_temporary(data, cold), key))
            placed.add_done_callback(lambda _: self._cold_slots.release())
        else:  # a page-cache write is quick: on the writer's thread, only fsync and rename wait
            placed = self._syncer.submit(local.place, local.write_temporary(data, cold), key)
        with self._lock:
            self._pending.append(placed)

    def flush(self) -> None:
        """Wait until every write made so far is durable and visible (raises what a write raised)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for placed in pending:
            placed.result()

    def __enter__(self) -> WriteBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            if self._syncer is not None:
                self._syncer.shutdown(wait=True)


def delete_objects(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        store.delete(key)


def object_store_from_settings(settings: Settings) -> ObjectStore:
    if settings.s3_endpoint:
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalObjectStore(settings.objects_dir, direct_io=settings.direct_io)


def stages_direct(store: ObjectStore) -> bool:
    """Whether uploads to ``store`` are written around the page cache: a local store with
    ``direct_io`` (an S3 store's spool is read back while it is sent, from the page cache)."""
    return isinstance(store, LocalObjectStore) and store.direct_io
