"""Printing for the ``deltazoo`` command: tables, JSON, ratios, a version in one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from deltazoo.units import human_bytes


def ratio_text(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def ratio_or_dedup(v: Any) -> str:
    if v.status == "ready" and v.stored_bytes == 0 and v.logical_bytes > 0:
        return "- (every byte already stored: deduplicated)"
    return ratio_text(v.ratio)


LOSSY_NOTE = (
    "lossy: pushed with --retain lossy, so its float32 weights are ELF-archived (each within 2^-24 of the"
    " pushed value) and the pushed bytes are not kept; its files' sha256 are those of the served bytes"
    " (the pushed ones: original_sha256 in `info --json`)"
)


def version_line(v: Any) -> str:
    """One line for a version: ref, parent, status, logical and stored bytes, ratio."""
    parent = f" <- {v.parent}" if v.parent else ""
    return (
        f"{v.ref}{parent}  {v.status}  logical {human_bytes(v.logical_bytes)}  "
        f"stored {human_bytes(v.stored_bytes)}  ratio {ratio_or_dedup(v)}"
    )
