"""Lossy serving profiles (``deltadq:n=1,m=32,bits=4``), checked and spelled by ``compression.deltadq``."""

from __future__ import annotations

from compression.deltadq import parse_profile
from registry.errors import Unprocessable


def check_profile(profile: str) -> str:
    """The canonical spelling of ``profile``; 422 ``invalid_profile`` when it cannot be parsed."""
    try:
        return str(parse_profile(profile))
    except ValueError as exc:
        raise Unprocessable(f"profile {profile!r} is not valid: {exc}", code="invalid_profile") from None
