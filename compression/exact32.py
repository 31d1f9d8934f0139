"""Format-6 streams: 32-bit floats (F32) at full mantissa, delta and plain, Huffman tokens + a raw plane.

Delta, per element of a child and its parent (both u32 bit patterns): z = zigzag(child − parent)
(wrapping 32-bit difference); a *token* < 124 (z itself below 8, else 8 + 4·(k − 4) + the two bits after
z's leading one, k = bit length) Huffman-coded with the table of the context ``ctxmap[e]`` of the
parent's exponent ``e``, and k − 3 *raw bits* (z's low bits). Plain: the *symbol* is bits 22..30 (the
exponent and the top mantissa bit, one table) and the 23 raw bits are the sign above the low 22 mantissa
bits. The tokens go into byte-aligned segments of ``seg`` elements; the raw bits of every element go,
in element order, into one *raw plane* after them, so that raw bits never pass through the Huffman
decoder (for full-mantissa f32 most of an element's bits are raw).

Why this model (``benchmarks/f32_entropy.py``): on f32 deltas the integer difference given the parent's
exponent is the cheapest of the measured models that a fast decoder can use; finer tokens or more
context gain < 0.5 %. The C kernel (``compression._exact32``) and the numpy fallback (``backend="numpy"``)
write and read the same bytes; code lengths are always chosen here in Python. Layout: docs/FORMAT.md.
"""

from __future__ import annotations

import struct

import numpy as np
from deltazoo.compression import huffman
from deltazoo.compression.bitpack import pack_lsb_first
from deltazoo.compression.exact16_delta import context_map, crc32
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.parallel import pick_c_kernel

try:  # built by setup.py; optional so that the format never depends on a compiler
    from deltazoo.compression import _exact32  # type: ignore[attr-defined]  # a C extension, no stubs
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _exact32 = None

NTOK_DELTA, NTOK_PLAIN = 128, 512  # table widths (delta tokens 124..127 never occur)
TOK_USED = 124
MAX_LEN = 12  # longest code; the decoder's lookup width
CONTEXTS = 8
MAX_SEGMENT = 1 << 16
SMALL = 1 << 14  # tensors below this many elements are coded with one context
_HEAD = struct.Struct("<IBQ")  # segment elements, contexts, raw plane bytes


def has_extension() -> bool:
    return _exact32 is not None


def _segment(n: int) -> int:
    return 4096 if n >= 1 << 16 else 256


# ------------------------------------------------------------------------------------------ tokens
def _tok_tables() -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(NTOK_DELTA, dtype=np.int64)
    k = (t - 8) // 4 + 4
    nx = np.where(t < 8, 0, np.where(t < TOK_USED, k - 3, 0))
    base = np.where(t < 8, t, np.where(t < TOK_USED, (1 << np.minimum(k - 1, 62)) | ((t - 8) % 4) << nx, 0))
    return nx, base


TOK_NX, TOK_BASE = _tok_tables()


def zigzag(child: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """zigzag of the wrapping 32-bit difference, as int64."""
    d = (child.astype(np.int64) - parent.astype(np.int64)) & 0xFFFFFFFF
    s = np.where(d >= 1 << 31, d - (1 << 32), d)
    return (s << 1) ^ (s >> 63)


def delta_tokens(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token, raw bit count) per z (int64, < 2^32)."""
    k = np.frexp(z.astype(np.float64))[1].astype(np.int64)  # bit length: exact below 2^53
    small = z < 8
    tok = np.where(small, z, 8 + 4 * (k - 4) + ((z >> np.maximum(k - 3, 0)) & 3))
    return tok, np.where(small, 0, k - 3)


# ------------------------------------------------------------------------------------------ Huffman
FLOOR_SHIFT = 9  # each used count is raised to at least 1/512 of its context's total


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (<= MAX_LEN) of one context's counts, each used one raised to at least 1/512
    of the total first: depths then rarely pass MAX_LEN, so the cut takes few steps (a few hundredths of a
    bit per element at most, where such symbols exist)."""
    return huffman.limited_lengths(counts, MAX_LEN, floor=max(1, int(counts.sum()) >> FLOOR_SHIFT))


def context_lengths(counts: np.ndarray, use_c: bool) -> np.ndarray:
    """``code_lengths`` of every row of ``counts`` (contexts, symbols): in the C kernel when it is used
    (the same lengths, without Python's cost per symbol), else row by row."""
    if use_c:
        out = np.empty(counts.shape, np.uint8)
        _exact32.lengths(np.ascontiguousarray(counts, np.int64), counts.shape[1], FLOOR_SHIFT, MAX_LEN, out)
        return out
    return np.stack([code_lengths(c) for c in counts])


_REV = huffman.bit_reversal(MAX_LEN)


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return huffman.canonical(lengths, MAX_LEN)


def _check_kraft(lengths: np.ndarray) -> None:
    huffman.check_kraft(lengths, MAX_LEN)


def enc_table(lengths: np.ndarray) -> np.ndarray:
    """u32 per (context, symbol): the code bit-reversed (LSB first) | length << 16; 0 without a code."""
    out = np.zeros(lengths.shape, np.uint32)
    ctx, sym, ln, start = _canonical(lengths)
    out[ctx, sym] = _REV[start] | ln << 16  # reversing the 12-bit slot leaves the code's l bits lowest
    return out


BAD_SLOT = 0x800  # a decoder table slot without a code: length 0 and a bit no symbol has


def dec_table(lengths: np.ndarray, used: int = NTOK_PLAIN) -> np.ndarray:
    """u16[contexts << 12] per (context, next 12 bits LSB first): symbol | code length << 12; ``BAD_SLOT``
    (length 0) where no code reaches or the symbol is not below ``used``."""
    _check_kraft(lengths)
    out = np.full(lengths.shape[0] << MAX_LEN, BAD_SLOT, np.uint16)
    ctx, sym, ln, start = _canonical(lengths)
    span = 1 << (MAX_LEN - ln)
    ends = np.cumsum(span)
    slot = np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - span - start, span)
    entry = np.where(sym < used, sym | ln << 12, BAD_SLOT)
    out[np.repeat(ctx, span) << MAX_LEN | _REV[slot]] = np.repeat(entry, span)
    return out


# ------------------------------------------------------------------------------------------ encode
def encode_stream(
    child: np.ndarray, parent: np.ndarray | None, backend: str = "auto", prefix: bytes = b""
) -> bytes:
    """``prefix`` + one format-6 stream of u32 ``child`` (delta against u32 ``parent``, plain when None):
    head, [ctxmap], code lengths, segment sizes, segments, raw plane, crc32."""
    use_c = pick_c_kernel(_exact32, "_exact32", backend)
    delta = parent is not None
    child = np.ascontiguousarray(child, "<u4")
    par = np.ascontiguousarray(parent, "<u4") if delta else np.zeros(0, "<u4")
    n, seg = child.size, _segment(child.size)
    nseg = (n + seg - 1) // seg
    ntok = NTOK_DELTA if delta else NTOK_PLAIN
    per: np.ndarray  # symbols per (parent exponent or 0, symbol)
    body: bytes | memoryview
    raw: bytes | memoryview
    if use_c:
        per = np.zeros((256, ntok) if delta else (1, ntok), np.uint32)
        tokens = np.empty(n if delta else 0, np.uint16)  # each element's row of per, for the encoder
        _exact32.count(delta, child, par, per, tokens)
    elif delta:
        z = zigzag(child, par)
        tok, nx = delta_tokens(z)
        exp = (par >> 23).astype(np.int64) & 0xFF
        per = np.bincount(exp * ntok + tok, minlength=256 * ntok).reshape(256, ntok)
    else:
        tok = (child >> 22).astype(np.int64) & 0x1FF
        per = np.bincount(tok, minlength=ntok).reshape(1, ntok)
    if delta:
        hist = per.sum(axis=1, dtype=np.int64)  # small tensors: one context (its table costs less)
        ctxmap = context_map(hist) if n >= SMALL else np.zeros(256, np.uint8)
        counts = np.zeros((int(ctxmap.max()) + 1, ntok), np.int64)
        for c in range(counts.shape[0]):  # the exponents' counts summed per context
            counts[c] = per[ctxmap == c].sum(axis=0, dtype=np.int64)
        head_map = ctxmap.tobytes()
    else:
        counts, head_map = per.astype(np.int64), b""
    lengths = context_lengths(counts, use_c)
    enc = enc_table(lengths)
    sizes = np.zeros(nseg, np.uint32)
    if use_c:
        folded = enc[ctxmap] if delta else enc  # the context lookup folded into the table
        tokbuf = np.empty(2 * n + 8 * nseg + 16, np.uint8)
        rawbuf = np.empty(4 * n + 16, np.uint8)
        tb, rb = _exact32.encode(delta, child, par, folded, seg, tokbuf, sizes, rawbuf, tokens)
        body, raw = tokbuf[:tb].data, rawbuf[:rb].data
    else:
        if delta:
            sym = ctxmap[exp].astype(np.int64) * ntok + tok
            rawv, rawn = z & ((1 << nx) - 1), nx
        else:
            sym = tok
            c64 = child.astype(np.int64)
            rawv, rawn = (c64 >> 31) << 22 | (c64 & 0x3FFFFF), np.full(n, 23, np.int64)
        e = enc.ravel()[sym].astype(np.int64)
        body = _segments(e & 0xFFFF, e >> 16, seg, sizes)
        raw = pack_lsb_first(rawv.astype(np.uint64), rawn)
    packed = (lengths[:, 0::2] | lengths[:, 1::2] << 4).astype(np.uint8)  # two 4-bit lengths a byte
    parts = [
        _HEAD.pack(seg, lengths.shape[0], len(raw)),
        head_map,
        packed.tobytes(),
        sizes.astype("<u4").tobytes(),
        body,
        raw,
    ]
    crc = 0
    for p in parts:
        crc = crc32(p, crc)
    return b"".join([prefix, *parts, struct.pack("<I", crc)])


def _segments(codes: np.ndarray, nbits: np.ndarray, seg: int, sizes: np.ndarray) -> bytes:
    """Codes packed LSB first, each segment zero-filled to a byte boundary."""
    n = codes.size
    if n == 0:
        return b""
    segbits = np.add.reduceat(nbits, np.arange(0, n, seg))
    pad = -segbits % 8
    sizes[:] = (segbits + pad) // 8
    ends = np.minimum(np.arange(1, sizes.size + 1) * seg, n)
    at = np.arange(n) + np.arange(n) // seg
    vals = np.zeros(n + sizes.size, np.int64)
    bits = np.zeros(n + sizes.size, np.int64)
    vals[at], bits[at] = codes, nbits
    bits[ends + np.arange(sizes.size)] = pad
    return pack_lsb_first(vals.astype(np.uint64), bits)


# ------------------------------------------------------------------------------------------ decode
def decode_stream(
    buf: memoryview, offset: int, n: int, parent: np.ndarray | None, backend: str = "auto"
) -> tuple[np.ndarray, int]:
    """Inverse of ``encode_stream``: n u32 elements (read-only) and the offset just past the stream."""
    raw, end = decode_stream_bytes(buf, offset, n, parent, backend)
    return np.frombuffer(raw, "<u4"), end


def decode_stream_bytes(
    buf: memoryview,
    offset: int,
    n: int,
    parent: np.ndarray | None,
    backend: str = "auto",
    out: memoryview | None = None,
) -> tuple[bytes | memoryview, int]:
    """``decode_stream`` with the elements as little-endian bytes (the C kernel writes them straight into
    the bytes object: no copy after it), or into ``out`` (4n writable bytes, returned in their place).
    ``parent``: u32 elements, or u16 ones for a BF16 parent, each the high half of its f32 (the C kernel
    reads them as they are stored; numpy widens them first)."""
    use_c = pick_c_kernel(_exact32, "_exact32", backend)
    delta = parent is not None
    bf16_parent = parent is not None and parent.dtype.itemsize == 2
    if bf16_parent and not use_c:
        parent, bf16_parent = np.asarray(parent, "<u2").astype("<u4") << np.uint32(16), False
    start = offset
    if offset + _HEAD.size > len(buf):
        raise CodecError("corrupt payload: truncated format-6 stream header")
    seg, k, rawlen = _HEAD.unpack_from(buf, offset)
    if not 0 < seg <= MAX_SEGMENT or not 0 < k <= CONTEXTS or (not delta and k != 1):
        raise CodecError(f"corrupt payload: format-6 segments of {seg} elements or {k} contexts")
    offset += _HEAD.size
    ntok = NTOK_DELTA if delta else NTOK_PLAIN
    ctxmap = np.zeros(256, np.uint8)
    if delta:
        if offset + 256 > len(buf):
            raise CodecError("corrupt payload: truncated format-6 context map")
        ctxmap = np.frombuffer(buf, np.uint8, 256, offset).copy()
        offset += 256
        if ctxmap.max() >= k:
            raise CodecError("corrupt payload: format-6 context map names a missing context")
    nseg = (n + seg - 1) // seg
    if offset + k * ntok // 2 + 4 * nseg > len(buf):
        raise CodecError("corrupt payload: truncated format-6 code lengths")
    packed = np.frombuffer(buf, np.uint8, k * ntok // 2, offset).reshape(k, ntok // 2)
    lengths = np.empty((k, ntok), np.uint8)
    lengths[:, 0::2], lengths[:, 1::2] = packed & 15, packed >> 4
    offset += k * ntok // 2
    sizes = np.frombuffer(buf, "<u4", nseg, offset).astype(np.int64)
    offset += 4 * nseg
    offsets = np.zeros(nseg + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    body_at = offset
    raw_at = body_at + int(offsets[-1])
    end = raw_at + rawlen
    if end + 4 > len(buf):
        raise CodecError("corrupt payload: truncated format-6 segments or raw plane")
    if crc32(buf[start:end]) != struct.unpack_from("<I", buf, end)[0]:
        raise CodecError("corrupt payload: stream checksum (crc32) mismatch")
    par = np.ascontiguousarray(parent, "<u2" if bf16_parent else "<u4") if delta else np.zeros(0, "<u4")
    if use_c:  # the decoder table is built in C too (the same entries as dec_table)
        status, raw = _exact32.decode(
            delta, buf[body_at:end], offsets, raw_at - body_at, par, ctxmap, lengths, seg, n, bf16_parent, out
        )
        if status == -2:
            _check_kraft(lengths)  # raises: the lengths are no prefix code
    else:
        elements = np.empty(n, "<u4")
        dec = dec_table(lengths, TOK_USED if delta else NTOK_PLAIN)
        status = _decode_numpy(buf, body_at, offsets, raw_at, rawlen, par, delta, ctxmap, dec, seg, elements)
        raw = elements.tobytes()
        if out is not None and not status:
            out[:], raw = raw, out
    if status:
        raise CodecError("corrupt payload: a format-6 segment or raw plane does not end where its size says")
    return raw, end + 4


def _decode_numpy(
    buf: memoryview,
    body_at: int,
    offsets: np.ndarray,
    raw_at: int,
    rawlen: int,
    parent: np.ndarray,
    delta: bool,
    ctxmap: np.ndarray,
    dec: np.ndarray,
    seg: int,
    out: np.ndarray,
) -> int:
    """Tokens of all segments in lockstep, one element of each per step; then the raw plane at once."""
    n = out.size
    nseg = offsets.size - 1
    src = np.zeros(int(offsets[-1]) + 16, np.uint8)
    src[: int(offsets[-1])] = np.frombuffer(buf, np.uint8, int(offsets[-1]), body_at)
    pos = offsets[:-1] * 8
    first = np.arange(nseg, dtype=np.int64) * seg
    ctx = (ctxmap[(parent >> 23) & 0xFF].astype(np.int64) << MAX_LEN) if delta else np.zeros(n, np.int64)
    sym = np.zeros(n, np.int64)
    ar8 = np.arange(8)
    for j in range(min(seg, n)):
        live = first + j < n
        idx, p = first[live] + j, pos[live]
        w = src[(p >> 3)[:, None] + ar8].view("<u8")[:, 0] >> (p & 7).astype(np.uint64)
        e = dec[ctx[idx] | (w & np.uint64((1 << MAX_LEN) - 1)).astype(np.int64)].astype(np.int64)
        ln = e >> 12
        if (ln == 0).any():
            return -1
        sym[idx] = e & 0xFFF
        pos[live] = p + ln
    if ((pos + 7) // 8 != offsets[1:]).any():
        return -1
    if delta and (sym >= TOK_USED).any():
        return -1
    nx = TOK_NX[sym] if delta else np.full(n, 23, np.int64)
    ends = np.cumsum(nx)
    total = int(ends[-1]) if n else 0
    if (total + 7) // 8 != rawlen:
        return -1
    rsrc = np.zeros(rawlen + 16, np.uint8)
    rsrc[:rawlen] = np.frombuffer(buf, np.uint8, rawlen, raw_at)
    at = ends - nx
    w = rsrc[(at >> 3)[:, None] + ar8].view("<u8")[:, 0] >> (at & 7).astype(np.uint64)
    r = (w & ((np.uint64(1) << nx.astype(np.uint64)) - np.uint64(1))).astype(np.int64)
    if delta:
        z = TOK_BASE[sym] | r
        d = (z >> 1) ^ -(z & 1)
        out[:] = (parent.astype(np.int64) + d) & 0xFFFFFFFF
    else:
        out[:] = (r >> 22) << 31 | sym << 22 | (r & 0x3FFFFF)
    return 0
