"""Git LFS for the Hub protocol's uploads: the batch API, a basic transfer into deltazoo, verify, and
the staged objects that a commit's ``lfsFile`` operations name.

huggingface_hub (``lfs.py``: ``post_lfs_batch_info``, ``lfs_upload``; used when hf-xet is not in use)
posts ``{"operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid", "size"}]}``
to ``/{repo}.git/info/lfs/objects/batch``. Per object the answer carries either no ``actions`` (the
server holds it: the client skips it) or an ``upload`` href that the client PUTs the file to, *without*
its token (``_upload_single_part``), then a ``verify`` href it POSTs ``{"oid", "size"}`` to with its
token. The upload href therefore names a ticket: an object the batch wrote to the store (so every API
replica can read it) that says which model, oid and size it admits, and until when.

The PUT streams through the transfer service (``UploadSink``: counted, hashed; never held whole) into a
staging object per model and oid, ``staging/lfs/{model id}/{oid}``, so an object one model's writer
uploaded is never reported as present to another model's writer. An object is "present" when the
target model holds it staged, or when a stored file of a model the caller may read, and that may show
through the target (``visible_from``), has those bytes: the same rule as upload dedup everywhere else.
Staged objects that no commit claims are swept with the other staging objects (services/orphans.py).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from deltazoo.compression.safetensors_io import (
    SafetensorsError,
    is_index_file,
    is_safetensors_path,
    read_header,
    validate_index,
)
from deltazoo.registry.errors import BadRequest, DeltazooError, NotFound, Unprocessable
from deltazoo.registry.models import File, Model, utcnow
from deltazoo.registry.objectstore import ObjectNotFound, ObjectStore, stages_direct
from deltazoo.registry.repositories import FileRepository, visible_from
from deltazoo.services.access import Principal
from deltazoo.services.transfer import MAX_INDEX_BYTES, UploadSink
from sqlalchemy.orm import Session

TICKET_TTL = timedelta(hours=1)
MAX_BATCH_OBJECTS = 1000
OID_RE = re.compile(r"^[0-9a-f]{64}\Z")
TICKET_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}\Z")
# what preupload sends through LFS when the server takes large files by LFS (settings.hub_large_files)
LFS_MIN_BYTES = 10 << 20
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npz",
)


MAX_FILE_BYTES = 2**63 - 1  # the largest size a file row holds (BIGINT): beyond it, a 400, not a 500


def is_file_size(size: object) -> bool:
    """A JSON ``size`` a file can have: an integer (not a bool) from 0 to ``MAX_FILE_BYTES``."""
    return type(size) is int and 0 <= size <= MAX_FILE_BYTES


def wants_lfs(path: str, size: object) -> bool:
    """Whether preupload asks for ``path`` through LFS: weight files, and any file of 10 MiB or more."""
    big = isinstance(size, int) and size >= LFS_MIN_BYTES
    return big or path.lower().endswith(WEIGHT_SUFFIXES)


def lfs_key(model_id: int, oid: str) -> str:
    return f"staging/lfs/{model_id}/{oid}"


def _ticket_key(ticket: str) -> str:
    return f"staging/lfs-tickets/{ticket}"


def batch(
    session: Session,
    store: ObjectStore,
    viewer: Principal,
    model: Model,
    body: dict[str, Any],
    base_url: str,
    lfs_url: str,
) -> dict[str, Any]:
    """The answer to an LFS batch request for ``model`` (already checked readable and writable):
    upload hrefs under ``base_url``, the verify href under the repository's ``lfs_url``."""
    if body.get("operation") != "upload":
        raise BadRequest(
            "this LFS endpoint takes uploads only; download files through /{repo}/resolve/{revision}/{path}",
            code="lfs_operation_not_supported",
        )
    transfers = body.get("transfers", ["basic"])
    if not isinstance(transfers, list) or "basic" not in transfers:
        raise BadRequest(
            f"deltazoo offers the 'basic' LFS transfer only (asked for {transfers!r})",
            code="lfs_transfer_not_supported",
        )
    if body.get("hash_algo", "sha256") != "sha256":
        raise BadRequest(
            "LFS objects are named by their sha256 (hash_algo 'sha256')", code="invalid_lfs_batch"
        )
    objects = body.get("objects")
    if not isinstance(objects, list) or not objects:
        raise BadRequest("the batch needs a non-empty 'objects' list", code="invalid_lfs_batch")
    if len(objects) > MAX_BATCH_OBJECTS:
        raise Unprocessable(f"at most {MAX_BATCH_OBJECTS} objects per batch", code="too_many_files")
    files = FileRepository(session)
    answered = []
    for obj in objects:
        oid = obj.get("oid") if isinstance(obj, dict) else None
        size = obj.get("size") if isinstance(obj, dict) else None
        if not isinstance(oid, str) or not OID_RE.match(oid) or not is_file_size(size):
            raise BadRequest(
                "each LFS object needs 'oid' (64 lowercase hex digits of its sha256) and 'size' (bytes >= 0)",
                code="invalid_lfs_batch",
            )
        stored = files.stored_ready_with_sha(oid, size, viewer.private_namespaces(), visible_from(model))
        if stored is not None or _staged_size(store, model.id, oid) == size:
            answered.append({"oid": oid, "size": size})  # no actions: the client skips it
            continue
        ticket = secrets.token_urlsafe(32)
        expires = utcnow() + TICKET_TTL
        record = {
            "model_id": model.id,
            "oid": oid,
            "size": size,
            "expires": expires.isoformat(),
            "token_id": viewer.token_id,  # its concurrent-upload limit applies to the PUT
        }
        store.put_bytes(_ticket_key(ticket), json.dumps(record).encode())
        expires_in = int(TICKET_TTL.total_seconds())
        answered.append(
            {
                "oid": oid,
                "size": size,
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{base_url}/api/lfs/objects/{ticket}", "expires_in": expires_in},
                    "verify": {"href": f"{lfs_url}/verify", "expires_in": expires_in},
                },
            }
        )
    return {"transfer": "basic", "objects": answered, "hash_algo": "sha256"}


def open_ticket(store: ObjectStore, ticket: str) -> tuple[UploadSink, str, int | None]:
    """The sink for ``PUT /api/lfs/objects/{ticket}``, the staging key it is to be written to and the
    token that asked for it: 404 for an unknown or expired ticket."""
    gone = NotFound(
        "this LFS upload link is unknown or expired; run the upload again (it asks for a new one)",
        code="lfs_ticket_not_found",
    )
    if not TICKET_RE.match(ticket):
        raise gone
    try:
        record = json.loads(store.get(_ticket_key(ticket)))
    except ObjectNotFound:
        raise gone from None
    if datetime.fromisoformat(record["expires"]) < utcnow():
        raise gone
    # a file row that is never added to a session: the sink checks size and sha256 against it
    target = File(path=f"LFS object {record['oid']}", size=record["size"], sha256=record["oid"], kind="other")
    # spooled in the store's scratch directory, so a local store renames it into place (around the page
    # cache with direct_io) instead of copying it from a temporary file
    sink = UploadSink(target, scratch_dir=store.scratch_dir(), direct=stages_direct(store))
    return sink, lfs_key(record["model_id"], record["oid"]), record.get("token_id")


def verify(store: ObjectStore, model: Model, body: dict[str, Any]) -> None:
    """``POST .../verify``: the object arrived whole (404 when it did not)."""
    oid, size = body.get("oid"), body.get("size")
    if not isinstance(oid, str) or not OID_RE.match(oid) or not is_file_size(size):
        raise BadRequest("verify needs the object's 'oid' and 'size'", code="invalid_lfs_batch")
    if _staged_size(store, model.id, oid) != size:
        raise NotFound(
            f"LFS object {oid} ({size} bytes) has not arrived; upload it again", code="lfs_object_missing"
        )


def claim_staged(store: ObjectStore, model: Model, path: str, oid: str, size: int) -> str:
    """The staging key of the LFS object a commit names for ``path``, checked like an inline upload
    (a safetensors header and length, a shard index): 409 when the object never arrived."""
    key = lfs_key(model.id, oid)
    if _staged_size(store, model.id, oid) != size:
        raise DeltazooError(
            f"{path}: LFS object {oid} ({size} bytes) was never uploaded here (or expired);"
            " run the upload again",
            code="file_missing",
            status=409,
        )
    try:
        if is_safetensors_path(path):
            read_header(lambda offset, length: store.get_range(key, offset, length), size)
        elif is_index_file(path):
            if size > MAX_INDEX_BYTES:
                raise SafetensorsError(f"index file larger than {MAX_INDEX_BYTES} bytes")
            validate_index(store.get(key))
    except SafetensorsError as exc:
        raise BadRequest(f"{path}: {exc}", code="invalid_safetensors") from None
    return key


def _staged_size(store: ObjectStore, model_id: int, oid: str) -> int | None:
    key = lfs_key(model_id, oid)
    for obj in store.list_objects(key):
        if obj.key == key:
            return obj.size
    return None
