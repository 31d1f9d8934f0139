"""Reading a local checkpoint directory before a push: its files (hashed, streaming) and its base."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from deltazoo.errors import UsageError
from deltazoo.models import FileInfo, Ref
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


def _card_base_models(readme: Path) -> list[str]:
    """``base_model`` entries of a Hugging Face model card's YAML front matter."""
    text = readme.read_text(errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return []
    out: list[str] = []
    lines = m.group(1).splitlines()
    for i, line in enumerate(lines):
        km = re.match(r"^base_model\s*:\s*(.*)$", line)
        if not km:
            continue
        if km.group(1).strip():
            out.append(km.group(1).strip().strip("'\""))
        for follow in lines[i + 1 :]:
            item = re.match(r"^\s*-\s*(.+)$", follow)
            if not item:
                break
            out.append(item.group(1).strip().strip("'\""))
    return out


def base_candidates(root: Path) -> list[str]:
    """Names a checkpoint gives for its base: model card ``base_model``, config.json hints."""
    names: list[str] = []
    if (root / "README.md").is_file():
        names += _card_base_models(root / "README.md")
    if (root / "config.json").is_file():
        try:
            config = json.loads((root / "config.json").read_text())
        except json.JSONDecodeError:
            config = {}
        for key in ("base_model", "_name_or_path"):
            if isinstance(config.get(key), str):
                names.append(config[key])
    return names


def base_from_checkpoint(root: Path, exists: Callable[[str], bool]) -> str | None:
    """The first base named by the checkpoint that the server holds, or None (push as a root)."""
    for name in base_candidates(root):
        try:
            Ref.parse(name)
        except UsageError:
            continue
        if exists(name):
            return name
    return None
