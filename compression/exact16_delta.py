"""Format-5 streams: canonical Huffman over delta tokens (a table per parent exponent), extra bits inline.

Built for decode speed with format 4's ratio target. Per element of a 16-bit float tensor (BF16, F16) and
its parent: z = zigzag(child − parent) (wrapping 16-bit difference); a *token* < 64 (z itself below 8,
else 8 + 4·(bit length − 4) + the two bits after the leading one) and ``bit length − 3`` *extra bits*
(z's low bits). The token is Huffman-coded (canonical, at most 11 bits) with the table of the element's
*context* ``ctxmap[e]`` of the parent's exponent ``e = (parent << 1 & 0xFFFF) >> (shift + 1)``
(shift = mantissa bits), and its
extra bits follow it in the same LSB-first bitstream, so a decoder does one 2048-entry table lookup per
element. The tensor is cut into segments of ``seg`` elements, each its own byte-aligned bitstream: the
C decoder (``compression._exact16_delta``) runs eight segments interleaved and the numpy fallback
(``backend="numpy"``, same bytes) runs all segments in lockstep. With one thread a whole stream is one C
call each way. Layout: docs/FORMAT.md ("Exact tensor payloads", format 5).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from deltazoo.compression import huffman
from deltazoo.compression.bitpack import pack_lsb_first
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.parallel import pick_c_kernel, thread_map

try:  # built by setup.py; optional so that the format never depends on a compiler
    from deltazoo.compression import _exact16_delta  # type: ignore[attr-defined]  # a C extension, no stubs
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _exact16_delta = None


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """zlib.crc32, by the extension's carry-less-multiply kernel when it is built."""
    return zlib.crc32(data, value) if _exact16_delta is None else int(_exact16_delta.crc32(data, value))


NTOK = 64  # tokens per context (59 used)
MAX_LEN = 11  # longest code; the decoder's lookup width
CONTEXTS = 8  # contexts the encoder uses: the top exponent and the 7 below it (lower ones share the last)
ESCAPE = 63  # a token the table has no code for is sent as this token's code and z's 16 bits
SAMPLE_FROM, SAMPLE_STRIDE = 1 << 16, 4  # tensors this large take their tables from every 4th element
_BF16_SHIFT = 7  # BF16 mantissa bits: the shift that leaves the parent's sign and exponent
MAX_SEGMENT = 1 << 16  # a reader's bound on segment elements (the writer uses 256 or 4096)
_HEAD = struct.Struct("<IB")  # segment elements, contexts


def has_extension() -> bool:
    return _exact16_delta is not None


# ------------------------------------------------------------------------------------------ tokens
def _token_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per wrapping difference d: token | extra bit count << 8 | extra bits << 16; per token: extra bit
    count; per token: base z)."""
    d = np.arange(1 << 16, dtype=np.int64)
    s = np.where(d >= 1 << 15, d - (1 << 16), d)
    z = np.where(s < 0, -2 * s - 1, 2 * s)  # zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
    k = np.floor(np.log2(np.maximum(z, 1))).astype(np.int64) + 1  # bit length (z >= 1)
    small = z < 8
    tok = np.where(small, z, 8 + 4 * (k - 4) + ((z >> np.maximum(k - 3, 0)) & 3))
    extra = np.where(small, 0, k - 3)
    t = np.arange(NTOK, dtype=np.int64)
    kt = (t - 8) // 4 + 4
    tok_extra = np.where(t < 8, 0, kt - 3)
    base = np.where(t < 8, t, (1 << (kt - 1)) | ((t - 8) % 4) << np.maximum(kt - 3, 0))
    tok_extra[ESCAPE], base[ESCAPE] = 16, 0
    bits = z & ((1 << extra) - 1)
    return (tok | extra << 8 | bits << 16).astype(np.uint32), tok_extra, base


ZTAB, TOK_EXTRA, TOK_BASE = _token_tables()


def _zigzag(d: np.ndarray) -> np.ndarray:
    s = d.astype(np.int16).astype(np.int32)
    return ((s << 1) ^ (s >> 15)).astype(np.int64) & 0xFFFF


# ------------------------------------------------------------------------------------------ Huffman
_REV = huffman.bit_reversal(MAX_LEN)


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (<= MAX_LEN) of one context's token counts (``huffman.limited_lengths``)."""
    return huffman.limited_lengths(counts, MAX_LEN)


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return huffman.canonical(lengths, MAX_LEN)


def _check_kraft(lengths: np.ndarray) -> None:
    huffman.check_kraft(lengths, MAX_LEN)


def enc_table(lengths: np.ndarray) -> np.ndarray:
    """u32[contexts * 64]: bit-reversed canonical code | length << 16 per (context, token); a token with
    no code gets the escape token's code | 1 << 24 (the encoder then writes z's 16 bits)."""
    out = np.zeros(lengths.shape, np.uint32)
    ctx, tok, ln, start = _canonical(lengths)
    out[ctx, tok] = _REV[start] | ln << 16
    escaped = (lengths == 0) & (lengths[:, ESCAPE] > 0)[:, None]
    out[escaped] = (out[:, ESCAPE, None] | np.uint32(1 << 24)).repeat(NTOK, axis=1)[escaped]
    return out.ravel()


def dec_table(lengths: np.ndarray) -> np.ndarray:
    """u32[contexts << 11]: per (context, next 11 bits) bits taken (code length + extra bit count) | code
    length << 5 | extra bit count << 9 | base z << 14. Slots no code reaches (a lone token, a context no
    element had) read as an 11-bit token 0: safe garbage."""
    out = np.full(lengths.shape[0] << MAX_LEN, MAX_LEN | MAX_LEN << 5, np.uint32)
    ctx, tok, ln, start = _canonical(lengths)
    span = 1 << (MAX_LEN - ln)
    entry = (ln + TOK_EXTRA[tok]) | ln << 5 | TOK_EXTRA[tok] << 9 | TOK_BASE[tok] << 14
    ends = np.cumsum(span)
    slot = np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - span - start, span)
    out[np.repeat(ctx, span) << MAX_LEN | _REV[slot]] = np.repeat(entry, span)
    return out


def _tables(lengths: np.ndarray, use_c: bool) -> tuple[np.ndarray, np.ndarray]:
    """(enc_table, dec_table) of the lengths, by the C kernel when it is used."""
    if not use_c:
        return enc_table(lengths), dec_table(lengths)
    enc = np.empty(lengths.size, np.uint32)
    dec = np.empty(lengths.shape[0] << MAX_LEN, np.uint32)
    _exact16_delta.tables(np.ascontiguousarray(lengths, np.uint8), TOK_EXTRA, TOK_BASE, enc, dec)
    return enc, dec


# ------------------------------------------------------------------------------------------ encode
def exponent(parent: np.ndarray, shift: int) -> np.ndarray:
    """The parent's exponent field (the sign dropped), the context map's index."""
    return (parent.astype(np.uint16) << np.uint16(1)) >> np.uint16(shift + 1)


def context_map(hist: np.ndarray) -> np.ndarray:
    """Context per parent exponent (hist: elements per exponent): the highest exponent at or above
    which lie >= 1/1000 of the elements is context 0, each exponent below it one more, up to
    CONTEXTS − 1; higher ones share 0."""
    above = np.cumsum(hist[::-1])[::-1]  # elements at this exponent or higher
    top = int(np.flatnonzero(above >= max(1, int(hist.sum()) // 1000)).max()) if hist.any() else 0
    return np.clip(top - np.arange(256), 0, CONTEXTS - 1).astype(np.uint8)


def _segment(n: int) -> int:
    return 4096 if n >= 1 << 16 else 256


def _groups(nseg: int, seg: int, n: int, threads: int) -> list[tuple[int, int, int, int]]:
    """Runs of whole segments for ``threads`` threads: (first segment, end segment, first element, end)."""
    per = max(1, -(-nseg // max(1, threads)))
    return [(a, min(nseg, a + per), a * seg, min(n, (a + per) * seg)) for a in range(0, nseg, per)]


def encode_stream(
    child: np.ndarray,
    parent: np.ndarray,
    shift: int,
    backend: str = "auto",
    threads: int = 1,
    prefix: bytes = b"",
) -> bytes:
    """``prefix`` + one format-5 stream of 16-bit child against parent: head, ctxmap, code lengths,
    segment sizes, segments, crc32. ``threads`` > 1 codes runs of segments side by side (the same bytes).
    With one thread the extension does it all in one call (``_exact16_delta.encode_stream``, same bytes)."""
    use_c = pick_c_kernel(_exact16_delta, "_exact16_delta", backend)
    n, seg = child.size, _segment(child.size)
    nseg = (n + seg - 1) // seg
    stride = 1 if n < SAMPLE_FROM else SAMPLE_STRIDE
    if use_c and (threads <= 1 or nseg <= 1):
        return bytes(_exact16_delta.encode_stream(child, parent, shift, stride, seg, prefix))
    per_exp: np.ndarray  # elements per (parent exponent, token)
    body: bytes | memoryview
    if use_c:
        per_exp = np.zeros((256, NTOK), np.uint32)
        _exact16_delta.count(child, parent, shift, stride, per_exp)
    else:
        d = (child.astype(np.int64) - parent.astype(np.int64)) & 0xFFFF
        exp = exponent(parent, shift).astype(np.int64)
        tok = (ZTAB[d] & 255).astype(np.int64)
        per_exp = np.bincount(exp[::stride] * NTOK + tok[::stride], minlength=256 * NTOK).reshape(256, NTOK)
    ctxmap = context_map(per_exp.sum(axis=1, dtype=np.int64))
    onehot = (ctxmap[None, :] == np.arange(CONTEXTS)[:, None]).astype(np.int64)
    counts = onehot @ per_exp.astype(np.int64)  # per (context, token)
    if stride > 1:  # a sample: the tokens it missed are escaped
        counts[:, ESCAPE] += 1
    if use_c:
        lengths = np.zeros((CONTEXTS, NTOK), np.uint8)
        _exact16_delta.lengths(counts, lengths)
    else:
        lengths = np.stack([code_lengths(c) for c in counts])
    enc = _tables(lengths, use_c)[0]
    sizes = np.zeros(nseg, np.uint32)
    if use_c:
        per_exponent = enc.reshape(-1, NTOK)[ctxmap]  # the context lookup folded into the table

        def code(g: tuple[int, int, int, int]) -> memoryview:
            s0, s1, a, b = g
            out = np.empty(4 * (b - a) + 8, np.uint8)
            total = _exact16_delta.encode(
                child[a:b], parent[a:b], shift, ZTAB, per_exponent, seg, out, sizes[s0:s1]
            )
            return out[:total].data  # joined below without a copy of its own

        bodies = thread_map(code, _groups(nseg, seg, n, threads), threads)
        body = bodies[0] if len(bodies) == 1 else b"".join(bodies)  # no segment: b""
    else:
        body = _encode_numpy(d, ctxmap[exp].astype(np.int64) * NTOK + tok, enc, seg, sizes)
    head = [_HEAD.pack(seg, CONTEXTS), ctxmap.tobytes(), lengths.tobytes(), sizes.astype("<u4").tobytes()]
    parts: list[bytes | memoryview] = [*head, body]
    crc = 0
    for p in parts:
        crc = crc32(p, crc)
    return b"".join([prefix, *parts, struct.pack("<I", crc)])


def _encode_numpy(
    d: np.ndarray, sym: np.ndarray, enc: np.ndarray, seg: int, sizes: np.ndarray
) -> bytes | memoryview:
    n = d.size
    e = enc[sym].astype(np.int64)
    ln = (e >> 16) & 255
    nx = np.where(e >> 24 > 0, 16, (ZTAB[d] >> 8 & 31).astype(np.int64))
    value = (e & 0xFFFF) | (_zigzag(d) & ((1 << nx) - 1)) << ln
    nbits = ln + nx
    ends = np.minimum(np.arange(1, sizes.size + 1) * seg, n)
    segbits = np.add.reduceat(nbits, np.arange(0, n, seg)) if n else np.zeros(0, np.int64)
    pad = -segbits % 8
    sizes[:] = (segbits + pad) // 8
    # one zero-valued filler of `pad` bits after each segment keeps the segments byte-aligned
    at = np.arange(n) + np.arange(n) // seg
    vals = np.zeros(n + sizes.size, np.int64)
    bits = np.zeros(n + sizes.size, np.int64)
    vals[at], bits[at] = value, nbits
    bits[ends + np.arange(sizes.size)] = pad
    return pack_lsb_first(vals.astype(np.uint64), bits)


# ------------------------------------------------------------------------------------------ decode
def decode_stream(
    buf: memoryview,
    offset: int,
    n: int,
    parent: np.ndarray,
    shift: int,
    backend: str = "auto",
    threads: int = 1,
    out: memoryview | None = None,
) -> tuple[np.ndarray, int]:
    """Inverse of ``encode_stream``: n elements and the offset just past the stream; ``threads`` > 1
    decodes runs of segments side by side; ``out`` (2n writable bytes): decoded into it, the elements a
    view of it."""
    use_c = pick_c_kernel(_exact16_delta, "_exact16_delta", backend)
    if use_c and threads <= 1:
        got = _exact16_delta.decode_stream(buf, offset, n, parent, shift, False, out)
        if not isinstance(got, int):  # else corrupt: the checks below name the fault
            return np.frombuffer(got[0], "<u2"), got[1]
    start = offset
    if offset + _HEAD.size + 256 > len(buf):
        raise CodecError("corrupt payload: truncated format-5 stream header")
    seg, k = _HEAD.unpack_from(buf, offset)
    if not 0 < seg <= MAX_SEGMENT or k == 0:
        raise CodecError(
            f"corrupt payload: format-5 segments of {seg} elements (1..{MAX_SEGMENT}) or no contexts"
        )
    offset += _HEAD.size
    ctxmap = np.frombuffer(buf, np.uint8, 256, offset).copy()
    offset += 256
    nseg = (n + seg - 1) // seg
    if ctxmap.max() >= k or offset + k * NTOK + 4 * nseg > len(buf):
        raise CodecError("corrupt payload: bad format-5 context map or truncated code lengths")
    lengths = np.frombuffer(buf, np.uint8, k * NTOK, offset).reshape(k, NTOK)
    if not use_c:
        _check_kraft(lengths)
    offset += k * NTOK
    sizes = np.frombuffer(buf, "<u4", nseg, offset).astype(np.int64)
    offset += 4 * nseg
    body_at, end = offset, offset + int(sizes.sum())
    if end + 4 > len(buf):
        raise CodecError("corrupt payload: truncated format-5 segments")
    if crc32(buf[start:end]) != struct.unpack_from("<I", buf, end)[0]:
        raise CodecError("corrupt payload: stream checksum (crc32) mismatch")
    offsets = np.zeros(nseg + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    elements = np.empty(n, "<u2") if out is None else np.frombuffer(out, "<u2", n)
    if use_c:
        body = buf[body_at:end]  # read in place: the kernel bounds its loads near the end

        def run(g: tuple[int, int, int, int]) -> int:
            s0, s1, a, b = g
            ofs = offsets[s0 : s1 + 1]
            return int(
                _exact16_delta.decode(body, ofs, parent[a:b], shift, ctxmap, lengths, seg, elements[a:b])
            )

        status = min(thread_map(run, _groups(nseg, seg, n, threads), threads), default=0)
        if status == -2:
            raise CodecError("corrupt payload: Huffman code lengths are not a prefix code")
        bad = status < 0
    else:
        src = np.zeros(end - body_at + 4 * seg + 16, np.uint8)  # room for a segment read past its end
        src[: end - body_at] = np.frombuffer(buf, np.uint8, end - body_at, body_at)
        bad = bool(_decode_numpy(src, offsets, parent, shift, ctxmap, dec_table(lengths), seg, elements))
    if bad:
        raise CodecError("corrupt payload: a format-5 segment does not end where its size says")
    return elements, end + 4


def decode_stream_f16(
    buf: memoryview, offset: int, n: int, parent_f16: np.ndarray, out: memoryview | None = None
) -> tuple[np.ndarray, int] | None:
    """A narrowed F16 tensor's stream (``compression.narrow``: BF16 values coded against the bf16 of the F16
    parent, rounded to nearest even) decoded straight to F16: n F16 elements and the offset past the stream.
    The extension casts each block of the parent and of the result in L1 as it decodes (the casts of
    ``compression._narrow``), so no bf16 copy of either is made: the two-step route (cast the parent,
    ``decode_stream``, ``narrow.widen``) reads and writes each tensor twice more. Gives the same bytes as
    that route, or None where it cannot: no extension, a NaN in the parent (which torch casts there) or a
    corrupt stream (that route names the fault). ``out``: 2n writable bytes to decode into (the elements
    are then a view of it)."""
    if _exact16_delta is None:
        return None
    got = _exact16_delta.decode_stream(buf, offset, n, parent_f16, _BF16_SHIFT, True, out)
    if isinstance(got, int):
        return None
    return np.frombuffer(got[0], "<u2"), got[1]


def _decode_numpy(
    src: np.ndarray,
    offsets: np.ndarray,
    parent: np.ndarray,
    shift: int,
    ctxmap: np.ndarray,
    dec: np.ndarray,
    seg: int,
    out: np.ndarray,
) -> int:
    """All segments in lockstep, one element of each per step."""
    n = out.size
    nseg = offsets.size - 1
    pos = offsets[:-1] * 8
    first = np.arange(nseg, dtype=np.int64) * seg
    ctx = ctxmap[exponent(parent, shift)].astype(np.int64) << MAX_LEN
    par = parent.astype(np.int64)
    ar8 = np.arange(8)
    for j in range(min(seg, n)):
        live = first + j < n  # only the last segment may be short
        idx, p = first[live] + j, pos[live]
        w = src[(p >> 3)[:, None] + ar8].view("<u8")[:, 0] >> (p & 7).astype(np.uint64)
        e = dec[ctx[idx] | (w & np.uint64((1 << MAX_LEN) - 1)).astype(np.int64)].astype(np.int64)
        ln, nx = (e >> 5) & 15, (e >> 9) & 31
        z = (e >> 14) + ((w >> ln.astype(np.uint64)).astype(np.int64) & ((1 << nx) - 1))
        pos[live] = p + (e & 31)
        d = (z >> 1) ^ -(z & 1)
        out[idx] = (par[idx] + d) & 0xFFFF
    return int(((pos + 7) // 8 != offsets[1:]).any())
