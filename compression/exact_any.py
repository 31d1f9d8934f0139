"""Format-4 streams: any dtype (F64, F8, integers, bool; BF16/F16/F32 as older writers did), delta or plain.

Each element becomes a token and raw bits (``compression.exact_any_tokens``: sign-and-magnitude tokens of
the wrapping integer difference, per parent exponent, or plain float exponents); tokens go through
interleaved rANS with 12-bit per-context tables, one rANS op per element with a multiply instead of a
divide; raw bits go LSB-first into a plain bit stream apart. The encoder derives tokens, counts and raw bits
in one pass, and the tensor is cut into chunks of ``CHUNK`` (2^18) elements (shared tables, their own
states, words and raw bits), which threads can code side by side. Layout: docs/FORMAT.md ("Exact tensor
payloads", format 4).

The C extension ``compression._exact_any`` runs the hot loops; the numpy path (``backend="numpy"``) writes
and reads the same bytes and is used when the extension is missing.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
from deltazoo.compression.bitpack import pack_lsb_first, unpack_lsb_first
from deltazoo.compression.exact_any_tokens import (
    ALPHA,
    PROB_BITS,
    PROB_SCALE,
    RANS_L,
    Layout,
    Tables,
    lanes_for,
    quantize,
    raw_count,
    tokenize,
    untokenize,
)
from deltazoo.compression.exact_errors import CodecError
from deltazoo.compression.parallel import pick_c_kernel, thread_map

try:  # built by setup.py; optional so that the format never depends on a compiler
    from deltazoo.compression import _exact_any  # type: ignore[attr-defined]  # a C extension, no stubs
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _exact_any = None

CHUNK = 1 << 18  # elements per chunk (512 KiB of BF16: threads get work even on small models)
_HEAD = struct.Struct("<IH")  # chunk elements, number of context tables
_CHUNK = struct.Struct("<IQ")  # words, raw bits
_TABLE = struct.Struct("<HHH")  # context, first token, token count


def has_extension() -> bool:
    return _exact_any is not None


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


# ------------------------------------------------------------------------------------------ tables
def enc_table(tables: Tables) -> np.ndarray:
    """u64[256 * ALPHA * 2]: per (context, token) the reciprocal floor(2^64 / f) + 1 (f = 1: 2^64 − 1, with
    the bias raised by 4095), then bias | f << 32 | (4096 − f) << 48; q = mulhi(x, rcp) = floor(x / f)."""
    seen = np.flatnonzero(tables.freq)
    f = tables.freq[seen].astype(np.uint64)
    one = f == 1
    bias = tables.cum[seen].astype(np.uint64) + np.where(one, np.uint64(PROB_SCALE - 1), np.uint64(0))
    meta = bias | (f << np.uint64(32)) | ((np.uint64(PROB_SCALE) - f) << np.uint64(48))
    rows = tables.used.astype(np.int64)[seen // ALPHA]
    out = np.zeros((256 * ALPHA, 2), np.uint64)
    at = rows * ALPHA + seen % ALPHA
    out[at, 0] = _RCP[f.astype(np.int64)]
    out[at, 1] = meta
    return out.ravel()


def _reciprocals() -> np.ndarray:
    f = np.arange(PROB_SCALE + 1, dtype=np.uint64)
    safe = np.maximum(f, np.uint64(1))
    pow2 = ((safe & (safe - np.uint64(1))) == 0).astype(np.uint64)
    with np.errstate(over="ignore"):
        rcp = np.uint64(0xFFFFFFFFFFFFFFFF) // safe + np.uint64(1) + pow2
    rcp[:2] = np.uint64(0xFFFFFFFFFFFFFFFF)  # f = 1 (0 never occurs)
    return rcp


_RCP = _reciprocals()  # per frequency: floor(2^64 / f) + 1


def table_bytes(tables: Tables) -> bytes:
    """Per used context: u16 context, first token, token count, then those tokens' u16 frequencies."""
    f = tables.freq.reshape(-1, ALPHA)
    if not f.size:
        return b""
    nz = f > 0
    lo = nz.argmax(axis=1)
    span = ALPHA - nz[:, ::-1].argmax(axis=1) - lo
    sizes = 3 + span
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), "<u2")
    is_freq = np.ones(out.size, bool)
    for k, field in enumerate((tables.used, lo, span)):
        out[starts + k] = field
        is_freq[starts + k] = False
    cols = np.arange(ALPHA)
    out[is_freq] = f[(cols >= lo[:, None]) & (cols < (lo + span)[:, None])]
    return out.tobytes()


def parse_tables(buf: memoryview, offset: int, count: int) -> tuple[Tables, int]:
    """Inverse of ``table_bytes`` (checked: ascending contexts, spans inside the alphabet, rows summing to
    ``PROB_SCALE``); the frequencies gathered by one numpy copy."""
    used = np.empty(count, np.int64)
    spans: list[tuple[int, int, int]] = []  # (flat position of the first frequency, its offset, count)
    for row in range(count):
        if offset + _TABLE.size > len(buf):
            raise CodecError("corrupt payload: truncated frequency table")
        ctx, lo, span = _TABLE.unpack_from(buf, offset)
        offset += _TABLE.size
        if ctx > 255 or lo + span > ALPHA or offset + 2 * span > len(buf) or (row and ctx <= used[row - 1]):
            raise CodecError("corrupt payload: bad frequency table header")
        used[row] = ctx
        spans.append((row * ALPHA + lo, offset, span))
        offset += 2 * span
    f = np.zeros(count * ALPHA, np.int64)
    if count:
        start = spans[0][1] - _TABLE.size
        words = np.frombuffer(buf[start:offset], "<u2").astype(np.int64)
        dst = np.concatenate([np.arange(at, at + span) for at, _, span in spans])
        src = np.concatenate([np.arange(span) + (off - start) // 2 for _, off, span in spans])
        f[dst] = words[src]
    freq = f.reshape(count, ALPHA)
    if count and not (freq.sum(axis=1) == PROB_SCALE).all():
        raise CodecError(f"corrupt payload: a frequency table does not sum to {PROB_SCALE}")
    return Tables.build(used, freq), offset


# ------------------------------------------------------------------------------------------ encode
def encode_stream(
    lay: Layout, child: np.ndarray, parent: np.ndarray | None, backend: str = "auto", threads: int = 1
) -> bytes:
    """One format-4 stream of child (against parent, or none): header, tables, chunks, crc32."""
    use_c = pick_c_kernel(_exact_any, "_exact_any", backend)
    n = child.size
    bounds = _chunks(n, CHUNK)
    syms = np.empty(n, np.uint16)

    def scan(ab: tuple[int, int]) -> tuple[np.ndarray, bytes | np.ndarray, int]:
        a, b = ab
        par = None if parent is None else parent[a:b]
        if use_c:
            raw = np.empty((b - a) * lay.width + 8, np.uint8)
            subs = np.zeros((256 * ALPHA, 4 if b - a >= 1 << 16 else 1), np.uint32)
            bits = _exact_any.scan(child[a:b], par, *lay.args(), syms[a:b], subs, raw)
            return subs[:, 0], raw[: (bits + 7) // 8], bits
        ctx, tok, rawv, nraw = tokenize(lay, child[a:b], par)
        syms[a:b] = ctx << 8 | tok
        counts = np.bincount(syms[a:b], minlength=256 * ALPHA).astype(np.uint32)
        return counts, pack_lsb_first(rawv, nraw), int(nraw.sum())

    scanned = thread_map(scan, bounds, threads)
    counts = np.zeros(256 * ALPHA, np.uint32)
    for part in scanned:
        counts += part[0]
    used, f = quantize(counts.reshape(256, ALPHA))
    tables = Tables.build(used, f)
    enc = enc_table(tables) if use_c else None

    def code(ab: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        a, b = ab
        states = np.empty(lanes_for(b - a), np.uint32)
        if use_c:
            words = np.empty(b - a + 1, np.uint16)
            count = _exact_any.encode(syms[a:b], states.size, enc, states, words)
            return states, words[words.size - count :]
        return states, _encode_numpy(syms[a:b], tables, states)

    coded = thread_map(code, bounds, threads)
    parts = [_HEAD.pack(CHUNK, len(used)), table_bytes(tables)]
    for (states, words), (_, raw, bits) in zip(coded, scanned, strict=True):
        raw_bytes = raw.tobytes() if isinstance(raw, np.ndarray) else raw
        head = states.astype("<u4").tobytes() + _CHUNK.pack(words.size, bits)
        parts += [head, words.astype("<u2").tobytes(), raw_bytes]
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    parts.append(struct.pack("<I", crc))
    return b"".join(parts)


def _encode_numpy(syms: np.ndarray, tables: Tables, states: np.ndarray) -> np.ndarray:
    n, lanes = syms.size, states.size
    idx = tables.rowmap[syms >> 8].astype(np.int64) * ALPHA + (syms & 0xFF)
    freq, cum = tables.freq.astype(np.uint64)[idx], tables.cum.astype(np.uint64)[idx]
    x = np.full(lanes, RANS_L, np.uint64)
    out: list[np.ndarray] = []  # emitted words, step by step, each in ascending lane order
    for t in reversed(range((n + lanes - 1) // lanes)):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        xs, f = x[: hi - lo], freq[lo:hi]
        need = xs >= (f << np.uint64(20))
        out.append((xs[need] & np.uint64(0xFFFF)).astype(np.uint16))
        xs = np.where(need, xs >> np.uint64(16), xs)
        x[: hi - lo] = ((xs // f) << np.uint64(PROB_BITS)) + xs % f + cum[lo:hi]
    states[:] = x
    return np.concatenate(out[::-1]) if out else np.empty(0, np.uint16)


# ------------------------------------------------------------------------------------------ decode
def decode_stream(
    lay: Layout, buf: memoryview, offset: int, n: int, parent: np.ndarray | None, backend: str = "auto",
    threads: int = 1,
) -> tuple[np.ndarray, int]:
    """Inverse of ``encode_stream``: n elements and the offset just past the stream."""
    use_c = pick_c_kernel(_exact_any, "_exact_any", backend)
    start = offset
    if offset + _HEAD.size > len(buf):
        raise CodecError("corrupt payload: truncated stream header")
    chunk, count = _HEAD.unpack_from(buf, offset)
    if chunk != CHUNK:
        raise CodecError(f"corrupt payload: chunks of {chunk} elements (format 4 uses {CHUNK})")
    tables, offset = parse_tables(buf, offset + _HEAD.size, count)
    jobs = []
    for a, b in _chunks(n, CHUNK):
        lanes = lanes_for(b - a)
        head_end = offset + 4 * lanes + _CHUNK.size
        if head_end > len(buf):
            raise CodecError("corrupt payload: truncated chunk header")
        states = np.frombuffer(buf, "<u4", lanes, offset).astype(np.uint32)
        nwords, bits = _CHUNK.unpack_from(buf, offset + 4 * lanes)
        raw_at = head_end + 2 * nwords
        offset = raw_at + (bits + 7) // 8
        if offset > len(buf):
            raise CodecError("corrupt payload: truncated chunk")
        jobs.append((a, b, states, buf[head_end:raw_at], buf[raw_at:offset], bits))
    if offset + 4 > len(buf):
        raise CodecError("corrupt payload: truncated stream checksum")
    if zlib.crc32(buf[start:offset]) != struct.unpack_from("<I", buf, offset)[0]:
        raise CodecError("corrupt payload: stream checksum (crc32) mismatch")
    out = np.empty(n, f"<u{lay.width}")
    if use_c:  # per (row, slot) its token; per (row, token) cum | (freq − 1) << 12
        freq = tables.freq.astype(np.int64)
        slots = np.repeat(np.tile(np.arange(ALPHA, dtype=np.uint8), freq.size // ALPHA), freq)
        fc = (tables.cum.astype(np.int64) | (np.maximum(freq, 1) - 1) << 12).astype(np.uint32)
    else:
        lut = tables.lut()

    def run(job: tuple) -> None:
        a, b, states, wordb, rawb, bits = job
        lanes, nwords = states.size, len(wordb) // 2
        words = np.zeros(nwords + lanes, np.uint16)  # padding: see _exact_any.c, decode
        words[:nwords] = np.frombuffer(wordb, "<u2")
        raw = np.zeros(len(rawb) + lanes * lay.width + 8, np.uint8)
        raw[: len(rawb)] = np.frombuffer(rawb, np.uint8)
        par = None if parent is None else parent[a:b]
        if use_c:
            got = _exact_any.decode(words, states, raw, par, *lay.args(), lanes, tables.rowmap, slots, fc,
                                 out[a:b])
        else:
            got = _decode_numpy(lay, words[:nwords], states, raw, par, tables, lut, out[a:b])
        if got is None:
            raise CodecError(
                "corrupt payload or wrong parent: a context of the parent has no frequency table"
            )
        if got != (nwords, bits) or not (states == RANS_L).all():
            raise CodecError("corrupt payload: the chunk does not decode to its initial state")

    thread_map(run, jobs, threads)
    return out, offset + 4


def _decode_numpy(
    lay: Layout, words: np.ndarray, states: np.ndarray, raw: np.ndarray, parent: np.ndarray | None,
    tables: Tables, lut: np.ndarray, out: np.ndarray,
) -> tuple[int, int] | None:
    n, lanes = out.size, states.size
    if parent is None or lay.mode != 0:
        ctx = np.zeros(n, np.int64)
    else:
        top = parent.astype(np.uint64) >> np.uint64(lay.shift)
        ctx = (top & np.uint64((1 << lay.tbits) - 1)).astype(np.int64)
    rows = tables.rowmap[ctx].astype(np.int64)
    if n and rows.max() >= len(tables.used):
        return None
    w = words.astype(np.int64)
    lu = lut.astype(np.int64)
    tok = np.empty(n, np.int64)
    x = states.astype(np.int64)
    pos = 0
    for t in range((n + lanes - 1) // lanes):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        xs = x[: hi - lo]
        slot = xs & (PROB_SCALE - 1)
        e = lu[rows[lo:hi] * PROB_SCALE + slot]
        tok[lo:hi] = e >> 24
        xs = (((e >> 12) & 0xFFF) + 1) * (xs >> PROB_BITS) + slot - (e & 0xFFF)
        need = xs < RANS_L
        take = int(need.sum())
        if pos + take > w.size:
            raise CodecError("corrupt payload: the rANS stream ends early")
        xs[need] = (xs[need] << 16) | w[pos : pos + take]
        pos += take
        x[: hi - lo] = xs
    states[:] = x.astype(np.uint32)
    nraw = raw_count(lay, tok)
    bits = int(nraw.sum())
    if bits > 8 * (raw.size - 8):
        raise CodecError("corrupt payload: the raw bits end early")
    out[:] = untokenize(lay, tok, unpack_lsb_first(raw, nraw), parent)
    return pos, bits
