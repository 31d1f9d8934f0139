"""Creating a version, receiving its files, committing it, deleting it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from deltazoo.compression.safetensors_io import is_safetensors_path
from deltazoo.registry.db import after_commit
from deltazoo.registry.errors import BadRequest, Conflict, NotFound, Unprocessable
from deltazoo.registry.models import Artifact, File, Job, Model, Version, utcnow
from deltazoo.registry.objectstore import ObjectStore, blob_key, delete_objects
from deltazoo.registry.repositories import (
    ArtifactRepository,
    BlobRepository,
    FileRepository,
    JobRepository,
    ModelRepository,
    NamespaceRepository,
    TensorChunkRepository,
    TensorRepository,
    VersionRepository,
    visible_from,
)
from deltazoo.services.access import OPEN, Principal, can_read_model, readable_versions
from deltazoo.services.card_lineage import apply_card_lineage
from deltazoo.services.dedup_handover import hand_over_copies
from deltazoo.services.detach import detach_copies
from deltazoo.services.encode import check_related_base
from deltazoo.services.limits import UploadLimits, check_shard_indexes, check_upload_limits
from deltazoo.services.lossy import check_lossy_checkpoint
from deltazoo.services.paths import check_portable_paths
from deltazoo.services.profiles import check_profile
from deltazoo.services.refs import (
    RELATIONS,
    check_description,
    parse_name,
    ref_string,
    resolve_base,
)
from deltazoo.services.similarity import mark_auto_base, sketch_and_resolve
from deltazoo.services.storage import SHA_RE
from deltazoo.services.token_limits import PendingLimit, check_pending_limit
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

Enqueue = Callable[[int], None]


@dataclass(frozen=True)
class DeclaredFile:
    path: str
    size: int
    sha256: str | None  # None: named by the upload that carries its last byte (``UploadSink.finish``)


def check_path(path: str) -> str:
    parts = path.split("/")
    if (
        not path
        or len(path) > 500
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in path)
    ):
        raise Unprocessable(
            f"file path {path!r} must be relative, use '/' between parts, "
            "and contain no '.', '..' or empty parts",
            code="invalid_path",
        )
    return path


def create_model(
    session: Session, name: str, description: str, private: bool, exist_ok: bool, viewer: Principal = OPEN
) -> tuple[Model, bool]:
    """A new model; with ``exist_ok`` the existing one, when the ``viewer`` may read it (a private model
    it may not read is a plain 409: the name is taken, nothing about the model is shown). Also when a
    concurrent create of the name wins the race. The first write of its request: a lost race rolls the
    session back."""
    org, short = parse_name(name)
    check_description(description, "model")
    try:
        return _create_model(session, org, short, name, description, private, exist_ok, viewer)
    except IntegrityError:  # a concurrent create of the same name won: answer as if it had come first
        session.rollback()  # (the first write of its request: nothing else is undone)
        return _create_model(session, org, short, name, description, private, exist_ok, viewer)


def _create_model(
    session: Session,
    org: str,
    short: str,
    name: str,
    description: str,
    private: bool,
    exist_ok: bool,
    viewer: Principal,
) -> tuple[Model, bool]:
    existing = ModelRepository(session).get(org, short)
    if existing is not None:
        if exist_ok and can_read_model(viewer, existing, org):
            return existing, False
        hint = "pass exist_ok to reuse it" if can_read_model(viewer, existing, org) else "pick another name"
        raise Conflict(f"model {name} already exists; {hint}", code="model_exists")
    check_new_name(session, org, short, viewer)
    ns = NamespaceRepository(session).get_or_create(org)
    model = Model(namespace_id=ns.id, name=short, description=description, private=private)
    session.add(model)
    session.flush()
    return model, True


def check_new_name(session: Session, org: str, short: str, viewer: Principal) -> None:
    """Names a new model may not take, though they parse: what the Hub refuses (``.git`` at the end,
    ``--`` or ``..`` inside) and a name that differs from a stored one only in letter case (one folder
    on case-insensitive filesystems, one repository on the Hub)."""
    if short.lower().endswith(".git") or "--" in short or ".." in short or "--" in org or ".." in org:
        raise Unprocessable(
            f"{org}/{short} is not a name a new model may take: it may not end in '.git' or hold '--' or "
            "'..' (the Hugging Face Hub refuses them)",
            code="invalid_name",
        )
    namespace = NamespaceRepository(session).case_variant(org)
    if namespace is not None:
        models = ModelRepository(session)
        free = models.get(namespace, short) is None and models.case_variant(namespace, short) is None
        raise Conflict(
            f"namespace {namespace} differs from {org} only in letter case: "
            + (f"use {namespace}/{short}" if free else f"use namespace {namespace} with a name not taken"),
            code="model_exists",
        )
    clash = ModelRepository(session).case_variant(org, short)
    if clash is not None:
        model, other = clash
        seen = can_read_model(viewer, model, other.split("/", 1)[0])
        raise Conflict(
            f"{other if seen else 'a model'} differs from {org}/{short} only in letter case: "
            + (f"use {other}, or pick another name" if seen else "pick another name"),
            code="model_exists",
        )


REVISION_ATTEMPTS = 8  # pushes to one model at once: each takes the next free revision


def create_version(
    session: Session,
    model: Model,
    base: str | None,
    relation: str,
    profiles: list[str],
    files: list[DeclaredFile],
    lossy: bool = False,
    *,
    viewer: Principal,
    pending_limit: PendingLimit | None = None,
) -> tuple[Version, list[tuple[str, bool]]]:
    """A new pending version; returns it and, per declared file, whether its bytes must be uploaded.

    With ``pending_limit``, 429 ``too_many_pending`` when the viewer's token would hold more pending
    versions than it allows (``services.token_limits``). The first write of its request: a revision taken
    by a concurrent push to the same model rolls the session back and takes the next one."""
    if relation not in RELATIONS:
        raise Unprocessable(
            f"relation {relation!r} is not one of {', '.join(RELATIONS)}", code="invalid_relation"
        )
    profiles = [check_profile(p) for p in profiles]
    if profiles and not base:  # stored, then failed to build, and the push reported a failure after all
        raise Unprocessable(
            "a serving profile is a delta against the version's base: push with --base ORG/NAME[@REV]"
            " (or base=auto), or without --profile",
            code="profile_needs_base",
        )
    if not files:
        raise Unprocessable("a version needs at least one file", code="no_files")
    seen: set[str] = set()
    for f in files:
        check_path(f.path)
        if f.path in seen:
            raise Unprocessable(f"file {f.path!r} is declared twice", code="duplicate_file")
        seen.add(f.path)
        if f.sha256 is not None and not SHA_RE.match(f.sha256):
            raise Unprocessable(
                f"sha256 of {f.path!r} must be 64 lowercase hex digits", code="invalid_sha256"
            )
        if f.size < 0:
            raise Unprocessable(f"size of {f.path!r} must be >= 0", code="invalid_size")
    check_portable_paths([f.path for f in files])
    auto = base == "auto"  # the parent is detected from the upload at commit (services.similarity)
    parent = resolve_base(session, base, viewer) if base and not auto else None
    if parent is not None and not model.private:
        # FOR SHARE: a change of the base's privacy (services/model_settings.py) waits for this push
        parent_model = session.get(
            Model, parent.model_id, with_for_update={"read": True}, populate_existing=True
        )
        if parent_model is not None and parent_model.private:
            raise Unprocessable(
                f"base {base} is private and {model.name!r} is public: its name and bytes would show through"
                " the public model; create the model with private=true (--private) or pick a public base",
                code="private_base",
            )
    versions = VersionRepository(session)
    model_id, parent_id = model.id, parent.id if parent else None
    for attempt in range(REVISION_ATTEMPTS):
        version = Version(
            model_id=model_id,
            revision=versions.next_revision(model_id),
            parent_version_id=parent_id,
            relation=relation,  # shown once there is a parent (from the base, auto or the model card)
            status="pending",
            lossy=lossy,
            profiles=list(dict.fromkeys(profiles)),
            created_by_token_id=viewer.token_id,
        )
        if auto:
            mark_auto_base(version)
        session.add(version)
        try:
            session.flush()
            break
        except IntegrityError:  # a concurrent push to this model took the revision: take the next one
            session.rollback()  # the first write of its request: nothing else is undone
            if attempt == REVISION_ATTEMPTS - 1:
                raise
    if pending_limit is not None:
        check_pending_limit(session, viewer.token_id, pending_limit)
    file_repo = FileRepository(session)
    uploads = []
    for f in files:
        kind = "safetensors" if is_safetensors_path(f.path) else "other"
        source = None
        if f.sha256 is not None and not lossy:  # lossy: never an exact copy
            source = file_repo.stored_ready_with_sha(
                f.sha256, f.size, viewer.private_namespaces(), visible_from(model)
            )
        session.add(
            File(
                version_id=version.id,
                path=f.path,
                size=f.size,
                sha256=f.sha256 or "",  # "" until its upload names and proves it
                kind=kind,
                uploaded=source is not None,
                source_file_id=source.id if source else None,
            )
        )
        uploads.append((f.path, source is None))
    session.flush()
    return version, uploads


def pending_file(session: Session, version: Version, path: str) -> File:
    if version.status != "pending":
        raise Conflict(
            f"version is {version.status}; files can only be uploaded before commit (create a new version)",
            code="version_not_pending",
        )
    file = FileRepository(session).get(version.id, path)
    if file is None:
        raise NotFound(
            f"file {path!r} was not declared when the version was created", code="file_not_declared"
        )
    return file


def record_upload(
    session: Session, store: ObjectStore, file: File, staging_key: str, sha256: str | None = None
) -> File:
    """Point a declared file at its validated staging object (replacing an earlier upload); ``sha256``
    (checked by the upload) becomes the file's when it was declared without one.

    The version is checked again: it may have been committed while the bytes were streaming in.
    """
    session.refresh(file)
    version = session.get(Version, file.version_id)
    if version is not None:
        session.refresh(version)
    if version is None or version.status != "pending":
        store.delete(staging_key)
        raise Conflict(
            "the version was committed or deleted while this file was uploading; create a new version",
            code="version_not_pending",
        )
    if file.staging_key and file.staging_key != staging_key:
        store.delete(file.staging_key)
    file.staging_key = staging_key
    if not file.sha256 and sha256:
        file.sha256 = sha256
    file.uploaded = True
    file.source_file_id = None
    return file


def commit_version(
    session: Session,
    store: ObjectStore,
    version: Version,
    ref: str,
    enqueue: Enqueue,
    viewer: Principal = OPEN,
    limits: UploadLimits = UploadLimits(),
) -> Job:
    """Freeze the uploads and enqueue the encode job (after the database commit).

    A version commits once: the pending -> processing change is one conditional UPDATE, so of
    concurrent commits one wins and the others answer 409 ``version_not_pending``. A version pushed
    without a base takes its parent and relation from its model card (``base_model`` /
    ``base_model_relation`` in README.md) when that base is stored and ``viewer`` may read it."""
    if version.status != "pending":
        raise Conflict(f"version {ref} is already {version.status}", code="version_not_pending")
    gone = (version.sketch or {}).get("base_deleted")
    if gone:
        raise Conflict(
            f"{ref} was pushed with base {gone}, which was deleted before this commit; push again with "
            "another --base (or none)",
            code="base_deleted",
        )
    files = FileRepository(session).for_version(version.id)
    missing = [f.path for f in files if not f.uploaded]
    if missing:
        raise BadRequest(f"upload these files before commit: {', '.join(missing)}", code="files_missing")
    if not VersionRepository(session).claim_pending(version.id):
        session.refresh(version)
        raise Conflict(f"version {ref} is already {version.status}", code="version_not_pending")
    check_upload_limits(session, store, version, limits)
    check_shard_indexes(session, store, version)
    check_lossy_checkpoint(session, store, version)
    apply_card_lineage(session, store, version, viewer)
    sketch_and_resolve(session, store, version)
    if version.parent_version_id is not None:
        parent = VersionRepository(session).get(version.parent_version_id)
        assert parent is not None
        check_related_base(session, store, version, _refs(session, [parent.id])[0])
    version.status = "processing"
    job = JobRepository(session).add("encode_version", ref, version.id)
    for profile in version.profiles:
        if ArtifactRepository(session).by_profile(version.id, profile) is None:
            session.add(Artifact(version_id=version.id, profile=profile, status="pending", quality={}))
    session.flush()
    job_id = job.id
    after_commit(session, lambda: enqueue(job_id))
    return job


def delete_version(
    session: Session,
    store: ObjectStore,
    version: Version,
    ref: str,
    worker_grace: timedelta = timedelta(seconds=30),
    *,
    viewer: Principal = OPEN,
) -> None:
    delete_versions(session, store, [version], ref, worker_grace, viewer=viewer)


def delete_model(
    session: Session, store: ObjectStore, model: Model, full_name: str, viewer: Principal = OPEN
) -> None:
    """Delete a model and all its versions; refused while a version of another model needs them."""
    delete_versions(session, store, VersionRepository(session).for_model(model.id), full_name, viewer=viewer)
    session.delete(model)
    session.flush()


def delete_versions(
    session: Session,
    store: ObjectStore,
    versions: list[Version],
    what: str,
    worker_grace: timedelta = timedelta(seconds=30),
    *,
    viewer: Principal = OPEN,
) -> None:
    """Delete ``versions`` (of one model) and drop their blob references (objects go once no reference
    is left).

    A ``processing`` version is refused (409 ``version_busy``) only while a worker holds its encode job
    (a heartbeat newer than ``worker_grace``); a stuck one (its job queued, or its worker gone) is
    cancelled: the job is marked failed and the version deleted.

    Refused (409 ``has_descendants``) while a version outside the set is being encoded against one of
    them (``processing``, its parent in the set), or decodes through their tensors,
    naming each one the ``viewer`` may read and why: a descendant that stores deltas against them or
    reuses their tensors. Copies in versions that are not their children (a deduplicated push of
    identical tensors under another name, in any namespace) never block: they get bytes of their own
    first (``detach_copies``).
    """
    if not versions:
        return
    ids = [v.id for v in versions]
    owner = session.get(Model, versions[0].model_id)
    namespace_id = owner.namespace_id if owner is not None else None
    jobs = JobRepository(session)
    processing = [v.id for v in versions if v.status == "processing"]
    if jobs.held_encodes(processing, utcnow() - worker_grace):
        raise Conflict(
            f"{what} is being encoded by a live worker; delete it once its job has finished",
            code="version_busy",
        )
    jobs.cancel_encodes(processing, f"cancelled: {what} was deleted")  # queued or stuck: nobody holds it
    children = VersionRepository(session).children(ids)
    encoding = [c.id for c in children if c.status == "processing" and c.id not in ids]
    if encoding:  # its encode reads their tensors (it would fail): no tensor of it names them yet
        raise Conflict(
            f"{what} is the base of {', '.join(_refs(session, encoding))}, being encoded against it now;"
            " delete it once they are ready, and them first",
            code="has_descendants",
        )
    hand_over_copies(session, store, ids)  # locks their files first: then every copy made is seen
    tensors = TensorRepository(session)
    dependents = tensors.dependents_of(ids, namespace_id)
    if dependents:
        raise Conflict(_dependents_message(session, what, dependents, viewer), code="has_descendants")
    detach_copies(session, store, ids, namespace_id)
    if owner is not None:  # their numbers are never given to a later version (clients cache by number)
        VersionRepository(session).raise_revision_floor(owner, max(v.revision for v in versions))
    dropped: list[str] = []
    for version in sorted(versions, key=lambda v: v.id, reverse=True):  # children before parents
        dropped += [t.blob for t in tensors.for_version(version.id) if t.blob]
        dropped += TensorChunkRepository(session).blobs_of_versions([version.id])
        for f in FileRepository(session).for_version(version.id):
            dropped += [b for b in (f.header_blob, f.blob) if b]
            if f.staging_key:
                after_commit(session, partial(delete_objects, store, [f.staging_key]))
        dropped += [a.blob for a in ArtifactRepository(session).for_version(version.id) if a.blob]
        for child in VersionRepository(session).children([version.id]):
            child.parent_version_id = None
            if child.status == "pending":  # its push named this base: its commit must not store a root
                child.sketch = {**(child.sketch or {}), "base_deleted": _refs(session, [version.id])[0]}
        session.delete(version)
        session.flush()
    blobs = BlobRepository(session)
    gone = [sha for sha in dropped if blobs.drop_reference(sha)]
    after_commit(session, partial(delete_objects, store, [blob_key(sha) for sha in gone]))


MAX_NAMED_DEPENDENTS = 20


def _dependents_message(
    session: Session, what: str, dependents: dict[int, tuple[int, set[str]]], viewer: Principal
) -> str:
    """Why ``what`` cannot go, naming only the dependents ``viewer`` may read (the others are counted)."""
    visible = sorted(readable_versions(session, viewer, set(dependents)))
    named = visible[:MAX_NAMED_DEPENDENTS]  # a base of thousands: the first ones, the rest counted
    refs = dict(zip(named, refs_by_id(session, named), strict=True))
    reasons = []
    for vid in named:
        n, encodings = dependents[vid]
        how = "reuses" if encodings == {"same"} else "stores deltas against"
        reasons.append(f"{refs[vid]} {how} {n} of its tensors")
    if len(visible) > len(named):
        reasons.append(f"{len(visible) - len(named)} more version(s) (`deltazoo lineage --all` lists them)")
    hidden = len(dependents) - len(visible)
    if hidden:
        reasons.append(f"{hidden} version(s) of models this token cannot read depend on it")
    return (
        f"{what} is needed to rebuild other versions: {'; '.join(reasons)}. "
        "Delete those versions first (or keep this one)"
    )


def refs_by_id(session: Session, version_ids: list[int]) -> list[str]:
    """``org/name@rev`` of each of ``version_ids``, in their order."""
    versions = VersionRepository(session).get_many(version_ids)
    names = ModelRepository(session).full_names(v.model_id for v in versions.values())
    return [ref_string(names[versions[i].model_id], versions[i].revision) for i in version_ids]


def _refs(session: Session, version_ids: list[int]) -> list[str]:
    versions = VersionRepository(session).get_many(version_ids)
    names = ModelRepository(session).full_names(v.model_id for v in versions.values())
    return sorted(ref_string(names[v.model_id], v.revision) for v in versions.values())
