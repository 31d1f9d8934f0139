"""Format 4's model of an element: tokens per element, per-context 12-bit frequency tables.

Every element (an unsigned integer of ``width`` bytes) becomes a *token*, coded by ``compression.exact_any``
with a static 12-bit model of its context in rANS, plus *raw bits* packed apart (see docs/FORMAT.md,
"Exact tensor payloads", format 4).

* ``MODE_DELTA`` (a delta against a parent, or an integer tensor against zero): ``d = (c − p) mod 2^bits``
  read as signed, ``m = |d|``, ``k`` = bit length of ``m``; token ``2·idx + sign`` with ``idx`` 0, 1, 2–3
  for ``m`` < 4 and ``4 + 4(k − 3) + r`` (``r`` = the two bits after the leading one) above; the ``k − 3``
  low bits of ``m`` are raw. Context: the parent's float exponent (its top ``tbits`` bits), else 0.
* ``MODE_FLOAT`` (a float tensor without a parent): token = the top ``tbits`` exponent bits; raw = the
  sign, the rest of the exponent and the mantissa.

These are numpy twins of what the C kernel (``compression._exact_any``) computes; the format-4 numpy
fallback and the tests use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODE_DELTA, MODE_FLOAT = 0, 1
PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 16
ALPHA = 256  # token table stride; tokens are < 256


@dataclass(frozen=True)
class Layout:
    """How elements of one tensor become tokens: width in bytes, mode, shift and bits of the token field."""

    width: int
    mode: int
    shift: int
    tbits: int

    @property
    def rb(self) -> int:
        """Bits after a magnitude's leading one that go into its token (8-byte dtypes: 1, else 2)."""
        return 1 if self.width == 8 else 2

    def args(self) -> tuple[int, int, int, int]:
        return self.width, self.mode, self.shift, self.tbits


def lanes_for(n: int) -> int:
    """Interleaved states for n elements: a power of two, about n / 4096, between 1 and 4096."""
    return 1 << min(12, max(0, (max(n, 1) >> 12).bit_length() - 1))


# ---------------------------------------------------------------------------------------------- tokens
def _u64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.uint64)


def tokenize(lay: Layout, child: np.ndarray, parent: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(context, token, raw, raw bit count) per element, as the C kernel computes them."""
    bits = 8 * lay.width
    c = _u64(child)
    tmask = np.uint64((1 << lay.tbits) - 1)
    if lay.mode == MODE_FLOAT:
        shift = np.uint64(lay.shift)
        tok = (c >> shift) & tmask
        raw = ((c >> np.uint64(bits - 1)) << shift) | (c & np.uint64((1 << lay.shift) - 1))
        nraw = np.full(c.shape, lay.shift + 1, dtype=np.int64)
        return np.zeros(c.shape, np.int64), tok.astype(np.int64), raw, nraw
    p = np.zeros_like(c) if parent is None else _u64(parent)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    ctx = ((p >> np.uint64(lay.shift)) & tmask).astype(np.int64)
    d = (c - p) & mask
    s = d >> np.uint64(bits - 1)
    m = np.where(s == 1, (np.uint64(0) - d) & mask, d)
    k = _bitlen(m)
    big = k >= 3
    low = np.where(big, k - 1 - lay.rb, 0).astype(np.uint64)
    ref = ((m >> low) & np.uint64((1 << lay.rb) - 1)).astype(np.int64)
    small = np.where(k == 2, 2 + (m & np.uint64(1)).astype(np.int64), k)
    idx = np.where(big, 4 + ((k - 3) << lay.rb) + ref, small)
    raw = m & ((np.uint64(1) << low) - np.uint64(1))
    return ctx, 2 * idx + s.astype(np.int64), raw, low.astype(np.int64)


def _bitlen(m: np.ndarray) -> np.ndarray:
    k = np.zeros(m.shape, np.int64)
    rest = m.copy()
    for step in (32, 16, 8, 4, 2, 1):
        hi = rest >= (np.uint64(1) << np.uint64(step))
        k += np.where(hi, step, 0)
        rest = np.where(hi, rest >> np.uint64(step), rest)
    return k + (rest > 0)


def raw_count(lay: Layout, tok: np.ndarray) -> np.ndarray:
    if lay.mode == MODE_FLOAT:
        return np.full(tok.shape, lay.shift + 1, np.int64)
    idx = tok >> 1
    k = 3 + ((idx - 4) >> lay.rb)
    return np.where((idx < 4) | (k > 8 * lay.width), 0, k - 1 - lay.rb)


def untokenize(lay: Layout, tok: np.ndarray, raw: np.ndarray, parent: np.ndarray | None) -> np.ndarray:
    bits = 8 * lay.width
    t = tok.astype(np.uint64)
    if lay.mode == MODE_FLOAT:
        shift = np.uint64(lay.shift)
        low_mask = np.uint64((1 << lay.shift) - 1)
        v = ((raw >> shift) << np.uint64(bits - 1)) | (t << shift) | (raw & low_mask)
        return v.astype(f"<u{lay.width}")
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    idx, s = tok >> 1, tok & 1
    low = raw_count(lay, tok).astype(np.uint64)
    lead = (1 << lay.rb) + ((idx - 4) & ((1 << lay.rb) - 1))
    big = (lead.astype(np.uint64) << low) | raw
    m = np.where(idx < 4, idx.astype(np.uint64), big)
    d = np.where(s == 1, (np.uint64(0) - m) & mask, m)
    p = np.zeros_like(d) if parent is None else _u64(parent)
    return ((p + d) & mask).astype(f"<u{lay.width}")


# ---------------------------------------------------------------------------------------------- tables
def quantize(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(used contexts, freq[rows, ALPHA]) summing to PROB_SCALE per row, ≥ 1 wherever a count is."""
    used = np.flatnonzero(counts.sum(axis=1))
    c = counts[used].astype(np.int64)
    nnz = (c > 0).sum(axis=1, keepdims=True)
    total = c.sum(axis=1, keepdims=True)
    f = c * (PROB_SCALE - nnz) // np.maximum(total, 1) + (c > 0)
    f[np.arange(len(used)), c.argmax(axis=1)] += PROB_SCALE - f.sum(axis=1)
    return used, f


@dataclass
class Tables:
    rowmap: np.ndarray  # uint16[256]: context -> row, 0xFFFF where the context has no table
    freq: np.ndarray  # uint32[rows * ALPHA]
    cum: np.ndarray  # uint32[rows * ALPHA]
    used: np.ndarray  # contexts with a table, ascending

    @classmethod
    def build(cls, used: np.ndarray, f: np.ndarray) -> Tables:
        rowmap = np.full(256, 0xFFFF, np.uint16)
        rowmap[used] = np.arange(len(used), dtype=np.uint16)
        cum = np.cumsum(f, axis=1) - f
        return cls(rowmap, f.astype(np.uint32).ravel(), cum.astype(np.uint32).ravel(), used)

    def lut(self) -> np.ndarray:
        """uint32[rows * 4096]: per row and slot, cum | (freq − 1) << 12 | token << 24."""
        f = self.freq.astype(np.int64)
        toks = np.tile(np.arange(ALPHA, dtype=np.int64), len(f) // ALPHA)
        packed = self.cum.astype(np.int64) | (np.maximum(f, 1) - 1) << 12 | toks << 24
        return np.repeat(packed, f).astype(np.uint32)
