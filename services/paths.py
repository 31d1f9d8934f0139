"""File names a version may hold: ones every common file system can write side by side, so a pull
never fails (or silently overwrites) on the user's machine."""

from __future__ import annotations

import re

from deltazoo.registry.errors import Unprocessable

_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
_WINDOWS_FORBIDDEN = set('<>:"|?*')


def check_portable_paths(paths: list[str]) -> None:
    """422 ``colliding_paths`` / ``unportable_path`` naming the offending files: a file that is also a
    folder of another, two names equal but for case, Windows device names, trailing dots or spaces and
    characters Windows forbids."""
    for path in paths:
        for part in path.split("/"):
            bad = sorted(_WINDOWS_FORBIDDEN & set(part))
            if _WINDOWS_RESERVED.match(part) or part.endswith((".", " ")) or bad:
                why = f"characters {''.join(bad)!r}" if bad else "a name Windows reserves or cannot end with"
                raise Unprocessable(
                    f"file path {path!r} cannot be written on Windows ({part!r}: {why}); rename it",
                    code="unportable_path",
                )
    folders: dict[str, str] = {}
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]).casefold(), path)
    seen: dict[str, str] = {}
    for path in paths:
        key = path.casefold()
        if key in folders:
            raise Unprocessable(
                f"file {path!r} is also a folder of {folders[key]!r}; a file system holds only one of them",
                code="colliding_paths",
            )
        if key in seen:
            raise Unprocessable(
                f"files {seen[key]!r} and {path!r} differ only in case; they collide on macOS and Windows",
                code="colliding_paths",
            )
        seen[key] = path
