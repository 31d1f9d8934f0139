"""Result dataclasses of the SDK, built from the REST shapes of docs/REST.md.

Each has ``from_dict`` (unknown keys are ignored, so a newer server does not break an older client)
and keeps the raw answer in ``raw`` for ``--json`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deltazoo.refs import Ref  # noqa: F401  (``deltazoo.models.Ref``, as before: the parser lives in refs)


def _ratio(d: dict[str, Any]) -> float | None:
    r = d.get("ratio")
    return float(r) if r is not None else None


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str  # of the bytes a pull serves (and checks)
    kind: str = "other"
    original_sha256: str | None = None  # of the pushed bytes, where a lossy version serves others

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileInfo:
        return cls(
            path=d["path"], size=int(d["size"]), sha256=d["sha256"], kind=d.get("kind", "other"),
            original_sha256=d.get("original_sha256"),
        )


@dataclass(frozen=True)
class TensorInfo:
    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str
    encoding: str | None
    logical_bytes: int
    stored_bytes: int
    parent: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(
            file=d["file"],
            name=d["name"],
            dtype=d["dtype"],
            shape=tuple(int(x) for x in d["shape"]),
            sha256=d["sha256"],
            encoding=d.get("encoding"),
            logical_bytes=int(d.get("logical_bytes") or 0),
            stored_bytes=int(d.get("stored_bytes") or 0),
            parent=d.get("parent"),
        )


@dataclass(frozen=True)
class Artifact:
    profile: str
    status: str
    bytes: int | None
    quality: dict[str, Any]
    created_at: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        return cls(
            profile=d["profile"],
            status=d["status"],
            bytes=d.get("bytes"),
            quality=dict(d.get("quality") or {}),
            created_at=d.get("created_at"),
        )


@dataclass(frozen=True)
class VersionInfo:
    """A version (``VersionSummary``); ``files``/``tensors``/``artifacts``/``chain`` when detailed."""

    name: str
    revision: int
    ref: str
    parent: str | None
    relation: str | None
    status: str
    status_message: str | None
    logical_bytes: int
    stored_bytes: int
    ratio: float | None
    lossy: bool
    created_at: str | None
    files: tuple[FileInfo, ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    chain: tuple[str, ...] = ()
    parent_similarity: float | None = None  # set when the server detected the parent (base="auto")
    suggested_base: str | None = None  # a clearly related stored version the server noticed (not applied)
    commit_id: str | None = None  # 40 hex digits; usable as a revision (ORG/NAME@<commit_id>)
    tags: tuple[str, ...] = ()  # named revisions pointing at this version
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionInfo:
        return cls(
            name=d["name"],
            revision=int(d["revision"]),
            ref=d.get("ref") or f"{d['name']}@{d['revision']}",
            parent=d.get("parent"),
            relation=d.get("relation"),
            status=d["status"],
            status_message=d.get("status_message"),
            logical_bytes=int(d.get("logical_bytes") or 0),
            stored_bytes=int(d.get("stored_bytes") or 0),
            ratio=_ratio(d),
            lossy=bool(d.get("lossy")),
            created_at=d.get("created_at"),
            files=tuple(FileInfo.from_dict(f) for f in d.get("files") or ()),
            tensors=tuple(TensorInfo.from_dict(t) for t in d.get("tensors") or ()),
            artifacts=tuple(Artifact.from_dict(a) for a in d.get("artifacts") or ()),
            chain=tuple(d.get("chain") or ()),
            parent_similarity=d.get("parent_similarity"),
            suggested_base=(d.get("suggested_base") or {}).get("ref"),
            commit_id=d.get("commit_id"),
            tags=tuple(d.get("tags") or ()),
            raw=d,
        )

    def artifact(self, profile: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.profile == profile), None)


@dataclass(frozen=True)
class ModelInfo:
    """A model (``ModelSummary``, or ``Model`` with its versions)."""

    name: str
    description: str
    private: bool
    version_count: int
    latest_revision: int | None
    logical_bytes: int
    stored_bytes: int
    ratio: float | None
    created_at: str | None
    versions: tuple[VersionInfo, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        versions = d.get("versions")
        listed = versions if isinstance(versions, list) else []
        count = versions if isinstance(versions, int) else len(listed)
        return cls(
            name=d["name"],
            description=d.get("description") or "",
            private=bool(d.get("private")),
            version_count=int(count),
            latest_revision=d.get("latest_revision"),
            logical_bytes=int(d.get("logical_bytes") or 0),
            stored_bytes=int(d.get("stored_bytes") or 0),
            ratio=_ratio(d),
            created_at=d.get("created_at"),
            versions=tuple(VersionInfo.from_dict(v) for v in listed),
            raw=d,
        )


@dataclass(frozen=True)
class ModelList:
    items: tuple[ModelInfo, ...]
    total: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelList:
        items = tuple(ModelInfo.from_dict(m) for m in d.get("items") or ())
        return cls(items=items, total=int(d.get("total", len(items))), raw=d)


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    relation: str | None


@dataclass(frozen=True)
class Lineage:
    """A model's versions, ancestors (nearest first) and descendants (versions of other models, any
    depth). ``descendants`` holds the ones fetched (every one, unless a limit was asked for);
    ``descendant_counts`` counts them all by relation, fetched or not."""

    model: str
    nodes: tuple[VersionInfo, ...]
    edges: tuple[Edge, ...]
    ancestors: tuple[str, ...]
    descendants: tuple[str, ...]
    descendant_counts: dict[str, int] = field(default_factory=dict)
    descendants_total: int = 0
    next_cursor: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lineage:
        descendants = tuple(d.get("descendants") or ())
        return cls(
            model=d["model"],
            nodes=tuple(VersionInfo.from_dict(n) for n in d.get("nodes") or ()),
            edges=tuple(Edge(e["parent"], e["child"], e.get("relation")) for e in d.get("edges") or ()),
            ancestors=tuple(d.get("ancestors") or ()),
            descendants=descendants,
            descendant_counts=dict(d.get("descendant_counts") or {}),
            descendants_total=int(d.get("descendants_total", len(descendants))),
            next_cursor=d.get("next_cursor"),
            raw=d,
        )

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
        return cls.from_dict(merged)


@dataclass(frozen=True)
class Stats:
    models: int
    versions: int
    files: int
    tensors: int
    blobs: int
    logical_bytes: int
    stored_bytes: int
    ratio: float | None
    encodings: dict[str, int]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        return cls(
            models=int(d.get("models") or 0),
            versions=int(d.get("versions") or 0),
            files=int(d.get("files") or 0),
            tensors=int(d.get("tensors") or 0),
            blobs=int(d.get("blobs") or 0),
            logical_bytes=int(d.get("logical_bytes") or 0),
            stored_bytes=int(d.get("stored_bytes") or 0),
            ratio=_ratio(d),
            encodings={str(k): int(v) for k, v in (d.get("encodings") or {}).items()},
            raw=d,
        )


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    target: str | None
    status: str
    attempts: int
    progress: float
    error: str | None
    created_at: str | None
    updated_at: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=str(d["id"]),
            kind=d.get("kind", ""),
            target=d.get("target"),
            status=d["status"],
            attempts=int(d.get("attempts") or 0),
            progress=float(d.get("progress") or 0.0),
            error=d.get("error"),
            created_at=d.get("created_at"),
            updated_at=d.get("updated_at"),
            raw=d,
        )

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True)
class TokenInfo:
    """An API token as the admin sees it; ``token`` (the secret) only in the answer that created it."""

    id: int
    name: str
    namespace: str | None
    scopes: tuple[str, ...]
    admin: bool
    token: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenInfo:
        return cls(
            id=int(d["id"]),
            name=d["name"],
            namespace=d.get("namespace"),
            scopes=tuple(d.get("scopes", ())),
            admin=bool(d.get("admin", False)),
            token=d.get("token"),
            raw=d,
        )


@dataclass(frozen=True)
class TagInfo:
    """A named revision: ``name`` points at ``version`` (``ORG/NAME@REV``)."""

    name: str
    ref: str
    version: str
    revision: int
    commit_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TagInfo:
        return cls(
            name=d["name"],
            ref=d["ref"],
            version=d["version"],
            revision=int(d["revision"]),
            commit_id=d["commit_id"],
            raw=d,
        )
