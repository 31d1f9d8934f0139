"""``deltazoo.Client``: push, pull and inspect models on a deltazoo server (docs/REST.md).

    >>> from deltazoo import Client
    >>> c = Client()                                   # DELTAZOO_URL / DELTAZOO_TOKEN / DELTAZOO_CACHE
    >>> c.push("ckpt/base", "acme/base")
    >>> c.push("ckpt/math", "acme/math", base="acme/base", profiles=["deltadq:n=1,m=32,bits=4"])
    >>> sd = c.state_dict("acme/math@1")               # bit-exact tensors, via the local cache
    >>> art = c.fetch_delta("acme/math", "deltadq:n=1,m=32,bits=4", device="cuda")

Names are ``org/name`` or ``org/name@rev``. Every method takes keyword arguments after the first.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from deltazoo.cache import Cache
from deltazoo.checkpoint import check_weights, scan_checkpoint
from deltazoo.errors import (
    ClientError,
    ConflictError,
    DeltazooConnectionError,
    DeltazooError,
    IntegrityError,
    JobFailedError,
    NotFoundError,
    ServerError,
    UsageError,
)
from deltazoo.linking import place
from deltazoo.models import (
    Artifact,
    FileInfo,
    Job,
    Lineage,
    ModelInfo,
    ModelList,
    Ref,
    Stats,
    TagInfo,
    TokenInfo,
    VersionInfo,
)
from deltazoo.patterns import filter_paths
from deltazoo.transport import Transport, progress_bar

_CHUNK = 1 << 20
_PARALLEL_FILES = 4  # files of one pull or push in flight at once


class _BarShare:
    """One file's view of a progress bar shared by the files of a pull: its ``n`` and ``update`` move
    the shared bar by the difference (under a lock: files download on several threads)."""

    def __init__(self, bar: Any, lock: threading.Lock) -> None:
        self.bar, self.lock, self._n = bar, lock, 0

    @property
    def n(self) -> int:
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self.update(value - self._n)

    def update(self, delta: int) -> None:
        with self.lock:
            self._n += delta
            self.bar.update(delta)

    def refresh(self) -> None:
        with self.lock:
            self.bar.refresh()


def _vpath(ref: Ref) -> str:
    return f"/v1/models/{ref.org}/{ref.name}/versions/{ref.rev}"


class Client:
    """A connection to one deltazoo server plus the local cache.

    ``url``, ``token``, ``cache_dir`` and ``offline`` default to the settings (``DELTAZOO_URL``,
    ``DELTAZOO_TOKEN``, ``DELTAZOO_CACHE``, ``DELTAZOO_OFFLINE``). Offline, pulls are answered from
    the cache alone and anything else raises ``DeltazooConnectionError`` without a request.
    ``transport`` is passed to httpx (tests, proxies).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        max_retries: int | None = None,
        offline: bool | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from deltazoo.settings import get_settings

        settings = get_settings()
        self.url = (url or settings.url).rstrip("/")
        self.offline = settings.offline if offline is None else offline
        self._t = Transport(
            self.url,
            token if token is not None else settings.token,
            max_retries=settings.retries if max_retries is None else max_retries,
            offline=self.offline,
            transport=transport,
        )
        self.cache = Cache(cache_dir if cache_dir is not None else settings.cache)
        self.last_push_resumed = False  # the last push continued a pending version an earlier one left
        self.upload_part_bytes = settings.upload_part_mb << 20  # larger files go in resumable parts
        #: how the last ``pull`` placed its files in ``dest``: {"reflink"|"hardlink"|"copy": count}
        self.last_pull_methods: dict[str, int] = {}

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_downloaded(self) -> int:
        """Bytes of file and blob bodies received so far (JSON answers are in ``api_bytes``)."""
        return self._t.bytes_downloaded

    @property
    def bytes_uploaded(self) -> int:
        return self._t.bytes_uploaded

    @property
    def api_bytes(self) -> int:
        return self._t.api_bytes

    # --- reading the registry --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._t.json("GET", "/v1/health"))

    def list_models(self, search: str | None = None, *, limit: int = 50, offset: int = 0) -> ModelList:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if search:
            params["search"] = search
        return ModelList.from_dict(self._t.json("GET", "/v1/models", params=params))

    def model_info(self, name: str) -> ModelInfo:
        ref = Ref.parse(name)
        return ModelInfo.from_dict(self._t.json("GET", f"/v1/models/{ref.org}/{ref.name}"))

    def version_info(self, name: str) -> VersionInfo:
        """Version detail (files, tensors with encodings, artifacts, chain); ``@latest`` by default."""
        return VersionInfo.from_dict(self._t.json("GET", _vpath(Ref.parse(name))))

    def lineage(self, name: str, *, limit: int | None = None, page_size: int = 1000) -> Lineage:
        """Ancestors and descendants of a model. Every descendant by default (the pages of the lineage
        API, ``page_size`` each, fetched in turn); with ``limit``, at most that many (``next_cursor``
        then says whether more exist). ``descendant_counts`` always counts them all."""
        pages = list(self.iter_lineage_pages(name, page_size=page_size, limit=limit))
        return Lineage.from_pages(pages)

    def iter_lineage_pages(
        self, name: str, *, page_size: int = 1000, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The raw pages of a model's lineage, in order, until the descendants run out (or ``limit``)."""
        ref = Ref.parse(name)
        path = f"/v1/models/{ref.org}/{ref.name}/lineage"
        cursor: str | None = None
        fetched = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - fetched))
            params: dict[str, Any] = {"limit": size}
            if cursor:
                params["cursor"] = cursor
            page = self._t.json("GET", path, params=params)
            yield page
            fetched += len(page.get("descendants") or ())
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and fetched >= limit):
                return

    def stats(self) -> Stats:
        return Stats.from_dict(self._t.json("GET", "/v1/stats"))

    def leaderboard(self, text: str) -> dict[str, Any]:
        """Versions and profiles ranked by 8 / bpb on the text set ``text`` (REST-shaped dict)."""
        try:
            return dict(self._t.json("GET", "/v1/leaderboard", params={"text": text}))
        except NotFoundError as exc:
            if exc.code in (None, "not_found"):  # the route itself is missing, not the text set
                raise NotFoundError(
                    f"this deltazoo server at {self.url} has no leaderboard (GET /v1/leaderboard answered "
                    f"404: {exc.message}); upgrade the server",
                    code="no_leaderboard",
                    status=404,
                ) from exc
            raise

    # --- evaluation texts -------------------------------------------------------------------------

    def add_text(self, name: str, text: str | bytes | Path, *, description: str = "") -> dict[str, Any]:
        """Register a held-out UTF-8 text set (a string, bytes or a file path) for bits-per-byte
        evaluation and the leaderboard; calibrated profiles (``alloc=sensitivity``, ``select=search``)
        calibrate on the first text registered. Returns the REST ``TextSet``."""
        if isinstance(text, Path):
            if not text.is_file():
                raise UsageError(f"{text} is not a file; give a UTF-8 text file", code="no_such_file")
            data = text.read_bytes()
        else:
            data = text.encode() if isinstance(text, str) else bytes(text)
        params = {"name": name, "description": description}
        return dict(self._t.json("POST", "/v1/texts", params=params, content=lambda: [data]))

    def pending(self) -> list[dict[str, Any]]:
        """Versions created and not committed (REST ``PendingVersion`` dicts): what the server holds of
        each and when it expires; push the same folder again to finish one."""
        return list(self._t.json("GET", "/v1/pending")["items"])

    def texts(self) -> list[dict[str, Any]]:
        """The registered text sets (REST ``TextSet`` dicts)."""
        return list(self._t.json("GET", "/v1/texts")["items"])

    def job(self, id: str) -> Job:
        return Job.from_dict(self._t.json("GET", f"/v1/jobs/{quote(str(id))}"))

    def delete_model(self, name: str) -> None:
        """Delete a model and every version of it (refused while another model's versions need them)."""
        ref = Ref.parse(name)
        if ref.rev != "latest" and "@" in name:
            raise UsageError(f"delete_model takes ORG/NAME; for one version use delete_version({name!r})")
        self._t.json("DELETE", f"/v1/models/{ref.org}/{ref.name}")

    def tags(self, name: str) -> list[TagInfo]:
        """The named revisions of model ``name`` (``ORG/NAME``)."""
        ref = Ref.parse(name)
        body = self._t.json("GET", f"/v1/models/{ref.org}/{ref.name}/tags")
        return [TagInfo.from_dict(t) for t in body["items"]]

    def tag(self, name: str, tag: str) -> TagInfo:
        """Point ``tag`` at the version ``name`` (``ORG/NAME@REV``; a number, main, a commit id or another
        tag) names, creating or moving it; ``ORG/NAME@<tag>`` then works wherever a revision does."""
        ref = Ref.parse(name)
        if "@" not in name:
            raise UsageError(f"say which version to tag: {ref.model}@<rev>", code="revision_required")
        url = f"/v1/models/{ref.org}/{ref.name}/tags/{quote(tag, safe='')}"
        return TagInfo.from_dict(self._t.json("PUT", url, json={"revision": ref.rev}, idempotent=True))

    def delete_tag(self, name: str, tag: str) -> None:
        """Remove ``tag`` from model ``name``; the version it pointed at stays."""
        ref = Ref.parse(name)
        self._t.json("DELETE", f"/v1/models/{ref.org}/{ref.name}/tags/{quote(tag, safe='')}")

    def delete_version(self, name: str) -> None:
        ref = Ref.parse(name)
        if ref.rev == "latest":
            raise UsageError(f"say which revision to delete: {ref.model}@<rev>", code="revision_required")
        self._t.json("DELETE", _vpath(ref))

    # --- tokens (admin) -------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        *,
        namespace: str | None = None,
        scopes: Sequence[str] = ("read",),
        admin: bool = False,
    ) -> TokenInfo:
        """A new API token; its secret is in ``TokenInfo.token`` and is shown only this once."""
        body = {"name": name, "namespace": namespace, "scopes": list(scopes), "admin": admin}
        return TokenInfo.from_dict(self._t.json("POST", "/v1/tokens", json=body))

    def tokens(self) -> list[TokenInfo]:
        return [TokenInfo.from_dict(d) for d in self._t.json("GET", "/v1/tokens")["items"]]

    def delete_token(self, token_id: int) -> None:
        self._t.json("DELETE", f"/v1/tokens/{int(token_id)}")

    # --- jobs ------------------------------------------------------------------------------------

    def wait(self, job: Job | str, *, timeout: float | None = None, quiet: bool = False) -> Job:
        """Poll a job until it ends; raise ``JobFailedError`` when it failed."""
        current = job if isinstance(job, Job) else self.job(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        bar = progress_bar(
            100, f"{current.kind or 'job'} {current.target or current.id}", quiet=quiet, unit="%"
        )
        try:
            while not current.done:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"job {current.id} still {current.status} after {timeout:g} s; "
                        f"check it later with Client.job({current.id!r})"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)  # a finished job is seen within half a second
                current = self.job(current.id)
                bar.n = round(100 * current.progress)
                bar.refresh()
        finally:
            bar.close()
        if current.status == "failed":
            raise JobFailedError(
                f"job {current.id} ({current.kind} {current.target}) failed: {current.error}",
                job_id=current.id,
            )
        return current

    def _wait_artifacts(
        self, ref: str, profiles: Sequence[str], *, timeout: float | None, quiet: bool
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.2
        while True:
            version = self.version_info(ref)
            pending = [
                a for p in profiles if (a := version.artifact(p)) and a.status not in ("ready", "failed")
            ]
            failed = [a for p in profiles if (a := version.artifact(p)) and a.status == "failed"]
            if failed:
                raise JobFailedError(
                    f"{ref}: profile {failed[0].profile} failed to build "
                    f"({failed[0].quality or 'see the server log'})"
                )
            if not pending:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ref}: profiles {[a.profile for a in pending]} not ready after {timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    # --- push ------------------------------------------------------------------------------------

    def _upload_all(self, ref: Ref, files: list[FileInfo], root: Path, *, quiet: bool) -> None:
        """Send ``files`` with one progress bar over all of them (bytes, not per file)."""
        if not files:
            return
        total = sum(f.size for f in files)
        n = len(files)
        bar = progress_bar(total, f"push {ref.model} ({n} file{'' if n == 1 else 's'})", quiet=quiet)
        lock = threading.Lock()
        try:  # shards side by side: the server validates, hashes and stages each on its own thread
            lanes = min(_PARALLEL_FILES, len(files))
            with ThreadPoolExecutor(lanes, thread_name_prefix="deltazoo-push") as pool:
                futures = [
                    pool.submit(self._upload, ref, f, root / f.path, _BarShare(bar, lock), 0) for f in files
                ]
                for future in futures:
                    future.result()
        finally:
            bar.close()

    def _upload(self, ref: Ref, file: FileInfo, local: Path, bar: Any, before: int) -> None:
        """One file; ``bar`` counts every file of the push and ``before`` bytes precede this one."""
        if file.size > self.upload_part_bytes:
            self._upload_parts(ref, file, local, bar, before)
            return

        def body() -> Iterator[bytes]:
            bar.n = before  # a retry starts the file again
            bar.refresh()
            with local.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    self._t.count("bytes_uploaded", len(chunk))
                    bar.update(len(chunk))
                    yield chunk

        self._t.json(
            "PUT",
            f"{_vpath(ref)}/files/{quote(file.path)}",
            content=body,
            headers={"Content-Length": str(file.size), "Content-Type": "application/octet-stream"},
        )

    def _upload_parts(self, ref: Ref, file: FileInfo, local: Path, bar: Any, before: int) -> None:
        """Send ``local`` in parts (``Content-Range``); after a dropped connection or a 5xx, ask the
        server how many bytes it holds and send only the rest."""
        url = f"{_vpath(ref)}/files/{quote(file.path)}"
        status_url = f"{_vpath(ref)}/uploads/{quote(file.path)}"
        received = int(self._t.json("GET", status_url)["received"])
        failures = 0
        while True:
            start, end = received, min(file.size, received + self.upload_part_bytes)
            bar.n = before + start
            bar.refresh()

            def body(start: int = start, end: int = end) -> Iterator[bytes]:
                bar.n = before + start  # a re-sent part counts from its start again
                with local.open("rb") as f:
                    f.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = f.read(min(_CHUNK, left))
                        if not chunk:
                            raise UsageError(f"{local} shrank while it was uploaded; push it again")
                        left -= len(chunk)
                        self._t.count("bytes_uploaded", len(chunk))
                        bar.update(len(chunk))
                        yield chunk

            headers = {
                "Content-Range": f"bytes {start}-{end - 1}/{file.size}",
                "Content-Length": str(end - start),
                "Content-Type": "application/octet-stream",
            }
            try:
                answer = self._t.json("PUT", url, content=body, headers=headers, idempotent=False)
            except (DeltazooConnectionError, ServerError):
                failures += 1
                if failures > self._t.max_retries:
                    raise
                time.sleep(self._t._delay(failures - 1, None))
                received = int(self._t.json("GET", status_url)["received"])
                continue
            if end == file.size:
                return
            received, failures = int(answer["received"]), 0

    def _check_base(self, base: str) -> None:
        try:
            self.version_info(base)
        except NotFoundError as exc:
            raise NotFoundError(
                f"base {base} not found ({exc.message}): push it first with "
                f"`deltazoo push DIR --name {Ref.parse(base).model}` or check the name",
                code="base_not_found",
                status=404,
            ) from exc

    def push(
        self,
        path: str | Path,
        name: str,
        *,
        base: str | None = None,
        relation: str = "finetune",
        profiles: Sequence[str] | None = None,
        description: str = "",
        private: bool = False,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        allow_no_weights: bool = False,
        restart: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        quiet: bool = False,
    ) -> VersionInfo:
        """Upload the checkpoint directory ``path`` as a new version of ``name``.

        A push that did not finish (the connection or the server went away) is continued by pushing
        the same folder again: the server's pending version declaring the same files is reused and each
        file is sent from the byte the server holds (``last_push_resumed`` tells); ``restart`` creates
        a new version instead.

        ``base`` is ``org/name[@rev]``, ``"auto"`` (the server finds the stored version the
        weights are closest to, ``VersionInfo.parent_similarity``) or None (a root). Only files the
        server does not already hold are sent; ``include`` / ``exclude`` glob patterns pick the files
        (``deltazoo.patterns``). A folder without ``*.safetensors`` weights is refused unless
        ``allow_no_weights`` (its files are then stored as opaque bytes; pickles are never unpickled).

        ``profiles=None`` carries the serving profiles of the model's latest version over to a new
        revision pushed with a ``base`` (its ``artifacts`` say which); ``profiles=[]`` asks for none.
        ``description`` is set on a model this push creates. A push the server refuses (a 4xx) leaves
        nothing behind: the version it created is deleted, and the model too when this push created it.
        With ``wait`` the call returns once the version is ``ready`` (and its profiles built), raising
        ``JobFailedError`` when encoding failed.
        """
        ref = Ref.parse(name)
        if ref.rev != "latest":
            raise UsageError(
                f"push creates the next revision itself: name the model {ref.model} without @REV",
                code="revision_given",
            )
        root = Path(path)
        files = scan_checkpoint(root, include=include, exclude=exclude, quiet=quiet)
        check_weights(root, files, allow_no_weights=allow_no_weights)
        if base is not None and base != "auto":
            self._check_base(base)  # an unknown base fails here, before the model is created
        model_created = (
            self._t.send(
                "POST",
                "/v1/models",
                json={"name": ref.model, "description": description, "private": private, "exist_ok": True},
                idempotent=True,
            ).status_code
            == 201
        )
        if profiles is None:
            profiles = [] if model_created or base is None else self._carried_profiles(ref)
        vref: Ref | None = None
        try:
            created = self._t.json(
                "POST",
                f"/v1/models/{ref.org}/{ref.name}/versions",
                json={
                    "base": base,
                    "relation": relation,
                    "profiles": list(profiles),
                    "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
                    "resume": not restart,
                },
            )
            version = VersionInfo.from_dict(created["version"])
            vref = Ref(ref.org, ref.name, str(version.revision))
            self.last_push_resumed = bool(created.get("resumed"))
            if self.last_push_resumed and not quiet:
                print(
                    f"resuming {vref}: an earlier push of these files left it pending "
                    "(push with --restart for a new version)",
                    file=sys.stderr,
                )
            needed = {u["path"] for u in created.get("uploads", []) if u.get("needed", True)}
            self._upload_all(vref, [f for f in files if f.path in needed], root, quiet=quiet)
            committed = self._t.json("POST", f"{_vpath(vref)}/commit")
        except ClientError:
            # refused: nothing of this push may stay behind (an outage keeps it, to resume)
            self._undo_push(ref, vref, model_created)
            raise
        if not wait:
            return VersionInfo.from_dict(committed["version"])
        self.wait(Job.from_dict(committed["job"]), timeout=timeout, quiet=quiet)
        if profiles:
            self._wait_artifacts(str(vref), profiles, timeout=timeout, quiet=quiet)
        return self.version_info(str(vref))

    def _carried_profiles(self, ref: Ref) -> list[str]:
        """The latest version's profiles, for its next derived revision (none when it has none)."""
        try:
            return [a.profile for a in self.version_info(ref.model).artifacts]
        except NotFoundError:
            return []

    def _undo_push(self, ref: Ref, vref: Ref | None, model_created: bool) -> None:
        try:
            if model_created:
                self._t.json("DELETE", f"/v1/models/{ref.org}/{ref.name}")
            elif vref is not None:
                self._t.json("DELETE", _vpath(vref))
        except DeltazooError:  # best effort: the refusal is what the caller needs to see
            pass

    # --- pull ------------------------------------------------------------------------------------

    def _resolve(self, name: str) -> tuple[Ref, list[FileInfo], VersionInfo | None]:
        """Numeric revisions held whole in the cache are answered without asking the server;
        offline, ``latest`` is the revision it last resolved to and nothing is asked at all."""
        ref = Ref.parse(name)
        if self.offline:
            return self._resolve_offline(ref)
        if not ref.moving:
            cached = self.cache.cached_files(ref)
            if cached is not None:
                return ref, cached, None
        version = self.version_info(name)
        if version.status != "ready":
            hint = (
                f": {version.status_message}"
                if version.status == "failed"
                else "; wait for it (push with --wait, or Client.wait on its job) and pull again"
            )
            raise ConflictError(
                f"{version.ref} is {version.status}{hint}", code="version_not_ready", status=409
            )
        return Ref(ref.org, ref.name, str(version.revision)), list(version.files), version

    def _resolve_offline(self, ref: Ref) -> tuple[Ref, list[FileInfo], None]:
        if ref.moving and ref.rev != "latest":
            raise NotFoundError(
                f"offline: {ref} names a tag or commit the cache cannot resolve; pull it by revision number"
                " or once online",
                code="not_cached",
                status=None,
            )
        if ref.rev == "latest":
            latest = self.cache.latest_revision(ref)
            if latest is None:
                raise NotFoundError(
                    f"offline: {ref.model} was never pulled as latest into the cache at {self.cache.root}; "
                    "pull it once online (without --offline / DELTAZOO_OFFLINE)",
                    code="not_cached",
                    status=None,
                )
            ref = Ref(ref.org, ref.name, str(latest))
        files = self.cache.recorded_files(ref)
        if files is None:
            raise NotFoundError(
                f"offline: {ref} is not in the cache at {self.cache.root}; pull it once online "
                "(without --offline / DELTAZOO_OFFLINE)",
                code="not_cached",
                status=None,
            )
        return ref, files, None

    def _fill_cache(self, ref: Ref, files: list[FileInfo], version: VersionInfo, *, quiet: bool) -> None:
        missing = [f for f in files if not self.cache.has_blob(f.sha256, f.size)]
        if not missing:
            return
        from deltazoo.delta_pull import DeltaPuller  # the codecs (numpy): only a pull needs them

        puller: DeltaPuller | None = None
        held = [self.cache.cached_files(Ref.parse(r)) for r in version.chain if Ref.parse(r) != ref]
        if any(held):
            puller = DeltaPuller(self._t, self.cache, quiet=quiet)
            for cached in held:
                if cached:
                    puller.hold(cached)
        total = sum(f.size for f in missing)
        n = len(missing)
        bar = progress_bar(total, f"pull {ref} ({n} file{'' if n == 1 else 's'})", quiet=quiet)
        lock = threading.Lock()

        def fetch(f: FileInfo) -> None:
            share = _BarShare(bar, lock)
            if puller is not None and not self.cache.incomplete_path(f.sha256).exists():
                puller.pull_file(version.ref, f, bar=share)
            else:
                url = f"{_vpath(ref)}/files/{quote(f.path)}"
                self.cache.download(self._t, url, f, quiet=quiet, bar=share)
            share.n = f.size

        try:  # files side by side; the server rebuilds each on its threads, the client hashes as it writes
            lanes = min(_PARALLEL_FILES, len(missing))
            with ThreadPoolExecutor(lanes, thread_name_prefix="deltazoo-pull") as pool:
                for future in [pool.submit(fetch, f) for f in missing]:
                    future.result()
        finally:
            bar.close()

    def snapshot(
        self,
        name: str,
        *,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        quiet: bool = False,
    ) -> Path:
        """The cache directory holding the files of ``name`` (fetched when missing); ``include`` /
        ``exclude`` glob patterns (``deltazoo.patterns``) pick which files."""
        ref, files, version = self._resolve(name)
        chosen = filter_paths(files, include, exclude, key=lambda f: f.path)
        if not chosen:
            listed = ", ".join(f.path for f in files[:8]) + (", ..." if len(files) > 8 else "")
            raise NotFoundError(
                f"no file of {ref} matches the patterns (include {include or '*'}, exclude "
                f"{exclude or 'nothing'}); its files: {listed}",
                code="no_matching_files",
                status=None,
            )
        if self.offline:
            absent = [f.path for f in chosen if not self.cache.has_blob(f.sha256, f.size)]
            if absent:
                raise NotFoundError(
                    f"offline: {ref} is only partly in the cache (missing {', '.join(absent[:5])}); "
                    "pull it once online",
                    code="not_cached",
                    status=None,
                )
        if version is not None:
            self._fill_cache(ref, chosen, version, quiet=quiet)
            self.cache.record_version(version)
            if Ref.parse(name).rev == "latest":
                self.cache.set_latest(ref, version.revision)
        return self.cache.link_snapshot(ref, chosen)

    def pull(
        self,
        name: str,
        dest: str | Path | None = None,
        *,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        copy: bool = False,
        quiet: bool = False,
    ) -> Path:
        """Bit-exact files of ``name`` in ``dest`` (or the cache's snapshot when None); returns the dir.

        Files already in the cache are not downloaded again; when an ancestor version is cached only
        the tensors that differ from it travel; an interrupted download resumes where it stopped.
        ``include`` / ``exclude`` glob patterns pick the files (``"*.json"``, ``"tokenizer*"``).
        Files land in ``dest`` as reflinks or read-only hard links of the cache's blobs where the
        filesystem allows (no second copy; ``last_pull_methods`` says which), else as copies;
        ``copy=True`` always writes independent, writable copies.
        """
        out = None if dest is None else Path(dest)
        if out is not None and out.exists() and not out.is_dir():
            raise UsageError(
                f"{out} exists and is not a folder: pull writes a model's files into a folder; "
                "give a new or existing folder (for one file use `deltazoo get NAME PATH`)",
                code="dest_not_a_folder",
            )
        snap = self.snapshot(name, include=include, exclude=exclude, quiet=quiet)
        if out is None:
            return snap
        self.last_pull_methods = self._place_tree(snap, out, include, exclude, copy=copy)
        return out

    def _place_tree(
        self,
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
        self, name: str, path: str, dest: str | Path | None = None, *, copy: bool = False, quiet: bool = False
    ) -> Path:
        """One file of ``name`` (``path`` inside the model, e.g. ``config.json``), bit-exact.

        Returns its path: inside the cache when ``dest`` is None, else ``dest`` itself, or
        ``dest/<file name>`` when ``dest`` is an existing folder.
        """
        try:
            snap = self.snapshot(name, include=[glob.escape(path)], quiet=quiet)
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

    def state_dict(self, name: str, *, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
        """Every tensor of every safetensors file of ``name``, bit-exact, as torch tensors."""
        from safetensors.torch import load_file

        snap = self.snapshot(name, quiet=quiet)
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

    # --- lossy serving profiles ------------------------------------------------------------------

    def request_profile(self, name: str, profile: str) -> tuple[Artifact, Job]:
        """Ask the server to build ``profile`` for ``name``; returns the artifact and its job."""
        ref = Ref.parse(name)
        answer = self._t.json("POST", f"{_vpath(ref)}/artifacts", json={"profile": profile}, idempotent=True)
        return Artifact.from_dict(answer["artifact"]), Job.from_dict(answer["job"])

    def fetch_delta_file(
        self, name: str, profile: str, *, timeout: float | None = 3600, quiet: bool = False
    ) -> Path:
        """The packed delta container of ``profile`` for ``name``, in the cache (waits while it builds)."""
        ref = Ref.parse(name)
        if ref.moving:
            online = not self.offline or ref.rev != "latest"
            rev = self.version_info(name).revision if online else self.cache.latest_revision(ref)
            if rev is None:
                raise NotFoundError(
                    f"offline: {ref.model} was never pulled as latest; pull it once online", code="not_cached"
                )
            ref = Ref(ref.org, ref.name, str(rev))
        path = self.cache.artifact_path(ref, profile)
        if path.is_file():
            return path
        url = f"{_vpath(ref)}/artifacts/{quote(profile, safe='')}"
        try:
            return self._download_artifact(url, path, quiet=quiet)
        except ConflictError as exc:
            if exc.code != "artifact_not_ready":
                raise
        self._wait_artifacts(str(ref), [profile], timeout=timeout, quiet=quiet)
        return self._download_artifact(url, path, quiet=quiet)

    def _download_artifact(self, url: str, path: Path, *, quiet: bool) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".incomplete")
        digest = hashlib.sha256()
        with self._t.stream("GET", url) as response:
            size = int(response.headers.get("Content-Length", 0)) or None
            bar = progress_bar(size, f"pull-delta {path.stem}", quiet=quiet)
            try:
                with tmp.open("wb") as out:
                    for chunk in self._t.iter_body(response):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
            etag = response.headers.get("ETag", "").strip('"')
        if size is not None and tmp.stat().st_size != size:
            got = tmp.stat().st_size
            tmp.unlink()
            raise IntegrityError(
                f"artifact download stopped at {got} of {size} bytes; retry", code="size_mismatch"
            )
        if len(etag) == 64 and etag != digest.hexdigest():
            tmp.unlink()
            raise IntegrityError(
                "artifact bytes do not match the server's ETag; retry", code="sha256_mismatch"
            )
        os.chmod(tmp, 0o444)  # read-only like the blobs: pulls link it into place
        tmp.replace(path)
        return path

    def fetch_delta(self, name: str, profile: str, device: str = "cpu", *, quiet: bool = False) -> Any:
        """The ``compression.packed.PackedArtifact`` of ``profile`` for ``name``, loaded onto ``device``."""
        from deltazoo.compression.packed import load_artifact

        return load_artifact(self.fetch_delta_file(name, profile, quiet=quiet), device=device)
