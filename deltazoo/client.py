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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from deltazoo import pull
from deltazoo.cache import Cache
from deltazoo.errors import NotFoundError, UsageError
from deltazoo.jobs import wait_for_job, wait_for_profiles
from deltazoo.models import (
    Artifact,
    ArtifactRequested,
    Job,
    Lineage,
    ModelInfo,
    ModelList,
    Stats,
    TagInfo,
    TagList,
    TokenCreated,
    TokenInfo,
    TokenList,
    VersionInfo,
    VersionSummary,
)
from deltazoo.push import push_folder
from deltazoo.refs import Ref, check_tag_name
from deltazoo.rest_paths import version_path
from deltazoo.transport import Transport


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
        self.transport = Transport(  # retries, byte counters; every request goes through it
            self.url,
            token if token is not None else settings.token,
            max_retries=settings.retries if max_retries is None else max_retries,
            offline=self.offline,
            transport=transport,
        )
        self.cache = Cache(cache_dir if cache_dir is not None else settings.cache)
        self.last_push_resumed = False  # the last push continued a pending version an earlier one left
        self.last_push_job: Job | None = None  # the encode job the last push's commit started
        self.upload_part_bytes = settings.upload_part_mb << 20  # larger files go in resumable parts
        self.outage_wait_s = settings.outage_wait_s  # uploads wait this long for a server gone away
        #: how the last ``pull`` placed its files in ``dest``: {"reflink"|"hardlink"|"copy": count}
        self.last_pull_methods: dict[str, int] = {}

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_downloaded(self) -> int:
        """Bytes of file and blob bodies received so far (JSON answers are in ``api_bytes``)."""
        return self.transport.bytes_downloaded

    @property
    def bytes_uploaded(self) -> int:
        return self.transport.bytes_uploaded

    @property
    def api_bytes(self) -> int:
        return self.transport.api_bytes

    # --- reading the registry --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self.transport.json("GET", "/v1/health"))

    def list_models(
        self, search: str | None = None, *, limit: int = 50, offset: int = 0, cursor: str | None = None
    ) -> ModelList:
        """One page of the models, in ``org/name`` order; ``cursor``: the previous page's ``next_cursor``
        (the page after it, as cheap however deep)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if search:
            params["search"] = search
        if cursor:
            params["cursor"] = cursor
        return ModelList.model_validate(self.transport.json("GET", "/v1/models", params=params))

    def model_info(self, name: str) -> ModelInfo:
        ref = Ref.parse(name)
        return ModelInfo.model_validate(self.transport.json("GET", f"/v1/models/{ref.org}/{ref.name}"))

    def update_model(
        self, name: str, *, description: str | None = None, private: bool | None = None
    ) -> ModelInfo:
        """Change what is given of a model's description and visibility. ``private=True`` is refused
        (409 ``has_public_descendants``) while public models, or models of other namespaces, build on it."""
        ref = Ref.parse(name)
        if "@" in name:
            raise UsageError(f"update_model takes ORG/NAME, not a version (got {name!r})")
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if private is not None:
            body["private"] = private
        return ModelInfo.model_validate(
            self.transport.json("PATCH", f"/v1/models/{ref.org}/{ref.name}", json=body)
        )

    def version_info(self, name: str) -> VersionInfo:
        """Version detail (files, tensors with encodings, artifacts, chain); ``@latest`` by default."""
        return VersionInfo.model_validate(self.transport.json("GET", version_path(Ref.parse(name))))

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
            page = self.transport.json("GET", path, params=params)
            yield page
            fetched += len(page.get("descendants") or ())
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and fetched >= limit):
                return

    def stats(self) -> Stats:
        return Stats.model_validate(self.transport.json("GET", "/v1/stats"))

    def leaderboard(self, text: str) -> dict[str, Any]:
        """Versions and profiles ranked by 8 / bpb on the text set ``text`` (REST-shaped dict)."""
        try:
            return dict(self.transport.json("GET", "/v1/leaderboard", params={"text": text}))
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
        return dict(self.transport.json("POST", "/v1/texts", params=params, content=lambda: [data]))

    def delete_text(self, name: str) -> None:
        """Forget a registered text set: its evaluations and its leaderboard go with it (admin with auth
        on). Calibrated profiles built on it stay as they are."""
        self.transport.json("DELETE", f"/v1/texts/{quote(name, safe='')}")

    def pending(self) -> list[dict[str, Any]]:
        """Versions created and not committed (REST ``PendingVersion`` dicts): what the server holds of
        each and when it expires; push the same folder again to finish one."""
        return list(self.transport.json("GET", "/v1/pending")["items"])

    def texts(self) -> list[dict[str, Any]]:
        """The registered text sets (REST ``TextSet`` dicts)."""
        return list(self.transport.json("GET", "/v1/texts")["items"])

    def job(self, id: int | str, *, wait: float = 0.0) -> Job:
        """A job's status; ``wait``: the server may hold its answer up to that many seconds, until the job
        has ended (a long poll; a server that does not know it answers at once)."""
        path = f"/v1/jobs/{quote(str(id))}" + (f"?wait={wait:g}" if wait > 0 else "")
        return Job.model_validate(self.transport.json("GET", path))

    def delete_model(self, name: str) -> None:
        """Delete a model and every version of it (refused while another model's versions need them)."""
        ref = Ref.parse(name)
        if ref.rev != "latest" and "@" in name:
            raise UsageError(f"delete_model takes ORG/NAME; for one version use delete_version({name!r})")
        self.transport.json("DELETE", f"/v1/models/{ref.org}/{ref.name}")

    def tags(self, name: str) -> list[TagInfo]:
        """The named revisions of model ``name`` (``ORG/NAME``)."""
        ref = Ref.parse(name)
        body = self.transport.json("GET", f"/v1/models/{ref.org}/{ref.name}/tags")
        return list(TagList.model_validate(body).items)

    def tag(self, name: str, tag: str) -> TagInfo:
        """Point ``tag`` at the version ``name`` (``ORG/NAME@REV``; a number, main, a commit id or another
        tag) names, creating or moving it; ``ORG/NAME@<tag>`` then works wherever a revision does."""
        ref = Ref.parse(name)
        if "@" not in name:
            raise UsageError(f"say which version to tag: {ref.model}@<rev>", code="revision_required")
        check_tag_name(tag)  # a malformed name is refused here, not as a route the server lacks
        url = f"/v1/models/{ref.org}/{ref.name}/tags/{quote(tag, safe='')}"
        answer = self.transport.json("PUT", url, json={"revision": ref.rev}, idempotent=True)
        return TagInfo.model_validate(answer)

    def delete_tag(self, name: str, tag: str) -> None:
        """Remove ``tag`` from model ``name``; the version it pointed at stays."""
        ref = Ref.parse(name)
        check_tag_name(tag)
        self.transport.json("DELETE", f"/v1/models/{ref.org}/{ref.name}/tags/{quote(tag, safe='')}")

    def delete_version(self, name: str) -> None:
        ref = Ref.parse(name)
        if ref.rev == "latest":
            raise UsageError(f"say which revision to delete: {ref.model}@<rev>", code="revision_required")
        self.transport.json("DELETE", version_path(ref))

    # --- tokens (admin) -------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        *,
        namespace: str | None = None,
        scopes: Sequence[str] = ("read",),
        admin: bool = False,
    ) -> TokenCreated:
        """A new API token; its secret is in ``TokenCreated.token`` and is shown only this once."""
        body = {"name": name, "namespace": namespace, "scopes": list(scopes), "admin": admin}
        return TokenCreated.model_validate(self.transport.json("POST", "/v1/tokens", json=body))

    def tokens(self) -> list[TokenInfo]:
        return list(TokenList.model_validate(self.transport.json("GET", "/v1/tokens")).items)

    def delete_token(self, token_id: int) -> None:
        self.transport.json("DELETE", f"/v1/tokens/{int(token_id)}")

    # --- jobs ------------------------------------------------------------------------------------

    def wait(self, job: Job | int | str, *, timeout: float | None = None, quiet: bool = False) -> Job:
        """Poll a job until it ends; raise ``JobFailedError`` when it failed."""
        return wait_for_job(self, job, timeout=timeout, quiet=quiet)

    def wait_profiles(
        self, ref: str, profiles: Sequence[str], *, timeout: float | None = None, quiet: bool = False
    ) -> None:
        """Poll the version ``ref`` until each of ``profiles`` is built; raise ``JobFailedError`` when
        one failed, ``TimeoutError`` after ``timeout`` seconds."""
        wait_for_profiles(self, ref, profiles, timeout=timeout, quiet=quiet)

    # --- push ------------------------------------------------------------------------------------

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
        retain: str = "exact",
    ) -> VersionSummary:
        """Upload the checkpoint directory ``path`` as a new version of ``name``.

        A push that did not finish (the connection or the server went away) is continued by pushing
        the same folder again: the server's pending version declaring the same files is reused and each
        file is sent from the byte the server holds (``last_push_resumed`` tells); ``restart`` creates
        a new version instead. With ``wait=False`` the version is returned once committed, its encode
        running: ``wait(last_push_job)`` waits for it later.

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

        ``retain="lossy"`` (only on this explicit request) archives a float32 checkpoint with ELF: every
        weight within 2⁻²⁴, the exact bytes not kept. The version is marked ``lossy``; a pull returns the
        ELF-decoded weights, so a file's ``sha256`` (what is served) differs from the pushed one, which
        its ``original_sha256`` keeps. A checkpoint with other float dtypes is refused (422).
        """
        return push_folder(
            self,
            path,
            name,
            base=base,
            relation=relation,
            profiles=profiles,
            description=description,
            private=private,
            include=include,
            exclude=exclude,
            allow_no_weights=allow_no_weights,
            restart=restart,
            wait=wait,
            timeout=timeout,
            quiet=quiet,
            retain=retain,
        )

    # --- pull ------------------------------------------------------------------------------------

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
        return pull.snapshot(self, name, include=include, exclude=exclude, quiet=quiet)

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
        """The stored files of ``name`` in ``dest`` (or the cache's snapshot when None); returns the dir.
        Bit-exact, except that a version pushed with ``retain="lossy"`` returns its ELF-decoded weights.

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
        self.last_pull_methods = pull.place_tree(snap, out, include, exclude, copy=copy)
        return out

    def get_file(
        self, name: str, path: str, dest: str | Path | None = None, *, copy: bool = False, quiet: bool = False
    ) -> Path:
        """One file of ``name`` (``path`` inside the model, e.g. ``config.json``), bit-exact.

        Returns its path: inside the cache when ``dest`` is None, else ``dest`` itself, or
        ``dest/<file name>`` when ``dest`` is an existing folder.
        """
        return pull.get_file(self, name, path, dest, copy=copy, quiet=quiet)

    def state_dict(self, name: str, *, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
        """Every tensor of every safetensors file of ``name``, bit-exact, as torch tensors."""
        return pull.state_dict(self, name, device=device, quiet=quiet)

    # --- lossy serving profiles ------------------------------------------------------------------

    def request_profile(self, name: str, profile: str) -> tuple[Artifact, Job]:
        """Ask the server to build ``profile`` for ``name``; returns the artifact and its job."""
        ref = Ref.parse(name)
        path = f"{version_path(ref)}/artifacts"
        answer = self.transport.json("POST", path, json={"profile": profile}, idempotent=True)
        requested = ArtifactRequested.model_validate(answer)
        return requested.artifact, requested.job

    def fetch_delta_file(
        self, name: str, profile: str, *, timeout: float | None = 3600, quiet: bool = False
    ) -> Path:
        """The packed delta container of ``profile`` for ``name``, in the cache (waits while it builds)."""
        return pull.fetch_delta_file(self, name, profile, timeout=timeout, quiet=quiet)

    def fetch_delta(self, name: str, profile: str, device: str = "cpu", *, quiet: bool = False) -> Any:
        """The ``compression.packed.PackedArtifact`` of ``profile`` for ``name``, loaded onto ``device``."""
        from deltazoo.compression.packed import load_artifact

        return load_artifact(self.fetch_delta_file(name, profile, quiet=quiet), device=device)
