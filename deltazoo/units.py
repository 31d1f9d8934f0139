"""How sizes are written for people (CLI tables and web pages alike): decimal units, like `ls -h --si`."""

from __future__ import annotations


def human_bytes(n: int | float | None, digits: int = 1, none: str = "-") -> str:
    """``1500`` -> ``"1.5 kB"``; whole bytes below 1000; ``none`` for a size that is not known."""
    if n is None:
        return none
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.{digits}f} {unit}"
        size /= 1000
    raise AssertionError("unreachable: the loop returns at TB")
