"""The read side of the Hugging Face Hub protocol: repositories are models, commits are versions.

A repository ``org/name`` is a deltazoo model; its revisions are the version numbers, ``main`` (the
latest ready version), each version's 40-hex commit id and the model's tags. Every file is presented as
a Git LFS file: its ``lfs.oid`` and ETag are the sha256 deltazoo already keeps, its git blob id is the
sha1 of the LFS pointer (computed from sha256 and size, so nothing is read to list a tree).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deltazoo.registry.errors import DeltazooError, NotFound, Unavailable
from deltazoo.registry.models import ApiToken, File, Model, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository, ModelRepository, TagRepository, VersionRepository
from deltazoo.services.access import Principal, can_read_model, model_not_found, readable_versions
from deltazoo.services.model_card import card_data
from deltazoo.services.refs import MAIN, find_version, parse_name, ref_string
from deltazoo.services.transfer import FilePlan, iter_file, plan_file
from sqlalchemy import select
from sqlalchemy.orm import Session

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
MAX_LISTED_MODELS = 1000


def lfs_pointer(sha256: str, size: int) -> bytes:
    return LFS_POINTER.format(sha256=sha256, size=size).encode()


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with these bytes (sha1 of ``blob <size>\\0<bytes>``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Repo:
    """A model the caller may read, and the version a revision names (None: the model has none yet)."""

    model: Model
    full_name: str
    version: Version | None


def open_repo(
    session: Session, viewer: Principal, repo_id: str, revision: str | None, *, empty_main: bool = False
) -> Repo:
    """The repository ``repo_id`` at ``revision`` (None: ``main``, which may not exist yet; so may an
    explicit ``main`` with ``empty_main``, for listings of a repository created but not yet committed)."""
    model, org, repo_id = repo_model(session, repo_id)
    if not can_read_model(viewer, model, org):
        raise model_not_found(*parse_name(repo_id))
    if revision is None or revision == MAIN:  # never waited for: a commit is answered once it is main
        version = VersionRepository(session).latest(model.id, ready_only=True)
        if version is None and revision == MAIN and not empty_main:
            find_version(session, model, repo_id, MAIN)  # raises version_not_found, saying why
    else:
        version = find_version(session, model, repo_id, revision)
        if not settled(session, version) and version.status == "processing":
            raise StillEncoding(
                f"{ref_string(repo_id, version.revision)} ({revision}) is still being encoded; retry shortly"
            )
        if version.status != "ready":  # a push still uploading, or one that failed: no commit of main
            raise NotFound(
                f"{ref_string(repo_id, version.revision)} ({revision}) is {version.status}, not a commit",
                code="version_not_found",
            )
    return Repo(model, repo_id, version)


def git_revision(revision: str) -> str:
    """A git ref name as the revision it names here: ``refs/heads/main`` is ``main``, ``refs/tags/T`` tag
    ``T``; ``refs/pr/N`` and other branches name nothing (deltazoo has one line of versions, ``main``)."""
    if revision.startswith("refs/heads/"):
        branch = revision.removeprefix("refs/heads/")
        if branch != MAIN:
            raise NotFound(f"there is no branch {branch!r}: deltazoo has one, main", code="version_not_found")
        return MAIN
    if revision.startswith("refs/tags/"):
        return revision.removeprefix("refs/tags/")
    if revision.startswith("refs/"):
        raise NotFound(
            f"{revision!r} names nothing here: deltazoo has main and tags", code="version_not_found"
        )
    return revision


def repo_model(session: Session, repo_id: str) -> tuple[Model, str, str]:
    """The model a repository id names, found as the Hub finds one: under its exact name, else under the
    name it has up to letter case (``acme/UpperCase`` for ``acme/uppercase``); with its namespace and
    its stored ``org/name``. Missing: 404, whatever the caller may read (it checks that next)."""
    org, name = parse_name(repo_id)
    models = ModelRepository(session)
    model = models.get(org, name)
    if model is None and (variant := models.case_variant(org, name)) is not None:
        model, repo_id = variant
        org = repo_id.split("/", 1)[0]
    if model is None:
        raise model_not_found(org, name)
    return model, org, repo_id


class StillEncoding(Unavailable):
    """A revision named explicitly (a commit id just handed out) whose encode outlasted the read's wait:
    503 with ``Retry-After``, which clients retry, rather than a 409 they report as a failure."""

    code = "version_processing"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after = 5


HUB_READ_WAIT_S = 8.0  # under huggingface_hub's 10-second HEAD timeout
HUB_READ_LOOK_EVERY_S = 0.1


def wait_encoded(session: Session, version: Version, wait_s: float, every_s: float) -> str:
    """``version``'s status once it is no longer ``processing``, or after ``wait_s`` (looked at every
    ``every_s``, each look a fresh read of the row: the caller has nothing uncommitted)."""
    until = time.monotonic() + wait_s
    while version.status == "processing" and time.monotonic() < until:
        time.sleep(every_s)
        session.refresh(version)
    return version.status


def settled(session: Session, version: Version) -> bool:
    """Whether ``version`` is ready, after waiting up to ``HUB_READ_WAIT_S`` for its encode: a commit id
    read right after a commit answered before its encode was done (after ``PUBLISH_WAIT_S``). ``main``
    is never waited for (readers of a model being re-committed keep their latency)."""
    return wait_encoded(session, version, HUB_READ_WAIT_S, HUB_READ_LOOK_EVERY_S) == "ready"


def _require_version(repo: Repo) -> Version:
    if repo.version is None:
        raise NotFound(f"model {repo.full_name} has no ready version yet (main)", code="version_not_found")
    return repo.version


def file_entry(f: File) -> dict[str, Any]:
    pointer = lfs_pointer(f.sha256, f.size)
    return {
        "type": "file",
        "oid": git_blob_id(pointer),
        "size": f.size,
        "path": f.path,
        "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": len(pointer)},
    }


def _folder_entry(version: Version, path: str) -> dict[str, Any]:
    oid = hashlib.sha1(f"{version.commit_id}:{path}".encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def model_info(session: Session, store: ObjectStore, repo: Repo) -> dict[str, Any]:
    """``GET /api/models/{repo}[/revision/{rev}]``: what ``model_info`` and ``snapshot_download`` read."""
    model, version = repo.model, repo.version
    files = FileRepository(session).for_version(version.id) if version is not None else []
    siblings = []
    for f in files:
        entry = file_entry(f)
        lfs = {"sha256": f.sha256, "size": f.size, "pointerSize": entry["lfs"]["pointerSize"]}
        siblings.append({"rfilename": f.path, "size": f.size, "blobId": entry["oid"], "lfs": lfs})
    info: dict[str, Any] = {
        "_id": f"{model.id:024x}",
        "id": repo.full_name,
        "modelId": repo.full_name,
        "author": repo.full_name.split("/", 1)[0],
        "sha": version.commit_id if version is not None else None,
        "lastModified": iso(version.updated_at if version is not None else model.created_at),
        "createdAt": iso(model.created_at),
        "private": model.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": (["safetensors"] if any(f.kind == "safetensors" for f in files) else [])
        + (["deltazoo:lossy-elf"] if version is not None and version.lossy else []),
        "siblings": siblings,
        "usedStorage": version.stored_bytes if version is not None else 0,
    }
    if version is not None and version.status == "ready":
        readme = next((f for f in files if f.path == "README.md"), None)
        if readme is not None:
            card = card_data(read_small_file(session, store, version, readme, repo.full_name))
            if card is not None:
                info["cardData"] = card
        info["library_name"] = "transformers" if any(f.path == "config.json" for f in files) else None
    return info


def read_small_file(session: Session, store: ObjectStore, version: Version, f: File, full_name: str) -> bytes:
    plan = plan_file(session, store, version, f.path, ref_string(full_name, version.revision))
    return b"".join(bytes(chunk) for chunk in iter_file(store, plan))


def tree(session: Session, repo: Repo, path: str, recursive: bool) -> list[dict[str, Any]]:
    """``GET /api/models/{repo}/tree/{rev}[/{path}]``: files and folders under ``path``."""
    if repo.version is None and not path.strip("/"):
        return []  # created, nothing committed yet
    version = _require_version(repo)
    files = FileRepository(session).for_version(version.id)
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    if prefix and not any(f.path.startswith(prefix) for f in files):
        raise NotFound(f"{repo.full_name} has no folder {path!r} at this revision", code="file_not_found")
    entries: dict[str, dict[str, Any]] = {}
    for f in files:
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder = prefix + "/".join(parts[:i])
            entries.setdefault(folder, _folder_entry(version, folder))
        if recursive or len(parts) == 1:
            entries[f.path] = file_entry(f)
    return sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))


def paths_info(session: Session, repo: Repo, paths: list[str]) -> list[dict[str, Any]]:
    """``POST /api/models/{repo}/paths-info/{rev}``: the entries of the given paths that exist."""
    if repo.version is None:
        return []
    version = _require_version(repo)
    files = FileRepository(session).for_version(version.id)
    by_path = {f.path: f for f in files}
    out: list[dict[str, Any]] = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in by_path:
            out.append(file_entry(by_path[path]))
        elif path and any(f.path.startswith(path + "/") for f in files):
            out.append(_folder_entry(version, path))
    return out


def refs(session: Session, repo: Repo) -> dict[str, Any]:
    """``GET /api/models/{repo}/refs``: ``main`` as the one branch, the model's tags as tags."""
    branches = []
    if repo.version is not None:
        branches.append({"name": MAIN, "ref": f"refs/heads/{MAIN}", "targetCommit": repo.version.commit_id})
    tags = TagRepository(session).for_model(repo.model.id)
    versions = VersionRepository(session).get_many(t.version_id for t in tags)
    return {
        "branches": branches,
        "converts": [],
        "tags": [
            {"name": t.name, "ref": f"refs/tags/{t.name}", "targetCommit": versions[t.version_id].commit_id}
            for t in tags
        ],
    }


COMMITS_PER_PAGE = 100


def commits(session: Session, viewer: Principal, repo: Repo, page: int) -> tuple[list[dict[str, Any]], bool]:
    """``GET /api/models/{repo}/commits/{rev}`` (``list_repo_commits``): the ready versions up to the one
    ``rev`` names, newest first, ``COMMITS_PER_PAGE`` a page; whether more follow. A version's title says
    what it is (``version 3, finetune of org/base@1``); its author is its namespace."""
    if repo.version is None:
        return [], False
    q = (
        select(Version)
        .where(
            Version.model_id == repo.model.id,
            Version.status == "ready",
            Version.revision <= repo.version.revision,
        )
        .order_by(Version.revision.desc())
        .offset(page * COMMITS_PER_PAGE)
        .limit(COMMITS_PER_PAGE + 1)
    )
    rows = list(session.scalars(q))
    more, rows = len(rows) > COMMITS_PER_PAGE, rows[:COMMITS_PER_PAGE]
    parents = VersionRepository(session).get_many(v.parent_version_id for v in rows if v.parent_version_id)
    named = readable_versions(session, viewer, set(parents))  # a parent the caller may not read: unnamed
    names = ModelRepository(session).full_names(parents[i].model_id for i in named)
    author = repo.full_name.split("/", 1)[0]
    out = []
    for v in rows:
        title = f"version {v.revision}"
        if v.parent_version_id in named:
            parent = parents[v.parent_version_id]
            title += f", {v.relation} of {ref_string(names[parent.model_id], parent.revision)}"
        out.append(
            {
                "id": v.commit_id,
                "title": title,
                "message": "",
                "authors": [{"user": author}],
                "date": iso(v.created_at),
            }
        )
    return out, more


@dataclass(frozen=True)
class ResolvedFile:
    """A file of a ready version, planned for streaming (no database access needed afterwards)."""

    commit_id: str
    plan: FilePlan


def resolve_file(session: Session, store: ObjectStore, repo: Repo, path: str) -> ResolvedFile:
    """``/{repo}/resolve/{rev}/{path}``; a missing file raises ``file_not_found`` naming the commit.

    A repository created but never committed to (``open_repo(..., empty_main=True)``) holds no file:
    ``main`` answers ``EntryNotFound``, as the Hub does for an empty repository (transformers'
    ``push_to_hub`` asks for ``README.md`` before its first commit)."""
    if repo.version is None and VersionRepository(session).latest(repo.model.id) is None:
        raise MissingEntry(f"{repo.full_name} has no file {path!r}: nothing is committed to it yet", None)
    version = _require_version(repo)
    if FileRepository(session).get(version.id, path) is None:
        raise MissingEntry(
            f"{repo.full_name} has no file {path!r} at commit {version.commit_id}", version.commit_id
        )
    plan = plan_file(session, store, version, path, ref_string(repo.full_name, version.revision))
    return ResolvedFile(version.commit_id, plan)


class MissingEntry(NotFound):
    """A file absent from a version: the answer still names the commit (where there is one), so clients
    cache the absence."""

    code = "file_not_found"

    def __init__(self, message: str, commit_id: str | None) -> None:
        super().__init__(message)
        self.commit_id = commit_id


def list_models(
    session: Session, viewer: Principal, search: str, author: str, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """``GET /api/models``: readable models matching ``search`` (and in namespace ``author``); whether more
    follow this page."""
    rows, total = ModelRepository(session).search(
        search, limit, offset, viewer.private_namespaces(), namespace=author or None
    )
    more = offset + len(rows) < total
    versions = VersionRepository(session)
    out: list[dict[str, Any]] = []
    for model, full in rows:
        main = versions.latest(model.id, ready_only=True)
        out.append(
            {
                "_id": f"{model.id:024x}",
                "id": full,
                "modelId": full,
                "author": full.split("/", 1)[0],
                "sha": main.commit_id if main is not None else None,
                "private": model.private,
                "createdAt": iso(model.created_at),
                "lastModified": iso(main.updated_at if main is not None else model.created_at),
                "downloads": 0,
                "likes": 0,
                "tags": [],
            }
        )
    return out, more


def whoami(session: Session, viewer: Principal) -> dict[str, Any]:
    """``GET /api/whoami-v2`` for a deltazoo token."""
    if viewer.token_id is None and not viewer.admin:
        raise DeltazooError(
            "whoami needs a token: send 'Authorization: Bearer <token>'", code="unauthorized", status=401
        )
    token = session.get(ApiToken, viewer.token_id) if viewer.token_id is not None else None
    token_name = token.name if token is not None else None
    name = viewer.namespace or ("admin" if viewer.admin else "deltazoo")
    role = "write" if viewer.admin or "write" in viewer.scopes else "read"
    return {
        "type": "user",
        "id": str(viewer.token_id or 0),
        "name": name,
        "fullname": token_name or name,
        "isPro": False,
        "orgs": [{"type": "org", "name": viewer.namespace}] if viewer.namespace else [],
        "auth": {"type": "access_token", "accessToken": {"displayName": token_name or name, "role": role}},
    }
