"""Every query of the registry. Repositories read and add rows; they never commit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from deltazoo.registry.model_listing import After, matching_count, model_page, readable
from deltazoo.registry.models import (
    Artifact,
    Blob,
    File,
    Job,
    Model,
    Namespace,
    RevisionFloor,
    Tensor,
    TensorChunk,
    Version,
    VersionTag,
    utcnow,
)
from sqlalchemy import ColumnElement, Select, func, literal_column, or_, select, union, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def of_readable_versions(query: Select, private_namespaces: Sequence[str] | None) -> Select:
    """``query`` (over Version rows) limited to versions of models the caller may read (None: all)."""
    if private_namespaces is None:
        return query
    return (
        query.join(Model, Model.id == Version.model_id)
        .join(Namespace, Namespace.id == Model.namespace_id)
        .where(readable(private_namespaces))
    )


def visible_from(own: Model) -> ColumnElement[bool]:
    """Models whose names and tensors may show through ``own`` (dedup twins, similar-base candidates):
    public ones, and for a private model also the private models of its own namespace, never another
    namespace's private model (a query using it joins Model)."""
    if not own.private:
        return Model.private.is_(False)
    return or_(Model.private.is_(False), Model.namespace_id == own.namespace_id)


class NamespaceRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def case_variant(self, name: str) -> str | None:
        """The name of a namespace that is ``name`` up to letter case, when ``name`` itself is not one."""
        names = self.s.scalars(select(Namespace.name).where(func.lower(Namespace.name) == name.lower()))
        found = list(names)
        return None if not found or name in found else found[0]

    def get_or_create(self, name: str) -> Namespace:
        ns = self.s.scalar(select(Namespace).where(Namespace.name == name))
        if ns is None:
            ns = Namespace(name=name)
            self.s.add(ns)
            self.s.flush()
        return ns


class ModelRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, org: str, name: str) -> Model | None:
        return self.s.scalar(select(Model).join(Namespace).where(Namespace.name == org, Model.name == name))

    def case_variant(self, org: str, name: str) -> tuple[Model, str] | None:
        """A model (and its ``org/name``) whose name is ``org/name`` up to letter case, but not equal."""
        row = self.s.execute(
            select(Model, Namespace.name, Model.name)
            .join(Namespace)
            .where(func.lower(Namespace.name) == org.lower(), func.lower(Model.name) == name.lower())
            .where(~((Namespace.name == org) & (Model.name == name)))
            .limit(1)
        ).first()
        return None if row is None else (row[0], f"{row[1]}/{row[2]}")

    def lock(self, model_id: int) -> None:
        """Hold model ``model_id``'s row until the transaction ends, so writers of the same model that
        take it go one after the other: ``FOR UPDATE`` on Postgres; on SQLite, which has none, a
        no-op UPDATE, which takes the database's write lock."""
        if self.s.get_bind().dialect.name == "sqlite":
            self.s.execute(update(Model).where(Model.id == model_id).values(name=Model.name))
        else:
            self.s.execute(select(Model.id).where(Model.id == model_id).with_for_update())

    def full_names(self, model_ids: Iterable[int]) -> dict[int, str]:
        ids = list(set(model_ids))
        if not ids:
            return {}
        rows = self.s.execute(
            select(Model.id, Namespace.name, Model.name).join(Namespace).where(Model.id.in_(ids))
        )
        return {mid: f"{org}/{name}" for mid, org, name in rows}

    def search(
        self,
        text: str,
        limit: int,
        offset: int,
        private_namespaces: Sequence[str] | None = None,
        namespace: str | None = None,
        known_total: int | None = None,
        after: After | None = None,
    ) -> tuple[list[tuple[Model, str]], int]:
        """One page, in ``org/name`` order after ``after`` (``registry.model_listing``), of the models
        whose ``org/name`` or description contains ``text`` (``registry.model_search``: an index, not a
        scan), in ``namespace`` when given; private ones only in ``private_namespaces`` (None: all of
        them); and how many match in all. ``known_total``: that number, when the caller has it (the
        counters)."""
        rows = model_page(self.s, text, limit, offset, private_namespaces, namespace, after)
        if known_total is None:
            known_total = matching_count(self.s, text, private_namespaces, namespace)
        return rows, known_total


class VersionRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, version_id: int) -> Version | None:
        return self.s.get(Version, version_id)

    def get_many(self, ids: Iterable[int]) -> dict[int, Version]:
        ids = list(set(ids))
        if not ids:
            return {}
        return {v.id: v for v in self.s.scalars(select(Version).where(Version.id.in_(ids)))}

    def by_revision(self, model_id: int, revision: int) -> Version | None:
        return self.s.scalar(
            select(Version).where(Version.model_id == model_id, Version.revision == revision)
        )

    def by_commit_id(self, model_id: int, commit_id: str) -> Version | None:
        return self.s.scalar(
            select(Version).where(Version.model_id == model_id, Version.commit_id == commit_id)
        )

    def by_commit_prefix(self, model_id: int, prefix: str) -> Version | None:
        """The model's one version whose commit id starts with ``prefix`` (None: none, or several)."""
        rows = self.s.scalars(
            select(Version).where(Version.model_id == model_id, Version.commit_id.startswith(prefix)).limit(2)
        ).all()
        return rows[0] if len(rows) == 1 else None

    def latest(self, model_id: int, ready_only: bool = False) -> Version | None:
        q = select(Version).where(Version.model_id == model_id)
        if ready_only:
            q = q.where(Version.status == "ready")
        return self.s.scalar(q.order_by(Version.revision.desc()).limit(1))

    def newest_committed(self, model_id: int) -> Version | None:
        """The newest version that was committed and has not failed (processing or ready)."""
        q = select(Version).where(Version.model_id == model_id, Version.status.in_(("processing", "ready")))
        return self.s.scalar(q.order_by(Version.revision.desc()).limit(1))

    def for_model(self, model_id: int) -> list[Version]:
        return list(
            self.s.scalars(select(Version).where(Version.model_id == model_id).order_by(Version.revision))
        )

    def claim_pending(self, version_id: int) -> bool:
        """pending -> processing in one conditional UPDATE (it locks the row until the commit): True for
        exactly one of concurrent callers."""
        result = self.s.execute(
            update(Version)
            .where(Version.id == version_id, Version.status == "pending")
            .values(status="processing")
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def next_revision(self, model_id: int) -> int:
        """One above every revision the model's name has had, deleted ones included (``RevisionFloor``)."""
        top = self.s.scalar(select(func.max(Version.revision)).where(Version.model_id == model_id))
        same_name = (Model.namespace_id == RevisionFloor.namespace_id) & (Model.name == RevisionFloor.name)
        floor_of = select(RevisionFloor.revision).join(Model, same_name)
        floor = self.s.scalar(floor_of.where(Model.id == model_id))
        return max(top or 0, floor or 0) + 1

    def raise_revision_floor(self, model: Model, revision: int) -> None:
        """Versions up to ``revision`` of ``model`` are being deleted: no later one takes their numbers."""
        dialect = self.s.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        row = {"namespace_id": model.namespace_id, "name": model.name, "revision": revision}
        statement = insert(RevisionFloor).values(row)
        higher = func.greatest if dialect == "postgresql" else func.max  # SQLite's max of two values
        self.s.execute(
            statement.on_conflict_do_update(
                index_elements=["namespace_id", "name"],
                set_={"revision": higher(RevisionFloor.revision, statement.excluded.revision)},
            )
        )

    def pending_for_model(self, model_id: int) -> list[Version]:
        """The model's pending versions, newest first."""
        q = select(Version).where(Version.model_id == model_id, Version.status == "pending")
        return list(self.s.scalars(q.order_by(Version.id.desc())))

    def pending_readable(self, private_namespaces: Sequence[str] | None, limit: int) -> list[Version]:
        """Pending versions, oldest first, of the models a caller may read (None: all)."""
        q = of_readable_versions(select(Version).where(Version.status == "pending"), private_namespaces)
        return list(self.s.scalars(q.order_by(Version.id).limit(limit)))

    def pending_created_by(self, token_id: int | None) -> tuple[int, datetime | None]:
        """How many versions the token (None: no token) holds pending, and when the oldest was made."""
        creator = Version.created_by_token_id
        mine = creator.is_(None) if token_id is None else creator == token_id
        n, oldest = self.s.execute(
            select(func.count(), func.min(Version.created_at)).where(mine, Version.status == "pending")
        ).one()
        return int(n), oldest

    def pending_created_before(self, cutoff: datetime) -> list[Version]:
        q = select(Version).where(Version.status == "pending", Version.created_at < cutoff)
        return list(self.s.scalars(q.order_by(Version.id)))

    def children(self, version_ids: Sequence[int]) -> list[Version]:
        if not version_ids:
            return []
        return list(self.s.scalars(select(Version).where(Version.parent_version_id.in_(version_ids))))

    def ready_logical_total(self) -> int:
        return int(
            self.s.scalar(
                select(func.coalesce(func.sum(Version.logical_bytes), 0)).where(Version.status == "ready")
            )
            or 0
        )

    def totals_by_model(self, model_ids: Iterable[int]) -> dict[int, tuple[int, int, int, int]]:
        """model id -> (versions, latest revision, logical bytes of ready versions, stored bytes)."""
        ids = list(set(model_ids))
        if not ids:
            return {}
        ready = Version.status == "ready"
        rows = self.s.execute(
            select(
                Version.model_id,
                func.count(Version.id),
                func.max(Version.revision),
                func.coalesce(func.sum(Version.logical_bytes).filter(ready), 0),
                func.coalesce(func.sum(Version.stored_bytes), 0),
            )
            .where(Version.model_id.in_(ids))
            .group_by(Version.model_id)
        )
        return {mid: (n, rev, logical, stored) for mid, n, rev, logical, stored in rows}


class TagRepository:
    """Named revisions (``version_tag``): a model's tag names and the versions they point at."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, model_id: int, name: str) -> VersionTag | None:
        q = select(VersionTag).where(VersionTag.model_id == model_id, VersionTag.name == name)
        return self.s.scalar(q)

    def for_model(self, model_id: int) -> list[VersionTag]:
        q = select(VersionTag).where(VersionTag.model_id == model_id).order_by(VersionTag.name)
        return list(self.s.scalars(q))

    def names_by_version(self, version_ids: Iterable[int]) -> dict[int, list[str]]:
        ids = list(set(version_ids))
        if not ids:
            return {}
        out: dict[int, list[str]] = {}
        q = select(VersionTag.version_id, VersionTag.name).where(VersionTag.version_id.in_(ids))
        for vid, name in self.s.execute(q.order_by(VersionTag.name)):
            out.setdefault(vid, []).append(name)
        return out


class FileRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def awaiting_bytes(self) -> tuple[set[int], int]:
        """(ids of the files of pending versions, the highest file id so far): a part file of any other
        file id up to that bound belongs to no upload that can still finish."""
        pending = self.s.scalars(
            select(File.id).join(Version, Version.id == File.version_id).where(Version.status == "pending")
        )
        return set(pending), int(self.s.scalar(select(func.max(File.id))) or 0)

    def for_version(self, version_id: int) -> list[File]:
        return list(self.s.scalars(select(File).where(File.version_id == version_id).order_by(File.path)))

    def referenced_staging_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of the staging object ``keys`` a file row still points at."""
        if not keys:
            return set()
        return set(self.s.scalars(select(File.staging_key).where(File.staging_key.in_(list(keys)))))

    def staging_keys(self) -> list[str]:
        """Every staging object key a file row points at (uploads not yet encoded)."""
        return [k for k in self.s.scalars(select(File.staging_key).where(File.staging_key.is_not(None))) if k]

    def get(self, version_id: int, path: str) -> File | None:
        return self.s.scalar(select(File).where(File.version_id == version_id, File.path == path))

    def stored_ready_with_sha(
        self,
        sha256: str,
        size: int,
        private_namespaces: list[str] | None,
        visible: ColumnElement[bool] | None = None,
    ) -> File | None:
        """A file with these bytes already stored in a ready version (for upload dedup), of a public model
        or of a private one in ``private_namespaces`` (None: any): knowing a sha256 never grants the bytes
        of a model the uploader cannot read. With ``visible`` (``visible_from(model)``), also only of a
        model that may show through the new version (its tensors become ``same`` copies of these)."""
        query = (
            select(File)
            .join(Version, Version.id == File.version_id)
            .where(File.sha256 == sha256, File.size == size, Version.status == "ready")
        )
        query = of_readable_versions(query, private_namespaces)
        if visible is not None:
            if private_namespaces is None:
                query = query.join(Model, Model.id == Version.model_id)
            query = query.where(visible)
        # FOR KEY SHARE: a concurrent delete of the version holding it waits until the new file row that
        # names it is committed, and then finds that row (services.dedup_handover); a source deleted
        # first is not returned (the bytes are uploaded instead). SQLite has one writer: no lock needed.
        query = query.order_by(File.id).limit(1).with_for_update(read=True, key_share=True, of=File)
        return self.s.scalar(query)

    def lock_source(self, file_id: int) -> File | None:
        """The stored file a deduplicated one copies, held FOR KEY SHARE until the commit (a delete of it
        waits); None when it was deleted (``services.dedup_handover`` staged its bytes for the copy)."""
        query = select(File).where(File.id == file_id).with_for_update(read=True, key_share=True)
        return self.s.scalar(query.execution_options(populate_existing=True))

    def has_header_blob(self, version_id: int, sha256: str) -> bool:
        """Whether a file of ``version_id`` keeps its safetensors header in blob ``sha256``."""
        query = select(File.id).where(File.version_id == version_id, File.header_blob == sha256).limit(1)
        return self.s.scalar(query) is not None

    def lock_for_versions(self, version_ids: Sequence[int]) -> list[int]:
        """Lock the files of ``version_ids`` FOR UPDATE (a delete): waits for the pushes and encodes that
        hold one as their dedup source, and makes new ones wait; their ids."""
        if not version_ids:
            return []
        query = select(File.id).where(File.version_id.in_(list(version_ids))).order_by(File.id)
        return list(self.s.scalars(query.with_for_update(of=File)))

    def copies_awaiting(
        self, source_ids: Sequence[int], outside: Sequence[int], held: ColumnElement[bool] | None = None
    ) -> list[File]:
        """Files of versions not in ``outside`` (and matching ``held``, when given) deduplicated against
        ``source_ids`` whose encode has not copied them yet (no bytes of their own, no upload): they need
        the source's bytes."""
        if not source_ids:
            return []
        query = select(File).where(
            File.source_file_id.in_(list(source_ids)),
            File.version_id.not_in(list(outside)),
            File.staging_key.is_(None),
            File.header_blob.is_(None),
            File.blob.is_(None),
        )
        if held is not None:
            query = query.where(held)
        return list(self.s.scalars(query.order_by(File.id)))


class TensorRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def for_version(self, version_id: int) -> list[Tensor]:
        return list(
            self.s.scalars(
                select(Tensor)
                .where(Tensor.version_id == version_id)
                .order_by(Tensor.file_id, Tensor.offset_begin)
            )
        )

    def for_file(self, file_id: int) -> list[Tensor]:
        return list(
            self.s.scalars(select(Tensor).where(Tensor.file_id == file_id).order_by(Tensor.offset_begin))
        )

    def get_many(self, ids: Iterable[int]) -> dict[int, Tensor]:
        ids = list(set(ids))
        if not ids:
            return {}
        return {t.id: t for t in self.s.scalars(select(Tensor).where(Tensor.id.in_(ids)))}

    def stored_with_sha(self, sha256: str, visible: ColumnElement[bool] | None = None) -> Tensor | None:
        """A stored tensor whose raw bytes have this sha256 (see ``stored_with_shas``)."""
        return self.stored_with_shas([sha256], visible).get(sha256)

    def stored_with_shas(
        self, shas: Iterable[str], visible: ColumnElement[bool] | None = None
    ) -> dict[str, Tensor]:
        """sha256 -> a stored tensor with those raw bytes, for many tensors in one statement, preferring
        the shortest decode chain; with ``visible`` (``visible_from(model)``) only one of a model that
        may show through the new one. ``same`` copies are never picked: the tensor they copy has their
        depth and a smaller id, and skipping them keeps the query small when thousands of versions
        copy one base tensor."""
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        rank = func.row_number().over(partition_by=Tensor.sha256, order_by=(Tensor.depth, Tensor.id))
        # 'same' inline, not bound: both databases then read the partial index ix_tensor_stored_sha256
        ranked = select(Tensor.id, rank.label("rank")).where(
            Tensor.sha256.in_(wanted), Tensor.encoding != literal_column("'same'")
        )
        if visible is not None:
            ranked = (
                ranked.join(Version, Version.id == Tensor.version_id)
                .join(Model, Model.id == Version.model_id)
                .where(visible)
            )
        best = ranked.subquery()
        rows = self.s.scalars(select(Tensor).join(best, best.c.id == Tensor.id).where(best.c.rank == 1))
        return {t.sha256: t for t in rows}

    def id_by_name(self, file_id: int, name: str) -> int | None:
        return self.s.scalar(select(Tensor.id).where(Tensor.file_id == file_id, Tensor.name == name))

    def by_name(self, version_id: int) -> dict[str, Tensor]:
        return {t.name: t for t in self.for_version(version_id)}

    def dependents_outside(self, version_id: int) -> list[int]:
        """Ids of versions (other than this one) whose tensors decode through this version's tensors."""
        mine = select(Tensor.id).where(Tensor.version_id == version_id)
        rows = self.s.scalars(
            select(Tensor.version_id)
            .where(Tensor.parent_tensor_id.in_(mine), Tensor.version_id != version_id)
            .distinct()
        )
        return list(rows)

    def _detachable_copies(self, version_ids: Sequence[int], namespace_id: int | None) -> ColumnElement[bool]:
        """``same`` copies that need not pin ``version_ids``: held by a version of another namespace's
        model, or by a version that is not their child (a push of identical tensors, not a fine-tune)."""
        elsewhere = (
            select(Version.id)
            .join(Model, Model.id == Version.model_id)
            .where(Model.namespace_id.is_distinct_from(namespace_id))
        )
        unrelated = select(Version.id).where(
            Version.parent_version_id.is_(None) | Version.parent_version_id.not_in(list(version_ids))
        )
        held_by = Tensor.version_id.in_(elsewhere) | Tensor.version_id.in_(unrelated)
        return (Tensor.encoding == "same") & held_by

    def dependents_of(
        self, version_ids: Sequence[int], namespace_id: int | None
    ) -> dict[int, tuple[int, set[str]]]:
        """Versions not in ``version_ids`` (of namespace ``namespace_id``) decoding through their tensors:
        id -> (tensors, encodings). ``same`` copies that need not pin them (``detachable_copies``) are not
        counted: they are given bytes of their own instead."""
        mine = select(Tensor.id).where(Tensor.version_id.in_(list(version_ids)))
        query = select(Tensor.version_id, Tensor.encoding, func.count()).where(
            Tensor.parent_tensor_id.in_(mine),
            Tensor.version_id.not_in(list(version_ids)),
            ~self._detachable_copies(version_ids, namespace_id),
        )
        rows = self.s.execute(query.group_by(Tensor.version_id, Tensor.encoding))
        out: dict[int, tuple[int, set[str]]] = {}
        for vid, encoding, n in rows:
            count, encodings = out.get(vid, (0, set()))
            out[vid] = (count + int(n), encodings | {encoding})
        return out

    def detachable_copies(self, version_ids: Sequence[int], namespace_id: int | None) -> list[Tensor]:
        """``same`` tensors whose parent is a tensor of ``version_ids`` (of namespace ``namespace_id``)
        held by another namespace's version or by a version that is not their child."""
        return self.copies_of(version_ids, self._detachable_copies(version_ids, namespace_id))

    def copies_of(self, version_ids: Sequence[int], held: ColumnElement[bool]) -> list[Tensor]:
        """Tensors outside ``version_ids`` whose parent is a tensor of theirs and which match ``held``."""
        mine = select(Tensor.id).where(Tensor.version_id.in_(list(version_ids)))
        return list(
            self.s.scalars(
                select(Tensor)
                .where(Tensor.parent_tensor_id.in_(mine), Tensor.version_id.not_in(list(version_ids)), held)
                .order_by(Tensor.id)
            )
        )

    def encoding_counts(self) -> dict[str, int]:
        return dict(self.s.execute(select(Tensor.encoding, func.count()).group_by(Tensor.encoding)).all())  # type: ignore[arg-type]

    def count(self) -> int:
        return self.s.scalar(select(func.count()).select_from(Tensor)) or 0


class TensorChunkRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def for_tensors(self, tensor_ids: Iterable[int]) -> dict[int, list[TensorChunk]]:
        """tensor id -> its chunks in element order (tensors stored whole have none)."""
        ids = list(set(tensor_ids))
        out: dict[int, list[TensorChunk]] = {}
        if not ids:
            return out
        query = select(TensorChunk).where(TensorChunk.tensor_id.in_(ids))
        rows = self.s.scalars(query.order_by(TensorChunk.tensor_id, TensorChunk.index))
        for c in rows:
            out.setdefault(c.tensor_id, []).append(c)
        return out

    def blobs_of_versions(self, version_ids: Sequence[int]) -> list[str]:
        """Blob of every chunk of the versions' tensors (one entry per reference)."""
        mine = select(Tensor.id).where(Tensor.version_id.in_(list(version_ids)))
        return list(self.s.scalars(select(TensorChunk.blob).where(TensorChunk.tensor_id.in_(mine))))


class BlobRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, sha256: str) -> Blob | None:
        return self.s.get(Blob, sha256)

    def add_reference(self, sha256: str, size: int) -> bool:
        """Count one more reference to a blob; True when the blob row is new."""
        return sha256 in self.add_references([(sha256, size)])

    def add_references(self, refs: Sequence[tuple[str, int]]) -> set[str]:
        """Count one more reference per ``(sha256, size)`` (a sha256 may repeat); returns the shas whose
        blob row is new. A few statements per call, however many references.

        Insert-or-ignore: two encodes storing the same bytes at once both succeed (the second one's
        insert waits for the first one's row and then counts a reference) instead of one failing on
        the primary key and retrying. Rows are written in sha256 order, so two such inserts never wait
        on each other in opposite orders."""
        if not refs:
            return set()
        counts = Counter(sha for sha, _ in refs)
        sizes = dict(refs)
        dialect = self.s.get_bind().dialect.name
        if dialect in ("postgresql", "sqlite"):
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            now = utcnow()
            rows = [dict(sha256=sha, size=sizes[sha], refcount=1, created_at=now) for sha in sorted(counts)]
            statement = insert(Blob).values(rows).on_conflict_do_nothing(index_elements=["sha256"])
            new = set(self.s.scalars(statement.returning(Blob.sha256)))
        else:
            new = set(counts) - self.existing(sorted(counts))
            self.s.add_all(Blob(sha256=sha, size=sizes[sha], refcount=1) for sha in sorted(new))
            self.s.flush()
        more: dict[int, list[str]] = {}  # references still to count -> the blobs that get that many
        for sha, n in counts.items():
            if n - (sha in new):
                more.setdefault(n - (sha in new), []).append(sha)
        for n, shas in sorted(more.items()):
            self.s.execute(
                update(Blob).where(Blob.sha256.in_(sorted(shas))).values(refcount=Blob.refcount + n)
            )
        return new

    def drop_reference(self, sha256: str) -> bool:
        """Count one reference less; True when nothing references the blob any more (row deleted)."""
        self.s.execute(update(Blob).where(Blob.sha256 == sha256).values(refcount=Blob.refcount - 1))
        blob = self.s.get(Blob, sha256)
        if blob is not None:
            self.s.refresh(blob)
            if blob.refcount <= 0:
                self.s.delete(blob)
                self.s.flush()
                return True
        return False

    def existing(self, shas: Sequence[str]) -> set[str]:
        """Which of ``shas`` have a blob row."""
        if not shas:
            return set()
        return set(self.s.scalars(select(Blob.sha256).where(Blob.sha256.in_(list(shas)))))

    def all_shas(self, batch: int = 5000) -> Iterator[str]:
        """Every blob row's sha256, read in batches."""
        last = ""
        while True:
            page = list(
                self.s.scalars(
                    select(Blob.sha256).where(Blob.sha256 > last).order_by(Blob.sha256).limit(batch)
                )
            )
            yield from page
            if len(page) < batch:
                return
            last = page[-1]

    def totals(self) -> tuple[int, int]:
        n, size = self.s.execute(select(func.count(), func.coalesce(func.sum(Blob.size), 0))).one()
        return int(n), int(size)


class ArtifactRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, artifact_id: int) -> Artifact | None:
        return self.s.get(Artifact, artifact_id)

    def for_version(self, version_id: int) -> list[Artifact]:
        return list(
            self.s.scalars(select(Artifact).where(Artifact.version_id == version_id).order_by(Artifact.id))
        )

    def bytes_by_version(self, version_ids: Iterable[int]) -> dict[int, int]:
        """version id -> packed bytes of its ready artifacts."""
        ids = list(set(version_ids))
        if not ids:
            return {}
        rows = self.s.execute(
            select(Artifact.version_id, func.sum(Artifact.bytes))
            .where(Artifact.version_id.in_(ids), Artifact.status == "ready")
            .group_by(Artifact.version_id)
        )
        return {vid: int(n or 0) for vid, n in rows}

    def blob_bytes(self) -> int:
        """Bytes of the distinct blobs that hold artifacts (each counted once)."""
        shas = select(Artifact.blob).where(Artifact.blob.is_not(None)).distinct().subquery()
        return int(
            self.s.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(select(shas))))
            or 0
        )

    def by_profile(self, version_id: int, profile: str) -> Artifact | None:
        return self.s.scalar(
            select(Artifact).where(Artifact.version_id == version_id, Artifact.profile == profile)
        )


VERSION_KIND = "encode_version"  # a job encoding a whole version (target: the version)
PART_KIND = "encode_file"  # one file, or a tensor range of it, of a split encode (target: the file;
# services.encode_split)


def _encodes_of(version_ids: list[int]) -> ColumnElement[bool]:
    files = select(File.id).where(File.version_id.in_(version_ids))
    return or_(
        (Job.kind == VERSION_KIND) & Job.target_id.in_(version_ids),
        (Job.kind == PART_KIND) & Job.target_id.in_(files),
    )


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, job_id: int) -> Job | None:
        return self.s.get(Job, job_id)

    def add(self, kind: str, target: str, target_id: int) -> Job:
        job = Job(kind=kind, target=target, target_id=target_id, status="queued", attempts=0, progress=0.0)
        self.s.add(job)
        self.s.flush()
        return job

    def unfinished(self) -> list[Job]:
        return list(self.s.scalars(select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id)))

    def latest_for(self, kind: str, target_id: int) -> Job | None:
        return self.s.scalar(
            select(Job).where(Job.kind == kind, Job.target_id == target_id).order_by(Job.id.desc()).limit(1)
        )

    def all_for(self, kind: str, target_ids: list[int]) -> list[Job]:
        """Every job of ``kind`` on ``target_ids``, oldest first."""
        if not target_ids:
            return []
        return list(
            self.s.scalars(
                select(Job).where(Job.kind == kind, Job.target_id.in_(target_ids)).order_by(Job.id)
            )
        )

    def held_encodes(self, version_ids: list[int], beat_since: datetime) -> list[Job]:
        """Encode jobs (whole or part) of ``version_ids`` running with a heartbeat since ``beat_since``
        (a live worker)."""
        if not version_ids:
            return []
        return list(
            self.s.scalars(
                select(Job).where(
                    _encodes_of(version_ids), Job.status == "running", Job.updated_at >= beat_since
                )
            )
        )

    def cancel_encodes(self, version_ids: list[int], reason: str) -> None:
        """Mark the unfinished encode jobs (whole or part) of ``version_ids`` failed (their version is
        being deleted)."""
        if version_ids:
            self.cancel_unfinished(_encodes_of(version_ids), reason)

    def cancel_unfinished(self, which: ColumnElement[bool], reason: str) -> None:
        """Mark the unfinished jobs matching ``which`` failed with ``reason`` (what they work on is going)."""
        self.s.execute(
            update(Job)
            .where(which, Job.status.in_(("queued", "running", "waiting")))
            .values(status="failed", error=reason)
            .execution_options(synchronize_session=False)
        )

    def set_progress(self, job_id: int, progress: float) -> None:
        self.s.execute(update(Job).where(Job.id == job_id).values(progress=progress))


def count_rows(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


class ReadableTotals:
    """The zoo's totals over the models a caller with ``private_namespaces`` may read (stats)."""

    def __init__(self, session: Session, private_namespaces: Sequence[str]) -> None:
        self.s = session
        self.allowed = list(private_namespaces)

    def _versions(self) -> Select:
        return of_readable_versions(select(Version.id), self.allowed)

    def _count(self, query: Select) -> int:
        return int(self.s.scalar(select(func.count()).select_from(query.subquery())) or 0)

    def as_dict(self) -> dict[str, Any]:
        versions = self._versions()
        models = select(Model.id).join(Namespace).where(readable(self.allowed))
        in_readable = Tensor.version_id.in_(versions)
        shas = union(
            select(File.blob.label("sha")).where(File.version_id.in_(versions)),
            select(File.header_blob.label("sha")).where(File.version_id.in_(versions)),
            select(Tensor.blob.label("sha")).where(in_readable),
            select(TensorChunk.blob.label("sha")).where(
                TensorChunk.tensor_id.in_(select(Tensor.id).where(in_readable))
            ),
            select(Artifact.blob.label("sha")).where(Artifact.version_id.in_(versions)),
        ).subquery()
        totals = select(func.count(), func.coalesce(func.sum(Blob.size), 0))
        blobs, stored = self.s.execute(totals.where(Blob.sha256.in_(select(shas.c.sha)))).one()
        artifact_shas = select(Artifact.blob).where(Artifact.version_id.in_(versions)).distinct()
        artifact_bytes = self.s.scalar(
            select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(artifact_shas))
        )
        logical = self.s.scalar(
            select(func.coalesce(func.sum(Version.logical_bytes), 0)).where(
                Version.id.in_(versions), Version.status == "ready"
            )
        )
        encodings = self.s.execute(
            select(Tensor.encoding, func.count()).where(in_readable).group_by(Tensor.encoding)
        )
        return {
            "models": self._count(models),
            "versions": self._count(versions),
            "files": self._count(select(File.id).where(File.version_id.in_(versions))),
            "tensors": self._count(select(Tensor.id).where(in_readable)),
            "blobs": int(blobs),
            "logical_bytes": int(logical or 0),
            "stored_bytes": int(stored),
            "artifact_bytes": int(artifact_bytes or 0),
            "encodings": {e: int(n) for e, n in encodings},
        }
