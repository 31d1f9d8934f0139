"""Variable-width bit fields packed LSB-first into one byte string: the raw planes of formats 4, 5 and 6.

(``compression.packed`` packs fixed-width codes row by row for DeltaDQ artifacts; that is another
layout.)
"""

from __future__ import annotations

import numpy as np


def pack_lsb_first(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """The low nbits[i] bits of values[i], concatenated LSB-first (as the C scan writes them)."""
    v, nb = values.astype(np.uint64), nbits.astype(np.int64)
    ends = np.cumsum(nb)
    total = int(ends[-1]) if ends.size else 0
    out = np.zeros((total + 7) // 8 + 8, np.float64)
    start = ends - nb
    lo_n = np.minimum(nb, 32)
    parts = [(v & np.uint64(0xFFFFFFFF), start, lo_n), (v >> np.uint64(32), start + 32, nb - lo_n)]
    for part, at, width in parts:
        keep = width > 0
        part = part[keep] & ((np.uint64(1) << width[keep].astype(np.uint64)) - np.uint64(1))
        at = at[keep]
        shifted = part << (at & 7).astype(np.uint64)
        for b in range(5):
            byte = (shifted >> np.uint64(8 * b)) & np.uint64(0xFF)
            out += np.bincount((at >> 3) + b, weights=byte.astype(np.float64), minlength=out.size)
    return out.astype(np.uint8)[: (total + 7) // 8].tobytes()


def unpack_lsb_first(buf: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_lsb_first``: buf is the packed bytes plus 8 zero bytes of padding."""
    nb = nbits.astype(np.int64)
    start = np.cumsum(nb) - nb
    b = buf.astype(np.uint64)
    out = np.zeros(nb.shape, np.uint64)
    lo_n = np.minimum(nb, 32)
    for at, width, shift in ((start, lo_n, 0), (start + 32, nb - lo_n, 32)):
        at = np.minimum(at, 8 * (buf.size - 8))
        word = np.zeros(nb.shape, np.uint64)
        for k in range(5):
            word |= b[(at >> 3) + k] << np.uint64(8 * k)
        ones = (np.uint64(1) << width.astype(np.uint64)) - np.uint64(1)
        val = (word >> (at & 7).astype(np.uint64)) & ones
        out |= val << np.uint64(shift)
    return out
