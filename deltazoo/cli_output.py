"""Printing for the ``deltazoo`` command: tables, JSON, ratios."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


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
