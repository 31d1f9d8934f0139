"""The write side of the Hugging Face Hub protocol: create a repository, answer preupload, turn a commit
into a deltazoo version.

A commit applies its operations to ``main`` (the latest ready version; one that arrives while the commit
before it is still being encoded waits for it, ``MainEncoding``): files it does not touch are carried
over (deduplicated, no bytes move), added files arrive inline (``uploadMode: regular``,
base64 in the commit's NDJSON) or were sent before through Git LFS (``lfsFile`` naming a staged
object: services/hub_lfs.py), deleted files and folders are left out. The result is created,
uploaded, validated and committed exactly like any push (services/versions.py), so it is
encoded, deduplicated and exact; its model card may name its base.

Which files preupload asks for through LFS is the server's choice (``settings.hub_large_files``):
huggingface_hub 2.x with hf-xet importable sends every file answered "lfs" through Xet
(``_commit_api._upload_files``, ``HfApi.upload_folder``), never through the LFS batch API, and says
nothing in its requests that would let a server tell it apart; this server does not speak Xet. So the
default, ``inline``, answers "regular" for every file (every client works), and ``lfs`` answers "lfs"
for weight files, for clients without Xet (``HF_HUB_DISABLE_XET=1``); a Xet client that gets "lfs"
is told, in the 400 of the Xet token route, to set it.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from deltazoo.registry.db import commit_now
from deltazoo.registry.errors import BadRequest, Conflict, DeltazooError, Unprocessable
from deltazoo.registry.models import File, Model, Version
from deltazoo.registry.objectstore import ObjectStore, stages_direct
from deltazoo.registry.repositories import FileRepository, ModelRepository, TagRepository, VersionRepository
from deltazoo.services.access import Principal, can_read_model, check_write, model_not_found
from deltazoo.services.hub import MissingEntry, repo_model, wait_encoded
from deltazoo.services.hub_lfs import claim_staged, wants_lfs
from deltazoo.services.model_settings import update_model
from deltazoo.services.refs import COMMIT_ID_RE, MAIN, parse_name, ref_string
from deltazoo.services.similarity import mark_auto_base
from deltazoo.services.tags import delete_tag, set_tag
from deltazoo.services.transfer import UploadSink
from deltazoo.services.versions import (
    DeclaredFile,
    Enqueue,
    check_path,
    commit_version,
    create_model,
    create_version,
    delete_model,
    record_upload,
)
from sqlalchemy.orm import Session

MAX_PREUPLOAD_FILES = 10_000


def create_repo(
    session: Session, viewer: Principal, name: str | None, organization: str | None, private: bool
) -> dict[str, Any]:
    """``POST /api/repos/create``: a new model ``organization/name`` (409 when it exists)."""
    if not organization or not name:
        raise Unprocessable(
            "deltazoo repositories are ORG/NAME: pass repo_id='org/name'", code="invalid_repo_id"
        )
    repo_id = f"{organization}/{name}"
    try:
        parse_name(repo_id)
    except Unprocessable as exc:
        raise Unprocessable(exc.message, code="invalid_repo_id") from None
    check_write(viewer, organization)
    try:
        model, _ = create_model(session, repo_id, "", private, exist_ok=False)
    except Unprocessable as exc:  # a name the Hub refuses too (not a repository that is missing)
        raise Unprocessable(exc.message, code="invalid_repo_id") from None
    return {"name": repo_id, "id": f"{model.id:024x}", "private": model.private}


def hub_create_tag(session: Session, viewer: Principal, repo_id: str, revision: str, body: Any) -> None:
    """``POST /api/models/{repo}/tag/{revision}`` (``HfApi.create_tag``): a new tag on the version
    ``revision`` names; 409 when the tag exists (the Hub never moves a tag: ``deltazoo tag set`` does)."""
    tag = body.get("tag") if isinstance(body, dict) else None
    if not isinstance(tag, str) or not tag:
        raise BadRequest("the body needs a 'tag' string", code="invalid_request")
    model = writable_model(session, viewer, repo_id)
    if TagRepository(session).get(model.id, tag) is not None:
        raise Conflict(f"tag {tag!r} already exists on {repo_id}", code="tag_exists")
    set_tag(session, model, repo_id, tag, revision)


def hub_delete_tag(session: Session, viewer: Principal, repo_id: str, tag: str) -> None:
    """``DELETE /api/models/{repo}/tag/{tag}`` (``HfApi.delete_tag``)."""
    delete_tag(session, writable_model(session, viewer, repo_id), repo_id, tag)


def hub_delete_repo(session: Session, store: ObjectStore, viewer: Principal, body: Any) -> None:
    """``DELETE /api/repos/delete`` (``HfApi.delete_repo``): the model and every version of it, under the
    rules of ``deltazoo rm`` (refused while another model's versions build on it)."""
    repo_id = _repo_id_of(body)
    delete_model(session, store, writable_model(session, viewer, repo_id), repo_id, viewer)


def hub_update_settings(
    session: Session, store: ObjectStore, viewer: Principal, repo_id: str, body: Any
) -> None:
    """``PUT /api/models/{repo}/settings`` (``HfApi.update_repo_settings`` / ``update_repo_visibility``):
    ``visibility`` (or ``private``) changes whether the model is private; gated access is refused."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    gated = body.get("gated", False)
    if gated not in (False, None):
        raise BadRequest(
            "deltazoo has no gated access: make the repository private (visibility='private') and give"
            " readers a token of its namespace instead",
            code="gated_unsupported",
        )
    visibility, private = body.get("visibility"), body.get("private")
    if visibility is not None:
        if visibility not in ("public", "private"):
            raise BadRequest(
                f"visibility must be 'public' or 'private' (got {visibility!r})", code="invalid_visibility"
            )
        private = visibility == "private"
    if private is not None and not isinstance(private, bool):
        raise BadRequest("'private' must be true or false", code="invalid_visibility")
    model = writable_model(session, viewer, repo_id)
    update_model(session, store, model, repo_id, viewer, private=private)


def _repo_id_of(body: Any) -> str:
    """``org/name`` from a body of the Hub's repository routes (``name``, ``organization``, ``type``)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    if body.get("type") not in (None, "model"):
        raise BadRequest("deltazoo stores models only (repo_type='model')", code="invalid_repo_type")
    name, organization = body.get("name"), body.get("organization")
    if not isinstance(name, str) or not isinstance(organization, str) or not name or not organization:
        raise Unprocessable(
            "deltazoo repositories are ORG/NAME: pass repo_id='org/name'", code="invalid_repo_id"
        )
    return f"{organization}/{name}"


def check_no_pull_request(create_pr: str | None) -> None:
    """``create_pr=1`` (``upload_file(..., create_pr=True)``): refused before anything is stored, as a
    commit to ``main`` would publish what was meant for review."""
    if create_pr is not None and create_pr.strip().lower() in ("1", "true", "yes"):
        raise BadRequest(
            "deltazoo has no pull requests: commit to main without create_pr (each commit is a new "
            "version; a tag names the one to serve)",
            code="pull_requests_unsupported",
        )


def check_main(revision: str) -> None:
    if revision != MAIN:
        raise BadRequest(
            f"commits go to 'main' (got {revision!r}); name a version afterwards with a tag",
            code="revision_not_writable",
        )


def writable_model(session: Session, viewer: Principal, repo_id: str) -> Model:
    """The model ``repo_id`` for a write: a private one the caller may not read is missing (404, as if
    it did not exist, before any 401/403 could tell it exists); then the write scope is checked."""
    model, org, _ = repo_model(session, repo_id)  # as the Hub: any letter case finds it
    if not can_read_model(viewer, model, org):
        raise model_not_found(*parse_name(repo_id))
    check_write(viewer, org)
    return model


def preupload(
    session: Session,
    viewer: Principal,
    repo_id: str,
    revision: str,
    files: list[dict[str, Any]],
    large_files: str = "inline",
) -> dict[str, Any]:
    """``POST /api/models/{repo}/preupload/{rev}``: each file inline (``regular``), or weight files
    through LFS when ``large_files`` is ``lfs`` (see the module's docstring)."""
    writable_model(session, viewer, repo_id)
    check_main(revision)
    if len(files) > MAX_PREUPLOAD_FILES:
        raise Unprocessable(f"at most {MAX_PREUPLOAD_FILES} files per request", code="too_many_files")
    out = []
    for f in files:
        path = f.get("path") if isinstance(f, dict) else None
        if not isinstance(path, str):
            raise Unprocessable("each file needs a 'path'", code="invalid_request")
        check_path(path)
        mode = "lfs" if large_files == "lfs" and wants_lfs(path, f.get("size")) else "regular"
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": None})
    return {"files": out, "commitOid": None}


@dataclass
class StagedFile:
    """An added file's bytes, decoded from the commit and spooled (memory up to 8 MiB, then disk)."""

    path: str
    size: int
    spool: IO[bytes]
    _sha256: str | None = None

    def chunks(self) -> Iterator[bytes]:
        self.spool.seek(0)
        while chunk := self.spool.read(1 << 20):
            yield chunk

    @property
    def sha256(self) -> str:
        """Hashed once, however often the commit is tried (``commit_in_turn``)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks():
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256


@dataclass
class CommitOperations:
    header: dict[str, Any] = field(default_factory=dict)
    added: dict[str, StagedFile] = field(default_factory=dict)
    lfs: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # path -> (sha256, size)
    deleted_files: set[str] = field(default_factory=set)
    deleted_folders: set[str] = field(default_factory=set)

    def close(self) -> None:
        for staged in self.added.values():
            staged.spool.close()

    def add(self, path: str, data: bytes) -> None:
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115  # closed in close()
        spool.write(data)
        self.add_spooled(path, spool, len(data))  # type: ignore[arg-type]

    def add_spooled(self, path: str, spool: IO[bytes], size: int) -> None:
        """Take ``spool`` (``size`` bytes of ``path``): closed with the operations, or now if refused."""
        try:
            check_path(path)
        except BaseException:
            spool.close()
            raise
        self._drop(path)
        self.added[path] = StagedFile(path, size, spool)

    def add_lfs(self, path: str, oid: str, size: int | None) -> None:
        """``path`` has the bytes of LFS object ``oid`` (sent before, or, ``size`` None, a file of main
        copied: ``CommitOperationCopy``)."""
        check_path(path)
        self._drop(path)
        self.lfs[path] = (oid, size)

    def _drop(self, path: str) -> None:
        old = self.added.pop(path, None)
        if old is not None:
            old.spool.close()
        self.lfs.pop(path, None)


class MainEncoding(Conflict):
    """A commit arrived while the one before it is still being encoded: built on ``main`` (the latest
    ready version) it would leave out that commit's files (huggingface_hub sends a large folder as
    several commits in a row). ``commit_in_turn`` waits for it and tries again."""

    def __init__(self, ref: str) -> None:
        super().__init__(
            f"{ref}, the commit before this one, is still being encoded; commit again when it is ready",
            code="main_encoding",
        )
        self.retry_after = 5


COMMIT_WAIT_S = 300.0  # how long a commit waits for the one before it to be encoded (then 409 main_encoding)
COMMIT_LOOK_EVERY_S = 0.25


def commit_in_turn(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    viewer: Principal,
    repo_id: str,
    revision: str,
    ops: CommitOperations,
) -> tuple[Version, str]:
    """``commit``, after the commit before it has been encoded (looked at every ``COMMIT_LOOK_EVERY_S``,
    for up to ``COMMIT_WAIT_S``). The first write of its request: each look starts a new transaction."""
    until = time.monotonic() + COMMIT_WAIT_S
    while True:
        try:
            return commit(session, store, enqueue, viewer, repo_id, revision, ops)
        except MainEncoding:
            if time.monotonic() > until:
                raise
            session.rollback()  # a new snapshot: the encode's outcome shows
            time.sleep(COMMIT_LOOK_EVERY_S)


def _unchanged(declared: dict[str, DeclaredFile], held: list[File]) -> bool:
    """Whether a commit would hold exactly ``held``, main's files (same paths, sizes and bytes): an
    ``upload_folder`` of an unchanged folder adds no version, as the Hub client skips an empty commit."""
    return {p: (f.size, f.sha256) for p, f in declared.items()} == {f.path: (f.size, f.sha256) for f in held}


def check_deletions_exist(repo_id: str, main: Version | None, held: set[str], ops: CommitOperations) -> None:
    """A deleted file or folder must be in ``main`` (``held``: its paths), as on the Hub (404
    ``EntryNotFound``): deleting what is not there is a mistake, not an empty commit."""
    missing = sorted(ops.deleted_files - held)
    missing += sorted(d for d in ops.deleted_folders if not any(p.startswith(d + "/") for p in held))
    if missing:
        at = f"at commit {main.commit_id}" if main is not None else "(nothing is committed to it yet)"
        raise MissingEntry(
            f"cannot delete {missing[0]!r}: {repo_id} has no such file or folder {at}",
            main.commit_id if main is not None else None,
        )


PUBLISH_WAIT_S = 300.0  # how long a Hub commit waits for its encode before it answers anyway


def wait_published(session: Session, version: Version, ref: str) -> None:
    """Commit ``version`` (queueing its encode) and wait for the encode, as the Hub answers a commit once
    ``main`` is the commit: ``upload_folder`` / ``push_to_hub`` then ``from_pretrained`` reads it, never
    the version before. After ``PUBLISH_WAIT_S`` the answer goes anyway (reads of ``main`` serve the version
    before until it is ready). An encode that fails is the commit's error (422 ``encode_failed``)."""
    commit_now(session)
    if wait_encoded(session, version, PUBLISH_WAIT_S, COMMIT_LOOK_EVERY_S) == "failed":
        raise Unprocessable(f"{ref} could not be stored: {version.status_message}", code="encode_failed")


def commit(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    viewer: Principal,
    repo_id: str,
    revision: str,
    ops: CommitOperations,
) -> tuple[Version, str]:
    """``POST /api/models/{repo}/commit/{rev}``: a new version of the model (``main`` + the operations),
    committed and queued for encoding; returns it and its ref."""
    model = writable_model(session, viewer, repo_id)
    check_main(revision)
    added = {path: DeclaredFile(path, staged.size, staged.sha256) for path, staged in ops.added.items()}
    # commits to one model go one after the other from here to their version's commit: the next one
    # then sees this one encoding (MainEncoding) and builds on it once it is ready, never beside it
    ModelRepository(session).lock(model.id)
    versions = VersionRepository(session)
    main = versions.latest(model.id, ready_only=True)
    newest = versions.newest_committed(model.id)
    if newest is not None and (main is None or newest.revision > main.revision):
        raise MainEncoding(ref_string(repo_id, newest.revision))
    parent_commit = ops.header.get("parentCommit")
    well_formed = isinstance(parent_commit, str) and COMMIT_ID_RE.match(parent_commit)
    if parent_commit is not None and not well_formed:
        raise BadRequest(
            f"parentCommit {str(parent_commit)[:80]!r} is not a commit id (40 lowercase hex digits)",
            code="invalid_parent_commit",
        )
    if parent_commit and (main is None or parent_commit != main.commit_id):
        raise Conflict(
            f"main has moved since {parent_commit}; fetch it again and redo the commit", code="parent_moved"
        )
    declared: dict[str, DeclaredFile] = {}
    held = FileRepository(session).for_version(main.id) if main is not None else []
    for f in held:
        gone = f.path in ops.deleted_files or any(f.path.startswith(d + "/") for d in ops.deleted_folders)
        if not gone:
            declared[f.path] = DeclaredFile(f.path, f.size, f.sha256)
    check_deletions_exist(repo_id, main, {f.path for f in held}, ops)
    declared.update(added)
    for path, (oid, size) in ops.lfs.items():
        if size is None:  # a copy (CommitOperationCopy) names the bytes of a file of main, not their size
            source = next((f for f in held if f.sha256 == oid), None)
            if source is None:
                raise MissingEntry(
                    f"cannot copy to {path!r}: {repo_id} has no file with sha256 {oid} on main",
                    main.commit_id if main is not None else None,
                )
            size = source.size
        declared[path] = DeclaredFile(path, size, oid)
    if not declared:
        raise Unprocessable("the commit leaves the repository empty; add at least one file", code="no_files")
    if main is not None and _unchanged(declared, held):  # the same files again: main is the commit
        return main, ref_string(repo_id, main.revision)
    version, uploads = create_version(
        session, model, None, "finetune", [], list(declared.values()), viewer=viewer
    )
    mark_auto_base(version, card_first=True)  # the card's base_model, else the closest stored version
    files = {f.path: f for f in FileRepository(session).for_version(version.id)}
    for path, needed in uploads:
        if not needed:
            continue
        if path in ops.lfs:
            staged = claim_staged(store, model, path, declared[path].sha256 or "", declared[path].size)
            record_upload(session, store, files[path], staged)
            continue
        staged_file = ops.added.get(path)
        if staged_file is None:
            raise DeltazooError(
                f"{path} is no longer stored; add it to the commit again", code="file_missing", status=409
            )
        sink = UploadSink(files[path], scratch_dir=store.scratch_dir(), direct=stages_direct(store))
        try:
            for chunk in staged_file.chunks():
                sink.feed(chunk)
            key = sink.finish(store)
        except BaseException:
            sink.close()
            raise
        record_upload(session, store, files[path], key)
    ref = ref_string(repo_id, version.revision)
    commit_version(session, store, version, ref, enqueue, viewer)
    return version, ref
