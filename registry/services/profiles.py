"""Lossy serving profiles (``deltadq:n=1,m=32,bits=4``): checked by ``compression.deltadq`` when present."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from registry.errors import Unprocessable

_FALLBACK = re.compile(r"^deltadq:([a-z_]+=[A-Za-z0-9._-]+)(,[a-z_]+=[A-Za-z0-9._-]+)*$")


def deltadq_module() -> ModuleType | None:
    """``compression.deltadq`` if it is installed (it is written alongside the server), else None."""
    try:
        return importlib.import_module("compression.deltadq")
    except ModuleNotFoundError as exc:
        if exc.name not in ("compression.deltadq",):
            raise
        return None


def check_profile(profile: str) -> str:
    """The canonical spelling of ``profile``; 422 ``invalid_profile`` when it cannot be parsed."""
    module = deltadq_module()
    if module is not None:
        try:
            return str(module.parse_profile(profile))  # the canonical spelling
        except ValueError as exc:
            raise Unprocessable(f"profile {profile!r} is not valid: {exc}", code="invalid_profile") from None
    if not _FALLBACK.match(profile):
        raise Unprocessable(
            f"profile {profile!r} is not valid; write it like deltadq:n=1,m=32,bits=4", code="invalid_profile"
        )
    return profile
