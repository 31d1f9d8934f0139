"""Format-5 plain streams: 16-bit float tensors with no parent, at ZipNN-class speed and format 4's ratio.

Per element ``x`` of a BF16 (E = 8 exponent bits, M = 7 mantissa bits) or F16 (E = 5, M = 10) tensor:
the *symbol* ``(x & 0x7FFF) >> (M − k)`` (the exponent and the top ``k`` mantissa bits, which are skewed
towards 0 in bell-shaped weights: k = 1 gains ~0.05 bit per element over the exponent alone) is
Huffman-coded (canonical, at most 12 bits, one table per tensor from the exact counts), in segments of
``seg`` elements that are each a byte-aligned LSB-first bitstream; the *raw* value, the sign above the
other ``M − k`` mantissa bits (``R = 1 + M − k`` bits), is packed LSB-first before the segments. A stream
that would not be smaller than the elements themselves stores them as they are. Layout:
docs/FORMAT.md ("Exact tensor payloads", format 5, plain streams).

The C kernel (``compression._exact16_plain``) decodes up to four symbols per table lookup, four segments
interleaved, and merges the raw plane with pdep; the numpy fallback (``backend="numpy"``, the same
bytes) decodes all segments in lockstep, one symbol per step (slow).
"""

from __future__ import annotations

import struct

import numpy as np
from deltazoo.compression.bitpack import pack_lsb_first
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.parallel import pick_c_kernel

try:  # built by setup.py; optional so that the format never depends on a compiler
    from deltazoo.compression import _exact16_plain  # type: ignore[attr-defined]  # a C extension, no stubs
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _exact16_plain = None

FLOATS = {"BF16": (8, 7), "F16": (5, 10)}  # dtypes with a plain stream: (exponent bits, mantissa bits)
MAX_LEN = 12  # longest code
MAX_SEGMENT = 1 << 15  # a reader's bound on segment elements
STORED = 0xFF  # the mode byte of a stream that holds the elements as they are
K = 1  # the writer's mantissa bits joined to the symbol
SEGMENT = 4096  # the writer's elements per segment
_SEG = struct.Struct("<I")
_SUMS = struct.Struct("<QQ")


def has_extension() -> bool:
    return _exact16_plain is not None


def _float(dtype: str) -> tuple[int, int]:
    if dtype not in FLOATS:
        raise CodecError(f"format-5 plain streams code BF16 and F16, not {dtype}")
    return FLOATS[dtype]


# ------------------------------------------------------------------------------------------ pieces
def checksum(data: bytes | memoryview) -> tuple[int, int]:
    """Fletcher over the little-endian u64 words of ``data`` (zero-padded to 8 bytes): (sum w_i,
    sum (N − i)·w_i), both mod 2^64."""
    words = np.frombuffer(bytes(data) + bytes(-len(data) % 8), "<u8")
    weights = np.arange(words.size, 0, -1, dtype=np.uint64)
    return int(words.sum(dtype=np.uint64)), int((words * weights).sum(dtype=np.uint64))


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (<= MAX_LEN, 0 for unused symbols, 1 for a lone symbol), as the C kernel
    computes them: two-queue Huffman over the used symbols sorted by (count, symbol), a leaf taken
    before an internal node of equal weight; depths over MAX_LEN cut to it and the prefix property
    restored by lengthening, one bit at a time, a longest code still below MAX_LEN (the one with the
    smallest (count, symbol))."""
    lengths = np.zeros(counts.size, np.uint8)
    cnt = [int(c) for c in counts]
    leaves = sorted((c, s) for s, c in enumerate(cnt) if c)
    m = len(leaves)
    if m == 1:
        lengths[leaves[0][1]] = 1
    if m <= 1:
        return lengths
    w = [c for c, _ in leaves] + [0] * (m - 1)
    up = [0] * (2 * m - 1)
    nl, ni, nxt = 0, m, m  # next leaf, next internal node to take, next node to create
    while nxt < 2 * m - 1:
        picks = []
        for _ in range(2):
            if nl < m and (ni == nxt or w[nl] <= w[ni]):
                picks.append(nl)
                nl += 1
            else:
                picks.append(ni)
                ni += 1
        w[nxt] = w[picks[0]] + w[picks[1]]
        up[picks[0]] = up[picks[1]] = nxt
        nxt += 1
    depth = [0] * (2 * m - 1)
    for i in range(2 * m - 3, -1, -1):  # parents are numbered after their children
        depth[i] = depth[up[i]] + 1
    ln = [min(d, MAX_LEN) for d in depth[:m]]
    excess = sum(1 << (MAX_LEN - d) for d in ln) - (1 << MAX_LEN)
    while excess > 0:
        top = max(d for d in ln if d < MAX_LEN)
        j = ln.index(top)  # leaves are in (count, symbol) order
        ln[j] += 1
        excess -= 1 << (MAX_LEN - top - 1)
    for (_, s), d in zip(leaves, ln, strict=True):
        lengths[s] = d
    return lengths


def canonical(lengths: np.ndarray) -> np.ndarray:
    """Per symbol its canonical code (symbols sorted by (length, symbol) take consecutive codes from 0,
    MSB-first) with the bits reversed, for an LSB-first stream; 0 for symbols without a code."""
    ln = lengths.astype(np.int64)
    out = np.zeros(ln.size, np.int64)
    code = 0
    for length in range(1, MAX_LEN + 1):
        code <<= 1
        for s in np.flatnonzero(ln == length):
            out[s] = int(f"{code:0{length}b}"[::-1], 2)
            code += 1
    return out


def _single_table(lengths: np.ndarray) -> np.ndarray:
    """Per 12-bit window (first stream bit lowest) symbol | code length << 16; 0 where no code is."""
    table = np.zeros(1 << MAX_LEN, np.int64)
    rev = canonical(lengths)
    for s in np.flatnonzero(lengths):
        ln = int(lengths[s])
        table[int(rev[s]) | np.arange(1 << (MAX_LEN - ln)) << ln] = s | ln << 16
    return table


def _check_kraft(lengths: np.ndarray) -> None:
    ln = lengths.astype(np.int64)
    if (ln > MAX_LEN).any() or ((ln > 0) * (1 << MAX_LEN >> ln)).sum() > 1 << MAX_LEN:
        raise CodecError("corrupt payload: plain stream code lengths are not a prefix code")


# ------------------------------------------------------------------------------------------ encode
def encode(
    raw: bytes | bytearray | memoryview | np.ndarray, dtype: str, prefix: bytes = b"", backend: str = "auto"
) -> bytes:
    """``prefix`` followed by the plain stream of ``raw`` (the tensor's little-endian 16-bit elements)."""
    e_bits, m_bits = _float(dtype)
    if pick_c_kernel(_exact16_plain, "_exact16_plain", backend):
        return bytes(_exact16_plain.encode(raw, e_bits, m_bits, K, SEGMENT, prefix))
    return prefix + _encode_numpy(np.frombuffer(raw, "<u2"), e_bits, m_bits, K, SEGMENT)


def _encode_numpy(x: np.ndarray, e_bits: int, m_bits: int, k: int, seg: int) -> bytes:
    n, shift = x.size, m_bits - k
    alphabet, r_bits = 1 << (e_bits + k), 1 + shift
    nseg = -(-n // seg)
    sym = ((x & 0x7FFF) >> shift).astype(np.int64)
    counts = np.bincount(sym, minlength=alphabet)
    lengths = code_lengths(counts)
    bits = 8 * (5 + alphabet // 2 + 3 * nseg) + n * r_bits + int((counts * lengths).sum())
    if bits >= 16 * n:
        body = bytes([STORED]) + x.astype("<u2").tobytes()
    else:
        nbits = lengths.astype(np.int64)[sym]
        value = canonical(lengths)[sym]
        segbits = np.add.reduceat(nbits, np.arange(0, n, seg))
        pad = -segbits % 8
        sizes = (segbits + pad) // 8
        # one zero-valued filler of `pad` bits after each segment keeps the segments byte-aligned
        at = np.arange(n) + np.arange(n) // seg
        vals = np.zeros(n + nseg, np.int64)
        width = np.zeros(n + nseg, np.int64)
        vals[at], width[at] = value, nbits
        width[np.minimum(np.arange(1, nseg + 1) * seg, n) + np.arange(nseg)] = pad
        segments = pack_lsb_first(vals.astype(np.uint64), width)
        rawv = ((x.astype(np.int64) >> 15) << shift) | (x.astype(np.int64) & ((1 << shift) - 1))
        planes = (rawv[:, None] >> np.arange(r_bits)) & 1
        packed = np.packbits(planes.astype(np.uint8).ravel(), bitorder="little").tobytes()
        nib = lengths[0::2] | lengths[1::2] << 4
        body = b"".join(
            [
                bytes([k]),
                _SEG.pack(seg),
                nib.astype(np.uint8).tobytes(),
                sizes.astype("<u2").tobytes(),
                packed,
                segments,
            ]
        )
    return body + _SUMS.pack(*checksum(body))


# ------------------------------------------------------------------------------------------ decode
def decode(
    buf: memoryview, offset: int, n: int, dtype: str, backend: str = "auto", out: memoryview | None = None
) -> tuple[bytes | memoryview, int]:
    """Inverse of ``encode``: the n elements' bytes and the offset just past the stream; with ``out`` (2n
    writable bytes) the elements are decoded into it and it is returned in their place."""
    e_bits, m_bits = _float(dtype)
    if pick_c_kernel(_exact16_plain, "_exact16_plain", backend):
        try:
            data, end = _exact16_plain.decode(buf, offset, n, e_bits, m_bits, out)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        return data, int(end)
    raw, end = _decode_numpy(buf, offset, n, e_bits, m_bits)
    if out is None:
        return raw, end
    out[:] = raw
    return out, end


def _decode_numpy(buf: memoryview, offset: int, n: int, e_bits: int, m_bits: int) -> tuple[bytes, int]:
    start, size = offset, len(buf)
    if offset >= size:
        raise CodecError("corrupt payload: truncated format-5 plain stream")
    k = buf[offset]
    offset += 1
    if k == STORED:
        if size - offset < 2 * n + 16:
            raise CodecError("corrupt payload: truncated stored plain stream")
        end = offset + 2 * n
        _verify(buf, start, end)
        return bytes(buf[offset:end]), end + 16
    if k > m_bits - 4 or e_bits + k > 12:
        raise CodecError("corrupt payload: plain stream with an unknown mantissa split")
    shift = m_bits - k
    alphabet, r_bits = 1 << (e_bits + k), 1 + shift
    if size - offset < 4 + alphabet // 2:
        raise CodecError("corrupt payload: truncated plain stream header")
    (seg,) = _SEG.unpack_from(buf, offset)
    if not 0 < seg <= MAX_SEGMENT:
        raise CodecError(f"corrupt payload: plain stream segment size out of 1..{MAX_SEGMENT}")
    offset += 4
    nib = np.frombuffer(buf, np.uint8, alphabet // 2, offset)
    lengths = np.stack([nib & 15, nib >> 4], axis=1).ravel()
    offset += alphabet // 2
    nseg = -(-n // seg)
    if size - offset < 2 * nseg:
        raise CodecError("corrupt payload: truncated plain stream segment sizes")
    sizes = np.frombuffer(buf, "<u2", nseg, offset).astype(np.int64)
    raw_at = offset + 2 * nseg
    body = raw_at + (n * r_bits + 7) // 8  # the segments follow the raw plane
    end = seg_end = body + int(sizes.sum())
    if end + 16 > size:
        raise CodecError("corrupt payload: truncated plain stream segments or raw plane")
    _verify(buf, start, end)
    _check_kraft(lengths)
    table = _single_table(lengths)
    src = np.zeros(seg_end - body + 16, np.uint8)  # room for a load past the last segment
    src[: seg_end - body] = np.frombuffer(buf, np.uint8, seg_end - body, body)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pos = offsets[:-1] * 8
    first = np.arange(nseg, dtype=np.int64) * seg
    symbols = np.zeros(n, np.int64)
    ar8 = np.arange(8)
    for j in range(min(seg, n)):  # all segments in lockstep; only the last may be short
        live = first + j < n
        p = pos[live]
        at = np.minimum(p >> 3, src.size - 8)[:, None] + ar8
        w = src[at].view("<u8")[:, 0] >> (p & 7).astype(np.uint64)
        e = table[(w & np.uint64((1 << MAX_LEN) - 1)).astype(np.int64)]
        ln = e >> 16
        symbols[first[live] + j] = e & 0xFFFF
        pos[live] = p + np.where(ln == 0, MAX_LEN, ln)  # no code: garbage that still moves on, as in C
    if ((pos + 7) // 8 != offsets[1:]).any():
        raise CodecError("corrupt payload: a plain stream segment does not end where its size says")
    plane = np.unpackbits(np.frombuffer(buf, np.uint8, body - raw_at, raw_at), bitorder="little")
    rawv = (plane[: n * r_bits].reshape(n, r_bits).astype(np.int64) << np.arange(r_bits)).sum(axis=1)
    out = (symbols << shift) | ((rawv >> shift) << 15) | (rawv & ((1 << shift) - 1))
    return out.astype("<u2").tobytes(), end + 16


def _verify(buf: memoryview, start: int, end: int) -> None:
    if checksum(buf[start:end]) != _SUMS.unpack_from(buf, end):
        raise CodecError("corrupt payload: plain stream checksum mismatch")
