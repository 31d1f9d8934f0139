"""The response contract of docs/REST.md, written once: the API answers with these models and the SDK
parses the same answers with them (``VersionDetail.model_validate(body)``).

A contract module (docs/ARCHITECTURE.md): it imports pydantic and nothing of deltazoo, so the SDK keeps
installing without the server, and the server takes nothing else of the client package. Unknown keys are
ignored, so a newer server does not break an older client; ``raw`` is an answer's JSON form (what the
server sent, which ``--json`` prints). Request bodies, which only the API reads, stay in ``api/schemas.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Headers of deltazoo's own, named by the SDK and the server alike.
# A download request's: "sha256" = the client checks the whole file against its sha256 itself, so the
# server need not hash what it rebuilds (docs/REST.md, GET .../files/{path}).
CLIENT_VERIFIES = "Deltazoo-Client-Verifies"
BLOB_SIZES = "Deltazoo-Blob-Sizes"  # ``GET /v1/blobs``' answer: each blob's size, in the order asked
PROFILE_NAME = "Deltazoo-Profile"  # an artifact's answer: its profile as stored (canonical), however asked


class Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @property
    def raw(self) -> dict[str, Any]:
        """This answer as JSON: what the server sent (both sides serialise with this same model)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The SDK's former name of ``model_validate``, kept for code written against it."""
        return cls.model_validate(data)


# --- models and versions -------------------------------------------------------------------------


class ModelSummary(Shape):
    name: str
    description: str
    private: bool
    versions: int
    latest_revision: int | None
    logical_bytes: int
    stored_bytes: int
    ratio: float | None
    created_at: datetime

    @property
    def version_count(self) -> int:
        return self.versions


class BaseSuggestion(Shape):
    ref: str
    similarity: float


class VersionSummary(Shape):
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
    tags: tuple[str, ...] = ()  # named revisions pointing at this version


class Model(ModelSummary):
    """A model with its versions."""

    versions: tuple[VersionSummary, ...]  # type: ignore[assignment]

    @property
    def version_count(self) -> int:
        return len(self.versions)


class ModelList(Shape):
    items: tuple[ModelSummary, ...]
    total: int
    next_cursor: str | None = None  # the next page's ``cursor`` (None: this page is the last)


class FileInfo(Shape):
    path: str
    size: int
    sha256: str  # of the bytes a pull serves (and checks)
    kind: str  # safetensors | json | other
    original_sha256: str | None = None  # of the pushed bytes, where a lossy version serves others


class TensorInfo(Shape):
    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str
    encoding: str  # same | delta | delta-rows | plain
    logical_bytes: int
    stored_bytes: int
    parent: str | None  # ORG/NAME@REV:FILE:TENSOR of a parent the caller may read


class Artifact(Shape):
    profile: str
    status: str
    status_message: str | None = None
    bytes: int
    quality: dict[str, Any]
    created_at: datetime


class VersionDetail(VersionSummary):
    files: tuple[FileInfo, ...]
    tensors: tuple[TensorInfo, ...]
    artifacts: tuple[Artifact, ...]
    chain: tuple[str, ...]  # this version's ref, its parent's, ... to the root

    def artifact(self, profile: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.profile == profile), None)


class Upload(Shape):
    path: str
    needed: bool


class VersionCreated(Shape):
    version: VersionSummary
    uploads: tuple[Upload, ...]
    resumed: bool = False  # an unfinished pending version with the same files was continued


class PendingVersion(VersionSummary):
    files: int
    files_uploaded: int
    declared_bytes: int
    held_bytes: int  # whole files uploaded plus the received part of files sent in parts
    expires_at: datetime


class PendingList(Shape):
    items: tuple[PendingVersion, ...]


# --- jobs and artifacts --------------------------------------------------------------------------


class Job(Shape):
    id: int
    kind: str  # encode_version | build_artifact | evaluate
    target: str  # e.g. "org/name@2" or "org/name@2:deltadq:..."
    status: str
    attempts: int
    progress: float
    error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")


class Committed(Shape):
    version: VersionSummary
    job: Job


class ArtifactRequested(Shape):
    artifact: Artifact
    job: Job


# --- lineage and totals --------------------------------------------------------------------------


class Edge(Shape):
    parent: str
    child: str
    relation: str


class Lineage(Shape):
    """A model's versions, ancestors (nearest first) and descendants (versions of other models, any
    depth). ``descendants`` holds one page (by id; ``next_cursor`` asks for the next), or every page the
    SDK fetched; ``descendant_counts`` counts them all by relation, fetched or not."""

    model: str
    nodes: tuple[VersionSummary, ...]
    edges: tuple[Edge, ...]
    ancestors: tuple[str, ...]
    descendants: tuple[str, ...]
    descendant_counts: dict[str, int]  # relation -> descendants (any depth) the viewer may see
    descendants_total: int
    next_cursor: str | None

    @classmethod
    def from_pages(cls, pages: list[dict[str, Any]]) -> Lineage:
        """One lineage from consecutive pages of the lineage API (nodes and edges once each)."""
        first, last = pages[0], pages[-1]
        nodes: dict[str, dict[str, Any]] = {}
        edges: dict[tuple[str, str], dict[str, Any]] = {}
        descendants: list[str] = []
        for page in pages:
            nodes.update((n["ref"], n) for n in page.get("nodes") or ())
            edges.update(((e["parent"], e["child"]), e) for e in page.get("edges") or ())
            descendants += page.get("descendants") or ()
        merged = {
            **first,
            "nodes": list(nodes.values()),
            "edges": list(edges.values()),
            "descendants": descendants,
            "next_cursor": last.get("next_cursor"),
        }
        return cls.model_validate(merged)


class Stats(Shape):
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


class Health(Shape):
    status: str
    database: str
    object_store: str


# --- tokens and tags -----------------------------------------------------------------------------


class TokenInfo(Shape):
    """An API token as the admin sees it; its secret only in the answer that created it."""

    id: int
    name: str
    namespace: str | None
    scopes: tuple[str, ...]
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    token: str | None = Field(  # None, and not sent, anywhere but in TokenCreated
        default=None, exclude_if=lambda token: token is None, description="the secret: only when created"
    )


class TokenCreated(TokenInfo):
    token: str  # the secret, shown once


class TokenList(Shape):
    items: tuple[TokenInfo, ...]


class Tag(Shape):
    """A named revision: ``name`` points at ``version`` (``ORG/NAME@REV``)."""

    name: str
    ref: str
    version: str
    revision: int
    commit_id: str
    updated_at: datetime


class TagList(Shape):
    items: tuple[Tag, ...]
