"""Reading a local checkpoint directory before a push: its files, hashed while streaming."""

from __future__ import annotations

import hashlib
from pathlib import Path

from deltazoo.errors import UsageError
from deltazoo.models import FileInfo
from deltazoo.transport import progress_bar

_CHUNK = 1 << 22


def scan_checkpoint(root: Path, *, quiet: bool = False) -> list[FileInfo]:
    """Every regular file under ``root`` (hidden files and folders skipped), with size and sha256."""
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a directory: push a checkpoint folder (config.json, *.safetensors)",
            code="not_a_directory",
        )
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise UsageError(f"{root} holds no files to push", code="empty_checkpoint")
    total = sum(p.stat().st_size for p in paths)
    bar = progress_bar(total, "hashing", quiet=quiet)
    files: list[FileInfo] = []
    try:
        for p in paths:
            h = hashlib.sha256()
            size = 0
            with p.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            rel = p.relative_to(root).as_posix()
            kind = "safetensors" if rel.endswith(".safetensors") else "other"
            files.append(FileInfo(path=rel, size=size, sha256=h.hexdigest(), kind=kind))
    finally:
        bar.close()
    return files
