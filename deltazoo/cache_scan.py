"""What the local cache holds (``deltazoo cache ls``) and freeing it (``deltazoo cache prune``).

A cached version is its record (``versions/<org>/<name>/<rev>.json``) plus the blobs it names and
its snapshot links. Pruning forgets the versions asked for, then deletes every blob no remaining
version names, interrupted downloads, and the snapshots and packed deltas of forgotten versions.
Files pulled into other folders stay usable: they are reflinks, hard links or copies, never
symbolic links into the cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from deltazoo.cache import Cache
from deltazoo.models import FileInfo
from deltazoo.refs import Ref


@dataclass(frozen=True)
class CachedVersion:
    ref: Ref
    files: tuple[FileInfo, ...]
    held_bytes: int  # bytes of its files whose blobs are here
    total_bytes: int
    latest: bool  # ``latest`` of its model resolved to it on the last online pull

    @property
    def complete(self) -> bool:
        return self.held_bytes == self.total_bytes


@dataclass(frozen=True)
class PruneResult:
    versions: tuple[Ref, ...]
    blobs: int
    freed_bytes: int


def cached_versions(cache: Cache) -> list[CachedVersion]:
    """Every version with a record in the cache, by name and revision."""
    root = cache.root / "versions"
    out: list[CachedVersion] = []
    for record in sorted(root.glob("*/*/*.json")) if root.is_dir() else ():
        org, name, rev = record.parent.parent.name, record.parent.name, record.stem
        ref = Ref(org, name, rev)
        files = tuple(FileInfo.model_validate(f) for f in json.loads(record.read_text())["files"])
        held = sum(f.size for f in files if cache.has_blob(f.sha256, f.size, check=False))
        latest = cache.latest_revision(ref)
        out.append(
            CachedVersion(
                ref, files, held, sum(f.size for f in files), latest is not None and str(latest) == rev
            )
        )
    out.sort(key=lambda v: v.ref.order)
    return out


def blob_bytes(cache: Cache) -> int:
    """Bytes on disk under ``blobs/`` (each blob once, however many versions name it)."""
    root = cache.root / "blobs"
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file()) if root.is_dir() else 0


def _matches(ref: Ref, wanted: Iterable[str]) -> bool:
    for text in wanted:
        w = Ref.parse(text)
        explicit_rev = "@" in text and not text.endswith("@latest")
        if w.model == ref.model and (not explicit_rev or w.rev == ref.rev):
            return True
    return False


def prune(cache: Cache, names: Iterable[str] = (), *, everything: bool = False) -> PruneResult:
    """Forget the versions ``names`` (``ORG/NAME`` = every cached revision, ``ORG/NAME@REV`` = one),
    or all with ``everything``; then delete blobs no remaining version names and partial downloads."""
    wanted = list(names)
    versions = cached_versions(cache)
    forget = [v for v in versions if everything or _matches(v.ref, wanted)]
    for v in forget:
        (cache.root / "versions" / v.ref.org / v.ref.name / f"{v.ref.rev}.json").unlink(missing_ok=True)
        shutil.rmtree(cache.snapshot_dir(v.ref), ignore_errors=True)
        shutil.rmtree(cache.root / "artifacts" / v.ref.org / v.ref.name / v.ref.rev, ignore_errors=True)
        cache.forget_revision(v.ref)
    kept = {f.sha256 for v in versions if v not in forget for f in v.files}
    blobs_dir = cache.root / "blobs"
    count = freed = 0
    for blob in sorted(blobs_dir.iterdir()) if blobs_dir.is_dir() else ():
        sha = blob.name.removesuffix(".incomplete")
        if blob.is_file() and (blob.name.endswith(".incomplete") or sha not in kept):
            freed += blob.stat().st_size
            count += 1
            blob.unlink()
            cache.drop_records(sha)
    return PruneResult(tuple(v.ref for v in forget), count, freed)
