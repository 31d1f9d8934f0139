"""A push deduplicated against a version that is deleted before its encode copies it keeps its bytes.

``create_version`` points a declared file at a stored file with the same bytes (``source_file_id``) and
asks for no upload; the encode later copies that file's blobs and tensors. When the source's version
is deleted between the two, the deleter first stages the source file's bytes for each such copy (a
staging object, as if the pusher had uploaded them) and unlinks it: the push then encodes them like
any upload, and never fails because someone deleted a version it did not know it leaned on.

On Postgres the deleter locks its files ``FOR UPDATE`` before looking for copies, and the dedup lookup
and the encode's copy hold their source ``FOR KEY SHARE``: a push that picked the source just before
the delete is committed (and found) first, one that looks just after finds nothing to dedup against,
and an encode that copied it first is a dependent the delete sees (``has_descendants`` / detach).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import BinaryIO, cast

from deltazoo.registry.models import File
from deltazoo.registry.objectstore import ObjectStore, new_staging_key
from deltazoo.registry.repositories import FileRepository
from deltazoo.services.transfer import file_plan, iter_file
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

SPOOL_BYTES = 64 << 20  # a staged copy is kept in memory up to this size, then spilled to disk


def hand_over_copies(
    session: Session, store: ObjectStore, version_ids: Sequence[int], held: ColumnElement[bool] | None = None
) -> int:
    """Before ``version_ids`` are deleted (or made private): stage the bytes of every file still waiting
    to copy one of their files (of those matching ``held``, when given), and unlink it; how many were
    staged. (A delete rolled back afterwards leaves staging objects no row names: the orphan sweep
    removes them, as it does an abandoned upload's.)"""
    files = FileRepository(session)
    sources = files.lock_for_versions(version_ids)
    waiting = files.copies_awaiting(sources, version_ids, held)
    for copy in waiting:
        source = session.get(File, copy.source_file_id)
        assert source is not None  # locked above
        key = new_staging_key()
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            for piece in iter_file(store, file_plan(session, store, source)):
                spool.write(piece)
            spool.seek(0)
            store.put_file(key, cast(BinaryIO, spool), source.size)
        copy.staging_key, copy.source_file_id, copy.uploaded = key, None, True
    session.flush()
    return len(waiting)
