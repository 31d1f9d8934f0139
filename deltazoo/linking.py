"""Placing a cached blob at a destination path without a second copy where the filesystem allows.

Order: a reflink (copy-on-write clone: btrfs, XFS, bcachefs; independent of the blob, no bytes
copied), then a hard link (same inode; the cache keeps its blobs read-only so an edit in place is
refused instead of corrupting the cache), then a plain copy. The destination is replaced atomically
(written under a temporary name first), so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Literal

Method = Literal["reflink", "hardlink", "copy"]
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _reflink(src: Path, dst: Path) -> bool:
    try:
        with src.open("rb") as s, dst.open("wb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False


def place(src: Path, dst: Path, *, copy: bool = False) -> Method:
    """Make ``dst`` hold the bytes of ``src``; returns how. ``copy`` forces an independent copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.deltazoo-tmp")
    tmp.unlink(missing_ok=True)
    method: Method
    if not copy and _reflink(src, tmp):
        method = "reflink"
    else:
        try:
            if copy:
                raise OSError("copy asked for")
            os.link(src, tmp)
            method = "hardlink"
        except OSError:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
            method = "copy"
    if method == "reflink":
        os.chmod(tmp, 0o644)
    os.replace(tmp, dst)
    # rename(2) of a hard link onto another link of the same inode does nothing: both names stay
    tmp.unlink(missing_ok=True)
    return method
