"""``Client.push``: a checkpoint folder becomes a new version (created, or an earlier pending one
continued), its files sent by ``deltazoo.upload``, committed, and optionally waited for."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deltazoo.checkpoint import check_weights, scan_checkpoint
from deltazoo.errors import ClientError, DeltazooError, NotFoundError, UsageError
from deltazoo.models import Committed, VersionCreated, VersionSummary
from deltazoo.refs import Ref
from deltazoo.rest_paths import version_path
from deltazoo.upload import Uploader

if TYPE_CHECKING:
    from deltazoo.client import Client


def check_base(client: Client, base: str) -> None:
    try:
        client.version_info(base)
    except NotFoundError as exc:
        raise NotFoundError(
            f"base {base} not found ({exc.message}): push it first with "
            f"`deltazoo push DIR --name {Ref.parse(base).model}` or check the name",
            code="base_not_found",
            status=404,
        ) from exc


def push_folder(
    client: Client,
    path: str | Path,
    name: str,
    *,
    base: str | None,
    relation: str,
    profiles: Sequence[str] | None,
    description: str,
    private: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    allow_no_weights: bool,
    restart: bool,
    wait: bool,
    timeout: float | None,
    quiet: bool,
    retain: str = "exact",
) -> VersionSummary:
    """What ``Client.push`` documents; sets ``client.last_push_resumed`` and ``last_push_job``."""
    if isinstance(profiles, str):  # one profile named alone, not a list of one-letter profiles
        profiles = [profiles]
    if retain not in ("exact", "lossy"):
        raise UsageError(f"retain must be exact or lossy, not {retain!r}", code="invalid_retain")
    ref = Ref.parse(name)
    if ref.rev != "latest":
        raise UsageError(
            f"push creates the next revision itself: name the model {ref.model} without @REV",
            code="revision_given",
        )
    root = Path(path)
    # files sent in parts are hashed while they are sent (their sha256 goes with the last part); the
    # smaller ones first, so that a file the server already holds is not sent at all
    files = scan_checkpoint(
        root, include=include, exclude=exclude, quiet=quiet, hash_up_to=client.upload_part_bytes
    )
    check_weights(root, files, allow_no_weights=allow_no_weights)
    if base is not None and base != "auto":
        check_base(client, base)  # an unknown base fails here, before the model is created
    transport = client.transport
    model_created = (
        transport.send(
            "POST",
            "/v1/models",
            json={"name": ref.model, "description": description, "private": private, "exist_ok": True},
            idempotent=True,
        ).status_code
        == 201
    )
    if profiles is None:
        profiles = [] if model_created or base is None else carried_profiles(client, ref)
    vref: Ref | None = None
    try:
        answer = transport.json(
            "POST",
            f"/v1/models/{ref.org}/{ref.name}/versions",
            json={
                "base": base,
                "relation": relation,
                "profiles": list(profiles),
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256 or None} for f in files],
                "resume": not restart,
                "retain": retain,
            },
        )
        created = VersionCreated.model_validate(answer)
        vref = Ref(ref.org, ref.name, str(created.version.revision))
        client.last_push_resumed = created.resumed
        if client.last_push_resumed and not quiet:
            print(
                f"resuming {vref}: an earlier push of these files left it pending "
                "(push with --restart for a new version)",
                file=sys.stderr,
            )
        needed = {u.path for u in created.uploads if u.needed}
        uploader = Uploader(transport, client.upload_part_bytes, client.outage_wait_s)
        uploader.upload_all(vref, [f for f in files if f.path in needed], root, quiet=quiet)
        committed = Committed.model_validate(transport.json("POST", f"{version_path(vref)}/commit"))
        client.last_push_job = committed.job
    except ClientError:
        # refused: nothing of this push may stay behind (an outage keeps it, to resume)
        undo_push(client, ref, vref, model_created)
        raise
    if not wait:
        return committed.version
    try:
        client.wait(committed.job, timeout=timeout, quiet=quiet)
        if profiles:
            client.wait_profiles(str(vref), profiles, timeout=timeout, quiet=quiet)
    except KeyboardInterrupt:  # the push is done: pushing again would make a second revision
        raise KeyboardInterrupt(
            f"stopped waiting: {vref} is committed and its encoding goes on on the server; "
            f"`deltazoo info {vref}` shows when it is ready (do not push again)"
        ) from None
    return client.version_info(str(vref))


def carried_profiles(client: Client, ref: Ref) -> list[str]:
    """The latest version's profiles, for its next derived revision (none when it has none)."""
    try:
        return [a.profile for a in client.version_info(ref.model).artifacts]
    except NotFoundError:
        return []


def undo_push(client: Client, ref: Ref, vref: Ref | None, model_created: bool) -> None:
    try:
        if model_created:
            client.transport.json("DELETE", f"/v1/models/{ref.org}/{ref.name}")
        elif vref is not None:
            client.transport.json("DELETE", version_path(vref))
    except DeltazooError:  # best effort: the refusal is what the caller needs to see
        pass
