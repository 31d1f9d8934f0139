"""The registry's tables as SQLAlchemy 2 typed models (schema created by Alembic, never create_all)."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256 = String(64)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_commit_id() -> str:
    """A version's commit id: 40 hex digits, as a git commit sha looks to Hugging Face Hub clients."""
    return secrets.token_hex(20)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every backend (SQLite hands back naive datetimes: they are UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Namespace(Timestamped, Base):
    __tablename__ = "namespace"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class ApiToken(Timestamped, Base):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(SHA256, unique=True)
    namespace_id: Mapped[int | None] = mapped_column(ForeignKey("namespace.id", ondelete="CASCADE"))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)  # "read", "write"
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Blob(Timestamped, Base):
    """A content-addressed object (key ``blobs/ab/<sha256>``); deleted only when refcount reaches 0."""

    __tablename__ = "blob"
    sha256: Mapped[str] = mapped_column(SHA256, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(Integer, default=0)


class RevisionFloor(Base):
    """The highest revision number a model name has had among versions since deleted (or with the model
    itself): a new version of ``namespace/name`` is numbered above it, so a number names one version
    forever, even across a delete (clients keep numbered revisions cached without asking again)."""

    __tablename__ = "revision_floor"
    namespace_id: Mapped[int] = mapped_column(
        ForeignKey("namespace.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)


class Model(Timestamped, Base):
    __tablename__ = "model"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    namespace: Mapped[Namespace] = relationship(lazy="raise")


class Version(Timestamped, Base):
    __tablename__ = "version"
    __table_args__ = (
        UniqueConstraint("model_id", "revision"),
        Index("ix_version_status_created_at", "status", "created_at"),  # the stale-upload sweep
        # lineage: walks over children (registry.lineage_index rewriting a subtree) read this index only
        Index("ix_version_lineage", "parent_version_id", "id", "model_id", "relation"),
        Index("ix_version_creator_status", "created_by_token_id", "status"),  # per-token pending limit
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    parent_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("version.id", ondelete="SET NULL"), index=True
    )
    relation: Mapped[str] = mapped_column(String(40), default="finetune")
    status: Mapped[str] = mapped_column(String(20), default="pending")
    status_message: Mapped[str | None] = mapped_column(Text)
    logical_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    lossy: Mapped[bool] = mapped_column(Boolean, default=False)
    profiles: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # base="auto": per-tensor value samples (services.similarity) and the picked parent's score
    # deferred: a page of versions must not parse a sketch per row (sketch_band_repository reads them)
    sketch: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    parent_similarity: Mapped[float | None] = mapped_column(Float)
    # the stable 40-hex id that names this version as a revision (Hugging Face Hub ``sha``)
    commit_id: Mapped[str] = mapped_column(String(40), unique=True, default=new_commit_id)
    # the token that created it (None: auth off, or a deleted token): its pending versions are limited
    created_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_token.id", ondelete="SET NULL"))
    model: Mapped[Model] = relationship(lazy="raise")


class LineageDescendant(Base):
    """One version of another model below ``ancestor_model_id`` in the lineage, at any depth: a model's
    descendants are paged and counted from this table's index instead of walking the family. Kept by
    ``registry.lineage_index`` in the transaction that sets or cuts a parent; ``private`` is the
    descendant model's (services/model_settings.py rewrites it when that changes)."""

    __tablename__ = "lineage_descendant"
    __table_args__ = (
        Index("ix_lineage_descendant_counts", "ancestor_model_id", "relation", "private", "model_id"),
    )
    ancestor_model_id: Mapped[int] = mapped_column(
        ForeignKey("model.id", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(
        ForeignKey("version.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))  # the descendant's
    relation: Mapped[str] = mapped_column(String(40))
    private: Mapped[bool] = mapped_column(Boolean)


class VersionTag(Timestamped, Base):
    """A named revision (``prod``, ``v1.2``) of a model: points at one of its versions; can be moved."""

    __tablename__ = "version_tag"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class File(Base):
    __tablename__ = "file"
    __table_args__ = (
        UniqueConstraint("version_id", "path"),
        # upload dedup: the first ready file with these bytes, read in id order (stops at the first match
        # however many versions share the bytes)
        Index("ix_file_sha256_id", "sha256", "id"),
        # staged uploads still named by a file row (encode's clean-up, the orphan sweep): few rows
        Index(
            "ix_file_staging_key",
            "staging_key",
            postgresql_where=text("staging_key IS NOT NULL"),
            sqlite_where=text("staging_key IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(SHA256)  # of the bytes a pull serves
    original_sha256: Mapped[str | None] = mapped_column(SHA256)  # of the pushed bytes if not (lossy)
    kind: Mapped[str] = mapped_column(String(20))  # "safetensors" | "other"
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    # indexed: a delete finds the files deduplicated against its own (SET NULL, services.dedup_handover)
    source_file_id: Mapped[int | None] = mapped_column(ForeignKey("file.id", ondelete="SET NULL"), index=True)
    staging_key: Mapped[str | None] = mapped_column(String(200))  # upload waiting to be encoded
    header_blob: Mapped[str | None] = mapped_column(ForeignKey("blob.sha256"), index=True)
    blob: Mapped[str | None] = mapped_column(ForeignKey("blob.sha256"), index=True)


class Tensor(Base):
    __tablename__ = "tensor"
    __table_args__ = (
        UniqueConstraint("file_id", "name"),
        # encode dedup (``TensorRepository.stored_with_shas``): stored tensors by their bytes' sha256,
        # shortest chain first; ``same`` copies are left out, so thousands of versions copying one base
        # tensor add nothing to the lookup
        Index(
            "ix_tensor_stored_sha256",
            "sha256",
            "depth",
            "id",
            postgresql_where=text("encoding <> 'same'"),
            sqlite_where=text("encoding <> 'same'"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("file.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[int]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(SHA256)
    offset_begin: Mapped[int] = mapped_column(BigInteger)
    offset_end: Mapped[int] = mapped_column(BigInteger)
    encoding: Mapped[str] = mapped_column(String(16))  # same | delta | delta-rows | plain
    blob: Mapped[str | None] = mapped_column(ForeignKey("blob.sha256"), index=True)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    depth: Mapped[int] = mapped_column(Integer, default=0)  # decode steps from a plain tensor
    parent_tensor_id: Mapped[int | None] = mapped_column(ForeignKey("tensor.id"), index=True)
    # > 0: the payload is in this many tensor_chunk rows (element ranges coded apart, blob is null)
    chunks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class TensorChunk(Base):
    """One element range ``[begin, end)`` of a large tensor, coded on its own (``plain``, or ``delta``
    against the same elements of the tensor's parent), so a Range read decodes only what it returns."""

    __tablename__ = "tensor_chunk"
    tensor_id: Mapped[int] = mapped_column(ForeignKey("tensor.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    begin: Mapped[int] = mapped_column(BigInteger)
    end: Mapped[int] = mapped_column(BigInteger)
    encoding: Mapped[str] = mapped_column(String(16))  # plain | delta
    blob: Mapped[str] = mapped_column(ForeignKey("blob.sha256"), index=True)
    sha256: Mapped[str] = mapped_column(SHA256)  # of the chunk's raw bytes
    stored_bytes: Mapped[int] = mapped_column(BigInteger)


class Artifact(Timestamped, Base):
    __tablename__ = "artifact"
    __table_args__ = (UniqueConstraint("version_id", "profile"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), index=True)
    profile: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    status_message: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    blob: Mapped[str | None] = mapped_column(ForeignKey("blob.sha256"), index=True)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(Timestamped, Base):
    __tablename__ = "job"
    __table_args__ = (Index("ix_job_kind_target_id", "kind", "target_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # encode_version | build_artifact
    target: Mapped[str] = mapped_column(String(300))  # e.g. "org/name@2" or "org/name@2:deltadq:..."
    target_id: Mapped[int] = mapped_column(Integer)  # version.id or artifact.id
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class TextSet(Timestamped, Base):
    __tablename__ = "text_set"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(SHA256)
    bytes: Mapped[int] = mapped_column(BigInteger)
    blob: Mapped[str | None] = mapped_column(ForeignKey("blob.sha256"))


class Evaluation(Timestamped, Base):
    __tablename__ = "evaluation"
    # the leaderboard: a text's evaluations in bpb order, a page read in order (services.leaderboard)
    __table_args__ = (Index("ix_evaluation_text_bpb", "text_set_id", "bits_per_byte", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), index=True)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifact.id", ondelete="CASCADE"))
    text_set_id: Mapped[int] = mapped_column(ForeignKey("text_set.id", ondelete="CASCADE"), index=True)
    bits_per_byte: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="ready")
    status_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SketchBand(Base):
    """One locality-sensitive key of a version's sketch (``services.sketch_index``): versions
    sharing a (band, key) pair are the candidates compared when a push asks for ``base="auto"``."""

    __tablename__ = "sketch_band"
    __table_args__ = (Index("ix_sketch_band_band_key", "band", "key", "version_id"),)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id", ondelete="CASCADE"), primary_key=True)
    band: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[int] = mapped_column(Integer)


class Tally(Base):
    """A counter of the zoo (``registry.tallies``: rows, bytes, tensors per encoding, a text's
    evaluations), kept by triggers in the transaction that writes the rows it counts."""

    __tablename__ = "tally"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class TallyDelta(Base):
    """Postgres: what one statement added to counters, appended (no lock shared by concurrent writers)
    and folded into ``tally`` by a reader. Empty on SQLite, whose triggers update ``tally`` directly."""

    __tablename__ = "tally_delta"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    n: Mapped[int] = mapped_column(BigInteger)
