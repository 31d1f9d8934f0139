"""Copies that are not fine-tunes never pin a model.

Tensor-level dedup lets a version hold a ``same`` tensor whose bytes live in a tensor of another model:
the same weights pushed under a second name, in this namespace or another. When the model holding the
bytes is deleted, the copy is given bytes of its own first (the same blob when the tensor was stored
plain, otherwise the tensor re-coded alone), so deleting a model is never blocked by an unrelated copy,
never names another namespace's, and every copy keeps its bytes exactly. A child version (pushed with
the deleted one as its base) still blocks: it is named in the 409 instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from deltazoo.compression.codecs import decode_tensor, encode_tensor, smaller_as_is
from deltazoo.registry.models import Tensor
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import BlobRepository, TensorRepository, VersionRepository
from deltazoo.services.chunks import DEFAULT_CHUNK_BYTES, plain_chunks_of
from deltazoo.services.storage import CorruptStoreError, put_blob, reconstruct, resolve_recipes
from sqlalchemy.orm import Session


def detach_copies(
    session: Session,
    store: ObjectStore,
    version_ids: Sequence[int],
    namespace_id: int | None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> int:
    """Give every ``same`` copy of a tensor of ``version_ids`` (of namespace ``namespace_id``) that is
    not a child's its own bytes; returns how many tensors were detached. Memory: one chunk at a time (a
    small tensor: the tensor)."""
    copies = TensorRepository(session).detachable_copies(version_ids, namespace_id)
    return give_own_bytes(session, store, copies, chunk_bytes)


def give_own_bytes(
    session: Session, store: ObjectStore, copies: Sequence[Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """Make each ``same`` tensor of ``copies`` stand alone (bytes of its own, no parent tensor), exactly;
    returns how many."""
    if not copies:
        return 0
    recipes = resolve_recipes(session, copies)
    versions = VersionRepository(session).get_many(c.version_id for c in copies)
    blobs = BlobRepository(session)
    for copy in copies:
        recipe = recipes[copy.id]
        sha: str | None
        if len(recipe.steps) == 1 and recipe.steps[0].blob:  # stored plain: share the blob
            sha = recipe.steps[0].blob
            blob = blobs.get(sha)
            if blob is None:
                raise CorruptStoreError(f"tensor {copy.name!r}: blob {sha} is missing")
            blobs.add_reference(sha, blob.size)
            encoding, size = "plain", blob.size
        elif recipe.nbytes > chunk_bytes or any(step.chunks for step in recipe.steps):
            chunks = plain_chunks_of(session, store, recipe, copy.dtype, chunk_bytes)  # one chunk at a time
            for chunk in chunks:
                chunk.tensor_id = copy.id
            session.add_all(chunks)
            sha, encoding, size = None, "plain", sum(c.stored_bytes for c in chunks)
            copy.chunks = len(chunks)
        else:
            sha, encoding, size = _recode_alone(session, store, copy, reconstruct(store, recipe))
        copy.encoding, copy.blob, copy.stored_bytes = encoding, sha, size
        copy.parent_tensor_id, copy.depth = None, 0
        versions[copy.version_id].stored_bytes += size
    session.flush()
    return len(copies)


def _recode_alone(session: Session, store: ObjectStore, copy: Tensor, raw: bytes) -> tuple[str, str, int]:
    encoded = smaller_as_is(encode_tensor(raw, copy.dtype, list(copy.shape)), raw, copy.dtype)
    check = decode_tensor(encoded.encoding, encoded.payload, copy.dtype, list(copy.shape))
    if hashlib.sha256(check).hexdigest() != copy.sha256:
        raise CorruptStoreError(f"tensor {copy.name!r} did not round-trip through {encoded.encoding}")
    sha, _ = put_blob(session, store, encoded.payload)
    return sha, encoded.encoding, len(encoded.payload)
