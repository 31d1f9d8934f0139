"""Include / exclude glob patterns over a checkpoint's relative paths (push and pull alike).

Patterns are ``fnmatch`` globs matched against the whole relative path (``*`` also crosses ``/``,
as in huggingface_hub's ``allow_patterns``); a pattern ending in ``/`` means everything under that
folder. A path is kept when it matches some include pattern (or none are given) and no exclude one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import TypeVar

T = TypeVar("T")


def _normalise(patterns: Sequence[str] | str | None) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [p + "*" if p.endswith("/") else p for p in patterns]


def path_matches(path: str, include: Sequence[str] | str | None, exclude: Sequence[str] | str | None) -> bool:
    inc, exc = _normalise(include), _normalise(exclude)
    if inc and not any(fnmatchcase(path, p) for p in inc):
        return False
    return not any(fnmatchcase(path, p) for p in exc)


def filter_paths(
    items: Iterable[T],
    include: Sequence[str] | str | None,
    exclude: Sequence[str] | str | None,
    key: Callable[[T], str],
) -> list[T]:
    """The items whose ``key(item)`` path passes the patterns, in their order."""
    return [i for i in items if path_matches(key(i), include, exclude)]
