"""Tensor rows of an encode written a batch at a time.

An upload may declare tens of thousands of small tensors. Writing each row on its own (a blob-reference
statement and an insert per tensor) would occupy the worker for minutes; here a batch of rows costs one
bulk blob-reference update and one multi-row insert, and the version's stored bytes are counted for the
blobs that batch made new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deltazoo.registry.models import Tensor, TensorChunk
from deltazoo.registry.repositories import BlobRepository
from sqlalchemy import insert
from sqlalchemy.orm import Session

ROWS_PER_WRITE = 256
BYTES_PER_WRITE = 64 << 20  # large tensors: a crash loses at most this much encoded input
_COLUMNS = [c.key for c in Tensor.__table__.columns if c.key != "id"]


class TensorRowWriter:
    """Collects the new tensor rows of one file (transient ``Tensor`` objects, with the ``TensorChunk``
    rows of a chunked one) and inserts them together; ``add_stored(nbytes)`` is told the size of the
    blobs each write names (the version's stored bytes), ``written(nbytes)`` the raw bytes of
    the tensors each write stored (the job's progress and checkpoint hang there: a checkpoint may
    commit, so it only ever sees whole batches, blob references included). ``durable()`` runs before
    each write: the blobs its rows name are durable before any of them can commit (a ``WriteBatch``'s
    flush)."""

    def __init__(
        self,
        session: Session,
        add_stored: Callable[[int], None],
        written: Callable[[int], None],
        durable: Callable[[], None] = lambda: None,
    ) -> None:
        self.session, self.add_stored, self.written, self.durable = session, add_stored, written, durable
        self.pending: list[tuple[Tensor, int, Tensor | None]] = []
        self.chunks: dict[str, list[TensorChunk]] = {}  # tensor name -> its chunk rows
        self.ids: dict[str, int] = {}  # name -> id of the rows written so far
        self.queued_bytes = 0

    def add(
        self,
        row: Tensor,
        raw_bytes: int,
        same_as: Tensor | None = None,
        chunks: list[TensorChunk] | None = None,
    ) -> None:
        """Queue ``row`` (a tensor of ``raw_bytes`` input bytes; ``chunks``: its chunk rows when it is
        stored in chunks); with ``same_as``, an earlier row given to ``add`` whose id becomes its
        parent once known. Writes once ``ROWS_PER_WRITE`` rows or ``BYTES_PER_WRITE`` input bytes are
        queued."""
        self.pending.append((row, raw_bytes, same_as))
        if chunks:
            self.chunks[row.name] = chunks
        self.queued_bytes += raw_bytes
        if len(self.pending) >= ROWS_PER_WRITE or self.queued_bytes >= BYTES_PER_WRITE:
            self.write()

    def write(self) -> None:
        """Write every queued row: blob references first (the rows name those blobs), then the rows,
        then those that copy a row of this very batch (they need its id)."""
        if not self.pending:
            return
        self.durable()
        rows = [row for row, _, _ in self.pending]
        refs = [(row.blob, row.stored_bytes) for row in rows if row.blob]
        refs += [(c.blob, c.stored_bytes) for row in rows for c in self.chunks.get(row.name, ())]
        BlobRepository(self.session).add_references(refs)
        # every payload of this version counts, whether or not its bytes were stored before: "already
        # stored" would tell a version's readers that some model, maybe a private one, holds them
        self.add_stored(sum(dict(refs).values()))
        first, later = [], []
        for row, _, twin in self.pending:
            if twin is None or twin.name in self.ids:
                row.parent_tensor_id = self.ids[twin.name] if twin is not None else row.parent_tensor_id
                first.append(row)
            else:
                later.append((row, twin))
        self._insert(first)
        for row, twin in later:
            row.parent_tensor_id = self.ids[twin.name]
        self._insert([row for row, _ in later])
        for name, chunks in self.chunks.items():
            for chunk in chunks:
                chunk.tensor_id = self.ids[name]
            self.session.add_all(chunks)  # flushed with the next statement or the commit
        nbytes, self.pending, self.queued_bytes, self.chunks = self.queued_bytes, [], 0, {}
        self.written(nbytes)

    def _insert(self, rows: list[Tensor]) -> None:
        if not rows:
            return
        table = Tensor.__table__
        statement = insert(table).returning(table.c.id, table.c.name)  # type: ignore[arg-type]
        for tensor_id, name in self.session.execute(statement, [_values(row) for row in rows]):
            self.ids[name] = tensor_id


def _values(row: Tensor) -> dict[str, Any]:
    values = {key: getattr(row, key) for key in _COLUMNS}
    values["chunks"] = row.chunks or 0
    return values
