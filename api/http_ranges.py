"""HTTP byte ranges, parsed at the edge: ``Range`` of a download and ``Content-Range`` of an upload part.

The services take the numbers (start, end exclusive); what a header looks like is the API's business.
"""

from __future__ import annotations

import re

from deltazoo.registry.errors import BadRequest, RangeNotSatisfiable

CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (start, end exclusive); None for no range. Raises 416 when unsatisfiable
    or malformed. A unit other than bytes is ignored (RFC 9110 14.2: MUST), and so is a request of several
    ranges (MAY): the whole file is the answer, as multipart answers are not sent."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    bad = RangeNotSatisfiable(
        f"range {header!r} is not satisfiable for a file of {size} bytes; use bytes=START-END within it", size
    )
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                raise bad
            return max(0, size - length), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        raise bad from None
    if start >= size or start < 0 or end <= start:
        raise bad
    return start, min(end, size)


def parse_content_range(header: str, declared: int, path: str) -> tuple[int, int]:
    """``Content-Range: bytes a-b/total`` -> (a, b + 1); the total must be the declared size."""
    match = CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise BadRequest(
            f"{path}: Content-Range {header!r} is not 'bytes FIRST-LAST/TOTAL'", code="invalid_content_range"
        )
    first, last, total = (int(g) for g in match.groups())
    if total != declared:
        raise BadRequest(
            f"{path}: Content-Range total {total} is not the declared size {declared}", code="size_mismatch"
        )
    if last < first or last >= total:
        raise BadRequest(
            f"{path}: Content-Range {header!r} is not within 0-{total - 1}", code="invalid_content_range"
        )
    return first, last + 1
