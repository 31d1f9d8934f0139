/* Format-6 streams of 32-bit floats (compression/exact32.py has the format and the numpy twin that
 * writes and reads the same bytes). The Python side picks the Huffman code lengths and hands over the
 * tables; this kernel counts symbols, writes the token segments and the raw plane, and decodes them.
 *
 * Delta mode: z = zigzag(child - parent) (wrapping 32-bit), token < 128 (z below 8, else
 * 8 + 4 (k - 4) + the two bits after z's leading one, k = bit length) and k - 3 raw bits (z's low bits).
 * Plain mode: symbol = bits 22..30 (exponent and top mantissa bit), raw = sign << 22 | low 22 bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LOOKUP 12
#define NTOK_DELTA 128
#define NTOK_PLAIN 512
#define TOK_USED 124 /* tokens 124..127 (bit length 33) never occur */

static inline uint32_t bitlen32(uint32_t z) { return z ? 32u - (uint32_t)__builtin_clz(z) : 0u; }

static inline uint32_t delta_token(uint32_t z, uint32_t *nx) {
    if (z < 8) { *nx = 0; return z; }
    uint32_t k = bitlen32(z);
    *nx = k - 3;
    return 8 + 4 * (k - 4) + ((z >> (k - 3)) & 3);
}

static inline uint32_t zig(uint32_t c, uint32_t p) {
    int32_t d = (int32_t)(c - p);
    return ((uint32_t)d << 1) ^ (uint32_t)(d >> 31);
}

static uint32_t TOK_BASE[NTOK_DELTA], TOK_NX[NTOK_DELTA];

static void init_tokens(void) {
    for (uint32_t t = 0; t < NTOK_DELTA; t++) {
        if (t < 8) { TOK_BASE[t] = t; TOK_NX[t] = 0; continue; }
        uint32_t k = (t - 8) / 4 + 4;
        if (k > 32) { TOK_BASE[t] = 0; TOK_NX[t] = 0; continue; }
        TOK_BASE[t] = (1u << (k - 1)) | (((t - 8) % 4) << (k - 3));
        TOK_NX[t] = k - 3;
    }
}

/* ------------------------------------------------------------------------------------- bit writer */
typedef struct { uint8_t *p; uint64_t acc; uint32_t fill; } writer;

static inline void put(writer *w, uint64_t v, uint32_t n) { /* n <= 32 */
    w->acc |= v << w->fill;
    w->fill += n;
    if (w->fill >= 32) {
        uint32_t lo = (uint32_t)w->acc;
        memcpy(w->p, &lo, 4);
        w->p += 4;
        w->acc >>= 32;
        w->fill -= 32;
    }
}

static inline void flush(writer *w) { /* to the next byte boundary */
    while (w->fill > 0) {
        *w->p++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->fill = w->fill > 8 ? w->fill - 8 : 0;
    }
    w->acc = 0;
}

/* ------------------------------------------------------------------------------------- bit reader */
typedef struct { const uint8_t *p, *end; uint64_t acc; uint32_t fill; int64_t consumed; } reader;

static inline void refill(reader *r) {
    if (r->end - r->p >= 8) {
        uint64_t v;
        memcpy(&v, r->p, 8);
        r->acc |= v << r->fill;
        r->p += (63 - r->fill) >> 3;
        r->fill |= 56;
    } else {
        while (r->fill <= 56) {
            uint64_t b = r->p < r->end ? *r->p : 0;
            r->p++; /* past the end reads zeros; the caller checks the bits consumed */
            r->acc |= b << r->fill;
            r->fill += 8;
        }
    }
}

static inline uint64_t take(reader *r, uint32_t n) {
    uint64_t v = r->acc & ((n >= 64) ? ~0ull : ((1ull << n) - 1));
    r->acc >>= n;
    r->fill -= n;
    r->consumed += n;
    return v;
}

/* --------------------------------------------------------------------------------------- counting */
static PyObject *py_count(PyObject *self, PyObject *args) {
    Py_buffer child, parent, counts;
    int delta;
    if (!PyArg_ParseTuple(args, "py*y*w*", &delta, &child, &parent, &counts)) return NULL;
    Py_ssize_t n = child.len / 4;
    const uint32_t *c = child.buf, *p = parent.buf;
    uint32_t *cnt = counts.buf;
    int ok = child.len % 4 == 0 && counts.len == 4 * (delta ? 256 * NTOK_DELTA : NTOK_PLAIN) &&
             (!delta || parent.len == child.len);
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        if (delta) {
            for (Py_ssize_t i = 0; i < n; i++) {
                uint32_t nx, e = (p[i] >> 23) & 0xFF;
                cnt[e * NTOK_DELTA + delta_token(zig(c[i], p[i]), &nx)]++;
            }
        } else {
            for (Py_ssize_t i = 0; i < n; i++) cnt[(c[i] >> 22) & 0x1FF]++;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child);
    PyBuffer_Release(&parent);
    PyBuffer_Release(&counts);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.count: bad buffer sizes"); return NULL; }
    Py_RETURN_NONE;
}

/* --------------------------------------------------------------------------------------- encoding */
/* enc: delta, u32[256 * 128] per (parent exponent, token); plain, u32[512]: reversed code | length << 16.
 * Writes the token segments into tok (sizes per segment) and the raw plane into raw; returns
 * (token bytes, raw bytes). */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer child, parent, enc, tok, sizes, raw;
    int delta;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "py*y*y*nw*w*w*", &delta, &child, &parent, &enc, &seg, &tok, &sizes, &raw))
        return NULL;
    Py_ssize_t n = child.len / 4, nseg = seg > 0 ? (n + seg - 1) / seg : 0;
    int ok = seg > 0 && child.len % 4 == 0 && (!delta || parent.len == child.len) &&
             enc.len == 4 * (delta ? 256 * NTOK_DELTA : NTOK_PLAIN) && sizes.len == 4 * nseg &&
             tok.len >= 2 * n + 8 * nseg + 16 && raw.len >= 4 * n + 16;
    Py_ssize_t tbytes = 0, rbytes = 0;
    if (ok) {
        const uint32_t *c = child.buf, *p = parent.buf, *et = enc.buf;
        uint32_t *sz = sizes.buf;
        Py_BEGIN_ALLOW_THREADS
        writer wt = {tok.buf, 0, 0}, wr = {raw.buf, 0, 0};
        for (Py_ssize_t s = 0; s < nseg; s++) {
            uint8_t *start = wt.p;
            Py_ssize_t a = s * seg, b = a + seg < n ? a + seg : n;
            if (delta) {
                for (Py_ssize_t i = a; i < b; i++) {
                    uint32_t z = zig(c[i], p[i]), nx, t = delta_token(z, &nx);
                    uint32_t code = et[((p[i] >> 23) & 0xFF) * NTOK_DELTA + t];
                    put(&wt, code & 0xFFFF, code >> 16);
                    if (nx) put(&wr, z & ((1u << nx) - 1), nx);
                }
            } else {
                for (Py_ssize_t i = a; i < b; i++) {
                    uint32_t x = c[i], code = et[(x >> 22) & 0x1FF];
                    put(&wt, code & 0xFFFF, code >> 16);
                    put(&wr, (x >> 31) << 22 | (x & 0x3FFFFF), 23);
                }
            }
            flush(&wt);
            sz[s] = (uint32_t)(wt.p - start);
        }
        flush(&wr);
        tbytes = wt.p - (uint8_t *)tok.buf;
        rbytes = wr.p - (uint8_t *)raw.buf;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child);
    PyBuffer_Release(&parent);
    PyBuffer_Release(&enc);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&raw);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.encode: bad buffer sizes"); return NULL; }
    return Py_BuildValue("nn", tbytes, rbytes);
}

/* --------------------------------------------------------------------------------------- decoding */
/* Symbols of one segment; cm NULL for plain (one table). Returns nonzero if a slot had no code or a
 * delta token is out of range. */
static inline uint32_t decode_symbols(reader *rt, const uint16_t *dt, const uint8_t *cm, const uint32_t *p,
                                      uint16_t *syms, Py_ssize_t m) {
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (rt->fill < LOOKUP) refill(rt);
        uint32_t ctx = cm ? (uint32_t)cm[(p[i] >> 23) & 0xFF] << LOOKUP : 0;
        uint32_t e = dt[ctx | (uint32_t)(rt->acc & 4095)], ln = e >> 12, t = e & 0xFFF;
        bad |= (ln == 0) | (cm != NULL && t >= TOK_USED);
        syms[i] = (uint16_t)t;
        rt->acc >>= ln;
        rt->fill -= ln;
        rt->consumed += ln;
    }
    return bad;
}

static inline void refill_v(uint64_t *acc, uint32_t *fill, const uint8_t **p, const uint8_t *end) {
    if (end - *p >= 8) {
        uint64_t v;
        memcpy(&v, *p, 8);
        *acc |= v << *fill;
        *p += (63 - *fill) >> 3;
        *fill |= 56;
    } else {
        while (*fill <= 56) {
            uint64_t b = *p < end ? **p : 0;
            (*p)++;
            *acc |= b << *fill;
            *fill += 8;
        }
    }
}

/* Four whole segments of seg elements side by side (their symbols to syms[l * seg + i]); r's consumed
 * counts are set at the end (bits loaded minus bits left). */
static uint32_t decode4(reader *r, const uint16_t *dt, const uint8_t *cm, const uint32_t *p, uint16_t *syms,
                        Py_ssize_t seg) {
    uint32_t bad = 0;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t f0 = 0, f1 = 0, f2 = 0, f3 = 0;
    const uint8_t *q0 = r[0].p, *q1 = r[1].p, *q2 = r[2].p, *q3 = r[3].p;
    const uint8_t *e0 = r[0].end, *e1 = r[1].end, *e2 = r[2].end, *e3 = r[3].end;
    const uint32_t *p0 = p, *p1 = p + seg, *p2 = p + 2 * seg, *p3 = p + 3 * seg;
    uint16_t *s0 = syms, *s1 = syms + seg, *s2 = syms + 2 * seg, *s3 = syms + 3 * seg;
    const uint32_t lim = cm ? TOK_USED : 0x1000;
#define STEP(A, F, Q, E, P, S)                                                                        \
    do {                                                                                              \
        if (F < LOOKUP) refill_v(&A, &F, &Q, E);                                                      \
        uint32_t ctx = cm ? (uint32_t)cm[(P[i] >> 23) & 0xFF] << LOOKUP : 0;                          \
        uint32_t e = dt[ctx | (uint32_t)(A & 4095)], ln = e >> 12, t = e & 0xFFF;                     \
        bad |= (ln == 0) | (t >= lim);                                                                \
        S[i] = (uint16_t)t;                                                                           \
        A >>= ln;                                                                                     \
        F -= ln;                                                                                      \
    } while (0)
    for (Py_ssize_t i = 0; i < seg; i++) {
        STEP(a0, f0, q0, e0, p0, s0);
        STEP(a1, f1, q1, e1, p1, s1);
        STEP(a2, f2, q2, e2, p2, s2);
        STEP(a3, f3, q3, e3, p3, s3);
    }
#undef STEP
    r[0].consumed = 8 * (q0 - r[0].p) - f0;
    r[1].consumed = 8 * (q1 - r[1].p) - f1;
    r[2].consumed = 8 * (q2 - r[2].p) - f2;
    r[3].consumed = 8 * (q3 - r[3].p) - f3;
    return bad;
}

static inline uint64_t load_slow(const uint8_t *rb, int64_t len, int64_t at) {
    uint64_t w = 0;
    for (int k = 0; k < 8 && at + k < len; k++) w |= (uint64_t)rb[at + k] << (8 * k);
    return w;
}

/* The raw bits of m delta elements from bit rpos of the raw plane (rb, len bytes): out = parent + the
 * unzigzagged z. Returns the new bit position (past the end means a corrupt plane: checked by caller). */
static int64_t raw_delta(const uint16_t *syms, Py_ssize_t m, const uint8_t *rb, int64_t len, int64_t rpos,
                         const uint32_t *p, uint32_t *o) {
    const int64_t safe = 8 * len - 64; /* an 8-byte load from bit position <= safe stays inside */
    Py_ssize_t i = 0;
    for (; i < m && rpos <= safe; i++) {
        uint32_t t = syms[i], nx = TOK_NX[t];
        uint64_t w;
        memcpy(&w, rb + (rpos >> 3), 8);
        uint32_t r = (uint32_t)(w >> (rpos & 7)) & ((1u << nx) - 1);
        rpos += nx;
        uint32_t z = TOK_BASE[t] | r;
        o[i] = p[i] + ((z >> 1) ^ (0u - (z & 1)));
    }
    for (; i < m; i++) {
        uint32_t t = syms[i], nx = TOK_NX[t];
        uint64_t w = rpos < 8 * len ? load_slow(rb, len, rpos >> 3) : 0;
        uint32_t r = (uint32_t)(w >> (rpos & 7)) & ((1u << nx) - 1);
        rpos += nx;
        uint32_t z = TOK_BASE[t] | r;
        o[i] = p[i] + ((z >> 1) ^ (0u - (z & 1)));
    }
    return rpos;
}

static int64_t raw_plain(const uint16_t *syms, Py_ssize_t m, const uint8_t *rb, int64_t len, int64_t rpos,
                         uint32_t *o) {
    const int64_t safe = 8 * len - 64;
    Py_ssize_t i = 0;
    for (; i < m && rpos <= safe; i++) {
        uint64_t w;
        memcpy(&w, rb + (rpos >> 3), 8);
        uint32_t r = (uint32_t)(w >> (rpos & 7)) & 0x7FFFFF, t = syms[i];
        rpos += 23;
        o[i] = (r >> 22) << 31 | t << 22 | (r & 0x3FFFFF);
    }
    for (; i < m; i++) {
        uint64_t w = rpos < 8 * len ? load_slow(rb, len, rpos >> 3) : 0;
        uint32_t r = (uint32_t)(w >> (rpos & 7)) & 0x7FFFFF, t = syms[i];
        rpos += 23;
        o[i] = (r >> 22) << 31 | t << 22 | (r & 0x3FFFFF);
    }
    return rpos;
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer tok, offs, raw, parent, ctxmap, dec, out;
    int delta;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "py*y*y*y*y*y*nw*", &delta, &tok, &offs, &raw, &parent, &ctxmap, &dec, &seg,
                          &out))
        return NULL;
    Py_ssize_t n = out.len / 4, nseg = seg > 0 ? (n + seg - 1) / seg : 0;
    Py_ssize_t nctx = dec.len / (2 << LOOKUP);
    int ok = seg > 0 && out.len % 4 == 0 && offs.len == 8 * (nseg + 1) && nctx > 0 &&
             (!delta || (parent.len == out.len && ctxmap.len == 256));
    const uint8_t *cm = ctxmap.buf;
    if (ok && delta)
        for (int e = 0; e < 256; e++) if (cm[e] >= nctx) ok = 0;
    if (ok && !delta && nctx != 1) ok = 0;
    const int64_t *of = offs.buf;
    if (ok && (of[0] != 0 || of[nseg] > tok.len)) ok = 0;
    for (Py_ssize_t s = 0; ok && s < nseg; s++) if (of[s + 1] < of[s]) ok = 0;
    int status = 0;
    uint16_t *syms4 = ok ? malloc(sizeof(uint16_t) * 4 * (size_t)seg) : NULL;
    int have4 = 0;
    if (ok && !syms4) { ok = 0; }
    if (ok) {
        const uint32_t *p = parent.buf;
        const uint16_t *dt = dec.buf;
        uint32_t *o = out.buf;
        const uint8_t *tb = tok.buf, *rb = raw.buf;
        const int64_t rawbits = 8 * (int64_t)raw.len;
        int64_t rpos = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t s = 0; s < nseg && !status; s++) {
            reader rt = {tb + of[s], tb + of[s + 1], 0, 0, 0};
            Py_ssize_t a = s * seg, b = a + seg < n ? a + seg : n, m = b - a;
            if (s % 4 == 0) { /* the symbols of four whole segments at once: four independent chains */
                if (s + 4 <= nseg && (s + 4) * seg <= n) {
                    reader r4[4];
                    for (int l = 0; l < 4; l++) r4[l] = (reader){tb + of[s + l], tb + of[s + l + 1], 0, 0, 0};
                    uint32_t bad4 = decode4(r4, dt, delta ? cm : NULL, p + a, syms4, seg);
                    for (int l = 0; l < 4; l++)
                        if ((r4[l].consumed + 7) / 8 != of[s + l + 1] - of[s + l]) bad4 = 1;
                    if (bad4) { status = -1; break; }
                    have4 = 4;
                } else {
                    have4 = 0;
                }
            }
            /* pass 1: the segment's symbols (one dependent table lookup each) */
            uint16_t *syms = syms4 + (size_t)(s % 4) * seg;
            if (!have4) {
                uint32_t bad = decode_symbols(&rt, dt, delta ? cm : NULL, p + a, syms, m);
                if (bad || (rt.consumed + 7) / 8 != of[s + 1] - of[s]) { status = -1; break; }
            }
            /* pass 2: raw bits at positions known from the symbols, independent loads */
            rpos = delta ? raw_delta(syms, m, rb, raw.len, rpos, p + a, o + a)
                         : raw_plain(syms, m, rb, raw.len, rpos, o + a);
            if (rpos > rawbits) status = -1;
        }
        if (!status && (rpos + 7) / 8 != raw.len) status = -1;
        Py_END_ALLOW_THREADS
    }
    free(syms4);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&parent);
    PyBuffer_Release(&ctxmap);
    PyBuffer_Release(&dec);
    PyBuffer_Release(&out);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.decode: bad buffer sizes or tables"); return NULL; }
    return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"count", py_count, METH_VARARGS, "count(delta, child, parent, counts): symbol counts"},
    {"encode", py_encode, METH_VARARGS, "encode(delta, child, parent, enc, seg, tok, sizes, raw)"},
    {"decode", py_decode, METH_VARARGS, "decode(delta, tok, offsets, raw, parent, ctxmap, dec, seg, out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact32", "Format-6 F32 kernels.", -1, methods};

PyMODINIT_FUNC PyInit__exact32(void) {
    init_tokens();
    return PyModule_Create(&module);
}
