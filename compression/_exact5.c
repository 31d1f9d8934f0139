/* Format-5 exact coder kernels: canonical Huffman over delta tokens, extra bits inline, segments.
 *
 * Specified in docs/FORMAT.md ("Exact tensor payloads", format 5) and implemented twice: here and in
 * numpy (compression/exact_v5.py, the fallback when this extension did not build); tests/test_codecs_v5.py
 * checks both write and read the same bytes. Elements are 16-bit (BF16/F16). Per element: z = zigzag of
 * the wrapping difference child − parent; its token and extra bit count (token()); the context is ctxmap[the parent's exponent]; the bitstream
 * gets the token's bit-reversed canonical code (LSB-first) followed by the extra bits (z's low bits).
 * A tensor is cut in segments of `seg` elements, each its own byte-aligned bitstream, so that the
 * decoder runs four segments interleaved (four independent dependency chains) and numpy runs all of
 * them in lockstep. Bits are read with one unaligned 64-bit load per element (>= 57 valid bits; an
 * element takes at most 11 + 16 = 27), written through a 64-bit accumulator flushed whole bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LOOKUP 11
#define NTOK 64

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
/* Every context the map names has a table of `tables` rows. */
static int ctx_ok(const Py_buffer *ctxmap, Py_ssize_t tables) {
    if (ctxmap->len != 256) return 0;
    for (int i = 0; i < 256; i++)
        if (((const uint8_t *)ctxmap->buf)[i] >= tables) return 0;
    return 1;
}

/* Token | extra bit count << 8 of a wrapping difference (compression.exact_v5.ZTAB, computed). */
static inline uint32_t token(uint16_t z) {
    uint32_t zz = (uint16_t)((z << 1) ^ (uint16_t)((int16_t)z >> 15));
    uint32_t k = 32 - (uint32_t)__builtin_clz(zz | 1), big = 0u - (uint32_t)(zz >= 8); /* masks: z is */
    uint32_t nx = (k - 3) & big;                                                  /* unpredictable */
    uint32_t tok = ((4 * k - 8 + ((zz >> nx) & 3)) & big) | (zz & ~big);
    return tok | nx << 8;
}

static inline uint16_t load16(const uint8_t *p, Py_ssize_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }

/* counts[parent exponent * 64 + token] over every stride-th element (u32[256 * 64]). */
static PyObject *py_count(PyObject *self, PyObject *args) {
    Py_buffer child, parent, counts;
    int shift;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*y*inw*", &child, &parent, &shift, &stride, &counts)) return NULL;
    Py_ssize_t n = child.len / 2;
    int ok = parent.len == child.len && counts.len == 256 * NTOK * 4 && shift >= 7 && shift <= 14 && stride >= 1;
    if (ok) {
        const uint8_t *c = child.buf, *p = parent.buf;
        uint32_t *cnt = counts.buf;
        Py_BEGIN_ALLOW_THREADS
        uint32_t *sub = calloc(4 * 256 * NTOK, 4); /* 4 histograms: no store-to-load chain on one bin */
        if (sub) {
            for (Py_ssize_t i = 0, k = 0; i < n; i += stride, k++) {
                uint16_t cv = load16(c, i), pv = load16(p, i);
                uint32_t at = ((uint32_t)(uint16_t)(pv << 1) >> (shift + 1)) * NTOK + (token((uint16_t)(cv - pv)) & 255);
                sub[(k & 3) * 256 * NTOK + at]++;
            }
            for (Py_ssize_t j = 0; j < 256 * NTOK; j++)
                cnt[j] += sub[j] + sub[256 * NTOK + j] + sub[2 * 256 * NTOK + j] + sub[3 * 256 * NTOK + j];
            free(sub);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child); PyBuffer_Release(&parent); PyBuffer_Release(&counts);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact5.count: bad arguments"); return NULL; }
    Py_RETURN_NONE;
}

/* One element's bits (its code, then its extra bits) and their count; zt[z] = token | extra bit count << 8
 * | extra bits << 16, et[exponent * 64 + token] = code | length << 16 | escaped << 24. */
static inline __attribute__((always_inline)) uint64_t element(
    const uint8_t *c, const uint8_t *p, Py_ssize_t i, const int shift, const uint32_t *zt, const uint32_t *et,
    int *nbits) {
    uint16_t cv = load16(c, i), pv = load16(p, i), z = (uint16_t)(cv - pv);
    uint32_t t = zt[z], e = et[(uint32_t)((pv & 0x7FFF) >> shift) * NTOK + (t & 255)];
    uint32_t len = (e >> 16) & 255;
    if (__builtin_expect(e >> 24, 0)) { /* escaped: all 16 bits of z's zigzag */
        *nbits = (int)len + 16;
        return (uint64_t)(e & 0xFFFF) | (uint64_t)(uint16_t)((z << 1) ^ (uint16_t)((int16_t)z >> 15)) << len;
    }
    *nbits = (int)(len + ((t >> 8) & 31));
    return (uint64_t)(e & 0xFFFF) | (uint64_t)(t >> 16) << len;
}

/* The segments of one tensor; shift is a constant in each instantiation. */
static inline __attribute__((always_inline)) Py_ssize_t encode_core(
    const uint8_t *c, const uint8_t *p, Py_ssize_t n, const int shift, const uint32_t *zt, const uint32_t *et,
    Py_ssize_t seg, uint8_t *o, uint32_t *sz) {
    uint8_t *begin = o;
    for (Py_ssize_t s = 0; s * seg < n; s++) {
        Py_ssize_t a = s * seg, b = a + seg < n ? a + seg : n, i = a;
        uint8_t *start = o;
        uint64_t acc = 0;
        int cnt = 0;
        for (; i + 2 <= b; i += 2) { /* two elements (<= 54 bits) join the accumulator (< 8) at once */
            int n0, n1;
            uint64_t v0 = element(c, p, i, shift, zt, et, &n0), v1 = element(c, p, i + 1, shift, zt, et, &n1);
            acc |= (v0 | v1 << n0) << cnt;
            cnt += n0 + n1;
            memcpy(o, &acc, 8);
            o += cnt >> 3; acc >>= cnt & ~7; cnt &= 7;
        }
        for (; i < b; i++) {
            int n0;
            uint64_t v0 = element(c, p, i, shift, zt, et, &n0);
            acc |= v0 << cnt;
            cnt += n0;
            memcpy(o, &acc, 8);
            o += cnt >> 3; acc >>= cnt & ~7; cnt &= 7;
        }
        if (cnt) { memcpy(o, &acc, 8); o++; }
        sz[s] = (uint32_t)(o - start);
    }
    return o - begin;
}

/* encode(child, parent, shift, ztab, enc, seg, out, sizes): writes the segments back to back into out
 * (byte-aligned each), their byte sizes into sizes; returns the total bytes. enc is u32[256 * 64] per
 * (parent exponent, token) (a token without a code of its own is escaped: the escape token's code, then
 * z's 16 bits). out needs 4 * n + 8 bytes. */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer child, parent, ztab, enc, out, sizes;
    int shift;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "y*y*iy*y*nw*w*", &child, &parent, &shift, &ztab, &enc, &seg, &out, &sizes))
        return NULL;
    Py_ssize_t n = child.len / 2, nseg = seg > 0 ? (n + seg - 1) / seg : 0, total = 0;
    int ok = seg > 0 && parent.len == child.len && ztab.len == 65536 * 4 && enc.len == 256 * NTOK * 4 &&
             out.len >= 4 * n + 8 && sizes.len >= nseg * 4 && (shift == 7 || shift == 10);
    if (ok) {
        const uint8_t *c = child.buf, *p = parent.buf;
        Py_BEGIN_ALLOW_THREADS
        if (shift == 7) total = encode_core(c, p, n, 7, ztab.buf, enc.buf, seg, out.buf, sizes.buf);
        else total = encode_core(c, p, n, 10, ztab.buf, enc.buf, seg, out.buf, sizes.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child); PyBuffer_Release(&parent); PyBuffer_Release(&ztab); PyBuffer_Release(&enc);
    PyBuffer_Release(&out); PyBuffer_Release(&sizes);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact5.encode: bad arguments"); return NULL; }
    return PyLong_FromSsize_t(total);
}

static const uint32_t MASKS[32] = {
    0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4095, 8191, 16383, 32767, 65535, 65535, 65535, 65535,
    65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535}; /* the low nx bits */

/* One element of a segment: dec[ctx << 11 | next 11 bits] = code length + extra bit count | code length
 * << 5 | extra bit count << 9 | base << 14. */
#define STEP(k) do { \
    uint16_t pv = load16(p, i##k); \
    uint64_t w = load64(src + (pos##k >> 3)) >> (pos##k & 7); \
    uint32_t e = dt[rows[(pv & 0x7FFF) >> shift] | (uint32_t)(w & ((1u << LOOKUP) - 1))]; \
    pos##k += e & 31; \
    uint32_t zz = (e >> 14) + ((uint32_t)(w >> ((e >> 5) & 15)) & MASKS[(e >> 9) & 31]); \
    uint16_t d = (uint16_t)((zz >> 1) ^ (0u - (zz & 1))); \
    uint16_t v = (uint16_t)(pv + d); memcpy(o + 2 * i##k, &v, 2); i##k++; \
} while (0)

/* All segments; shift is a constant in each instantiation. Returns nonzero if a segment's bits do not end
 * in its last byte. */
static inline __attribute__((always_inline)) int decode_core(
    const uint8_t *src, const int64_t *of, Py_ssize_t nseg, Py_ssize_t n, const uint8_t *p, const int shift,
    const uint8_t *cm, const uint32_t *dt, Py_ssize_t seg, uint8_t *o) {
    int bad = 0;
    uint32_t rows[256]; /* per exponent: its context's first table entry */
    for (int e = 0; e < 256; e++) rows[e] = (uint32_t)cm[e] << LOOKUP;
    Py_ssize_t s = 0;
    for (; s + 4 <= nseg && (s + 4) * seg <= n; s += 4) { /* four full segments side by side */
        uint64_t pos0 = 8 * of[s], pos1 = 8 * of[s + 1], pos2 = 8 * of[s + 2], pos3 = 8 * of[s + 3];
        Py_ssize_t i0 = s * seg, i1 = i0 + seg, i2 = i1 + seg, i3 = i2 + seg;
        for (Py_ssize_t j = 0; j < seg; j++) { STEP(0); STEP(1); STEP(2); STEP(3); }
        bad |= (pos0 + 7) / 8 != (uint64_t)of[s + 1] || (pos1 + 7) / 8 != (uint64_t)of[s + 2] ||
               (pos2 + 7) / 8 != (uint64_t)of[s + 3] || (pos3 + 7) / 8 != (uint64_t)of[s + 4];
    }
    for (; s < nseg; s++) {
        uint64_t pos0 = 8 * of[s];
        Py_ssize_t i0 = s * seg, b = i0 + seg < n ? i0 + seg : n;
        while (i0 < b) STEP(0);
        bad |= (pos0 + 7) / 8 != (uint64_t)of[s + 1];
    }
    return bad;
}

/* Decodes n elements; src holds the segments at the given byte offsets (plus padding: a segment may be
 * read up to 4 * seg + 8 bytes past its start: 27 bits an element at most). Returns -1 if a segment's bits do not end in its last
 * byte, else 0. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer srcb, offs, parent, ctxmap, dec, out;
    int shift;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "y*y*y*iy*y*nw*", &srcb, &offs, &parent, &shift, &ctxmap, &dec, &seg, &out))
        return NULL;
    Py_ssize_t n = out.len / 2, nseg = seg > 0 ? (n + seg - 1) / seg : 0;
    int ok = seg > 0 && parent.len == out.len && ctx_ok(&ctxmap, dec.len / (4 << LOOKUP)) &&
             offs.len == (nseg + 1) * 8 && (shift == 7 || shift == 10), bad = 0;
    if (ok) {
        const int64_t *of = offs.buf;
        for (Py_ssize_t s = 0; s <= nseg; s++)
            if (of[s] < 0 || (s && of[s] < of[s - 1]) || of[s] + 4 * seg + 8 > srcb.len) ok = 0;
    }
    if (ok) {
        const uint8_t *src = srcb.buf, *p = parent.buf, *cm = ctxmap.buf;
        const uint32_t *dt = dec.buf;
        const int64_t *of = offs.buf;
        uint8_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        if (shift == 7) bad = decode_core(src, of, nseg, n, p, 7, cm, dt, seg, o);
        else bad = decode_core(src, of, nseg, n, p, 10, cm, dt, seg, o);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&srcb); PyBuffer_Release(&offs); PyBuffer_Release(&parent); PyBuffer_Release(&ctxmap);
    PyBuffer_Release(&dec); PyBuffer_Release(&out);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact5.decode: bad arguments"); return NULL; }
    return PyLong_FromLong(bad ? -1 : 0);
}

/* Code lengths of one context, as compression.exact_v5.code_lengths computes them (the same merges:
 * nodes are ordered by (weight, id), leaves numbered 0..m-1 in token order, merged nodes m, m+1, ...;
 * keys are distinct, so any min-selection pops them in the same order as Python's heapq). */
static void context_lengths(const uint32_t *cnt, uint8_t *len) {
    uint64_t w[2 * NTOK];
    int tok[NTOK], up[2 * NTOK], depth[2 * NTOK], live[2 * NTOK], m = 0, nlive = 0;
    for (int t = 0; t < NTOK; t++) { len[t] = 0; if (cnt[t]) { tok[m] = t; w[m] = cnt[t]; live[nlive++] = m; m++; } }
    if (m == 1) len[tok[0]] = 1;
    if (m <= 1) return;
    for (int node = m; node < 2 * m - 1; node++) {
        int pick[2];
        for (int k = 0; k < 2; k++) { /* pop the smallest (weight, id) */
            int best = 0;
            for (int j = 1; j < nlive; j++)
                if (w[live[j]] < w[live[best]] || (w[live[j]] == w[live[best]] && live[j] < live[best])) best = j;
            pick[k] = live[best];
            live[best] = live[--nlive];
        }
        up[pick[0]] = up[pick[1]] = node;
        w[node] = w[pick[0]] + w[pick[1]];
        live[nlive++] = node;
    }
    depth[2 * m - 2] = 0;
    for (int i = 2 * m - 3; i >= 0; i--) depth[i] = depth[up[i]] + 1;
    int64_t excess = -(1 << LOOKUP);
    for (int j = 0; j < m; j++) { if (depth[j] > LOOKUP) depth[j] = LOOKUP; excess += 1 << (LOOKUP - depth[j]); }
    while (excess > 0) { /* lengthen the longest code shorter than LOOKUP, the rarest (then lowest) one */
        int top = 0, best = -1;
        for (int j = 0; j < m; j++) if (depth[j] < LOOKUP && depth[j] > top) top = depth[j];
        for (int j = 0; j < m; j++)
            if (depth[j] == top && (best < 0 || w[j] < w[best])) best = j;
        excess -= 1 << (LOOKUP - top - 1);
        depth[best]++;
    }
    for (int j = 0; j < m; j++) len[tok[j]] = (uint8_t)depth[j];
}

/* lengths(counts u64[k * 64], out u8[k * 64]): code lengths of each of k contexts. */
static PyObject *py_lengths(PyObject *self, PyObject *args) {
    Py_buffer counts, out;
    if (!PyArg_ParseTuple(args, "y*w*", &counts, &out)) return NULL;
    int ok = counts.len % (NTOK * 8) == 0 && out.len * 8 == counts.len;
    if (ok)
        for (Py_ssize_t k = 0; k < out.len / NTOK; k++) {
            uint32_t c32[NTOK];
            const uint64_t *c = (const uint64_t *)counts.buf + k * NTOK;
            for (int t = 0; t < NTOK; t++) c32[t] = c[t] > 0xFFFFFFFFu ? 0 : (uint32_t)c[t];
            for (int t = 0; t < NTOK; t++) ok &= c[t] <= 0xFFFFFFFFu;
            context_lengths(c32, (uint8_t *)out.buf + k * NTOK);
        }
    PyBuffer_Release(&counts); PyBuffer_Release(&out);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact5.lengths: bad arguments (counts < 2^32 each)"); return NULL; }
    Py_RETURN_NONE;
}

/* tables(lengths u8[k * 64], tok_extra i64[64], tok_base i64[64], enc u32[k * 64], dec u32[k << 11]): the
 * canonical codes of compression.exact_v5.enc_table and dec_table (same entries, same filler), built here
 * because numpy's fixed costs per call dominate for small tensors. */
static PyObject *py_tables(PyObject *self, PyObject *args) {
    Py_buffer lengths, extra, base, enc, dec;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &lengths, &extra, &base, &enc, &dec)) return NULL;
    Py_ssize_t k = lengths.len / NTOK;
    int ok = lengths.len % NTOK == 0 && extra.len == NTOK * 8 && base.len == NTOK * 8 && enc.len == k * NTOK * 4 &&
             dec.len == k * (4 << LOOKUP);
    for (Py_ssize_t i = 0; ok && i < lengths.len; i++) ok = ((const uint8_t *)lengths.buf)[i] <= LOOKUP;
    if (ok) {
        const uint8_t *L = lengths.buf;
        const int64_t *ex = extra.buf, *bs = base.buf;
        uint32_t *et = enc.buf, *dt = dec.buf;
        for (Py_ssize_t ctx = 0; ctx < k; ctx++) {
            const uint8_t *len = L + ctx * NTOK;
            uint32_t *row = dt + (ctx << LOOKUP), *erow = et + ctx * NTOK;
            uint32_t start = 0; /* next free slot, MSB-first, in 11-bit space */
            for (int t = 0; t < NTOK; t++) erow[t] = 0;
            for (int l = 1; l <= LOOKUP; l++)
                for (int t = 0; t < NTOK; t++) {
                    if (len[t] != l) continue;
                    uint32_t span = 1u << (LOOKUP - l), rev = 0;
                    if (start + span > (1u << LOOKUP)) { ok = 0; break; } /* not a prefix code */
                    for (int b = 0; b < LOOKUP; b++) rev |= ((start >> b) & 1u) << (LOOKUP - 1 - b);
                    erow[t] = rev | (uint32_t)l << 16;
                    uint32_t entry = (uint32_t)(l + ex[t]) | (uint32_t)l << 5 | (uint32_t)ex[t] << 9 |
                                     (uint32_t)bs[t] << 14;
                    for (uint32_t j = 0; j < span; j++) row[rev | j << l] = entry; /* slots ending in the code */
                    start += span;
                }
            for (uint32_t j = start; j < (1u << LOOKUP); j++) { /* unreached slots: filler */
                uint32_t rev = 0;
                for (int b = 0; b < LOOKUP; b++) rev |= ((j >> b) & 1u) << (LOOKUP - 1 - b);
                row[rev] = LOOKUP | LOOKUP << 5;
            }
            if (len[63]) /* the escape's code stands in for every token without one */
                for (int t = 0; t < NTOK; t++) if (!len[t]) erow[t] = erow[63] | 1u << 24;
        }
    }
    PyBuffer_Release(&lengths); PyBuffer_Release(&extra); PyBuffer_Release(&base); PyBuffer_Release(&enc);
    PyBuffer_Release(&dec);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact5.tables: bad arguments or not a prefix code"); return NULL; }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"count", py_count, METH_VARARGS, "count(child, parent, shift, stride, counts)"},
    {"lengths", py_lengths, METH_VARARGS, "lengths(counts, out)"},
    {"tables", py_tables, METH_VARARGS, "tables(lengths, tok_extra, tok_base, enc, dec)"},
    {"encode", py_encode, METH_VARARGS, "encode(child, parent, shift, ztab, enc, seg, out, sizes)"},
    {"decode", py_decode, METH_VARARGS, "decode(src, offsets, parent, shift, ctxmap, dec, seg, out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact5", "Format-5 exact coder kernels.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__exact5(void) { return PyModule_Create(&module); }
