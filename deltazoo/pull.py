"""Pulling: a version's files resolved (by the server, or the cache when it can answer alone), fetched
into the cache (whole, or as deltas against a cached ancestor), and placed where the caller wants them;
serving profiles' packed containers fetched the same way. ``Client`` documents each entry point."""

from __future__ import annotations

import glob
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from deltazoo.download import download
from deltazoo.errors import ClientError, ConflictError, NotFoundError, UsageError
from deltazoo.linking import place
from deltazoo.models import FileInfo, VersionInfo
from deltazoo.patterns import filter_paths
from deltazoo.progress import BarShare
from deltazoo.refs import Ref
from deltazoo.rest_paths import file_path, version_path
from deltazoo.schemas import PROFILE_NAME
from deltazoo.transport import progress_bar
from deltazoo.upload import PARALLEL_FILES

if TYPE_CHECKING:
    from deltazoo.client import Client


def resolve(client: Client, name: str) -> tuple[Ref, list[FileInfo], VersionInfo | None]:
    """Numeric revisions held whole in the cache are answered without asking the server;
    offline, ``latest`` is the revision it last resolved to and nothing is asked at all."""
    ref = Ref.parse(name)
    if client.offline:
        return resolve_offline(client, ref)
    if not ref.moving:
        cached = client.cache.cached_files(ref)
        if cached is not None:
            return ref, cached, None
    version = client.version_info(name)
    if version.status != "ready":
        hint = (
            f": {version.status_message}"
            if version.status == "failed"
            else "; wait for it (push with --wait, or Client.wait on its job) and pull again"
        )
        raise ConflictError(f"{version.ref} is {version.status}{hint}", code="version_not_ready", status=409)
    return Ref(ref.org, ref.name, str(version.revision)), list(version.files), version


def resolve_offline(client: Client, ref: Ref) -> tuple[Ref, list[FileInfo], None]:
    if ref.moving:
        revision = client.cache.remembered_revision(ref)
        if revision is None:
            raise NotFoundError(
                f"offline: {ref} was never pulled into the cache at {client.cache.root}, so the cache cannot "
                "say which version it names; pull it once online (without --offline / DELTAZOO_OFFLINE) "
                "or name a revision number",
                code="not_cached",
                status=None,
            )
        ref = Ref(ref.org, ref.name, str(revision))
    files = client.cache.recorded_files(ref)
    if files is None:
        raise NotFoundError(
            f"offline: {ref} is not in the cache at {client.cache.root}; pull it once online "
            "(without --offline / DELTAZOO_OFFLINE)",
            code="not_cached",
            status=None,
        )
    return ref, files, None


def fill_cache(client: Client, ref: Ref, files: list[FileInfo], version: VersionInfo, *, quiet: bool) -> None:
    missing = [f for f in files if not client.cache.has_blob(f.sha256, f.size)]
    if not missing:
        return
    from deltazoo.delta_pull import DeltaPuller  # the codecs (numpy): only a pull needs them

    puller: DeltaPuller | None = None
    held = [(r, client.cache.cached_files(Ref.parse(r))) for r in version.chain if Ref.parse(r) != ref]
    if any(cached for _, cached in held):
        puller = DeltaPuller(client.transport, client.cache, quiet=quiet)
        for held_ref, cached in held:
            if cached:
                puller.hold(cached, ref=held_ref)
    total = sum(f.size for f in missing)
    n = len(missing)
    bar = progress_bar(total, f"pull {ref} ({n} file{'' if n == 1 else 's'})", quiet=quiet)
    lock = threading.Lock()

    def fetch(f: FileInfo) -> None:
        share = BarShare(bar, lock)
        if puller is not None and not client.cache.incomplete_path(f.sha256).exists():
            puller.pull_file(version.ref, f, bar=share)
        else:
            url = file_path(ref, f.path)
            client.cache.download(client.transport, url, f, quiet=quiet, bar=share)
        share.n = f.size

    try:  # files side by side; the server rebuilds each on its threads, the client hashes as it writes
        lanes = min(PARALLEL_FILES, len(missing))
        with ThreadPoolExecutor(lanes, thread_name_prefix="deltazoo-pull") as pool:
            for future in [pool.submit(fetch, f) for f in missing]:
                future.result()
    finally:
        bar.close()
        if puller is not None:
            puller.close()


def snapshot(
    client: Client,
    name: str,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    quiet: bool = False,
) -> Path:
    """``Client.snapshot``."""
    ref, files, version = resolve(client, name)
    chosen = filter_paths(files, include, exclude, key=lambda f: f.path)
    if not chosen:
        listed = ", ".join(f.path for f in files[:8]) + (", ..." if len(files) > 8 else "")
        raise NotFoundError(
            f"no file of {ref} matches the patterns (include {include or '*'}, exclude "
            f"{exclude or 'nothing'}); its files: {listed}",
            code="no_matching_files",
            status=None,
        )
    if client.offline:
        absent = [f.path for f in chosen if not client.cache.has_blob(f.sha256, f.size)]
        if absent:
            raise NotFoundError(
                f"offline: {ref} is only partly in the cache (missing {', '.join(absent[:5])}); "
                "pull it once online",
                code="not_cached",
                status=None,
            )
    if version is not None:
        fill_cache(client, ref, chosen, version, quiet=quiet)
        client.cache.record_version(version)
        asked = Ref.parse(name)
        if asked.moving:  # offline mode answers it with this revision
            client.cache.remember_revision(asked, version.revision)
    return client.cache.link_snapshot(ref, chosen)


def place_tree(
    snap: Path,
    out: Path,
    include: Sequence[str] | str | None,
    exclude: Sequence[str] | str | None,
    *,
    copy: bool,
) -> dict[str, int]:
    methods: dict[str, int] = {}
    sources = sorted(p for p in snap.rglob("*") if p.is_file())
    for src in filter_paths(sources, include, exclude, key=lambda p: p.relative_to(snap).as_posix()):
        target = out / src.relative_to(snap)
        if target.is_dir():
            raise UsageError(
                f"{target} is a folder, but {src.relative_to(snap)} is a file of the model; "
                "move it away or pull into another folder",
                code="dest_conflict",
            )
        how = place(src, target, copy=copy)
        methods[how] = methods.get(how, 0) + 1
    return methods


def get_file(
    client: Client,
    name: str,
    path: str,
    dest: str | Path | None = None,
    *,
    copy: bool = False,
    quiet: bool = False,
) -> Path:
    """``Client.get_file``."""
    try:
        snap = snapshot(client, name, include=[glob.escape(path)], quiet=quiet)
    except NotFoundError as exc:
        if exc.code != "no_matching_files":
            raise
        raise NotFoundError(
            f"{name} has no file {path!r}; " + exc.message.split("; ", 1)[-1],
            code="file_not_found",
            status=None,
        ) from None
    src = snap / path
    if dest is None:
        return src
    target = Path(dest)
    if target.is_dir():
        target = target / Path(path).name
    place(src, target, copy=copy)
    return target


def state_dict(client: Client, name: str, *, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
    """``Client.state_dict``."""
    from safetensors.torch import load_file

    snap = snapshot(client, name, quiet=quiet)
    out: dict[str, Any] = {}
    for f in sorted(snap.rglob("*.safetensors")):
        tensors = load_file(str(f), device=device)
        clash = out.keys() & tensors.keys()
        if clash:
            raise UsageError(
                f"{name}: tensor {sorted(clash)[0]} appears in two files", code="duplicate_tensor"
            )
        out.update(tensors)
    return out


def fetch_delta_file(
    client: Client, name: str, profile: str, *, timeout: float | None = 3600, quiet: bool = False
) -> Path:
    """``Client.fetch_delta_file``."""
    ref = Ref.parse(name)
    if ref.moving:
        cache = client.cache
        rev = cache.remembered_revision(ref) if client.offline else client.version_info(name).revision
        if rev is None:
            raise NotFoundError(f"offline: {ref} was never pulled; pull it once online", code="not_cached")
        ref = Ref(ref.org, ref.name, str(rev))
    path = client.cache.artifact_path(ref, profile)
    if path.is_file():
        return path
    if client.offline:
        raise NotFoundError(
            f"offline: the {profile} profile of {ref} is not in the cache at {client.cache.root}; "
            "pull it once online",
            code="not_cached",
            status=None,
        )
    url = f"{version_path(ref)}/artifacts/{quote(profile, safe='')}"
    try:
        return download_artifact(client, url, ref, profile, quiet=quiet)
    except ConflictError as exc:
        if exc.code != "artifact_not_ready":
            raise
    client.wait_profiles(str(ref), [profile], timeout=timeout, quiet=quiet)
    return download_artifact(client, url, ref, profile, quiet=quiet)


def download_artifact(client: Client, url: str, ref: Ref, profile: str, *, quiet: bool) -> Path:
    """A packed container into the cache, named by the profile as the server spells it (``PROFILE_NAME``:
    ``deltadq:n=1,m=32,bits=4`` however it was asked for); ``deltazoo.download``: resumed with
    ``Range``, checked by size and the server's sha256 ETag, read-only."""
    try:
        canonical = client.transport.send("HEAD", url).headers.get(PROFILE_NAME) or profile
    except ClientError:  # a HEAD answer has no body: the GET below raises it with the server's message
        canonical = profile
    path = client.cache.artifact_path(ref, canonical)
    if path.is_file():
        return path
    return download(client.transport, url, path, what=path.name, quiet=quiet)
