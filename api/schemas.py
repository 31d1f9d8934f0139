"""Request bodies of docs/REST.md, which only the API reads. The response shapes are the contract both
sides share, ``deltazoo/schemas.py``, re-exported here so that routes name every body the same way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from deltazoo.schemas import (
    Artifact,
    ArtifactRequested,
    BaseSuggestion,
    Committed,
    Edge,
    FileInfo,
    Health,
    Job,
    Lineage,
    Model,
    ModelList,
    ModelSummary,
    PendingList,
    PendingVersion,
    Stats,
    Tag,
    TagList,
    TensorInfo,
    TokenCreated,
    TokenInfo,
    TokenList,
    Upload,
    VersionCreated,
    VersionDetail,
    VersionSummary,
)

__all__ = [
    "Artifact", "ArtifactRequest", "ArtifactRequested", "BaseSuggestion", "Committed", "DeclaredFile",
    "Edge", "FileInfo", "Health", "Job", "Lineage", "Model", "ModelCreate", "ModelList", "ModelSummary",
    "ModelUpdate", "PendingList", "PendingVersion", "Stats", "Tag", "TagList", "TagSet", "TensorInfo",
    "TokenCreate", "TokenCreated", "TokenInfo", "TokenList", "Upload", "VersionCreate", "VersionCreated",
    "VersionDetail", "VersionSummary",
]


class Schema(BaseModel):
    """A request body: unknown keys are refused, and booleans and sizes are strict (``"admin": "yes"``
    or ``"size": true`` is a 422, not an admin token or a 1-byte file)."""

    model_config = ConfigDict(extra="forbid")


class ModelCreate(Schema):
    name: str = Field(examples=["org/llama-math"])
    description: str = ""
    private: StrictBool = False
    exist_ok: StrictBool = False


class ModelUpdate(Schema):
    """``PATCH /v1/models/{org}/{name}``: what is given changes, what is left out stays."""

    description: str | None = None
    private: StrictBool | None = None


class DeclaredFile(Schema):
    path: str
    size: StrictInt = Field(ge=0, le=2**63 - 1)
    # None: the upload that carries the file's last byte names it (header Deltazoo-Sha256), so a client
    # hashes a large file while it sends it; such a file is never deduplicated against stored bytes
    sha256: str | None = None


class VersionCreate(Schema):
    base: str | None = None
    relation: str = "finetune"
    profiles: list[str] = []
    files: list[DeclaredFile]
    retain: str = Field(default="exact", pattern="^(exact|lossy)$")
    resume: StrictBool = False  # continue the newest pending version declaring the same files, if any


class ArtifactRequest(Schema):
    profile: str


class TokenCreate(Schema):
    name: str = Field(examples=["ci for acme"])
    namespace: str | None = Field(default=None, description="null: every namespace")
    scopes: list[str] = Field(default_factory=lambda: ["read"], examples=[["read", "write"]])
    admin: StrictBool = False


class TagSet(Schema):
    revision: str = Field(
        min_length=1, max_length=100, description="a revision number, main, a commit id or another tag"
    )
