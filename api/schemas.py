"""Request and response bodies of docs/REST.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(Schema):
    name: str = Field(examples=["org/llama-math"])
    description: str = ""
    private: bool = False
    exist_ok: bool = False


class ModelSummary(Schema):
    name: str
    description: str
    private: bool
    versions: int
    latest_revision: int | None
    logical_bytes: int
    stored_bytes: int
    ratio: float | None
    created_at: datetime


class BaseSuggestion(Schema):
    ref: str
    similarity: float


class VersionSummary(Schema):
    name: str
    revision: int
    ref: str
    parent: str | None
    relation: str | None  # null for a root (no parent)
    status: str
    status_message: str | None
    logical_bytes: int
    stored_bytes: int
    artifact_bytes: int = 0  # packed serving artifacts, not part of stored_bytes
    ratio: float | None
    lossy: bool
    created_at: datetime
    parent_similarity: float | None = None  # set when the parent was detected (base="auto")
    suggested_base: BaseSuggestion | None = None  # a clearly related stored version (not applied)
    commit_id: str | None = None  # 40 hex digits, a revision everywhere (the Hub protocol's sha)
    tags: list[str] = []  # named revisions pointing at this version


class Model(ModelSummary):
    versions: list[VersionSummary]  # type: ignore[assignment]


class ModelList(Schema):
    items: list[ModelSummary]
    total: int


class DeclaredFile(Schema):
    path: str
    size: int = Field(ge=0, le=2**63 - 1)
    sha256: str


class VersionCreate(Schema):
    base: str | None = None
    relation: str = "finetune"
    profiles: list[str] = []
    files: list[DeclaredFile]
    retain: str = Field(default="exact", pattern="^(exact|lossy)$")
    resume: bool = False  # continue the newest pending version declaring the same files, if any


class Upload(Schema):
    path: str
    needed: bool


class VersionCreated(Schema):
    version: VersionSummary
    uploads: list[Upload]
    resumed: bool = False  # an unfinished pending version with the same files was continued


class PendingVersion(VersionSummary):
    files: int
    files_uploaded: int
    declared_bytes: int
    held_bytes: int  # whole files uploaded plus the received part of files sent in parts
    expires_at: datetime


class PendingList(Schema):
    items: list[PendingVersion]


class FileInfo(Schema):
    path: str
    size: int
    sha256: str  # of the bytes a pull serves
    kind: str
    original_sha256: str | None = None  # of the pushed bytes, where a lossy version serves others


class TensorInfo(Schema):
    file: str
    name: str
    dtype: str
    shape: list[int]
    sha256: str
    encoding: str
    logical_bytes: int
    stored_bytes: int
    parent: str | None


class Artifact(Schema):
    profile: str
    status: str
    status_message: str | None = None
    bytes: int
    quality: dict[str, Any]
    created_at: datetime


class VersionDetail(VersionSummary):
    files: list[FileInfo]
    tensors: list[TensorInfo]
    artifacts: list[Artifact]
    chain: list[str]


class Job(Schema):
    id: int
    kind: str
    target: str
    status: str
    attempts: int
    progress: float
    error: str | None
    created_at: datetime
    updated_at: datetime


class Committed(Schema):
    version: VersionSummary
    job: Job


class ArtifactRequest(Schema):
    profile: str


class ArtifactRequested(Schema):
    artifact: Artifact
    job: Job


class Edge(Schema):
    parent: str
    child: str
    relation: str


class Lineage(Schema):
    model: str
    nodes: list[VersionSummary]
    edges: list[Edge]
    ancestors: list[str]
    descendants: list[str]  # one page, by id; ``next_cursor`` asks for the next
    descendant_counts: dict[str, int]  # relation -> descendants (any depth) the viewer may see
    descendants_total: int
    next_cursor: str | None


class Stats(Schema):
    models: int
    versions: int
    files: int
    tensors: int
    blobs: int
    logical_bytes: int
    stored_bytes: int  # every blob once (dedup-aware), artifacts included
    artifact_bytes: int = 0  # the part of stored_bytes that holds packed artifacts
    ratio: float | None
    encodings: dict[str, int]


class Health(Schema):
    status: str
    database: str
    object_store: str


class TokenCreate(Schema):
    name: str = Field(examples=["ci for acme"])
    namespace: str | None = Field(default=None, description="null: every namespace")
    scopes: list[str] = Field(default_factory=lambda: ["read"], examples=[["read", "write"]])
    admin: bool = False


class TokenInfo(Schema):
    id: int
    name: str
    namespace: str | None
    scopes: list[str]
    admin: bool
    created_at: datetime
    last_used_at: datetime | None


class TokenCreated(TokenInfo):
    token: str  # the secret, shown once


class TokenList(Schema):
    items: list[TokenInfo]


class TagSet(Schema):
    revision: str = Field(
        min_length=1, max_length=100, description="a revision number, main, a commit id or another tag"
    )


class Tag(Schema):
    name: str
    ref: str
    version: str  # ORG/NAME@REV the tag points at
    revision: int
    commit_id: str
    updated_at: datetime


class TagList(Schema):
    items: list[Tag]
