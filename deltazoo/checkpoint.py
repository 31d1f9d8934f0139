"""Reading a local checkpoint directory before a push: its files, hashed while streaming."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deltazoo.errors import UsageError
from deltazoo.models import FileInfo
from deltazoo.patterns import path_matches
from deltazoo.transport import progress_bar

_CHUNK = 1 << 22
#: files torch.save / pickle wrote: stored as opaque bytes, never unpickled
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def is_pickle_path(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def check_weights(root: Path, files: Sequence[FileInfo], *, allow_no_weights: bool) -> None:
    """Refuse a checkpoint without ``*.safetensors`` weights unless ``allow_no_weights``.

    deltazoo deduplicates, deltas and evaluates tensors it reads from safetensors files; anything
    else (``pytorch_model.bin`` and other pickles included) is kept as opaque bytes, never unpickled.
    """
    if allow_no_weights or any(f.kind == "safetensors" for f in files):
        return
    names = ", ".join(f.path for f in files[:5]) + (", ..." if len(files) > 5 else "")
    pickles = [f.path for f in files if is_pickle_path(f.path)]
    convert = (
        f" {pickles[0]} is a pickle: deltazoo never unpickles it; convert it to safetensors first "
        "(model.save_pretrained(dir, safe_serialization=True))."
        if pickles
        else ""
    )
    raise UsageError(
        f"{root} has no *.safetensors weights (it holds {names}): nothing could be stored as "
        f"tensors, deduplicated against a base or evaluated.{convert} To store these files as opaque "
        "bytes anyway, push with --allow-no-weights (SDK: allow_no_weights=True)",
        code="no_weights",
    )


def scan_checkpoint(
    root: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    quiet: bool = False,
    hash_up_to: int | None = None,
) -> list[FileInfo]:
    """Every regular file under ``root`` (hidden files and folders skipped) that passes the
    ``include`` / ``exclude`` glob patterns (``deltazoo.patterns``), with size and sha256.

    Files larger than ``hash_up_to`` are not read here: their sha256 is left empty, for the upload to
    compute while it sends them (one pass over the bytes)."""
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a directory: push a checkpoint folder (config.json, *.safetensors)",
            code="not_a_directory",
        )
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and path_matches(p.relative_to(root).as_posix(), include, exclude)
    )
    if not paths:
        filtered = " that match --include/--exclude" if include or exclude else ""
        raise UsageError(f"{root} holds no files{filtered} to push", code="empty_checkpoint")
    def hashed_here(p: Path) -> bool:
        return hash_up_to is None or p.stat().st_size <= hash_up_to

    total = sum(p.stat().st_size for p in paths if hashed_here(p))
    bar = progress_bar(total, "hashing", quiet=quiet)
    lock = threading.Lock()

    def digest(p: Path) -> FileInfo:
        rel = p.relative_to(root).as_posix()
        kind = "safetensors" if rel.endswith(".safetensors") else "other"
        if not hashed_here(p):
            return FileInfo(path=rel, size=p.stat().st_size, sha256="", kind=kind)
        h = hashlib.sha256()
        size = 0
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)  # releases the GIL: shards are hashed on every core
                size += len(chunk)
                with lock:
                    bar.update(len(chunk))
        return FileInfo(path=rel, size=size, sha256=h.hexdigest(), kind=kind)

    try:
        with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
            files = list(pool.map(digest, paths))
    finally:
        bar.close()
    return files
