"""Format-3 entropy stage: tokens per element, static per-context frequency tables, interleaved rANS.

Every element (an unsigned integer of ``width`` bytes) becomes a *token* coded with a 12-bit static
model of its context, plus *raw bits* coded at probability 1/2 each, in one rANS stream of 32-bit states
and 16-bit words spread over ``lanes`` interleaved states (see docs/FORMAT.md, "Exact tensor payloads").

* ``MODE_DELTA`` (a delta against a parent, or an integer tensor against zero): ``d = (c − p) mod 2^bits``
  read as signed, ``m = |d|``, ``k`` = bit length of ``m``; token ``2·idx + sign`` with ``idx`` 0, 1, 2–3
  for ``m`` < 4 and ``4 + 4(k − 3) + r`` (``r`` = the two bits after the leading one) above; the ``k − 3``
  low bits of ``m`` are raw. Context: the parent's float exponent (its top ``tbits`` bits), else 0.
* ``MODE_FLOAT`` (a float tensor without a parent): token = the top ``tbits`` exponent bits; raw = the
  sign, the rest of the exponent and the mantissa.

A stream is: lanes, tables, final states, word count, words, crc32 of all that.
The C extension ``compression._exactc`` runs the hot loops; ``encode_numpy``/``decode_numpy`` are the same
format in vectorised numpy (one numpy op per lane group and step), used when the extension is missing
and by the tests, which check that both write and read the same bytes.
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np
from deltazoo.compression.exact_errors import CodecError

try:  # built by setup.py; optional so that the format never depends on a compiler
    from deltazoo.compression import _exactc  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _exactc = None

if sys.byteorder != "little":  # pragma: no cover - the C kernels read little-endian tensors natively
    _exactc = None

MODE_DELTA, MODE_FLOAT = 0, 1
PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 16
ALPHA = 256  # token table stride; tokens are < 256
MAX_LANES = 4096
_STREAM = struct.Struct("<IH")  # lanes, number of context tables
_TABLE = struct.Struct("<HHH")  # context, first token, token count


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

    @property
    def pieces(self) -> int:
        most = self.shift + 1 if self.mode == MODE_FLOAT else 8 * self.width - 1 - self.rb
        return (most + 15) // 16

    def args(self) -> tuple[int, int, int, int]:
        return self.width, self.mode, self.shift, self.tbits


def has_extension() -> bool:
    return _exactc is not None


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
def histogram(lay: Layout, child: np.ndarray, parent: np.ndarray | None) -> np.ndarray:
    """uint32[256, ALPHA] token counts per context (C kernel when built)."""
    counts = np.zeros(256 * ALPHA, np.uint32)
    if _exactc is not None:
        _exactc.hist(child, parent, *lay.args(), counts)
        return counts.reshape(256, ALPHA)
    ctx, tok, _, _ = tokenize(lay, child, parent)
    counts += np.bincount(ctx * ALPHA + tok, minlength=256 * ALPHA).astype(np.uint32)
    return counts.reshape(256, ALPHA)


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

    def to_bytes(self) -> bytes:
        parts = []
        for row, ctx in enumerate(self.used.tolist()):
            f = self.freq[row * ALPHA : (row + 1) * ALPHA]
            nz = np.flatnonzero(f)
            lo, hi = int(nz[0]), int(nz[-1]) + 1
            parts.append(_TABLE.pack(ctx, lo, hi - lo) + f[lo:hi].astype("<u2").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, buf: memoryview, offset: int, count: int) -> tuple[Tables, int]:
        used = np.empty(count, np.int64)
        f = np.zeros((count, ALPHA), np.int64)
        for row in range(count):
            if offset + _TABLE.size > len(buf):
                raise CodecError("corrupt payload: truncated frequency table")
            ctx, lo, span = _TABLE.unpack_from(buf, offset)
            offset += _TABLE.size
            end = offset + 2 * span
            if ctx > 255 or lo + span > ALPHA or end > len(buf) or (row and ctx <= used[row - 1]):
                raise CodecError("corrupt payload: bad frequency table header")
            f[row, lo : lo + span] = np.frombuffer(buf[offset:end], "<u2")
            offset = end
            used[row] = ctx
        if count and not (f.sum(axis=1) == PROB_SCALE).all():
            raise CodecError(f"corrupt payload: a frequency table does not sum to {PROB_SCALE}")
        return cls.build(used, f), offset


# ---------------------------------------------------------------------------------------------- streams
def encode_stream(lay: Layout, child: np.ndarray, parent: np.ndarray | None, backend: str = "auto") -> bytes:
    """One coded stream: lanes, tables, final states, word count, words. backend: auto | c | numpy."""
    use_c = _pick(backend)
    n = child.size
    lanes = lanes_for(n)
    used, f = quantize(histogram(lay, child, parent))
    tables = Tables.build(used, f)
    states = np.empty(lanes, np.uint32)
    if use_c:
        words = np.empty(n * (lay.pieces + 1) + 1, np.uint16)
        count = _exactc.encode(child, parent, *lay.args(), lanes, tables.rowmap, tables.freq, tables.cum,
                               states, words)
        words = words[words.size - count :]
    else:
        words = _encode_numpy(lay, child, parent, lanes, tables, states)
    head = _STREAM.pack(lanes, len(used)) + tables.to_bytes() + states.astype("<u4").tobytes()
    body = head + struct.pack("<Q", words.size) + words.astype("<u2").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def decode_stream(
    lay: Layout, buf: memoryview, offset: int, n: int, parent: np.ndarray | None, backend: str = "auto"
) -> tuple[np.ndarray, int]:
    """Inverse of ``encode_stream``: n elements and the offset just past the stream."""
    use_c = _pick(backend)
    start = offset
    if offset + _STREAM.size > len(buf):
        raise CodecError("corrupt payload: truncated stream header")
    lanes, count = _STREAM.unpack_from(buf, offset)
    if lanes != lanes_for(n):
        raise CodecError(f"corrupt payload: {lanes} lanes for {n} elements (expected {lanes_for(n)})")
    tables, offset = Tables.from_bytes(buf, offset + _STREAM.size, count)
    end = offset + 4 * lanes + 8
    if end > len(buf):
        raise CodecError("corrupt payload: truncated rANS states")
    states = np.frombuffer(buf[offset : offset + 4 * lanes], "<u4").astype(np.uint32)
    (nwords,) = struct.unpack_from("<Q", buf, offset + 4 * lanes)
    stop = end + 2 * nwords
    if stop + 4 > len(buf):
        raise CodecError("corrupt payload: truncated rANS words")
    if zlib.crc32(buf[start:stop]) != struct.unpack_from("<I", buf, stop)[0]:
        raise CodecError("corrupt payload: stream checksum (crc32) mismatch")
    words = np.zeros(nwords + 1, np.uint16)  # one word of padding for the branch-free reader
    words[:nwords] = np.frombuffer(buf[end : end + 2 * nwords], "<u2")
    if use_c:
        out = np.empty(n, f"<u{lay.width}")
        got = _exactc.decode(words, states, parent, *lay.args(), lanes, tables.rowmap, tables.lut(), out)
    else:
        out, got = _decode_numpy(lay, words, states, parent, n, lanes, tables)
    if got == -1:
        raise CodecError("corrupt payload or wrong parent: a context of the parent has no frequency table")
    if got != nwords or not (states == RANS_L).all():
        raise CodecError("corrupt payload: the rANS stream does not decode to its initial state")
    return out, stop + 4


def _pick(backend: str) -> bool:
    if backend not in ("auto", "c", "numpy"):
        raise ValueError(f"backend must be auto, c or numpy, not {backend!r}")
    if backend == "c" and _exactc is None:
        raise CodecError("the compression._exactc extension is not built; reinstall with a C compiler")
    return _exactc is not None and backend != "numpy"


def _steps(n: int, lanes: int) -> range:
    return range((n + lanes - 1) // lanes)


def _encode_numpy(
    lay: Layout, child: np.ndarray, parent: np.ndarray | None, lanes: int, tables: Tables, states: np.ndarray
) -> np.ndarray:
    n = child.size
    ctx, tok, raw, nraw = tokenize(lay, child, parent)
    sym = tables.rowmap[ctx].astype(np.int64) * ALPHA + tok
    freq, cum = tables.freq.astype(np.uint64), tables.cum.astype(np.uint64)
    x = np.full(lanes, RANS_L, np.uint64)
    chunks: list[np.ndarray] = []  # emitted words, op by op, each in ascending lane order
    for t in reversed(_steps(n, lanes)):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        a = hi - lo
        xs = x[:a]
        for k in reversed(range(lay.pieces)):
            wi = np.clip(nraw[lo:hi] - 16 * k, 0, 16).astype(np.uint64)
            val = (raw[lo:hi] >> np.uint64(16 * k)) & ((np.uint64(1) << wi) - np.uint64(1))
            need = xs >= (np.uint64(1) << (np.uint64(32) - wi))
            chunks.append((xs[need] & np.uint64(0xFFFF)).astype(np.uint16))
            xs = np.where(need, xs >> np.uint64(16), xs)
            xs = (xs << wi) | val
        f, c = freq[sym[lo:hi]], cum[sym[lo:hi]]
        need = xs >= (f << np.uint64(32 - PROB_BITS))
        chunks.append((xs[need] & np.uint64(0xFFFF)).astype(np.uint16))
        xs = np.where(need, xs >> np.uint64(16), xs)
        x[:a] = ((xs // f) << np.uint64(PROB_BITS)) + xs % f + c
    states[:] = x
    return np.concatenate(chunks[::-1]) if chunks else np.empty(0, np.uint16)


def _decode_numpy(
    lay: Layout, words: np.ndarray, states: np.ndarray, parent: np.ndarray | None, n: int, lanes: int,
    tables: Tables,
) -> tuple[np.ndarray, int]:
    lut = tables.lut().astype(np.int64)
    if lay.mode == MODE_FLOAT or parent is None:
        ctx = np.zeros(n, np.int64)
    else:
        ctx = ((_u64(parent) >> np.uint64(lay.shift)) & np.uint64((1 << lay.tbits) - 1)).astype(np.int64)
    rows = tables.rowmap[ctx].astype(np.int64)
    if n and rows.max() >= len(tables.used):
        return np.empty(0), -1
    w = words.astype(np.int64)
    tok = np.empty(n, np.int64)
    raw = np.zeros(n, np.uint64)
    x = states.astype(np.int64)
    pos = 0

    def renorm(xs: np.ndarray) -> np.ndarray:
        nonlocal pos
        need = xs < RANS_L
        take = int(need.sum())
        if pos + take > w.size - 1:
            raise CodecError("corrupt payload: the rANS stream ends early")
        xs[need] = (xs[need] << 16) | w[pos : pos + take]
        pos += take
        return xs

    for t in _steps(n, lanes):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        xs = x[: hi - lo]
        slot = xs & (PROB_SCALE - 1)
        e = lut[rows[lo:hi] * PROB_SCALE + slot]
        s = e >> 24
        xs = renorm((((e >> 12) & 0xFFF) + 1) * (xs >> PROB_BITS) + slot - (e & 0xFFF))
        tok[lo:hi] = s
        nraw = raw_count(lay, s)
        for k in range(lay.pieces):
            wi = np.clip(nraw - 16 * k, 0, 16)
            raw[lo:hi] |= (xs & ((1 << wi) - 1)).astype(np.uint64) << np.uint64(16 * k)
            xs = renorm(xs >> wi)
        x[: hi - lo] = xs
    states[:] = x.astype(np.uint32)
    return untokenize(lay, tok, raw, parent), pos
