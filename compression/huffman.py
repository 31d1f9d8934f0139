"""Length-limited canonical Huffman codes with per-context tables, shared by the format-5 bf16/f16 delta
coder (11-bit codes) and the format-6 f32 coder (12-bit codes).

Only the lengths are stored in a stream; both sides rebuild the codes from them in canonical order (by
context, length, symbol), so an encoder and a decoder with the same lengths agree bit for bit.
"""

from __future__ import annotations

import heapq

import numpy as np
from deltazoo.compression.exact_errors import CodecError


def bit_reversal(width: int) -> np.ndarray:
    """The ``width``-bit reversal of every ``width``-bit number (LSB-first codes from MSB-first slots)."""
    return np.array([int(f"{i:0{width}b}"[::-1], 2) for i in range(1 << width)], np.int64)


def depths(weights: list[int]) -> list[int]:
    """Leaf depths of a Huffman tree over the weights: merges by heap, each node remembering its parent;
    a leaf's depth is the length of its path to the root."""
    m = len(weights)
    heap = [(w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    up = [0] * (2 * m - 1)
    node = m
    while len(heap) > 1:
        wa, a = heapq.heappop(heap)
        wb, b = heapq.heappop(heap)
        up[a] = up[b] = node
        heapq.heappush(heap, (wa + wb, node))
        node += 1
    depth = [0] * (2 * m - 1)
    for i in range(2 * m - 3, -1, -1):  # parents are numbered after their children
        depth[i] = depth[up[i]] + 1
    return depth[:m]


def limited_lengths(counts: np.ndarray, max_len: int, floor: int = 0) -> np.ndarray:
    """Huffman code lengths (<= ``max_len``; 0 for unused symbols; 1 for a lone one) of one context's
    counts, each used count first raised to ``floor``. Codes longer than ``max_len`` are cut to it and the
    prefix code restored by lengthening, one bit at a time, the longest code still shorter than
    ``max_len`` (among those the rarest, then the lowest symbol)."""
    lengths = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    w = [max(int(c), floor) for c in counts[used].tolist()]
    ln = [min(d, max_len) for d in depths(w)]
    excess = sum(1 << (max_len - d) for d in ln) - (1 << max_len)
    while excess > 0:  # a few dozen steps over few symbols: plain Python is fastest
        top = max(d for d in ln if d < max_len)
        i = min((w[j], j) for j, d in enumerate(ln) if d == top)[1]
        excess -= 1 << (max_len - top - 1)
        ln[i] += 1
    lengths[used] = ln
    return lengths


def canonical(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every coded symbol of a (contexts, symbols) length table in canonical order (by context, length,
    symbol): (context, symbol, length, first ``max_len``-bit slot in MSB-first order). Per context the codes
    are consecutive from 0: a code of length l is slot >> (max_len − l) and holds 2^(max_len − l) slots."""
    ctx, sym = np.nonzero(lengths)
    ln = lengths[ctx, sym].astype(np.int64)
    order = np.lexsort((sym, ln, ctx))
    ctx, sym, ln = ctx[order], sym[order], ln[order]
    span = 1 << (max_len - ln)
    ends = np.cumsum(span)
    first = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]]) if ctx.size else np.zeros(0, np.int64)
    before = np.repeat(ends[first] - span[first], np.diff(np.r_[first, ctx.size]))  # earlier contexts' slots
    return ctx, sym, ln, ends - span - before


def check_kraft(lengths: np.ndarray, max_len: int) -> None:
    """Refuse a stream's length table that is no prefix code (corrupt or hostile input)."""
    ln = lengths.astype(np.int64)
    if (ln > max_len).any() or ((ln > 0) * (1 << max_len >> ln)).sum(axis=1).max(initial=0) > 1 << max_len:
        raise CodecError("corrupt payload: Huffman code lengths are not a prefix code")
