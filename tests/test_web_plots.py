"""The leaderboard's plot stays readable at 50 and 500 points, and gain kept is only shown where defined."""

from __future__ import annotations

import random
from typing import Any

import pytest
from deltazoo.api.plots import CHAR_W, KINDS, LABEL_H, MAX_LABELS, gain_plot, nice_step, stored_share_plot
from deltazoo.services.leaderboard import NO_GAIN, gain_fields


def _items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 10
        if kind < 6:  # profiles, close together as real ones are
            out.append(
                {"ref": f"org/ft-{i}@1", "profile": "deltadq:n=1,m=32,bits=4", "status": "ready",
                 "gain_kept": rng.uniform(0.9, 1.02), "gain_note": None,
                 "stored_bytes": int(10 ** rng.uniform(5.0, 5.3))}
            )
        elif kind == 6:  # the fine-tune did not gain on this text: no gain kept, a note instead
            out.append(
                {"ref": f"org/ft-{i}@1", "profile": "deltadq:n=1,m=32,bits=4", "status": "ready",
                 "gain_kept": None, "gain_note": NO_GAIN, "stored_bytes": 150_000}
            )
        elif kind == 7:  # deduplicated: every byte already stored
            out.append({"ref": f"org/copy-{i}@1", "profile": None, "status": "ready", "gain_kept": None,
                        "stored_bytes": 0})
        else:
            out.append({"ref": f"org/ft-{i}@1", "profile": None, "status": "ready", "gain_kept": None,
                        "stored_bytes": int(10 ** rng.uniform(6.0, 7.5))})
    return out


def _label_boxes(plot: dict[str, Any]) -> list[tuple[float, float, float, float]]:
    boxes = []
    for d in plot["dots"]:
        if d["lx"] is None:
            continue
        width = CHAR_W * len(d["label"])
        x0 = d["lx"] if d["anchor"] == "start" else d["lx"] - width
        boxes.append((x0, d["ly"] + 2 - LABEL_H, x0 + width, d["ly"] + 2))
    return boxes


@pytest.mark.parametrize("n", [50, 500])
def test_gain_plot_is_readable(n: int) -> None:
    items = _items(n)
    plot = gain_plot(items)
    assert plot is not None
    plotted = [i for i in items if i["profile"] is None or i["gain_kept"] is not None]
    assert len(plot["dots"]) == len(plotted)  # every point is drawn, 0 B versions included
    assert [entry["label"] for entry in plot["legend"]] == [KINDS["profile"], KINDS["dense"], KINDS["dedup"]]

    boxes = _label_boxes(plot)
    assert 1 <= len(boxes) <= MAX_LABELS
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, "labels overlap"
    assert all(d["lx"] is not None or d["tip"] for d in plot["dots"])  # the rest keep a tooltip

    values = [float(t["label"].rstrip("%")) for t in plot["yticks"]]
    steps = {round(b - a, 6) for a, b in zip(values, values[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in (1, 2, 2.5, 5, 10, 20, 25, 50)  # round steps, not 0/57/115
    gains = [d["y"] for d in plot["dots"]]
    assert 3 <= len(values) <= 7 and values[-1] >= 100  # every dot inside the ticked range
    tick_ys = [t["y"] for t in plot["yticks"]]
    assert min(tick_ys) <= min(gains) and max(gains) <= max(tick_ys)
    for d in plot["dots"]:  # no label covers a dot
        for x0, y0, x1, y1 in _label_boxes(plot):
            assert not (x0 < d["x"] < x1 and y0 < d["y"] < y1)

    dedup = [d for d in plot["dots"] if d["kind"] == "dedup"]
    assert dedup and plot["xticks"][0]["label"] == "0 B"
    assert all(d["x"] == plot["xticks"][0]["x"] for d in dedup)
    assert all(plot["left"] < d["x"] < plot["split"] for d in dedup)  # a column before the log axis
    assert min(t["x"] for t in plot["xticks"][1:]) > plot["split"]
    no_gain = sum(1 for i in items if i.get("gain_note"))
    assert plot["note"].startswith(f"{no_gain} profiles not plotted: the fine-tune did not gain")


def test_stored_share_bars_thin_their_labels() -> None:
    versions = [
        {"status": "ready", "logical_bytes": 100, "stored_bytes": i % 100, "revision": i, "ref": f"o/m@{i}"}
        for i in range(1, 501)
    ]
    plot = stored_share_plot(versions)
    assert plot is not None and len(plot["bars"]) == 500
    labelled = [b for b in plot["bars"] if b["label"]]
    xs = [b["x"] for b in labelled]
    assert len(labelled) < 30 and min(b - a for a, b in zip(xs, xs[1:], strict=False)) >= 28


def test_nice_steps() -> None:
    assert nice_step(1.15) == 0.2 and nice_step(1.0) == 0.2 and nice_step(0.3) == 0.05


def test_gain_kept_only_where_the_fine_tune_gained() -> None:
    gained = gain_fields({"bpb_base": 3.0, "bpb_finetune": 2.0, "gain_kept": 0.9})
    assert gained["gain_kept"] == 0.9 and gained["gain_note"] is None
    # base 2.0, fine-tune 2.45 (worse), profile 2.5: the old figure was (2.0-2.5)/(2.0-2.45) = 111 %
    worse = gain_fields({"bpb_base": 2.0, "bpb_finetune": 2.45, "gain_kept": 1.111})
    assert worse == {"gain_kept": None, "gain_note": NO_GAIN, "bpb_base": 2.0, "bpb_finetune": 2.45}
