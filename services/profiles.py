"""Lossy serving profiles (``deltadq:n=1,m=32,bits=4``), checked and spelled by ``compression.deltadq``."""

from __future__ import annotations

from deltazoo.compression.deltadq import parse_profile
from deltazoo.registry.errors import Unprocessable

MAX_PROFILE_CHARS = 200  # the registry's artifact.profile column


def check_profile(profile: str) -> str:
    """The canonical spelling of ``profile``; 422 ``invalid_profile`` when it cannot be parsed."""
    try:
        canonical = str(parse_profile(profile))
    except ValueError as exc:
        raise Unprocessable(f"profile {profile!r} is not valid: {exc}", code="invalid_profile") from None
    if len(canonical) > MAX_PROFILE_CHARS:
        raise Unprocessable(
            f"profile {canonical[:80]!r}... is {len(canonical)} characters; at most {MAX_PROFILE_CHARS}"
            " (the registry's column width): use shorter option values",
            code="invalid_profile",
        )
    return canonical
