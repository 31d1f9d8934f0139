"""Coordinates of the pages' inline SVG plots (drawn by ``templates/_macros.html``).

Readable from 2 to 500 points: a legend for every colour, tick values at round steps, labels only
where they do not overlap one another (every point keeps its tooltip), and versions stored in 0 bytes
(fully deduplicated) drawn in a column of their own instead of vanishing from a log axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from deltazoo import units

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 320, 64, 620, 44, 270
ZERO_COLUMN = 50  # px left of the log axis for 0 B points
CHAR_W, LABEL_H = 6.2, 12.0  # px per character and line height of an 11px label
MAX_LABELS = 12

KINDS = {
    "profile": "lossy profile",
    "dense": "dense (exact) version",
    "dedup": "deduplicated version (0 B stored)",
}


def human_bytes(n: int | float | None) -> str:
    return units.human_bytes(n, digits=2, none="–")


def _frame(title: str, xlabel: str, ylabel: str) -> dict[str, Any]:
    return {
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "width": W,
        "height": H,
        "left": LEFT,
        "right": RIGHT,
        "top": TOP,
        "bottom": BOTTOM,
        "xticks": [],
        "yticks": [],
        "bars": [],
        "dots": [],
        "legend": [],
        "note": None,
        "radius": 6,
    }


def _y(fraction: float) -> float:
    return round(BOTTOM - fraction * (BOTTOM - TOP), 1)


def nice_step(span: float, most: int = 6) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that cuts ``span`` into at most ``most`` intervals."""
    raw = span / most if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _ticks(lo: float, hi: float) -> list[float]:
    """Round ticks from at or below ``lo`` to at or above ``hi``."""
    step = nice_step(hi - lo)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, max(last, first + 1) + 1)]


def stored_share_plot(versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Bars: stored / logical bytes of each ready version (lower is better)."""
    ready = [v for v in versions if v["status"] == "ready" and v["logical_bytes"]]
    if not ready:
        return None
    plot = _frame("stored bytes as a share of logical bytes, per version", "revision", "stored / logical")
    slot = (RIGHT - LEFT) / len(ready)
    width = min(60.0, slot * 0.7)
    every = max(1, math.ceil(28 / slot))  # a revision label every ~28 px at most
    for i, v in enumerate(ready):
        share = min(1.0, v["stored_bytes"] / v["logical_bytes"])
        x = LEFT + slot * i + (slot - width) / 2
        plot["bars"].append(
            {
                "x": round(x, 1),
                "y": _y(share),
                "w": round(width, 1),
                "h": round(_y(0) - _y(share), 1),
                "label": f"@{v['revision']}" if i % every == 0 else None,
                "tip": f"{v['ref']}: {human_bytes(v['stored_bytes'])} of {human_bytes(v['logical_bytes'])}",
            }
        )
    plot["yticks"] = [{"y": _y(f), "label": f"{f:.0%}"} for f in (0, 0.25, 0.5, 0.75, 1.0)]
    return plot


def _place_labels(
    dots: list[dict[str, Any]], priority: Callable[[dict[str, Any]], tuple[bool, float]]
) -> None:
    """Give a label position to the most important dots whose label box overlaps no other label and
    stays inside the plot; the rest keep only their tooltip."""
    boxes: list[tuple[float, float, float, float]] = []

    def free(box: tuple[float, float, float, float]) -> bool:
        x0, y0, x1, y1 = box
        if x0 < LEFT + 4 or x1 > W - 4 or y0 < TOP - 4 or y1 > BOTTOM:
            return False
        return all(x1 <= a0 or x0 >= a1 or y1 <= b0 or y0 >= b1 for a0, b0, a1, b1 in boxes)

    def clear_of_dots(box: tuple[float, float, float, float]) -> bool:
        x0, y0, x1, y1 = box
        return not any(x0 - r <= o["x"] <= x1 + r and y0 - r <= o["y"] <= y1 + r for o in dots)

    r = 3.0
    for d in sorted(dots, key=priority, reverse=True):
        if len(boxes) >= MAX_LABELS:
            break
        width = CHAR_W * len(d["label"])
        for anchor, x0 in (("start", d["x"] + 8), ("end", d["x"] - 8 - width)):
            box = (x0, d["y"] - 8 - LABEL_H, x0 + width, d["y"] - 8)
            if free(box) and clear_of_dots(box):
                boxes.append(box)
                d["lx"], d["ly"], d["anchor"] = (
                    (d["x"] + 8 if anchor == "start" else d["x"] - 8),
                    d["y"] - 10,
                    anchor,
                )
                break


def gain_plot(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Dots: stored bytes (log scale) against gain kept, per profile; dense versions at 100 %."""
    points = [
        (i, float(i["gain_kept"]), "profile") for i in items if i["profile"] and i["gain_kept"] is not None
    ]
    points += [
        (i, 1.0, "dense" if i["stored_bytes"] > 0 else "dedup")
        for i in items
        if not i["profile"] and i["status"] == "ready"
    ]
    if not any(kind == "profile" for _, _, kind in points):
        return None
    plot = _frame("stored bytes against gain kept", "stored bytes (log scale)", "gain kept")
    no_gain = sum(1 for i in items if i["profile"] and i.get("gain_note"))
    if no_gain:
        plot["note"] = (
            f"{no_gain} profile{'s' if no_gain > 1 else ''} not plotted: the fine-tune did not gain on "
            "this text, so there is no gain to keep (the table shows both bpb)"
        )
    sized = [p for p in points if p[0]["stored_bytes"] > 0]
    logs = [math.log10(p[0]["stored_bytes"]) for p in sized]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = hi if hi > lo else lo + 1
    decades = list(range(lo, hi + 1))
    if len(decades) > 8:  # every other decade (or fewer) on a wide range
        stride = math.ceil(len(decades) / 8)
        decades = decades[::stride]
    gains = [g for _, g, _ in points]
    yt = _ticks(min(gains), max(1.0, max(gains)))  # zoomed on the data; ticks say where it sits
    gmin, gmax = yt[0], yt[-1]
    zero = any(kind == "dedup" for _, _, kind in points)
    x0 = LEFT + (ZERO_COLUMN if zero else 0) + 20  # a column for 0 B points, right of the y axis

    def x_of(stored: int) -> float:
        if stored <= 0:
            return float(LEFT + ZERO_COLUMN / 2)
        return round(x0 + (math.log10(stored) - lo) / (hi - lo) * (RIGHT - 12 - x0), 1)

    def y_of(gain: float) -> float:
        return _y((gain - gmin) / (gmax - gmin))

    for item, gain, kind in points:
        plot["dots"].append(
            {
                "x": x_of(item["stored_bytes"]),
                "y": y_of(gain),
                "kind": kind,
                "label": f"{item['ref']}" + (f" {item['profile']}" if item["profile"] else ""),
                "lx": None,
                "ly": None,
                "anchor": "start",
                "tip": f"{item['ref']} {item['profile'] or 'dense'}: {human_bytes(item['stored_bytes'])}"
                + (f", gain kept {100 * gain:.1f} %" if kind == "profile" else " (exact)"),
            }
        )
    _place_labels(plot["dots"], priority=lambda d: (d["kind"] == "profile", -d["y"]))
    plot["radius"] = 6 if len(points) <= 60 else 4 if len(points) <= 200 else 3
    plot["xticks"] = [{"x": x_of(10**e), "label": units.human_bytes(10**e, digits=0)} for e in decades]
    if zero:
        plot["xticks"].insert(0, {"x": x_of(0), "label": "0 B"})
        plot["split"] = LEFT + ZERO_COLUMN  # where the log axis starts
    digits = 0 if all(abs(100 * g - round(100 * g)) < 1e-6 for g in yt) else 1
    plot["yticks"] = [{"y": y_of(g), "label": f"{100 * g:.{digits}f}%"} for g in yt]
    present = [k for k in KINDS if any(kind == k for _, _, kind in points)]
    x: float = LEFT
    for kind in present:
        plot["legend"].append({"kind": kind, "label": KINDS[kind], "x": x, "y": 18})
        x += 24 + CHAR_W * len(KINDS[kind])
    return plot
