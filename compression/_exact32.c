/* Format-6 streams of 32-bit floats (compression/exact32.py has the format and the numpy twin that
 * writes and reads the same bytes). The Python side picks the Huffman code lengths and hands over the
 * tables; this kernel counts symbols, writes the token segments and the raw plane, and decodes them.
 *
 * Delta mode: z = zigzag(child - parent) (wrapping 32-bit), token < 128 (z below 8, else
 * 8 + 4 (k - 4) + the two bits after z's leading one, k = bit length) and k - 3 raw bits (z's low bits).
 * Plain mode: symbol = bits 22..30 (exponent and top mantissa bit), raw = sign << 22 | low 22 bits.
 *
 * Speed (the target is ZipNN's per core): count() keeps each element's token for encode(), whose bit
 * writers store 8 bytes and advance without branches; the code lengths and the decoder table are built
 * here (the same ones as the Python side's); the decoder reads four segments side by side with a
 * branch-free refill every four symbols, then the raw bits of those segments, without bounds checks
 * wherever a run's loads are proven to stay in the buffer (checked loops near its end). Plain symbols
 * (≈ 3.6 bits on weights) are decoded up to three a lookup of 11 bits where their codes lie within them
 * (a table built from the decoder table: 2.6 symbols a lookup on weights) when no code is longer than 11
 * bits. Delta tables are as wide as the longest code (16 KB for 8 contexts on weights). BMI2 and AVX2
 * variants are picked at run time (_cpu.h); set_portable(True) forces the plain x86-64 one (tests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_cpu.h"

#define LOOKUP 12
#define NTOK_DELTA 128
#define NTOK_PLAIN 512
#define TOK_USED 124 /* tokens 124..127 (bit length 33) never occur */

static inline uint32_t zig(uint32_t c, uint32_t p) {
    int32_t d = (int32_t)(c - p);
    return ((uint32_t)d << 1) ^ (uint32_t)(d >> 31);
}

static uint32_t TOK_BASE[NTOK_DELTA], TOK_NX[NTOK_DELTA];
/* The decoder's view of a symbol as pass 1 stores it (12 bits, BAD_SLOT among them): base z | the raw
 * bits' mask << 32, and the raw bit count; zero for anything but a delta token in use. */
static uint64_t TOK_INFO[4096];
static uint8_t TOK_NX8[4096];

static void init_tokens(void) {
    for (uint32_t t = 0; t < NTOK_DELTA; t++) {
        if (t < 8) { TOK_BASE[t] = t; TOK_NX[t] = 0; continue; }
        uint32_t k = (t - 8) / 4 + 4;
        if (k > 32) { TOK_BASE[t] = 0; TOK_NX[t] = 0; continue; }
        TOK_BASE[t] = (1u << (k - 1)) | (((t - 8) % 4) << (k - 3));
        TOK_NX[t] = k - 3;
    }
    for (uint32_t t = 0; t < TOK_USED; t++) {
        TOK_INFO[t] = TOK_BASE[t] | (uint64_t)((1u << TOK_NX[t]) - 1) << 32;
        TOK_NX8[t] = (uint8_t)TOK_NX[t];
    }
}

/* ------------------------------------------------------------------------------------- bit writer */
/* Branchless: put() ORs bits in, spill() stores 8 bytes and keeps the partial byte (fill <= 7 after it).
 * Between spills at most 57 bits are put. The stores run up to 8 bytes past the bytes written: the
 * Python side sizes the buffers for that. */
typedef struct { uint8_t *p; uint64_t acc; uint32_t fill; } writer;

static inline void put(writer *w, uint64_t v, uint32_t n) {
    w->acc |= v << w->fill;
    w->fill += n;
}

static inline void spill(writer *w) {
    memcpy(w->p, &w->acc, 8);
    w->p += w->fill >> 3;
    w->acc >>= w->fill & 56;
    w->fill &= 7;
}

static inline void flush(writer *w) { /* after a spill: the partial byte (already stored) is kept */
    w->p += w->fill > 0;
    w->acc = 0;
    w->fill = 0;
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

/* --------------------------------------------------------------------------------------- counting */
/* Branch-free token of z and its raw bit count. */
static inline uint32_t token_of(uint32_t z, uint32_t *nx) {
    uint32_t k = 32u - (uint32_t)__builtin_clz(z | 1u);
    uint32_t x = k > 3 ? k - 3 : 0;
    *nx = x;
    return z < 8 ? z : 4 * k - 8 + ((z >> x) & 3);
}

/* Delta: counts per (parent exponent, token) and each element's row of them, exponent * 128 + token, into
 * tokens (u16[n]) for encode. Plain: counts per symbol (tokens unused). */
static PyObject *py_count(PyObject *self, PyObject *args) {
    Py_buffer child, parent, counts, tokens;
    int delta;
    if (!PyArg_ParseTuple(args, "py*y*w*w*", &delta, &child, &parent, &counts, &tokens)) return NULL;
    Py_ssize_t n = child.len / 4;
    const uint32_t *c = child.buf, *p = parent.buf;
    uint32_t *cnt = counts.buf;
    uint16_t *tk = tokens.buf;
    int ok = child.len % 4 == 0 && counts.len == 4 * (delta ? 256 * NTOK_DELTA : NTOK_PLAIN) &&
             (!delta || (parent.len == child.len && tokens.len >= 2 * n));
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        if (delta) {
            for (Py_ssize_t i = 0; i < n; i++) {
                uint32_t nx, t = token_of(zig(c[i], p[i]), &nx), at = ((p[i] >> 23) & 0xFF) * NTOK_DELTA + t;
                tk[i] = (uint16_t)at;
                cnt[at]++;
            }
        } else {
            for (Py_ssize_t i = 0; i < n; i++) cnt[(c[i] >> 22) & 0x1FF]++;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child);
    PyBuffer_Release(&parent);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&tokens);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.count: bad buffer sizes"); return NULL; }
    Py_RETURN_NONE;
}

/* --------------------------------------------------------------------------------------- encoding */
static inline void encode_delta_run(writer *wt, writer *wr, const uint32_t *c, const uint32_t *p,
                                    const uint16_t *tk, const uint32_t *et, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t i = a;
#define ENC_DELTA(I)                                                                                  \
    do {                                                                                              \
        uint32_t at_ = tk[I], nx_ = TOK_NX[at_ & (NTOK_DELTA - 1)], code_ = et[at_];                  \
        put(wt, code_ & 0xFFFF, code_ >> 16);                                                         \
        put(wr, zig(c[I], p[I]) & ((1u << nx_) - 1), nx_);                                            \
        spill(wr);                                                                                    \
    } while (0)
    for (; i + 4 <= b; i += 4) { /* four codes of <= 12 bits between the token writer's spills */
        ENC_DELTA(i);
        ENC_DELTA(i + 1);
        ENC_DELTA(i + 2);
        ENC_DELTA(i + 3);
        spill(wt);
    }
    for (; i < b; i++) {
        ENC_DELTA(i);
        spill(wt);
    }
#undef ENC_DELTA
}

static inline void encode_plain_run(writer *wt, writer *wr, const uint32_t *c, const uint32_t *et, Py_ssize_t a,
                                    Py_ssize_t b) {
    Py_ssize_t i = a;
#define ENC_PLAIN(I)                                                                                  \
    do {                                                                                              \
        uint32_t x_ = c[I], code_ = et[(x_ >> 22) & 0x1FF];                                           \
        put(wt, code_ & 0xFFFF, code_ >> 16);                                                         \
        put(wr, (x_ >> 31) << 22 | (x_ & 0x3FFFFF), 23);                                              \
    } while (0)
    for (; i + 4 <= b; i += 4) { /* 2 x 23 raw bits between the raw writer's spills */
        ENC_PLAIN(i);
        ENC_PLAIN(i + 1);
        spill(wr);
        ENC_PLAIN(i + 2);
        ENC_PLAIN(i + 3);
        spill(wr);
        spill(wt);
    }
    for (; i < b; i++) {
        ENC_PLAIN(i);
        spill(wr);
        spill(wt);
    }
#undef ENC_PLAIN
}

/* enc: delta, u32[256 * 128] per (parent exponent, token); plain, u32[512]: reversed code | length << 16.
 * tokens: delta, the rows count() wrote. Writes the token segments into tok (sizes per segment) and the
 * raw plane into raw; returns (token bytes, raw bytes). */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer child, parent, enc, tok, sizes, raw, tokens;
    int delta;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "py*y*y*nw*w*w*y*", &delta, &child, &parent, &enc, &seg, &tok, &sizes, &raw,
                          &tokens))
        return NULL;
    Py_ssize_t n = child.len / 4, nseg = seg > 0 ? (n + seg - 1) / seg : 0;
    int ok = seg > 0 && child.len % 4 == 0 && (!delta || (parent.len == child.len && tokens.len >= 2 * n)) &&
             enc.len == 4 * (delta ? 256 * NTOK_DELTA : NTOK_PLAIN) && sizes.len == 4 * nseg &&
             tok.len >= 2 * n + 8 * nseg + 16 && raw.len >= 4 * n + 16;
    Py_ssize_t tbytes = 0, rbytes = 0;
    if (ok && delta) { /* rows come from count(): refuse any a caller could have changed */
        const uint16_t *tk = tokens.buf;
        uint16_t hi = 0;
        for (Py_ssize_t i = 0; i < n; i++) hi |= tk[i];
        if (hi >= 256 * NTOK_DELTA) ok = 0;
    }
    if (ok) {
        const uint32_t *c = child.buf, *p = parent.buf, *et = enc.buf;
        const uint16_t *tk = tokens.buf;
        uint32_t *sz = sizes.buf;
        Py_BEGIN_ALLOW_THREADS
        writer wt = {tok.buf, 0, 0}, wr = {raw.buf, 0, 0};
        for (Py_ssize_t s = 0; s < nseg; s++) {
            uint8_t *start = wt.p;
            Py_ssize_t a = s * seg, b = a + seg < n ? a + seg : n;
            if (delta) encode_delta_run(&wt, &wr, c, p, tk, et, a, b);
            else encode_plain_run(&wt, &wr, c, et, a, b);
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
    PyBuffer_Release(&tokens);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.encode: bad buffer sizes or tokens"); return NULL; }
    return Py_BuildValue("nn", tbytes, rbytes);
}

/* --------------------------------------------------------------------------------------- decoding */
/* Decoder table entries (compression.exact32.dec_table): symbol | code length << 12; a slot no code
 * reaches (or, delta, a token >= TOK_USED) holds BAD_SLOT, length 0. OR-ing every entry looked up and
 * testing BAD_SLOT once per run of segments catches them. */
#define BAD_SLOT 0x800u

/* The parent's element i as f32 bits. A BF16 parent (p16: an F32 fine-tune of a BF16 base) is read as it
 * is stored, each element the high half of its f32 (the exact widening compression.payload.as_child_dtype
 * does), so that no widened copy of it is made; parent_from: the parent from element a on. */
static inline __attribute__((always_inline)) uint32_t parent_at(const void *p, Py_ssize_t i, const int p16) {
    return p16 ? (uint32_t)((const uint16_t *)p)[i] << 16 : ((const uint32_t *)p)[i];
}
static inline __attribute__((always_inline)) const void *parent_from(const void *p, Py_ssize_t a, const int p16) {
    return (const uint8_t *)p + a * (p16 ? 2 : 4);
}

/* Symbols of one segment with a check on every refill (segments near the end of the buffer); the table's
 * rows are mask + 1 entries wide. */
static inline __attribute__((always_inline)) uint32_t decode_symbols(
    reader *rt, const uint16_t *dt, uint32_t mask, const uint16_t *cm, const void *p, uint16_t *syms, Py_ssize_t m,
    const int p16) {
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (rt->fill < LOOKUP) refill(rt);
        uint32_t ctx = cm ? cm[(parent_at(p, i, p16) >> 23) & 0xFF] : 0;
        uint32_t e = dt[ctx | ((uint32_t)rt->acc & mask)], ln = e >> 12;
        bad |= e;
        syms[i] = (uint16_t)(e & 0xFFF);
        rt->acc >>= ln;
        rt->fill -= ln;
        rt->consumed += ln;
    }
    return bad & BAD_SLOT;
}

/* The branch-free refill of a segment's bit buffer A (F bits) from Q, in the decoders of four segments side
 * by side: after it F >= 56. */
#define RF(A, F, Q)                                                                                   \
    do {                                                                                              \
        uint64_t v_;                                                                                  \
        memcpy(&v_, Q, 8);                                                                            \
        A |= v_ << F;                                                                                 \
        Q += (63 - F) >> 3;                                                                           \
        F |= 56;                                                                                      \
    } while (0)

/* Four whole segments of seg elements (seg a multiple of 4) side by side, symbols to syms[l * seg + i]:
 * four independent chains, a branch-free refill every four symbols (4 x 12 bits <= 56). The caller has
 * made sure that every 8-byte load stays inside the buffer. consumed[l]: bits each segment used. */
static inline __attribute__((always_inline)) void decode4_fast(
    const uint8_t *const q[4], const uint16_t *dt, uint32_t mask, const uint16_t *cm, const void *p,
    uint16_t *syms, Py_ssize_t seg, int64_t consumed[4], const int p16) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t f0 = 0, f1 = 0, f2 = 0, f3 = 0;
    const uint8_t *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
#define SY(A, F, L, I)                                                                                \
    do {                                                                                              \
        uint32_t ctx_ = cm ? cm[(parent_at(p, (L) * seg + (I), p16) >> 23) & 0xFF] : 0;               \
        uint32_t e_ = dt[ctx_ | ((uint32_t)A & mask)], l_ = e_ >> 12;                                 \
        syms[(L) * seg + (I)] = (uint16_t)(e_ & 0xFFF);                                               \
        A >>= l_;                                                                                     \
        F -= l_;                                                                                      \
    } while (0)
    for (Py_ssize_t i = 0; i < seg; i += 4) {
        RF(a0, f0, q0);
        RF(a1, f1, q1);
        RF(a2, f2, q2);
        RF(a3, f3, q3);
        for (int k = 0; k < 4; k++) {
            SY(a0, f0, 0, i + k);
            SY(a1, f1, 1, i + k);
            SY(a2, f2, 2, i + k);
            SY(a3, f3, 3, i + k);
        }
    }
#undef SY
    consumed[0] = 8 * (q0 - q[0]) - f0;
    consumed[1] = 8 * (q1 - q[1]) - f1;
    consumed[2] = 8 * (q2 - q[2]) - f2;
    consumed[3] = 8 * (q3 - q[3]) - f3;
}

/* Plain: four whole segments side by side, up to three symbols a lookup of 11 bits in the table tt (see
 * build_triple_table; every code <= 11 bits): an entry sym1 | sym2 << 16 | sym3 << 32 | count << 48 |
 * bits << 58 is stored as four u16 at the segment's next symbol and the segment moves on by count: what
 * lies past the symbols stored is written over by the next store (each store lies inside the segment:
 * a round of four lookups is run only where 13 or more symbols are left, a lookup alone where 4 are; the
 * last ones come from dt one at a time). BAD_SLOT reaches the symbols through sym1 only. */
static inline __attribute__((always_inline)) void decode4_triple(
    const uint8_t *const q[4], const uint64_t *tt, const uint16_t *dt, uint16_t *syms, Py_ssize_t seg,
    int64_t consumed[4]) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t f0 = 0, f1 = 0, f2 = 0, f3 = 0;
    const uint8_t *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
    uint16_t *o0 = syms, *o1 = syms + seg, *o2 = syms + 2 * seg, *o3 = syms + 3 * seg;
    uint16_t *const e0 = o1, *const e1 = o2, *const e2 = o3, *const e3 = syms + 4 * seg;
#define TR(A, F, O)                                                                                   \
    do {                                                                                              \
        uint64_t e_ = tt[A & 2047];                                                                   \
        uint32_t l_ = (uint32_t)(e_ >> 58);                                                           \
        memcpy(O, &e_, 8);                                                                            \
        O += (e_ >> 48) & 3;                                                                          \
        A >>= l_;                                                                                     \
        F -= l_;                                                                                      \
    } while (0)
    for (;;) { /* a round of four lookups takes <= 12 symbols and stores up to 3 past them */
        Py_ssize_t r = e0 - o0, r1 = e1 - o1, r2 = e2 - o2, r3 = e3 - o3;
        r = r < r1 ? r : r1;
        r = r < r2 ? r : r2;
        r = r < r3 ? r : r3;
        if (r < 13) break;
        for (Py_ssize_t rounds = (r - 1) / 12; rounds > 0; rounds--) {
            RF(a0, f0, q0);
            RF(a1, f1, q1);
            RF(a2, f2, q2);
            RF(a3, f3, q3);
            for (int k = 0; k < 4; k++) {
                TR(a0, f0, o0);
                TR(a1, f1, o1);
                TR(a2, f2, o2);
                TR(a3, f3, o3);
            }
        }
    }
#define TAIL(A, F, Q, O, E) /* the rest of one segment */                                             \
    do {                                                                                              \
        while (E - O >= 4) {                                                                          \
            RF(A, F, Q);                                                                              \
            TR(A, F, O);                                                                              \
        }                                                                                             \
        while (O < E) {                                                                               \
            RF(A, F, Q);                                                                              \
            uint32_t e_ = dt[A & 4095], l_ = e_ >> 12;                                                \
            *O++ = (uint16_t)(e_ & 0xFFF);                                                            \
            A >>= l_;                                                                                 \
            F -= l_;                                                                                  \
        }                                                                                             \
    } while (0)
    TAIL(a0, f0, q0, o0, e0);
    TAIL(a1, f1, q1, o1, e1);
    TAIL(a2, f2, q2, o2, e2);
    TAIL(a3, f3, q3, o3, e3);
#undef RF
#undef TR
#undef TAIL
    consumed[0] = 8 * (q0 - q[0]) - f0;
    consumed[1] = 8 * (q1 - q[1]) - f1;
    consumed[2] = 8 * (q2 - q[2]) - f2;
    consumed[3] = 8 * (q3 - q[3]) - f3;
}

static inline uint64_t load_slow(const uint8_t *rb, int64_t len, int64_t at) {
    uint64_t w = 0;
    for (int k = 0; k < 8 && at + k < len; k++) w |= (uint64_t)rb[at + k] << (8 * k);
    return w;
}

static inline uint64_t raw_word(const uint8_t *rb, int64_t len, int64_t rpos, int fast) {
    uint64_t w;
    if (fast) memcpy(&w, rb + (rpos >> 3), 8);
    else w = rpos < 8 * len ? load_slow(rb, len, rpos >> 3) : 0;
    return w >> (rpos & 7);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_CLONE 1
/* raw_plain's fast loop, eight elements (23 bytes of the plane) a step: the eight 23-bit fields at byte
 * offsets 0, 2, 5, 8 | 11 + 0, 3, 6, 9 are gathered into 32-bit lanes by one byte shuffle per half, then
 * shifted right by 0, 7, 6, 5 | 4, 3, 2, 1. rb + byte must start an element (23 x 8 bits a step); m8 is a
 * multiple of 8 whose last step's 27 bytes (11 + 16) lie in the plane. */
__attribute__((target("avx2"))) static void raw_plain_avx2(const uint16_t *syms, Py_ssize_t m8, const uint8_t *rb,
                                                           uint32_t *o, uint32_t *bad) {
    const __m256i pick = _mm256_setr_epi8(0, 1, 2, 3, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11,  /* 0, 2, 5, 8 */
                                          0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12); /* 11 + 0, 3, 6, 9 */
    const __m256i shift = _mm256_setr_epi32(0, 7, 6, 5, 4, 3, 2, 1);
    const __m256i low22 = _mm256_set1_epi32(0x3FFFFF), sign = _mm256_set1_epi32(0x400000);
    __m256i acc = _mm256_setzero_si256();
    for (Py_ssize_t i = 0; i < m8; i += 8, rb += 23) {
        __m256i bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)rb)),
                                                _mm_loadu_si128((const __m128i *)(rb + 11)), 1);
        __m256i r = _mm256_srlv_epi32(_mm256_shuffle_epi8(bytes, pick), shift);
        __m256i t = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(syms + i)));
        acc = _mm256_or_si256(acc, t);
        __m256i v = _mm256_or_si256(_mm256_and_si256(r, low22), _mm256_slli_epi32(t, 22));
        v = _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(r, sign), 9));
        _mm256_storeu_si256((__m256i *)(o + i), v);
    }
    __m128i a = _mm_or_si128(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    a = _mm_or_si128(a, _mm_srli_si128(a, 8));
    a = _mm_or_si128(a, _mm_srli_si128(a, 4));
    *bad |= (uint32_t)_mm_cvtsi128_si32(a);
}
#endif

/* The raw-bit loop of deltas in the AVX2 decoders: 1 eight elements a step with AVX-512 VBMI, 0 the scalar
 * loop; set with cpu at import and by set_portable / set_raw_delta (tests). */
static int raw_vec;

#ifdef HAVE_AVX2_CLONE
/* Eight delta symbols t (u32 lanes) as raw_delta_vbmi reads them: a token's base and raw bit count are
 * arithmetic (init_tokens): t < 8: z = t, no raw bits; else nx = (t - 4) >> 2, base = (4 | t & 3) << nx.
 * Tokens are clamped to 123 for the arithmetic only (a BAD_SLOT or unused token is caught through the OR of
 * the symbols), so no element reads more than 29 bits. *at: each field's bit offset from the step's first
 * byte (rpos & 7 + the counts before it); returns the eight counts' sum. */
static inline __attribute__((always_inline, target("avx2"))) uint32_t tokens8(__m256i t, int64_t rpos, __m256i *base,
                                                                              __m256i *mask, __m256i *at) {
    const __m256i k7 = _mm256_set1_epi32(7), k4 = _mm256_set1_epi32(4), one = _mm256_set1_epi32(1);
    const __m256i tc = _mm256_min_epu32(_mm256_and_si256(t, _mm256_set1_epi32(0x7F)), _mm256_set1_epi32(123));
    const __m256i big = _mm256_cmpgt_epi32(tc, k7);
    const __m256i nx = _mm256_and_si256(_mm256_srli_epi32(_mm256_sub_epi32(tc, k4), 2), big);
    const __m256i head = _mm256_or_si256(k4, _mm256_and_si256(tc, _mm256_set1_epi32(3)));
    *base = _mm256_blendv_epi8(tc, _mm256_sllv_epi32(head, nx), big);
    *mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, nx), one);
    __m256i s = _mm256_add_epi32(nx, _mm256_slli_si256(nx, 4)); /* inclusive prefix sum of nx */
    s = _mm256_add_epi32(s, _mm256_slli_si256(s, 8));
    const __m256i hi = _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1);
    s = _mm256_add_epi32(s, _mm256_and_si256(_mm256_permutevar8x32_epi32(s, _mm256_set1_epi32(3)), hi));
    *at = _mm256_add_epi32(_mm256_sub_epi32(s, nx), _mm256_set1_epi32((int)(rpos & 7)));
    return (uint32_t)_mm256_extract_epi32(s, 7);
}

/* Eight elements out: parent (F32, or BF16 as stored) + the unzigzagged base | raw bits r & mask. */
static inline __attribute__((always_inline, target("avx2"))) void delta8_out(__m256i base, __m256i mask, __m256i r,
                                                                             const void *p, Py_ssize_t i, uint32_t *o,
                                                                             const int p16) {
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i z = _mm256_or_si256(base, _mm256_and_si256(r, mask));
    const __m256i d = _mm256_xor_si256(_mm256_srli_epi32(z, 1), _mm256_sub_epi32(_mm256_setzero_si256(),
                                                                                 _mm256_and_si256(z, one)));
    const __m256i par =
        p16 ? _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))), 16)
            : _mm256_loadu_si256((const __m256i *)((const uint32_t *)p + i));
    _mm256_storeu_si256((__m256i *)(o + i), _mm256_add_epi32(par, d));
}

/* The OR of the symbols' lanes. */
static inline __attribute__((always_inline, target("avx2"))) uint32_t or8(__m256i acc) {
    __m128i a = _mm_or_si128(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    a = _mm_or_si128(a, _mm_srli_si128(a, 8));
    a = _mm_or_si128(a, _mm_srli_si128(a, 4));
    return (uint32_t)_mm_cvtsi128_si32(a);
}

/* raw_delta's fast loop, eight elements a step (m8 a multiple of 8), with AVX-512 VBMI: the step's fields lie
 * in its first 40 bytes (7 + 8 x 29 bits), so one 64-byte load holds them, and one byte permutation picks
 * each field's 8 bytes into a 64-bit lane, shifted by its offset's last 3 bits. Every 64-byte load lies in
 * the plane: the caller checks rpos + 29 m + 512 bits. Returns the new rpos. (An AVX2 twin with two gathers
 * for the eight words ran no faster than the scalar loop on this machine's Zen 4: not kept.) */
__attribute__((target("avx2,bmi2,avx512f,avx512bw,avx512vl,avx512vbmi"))) static int64_t raw_delta_vbmi(
    const uint16_t *syms, Py_ssize_t m8, const uint8_t *rb, int64_t rpos, const void *p, uint32_t *o,
    uint32_t *bad, const int p16) {
    const __m256i k7 = _mm256_set1_epi32(7);
    const __m512i rep = _mm512_set_epi64(0x0808080808080808LL, 0, 0x0808080808080808LL, 0, 0x0808080808080808LL,
                                         0, 0x0808080808080808LL, 0); /* byte 0 of each qword to all 8 */
    const __m512i step = _mm512_set1_epi64(0x0706050403020100LL);
    __m256i acc = _mm256_setzero_si256();
    for (Py_ssize_t i = 0; i < m8; i += 8) {
        __m256i t = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(syms + i))), base, mask, at;
        acc = _mm256_or_si256(acc, t);
        uint32_t total = tokens8(t, rpos, &base, &mask, &at);
        __m512i win = _mm512_loadu_si512((const void *)(rb + (rpos >> 3)));
        __m512i by = _mm512_cvtepu32_epi64(_mm256_srli_epi32(at, 3));
        __m512i idx = _mm512_add_epi8(_mm512_shuffle_epi8(by, rep), step);
        __m512i w = _mm512_srlv_epi64(_mm512_permutexvar_epi8(idx, win),
                                      _mm512_cvtepu32_epi64(_mm256_and_si256(at, k7)));
        delta8_out(base, mask, _mm512_cvtepi64_epi32(w), p, i, o, p16);
        rpos += total;
    }
    *bad |= or8(acc);
    return rpos;
}
#endif

/* Element i of raw_delta: its raw bits at rpos (unchecked: the word is known to lie in the plane), the
 * delta it makes with its token, added to the parent's element; returns the next raw position. */
static inline __attribute__((always_inline)) int64_t raw_delta_one(
    const uint16_t *syms, Py_ssize_t i, const uint8_t *rb, int64_t len, int64_t rpos, const void *p,
    uint32_t *o, uint32_t *acc, const int p16, const int unchecked) {
    uint32_t t = syms[i];
    uint64_t info = TOK_INFO[t];
    *acc |= t;
    uint32_t r = (uint32_t)raw_word(rb, len, rpos, unchecked) & (uint32_t)(info >> 32);
    uint32_t z = (uint32_t)info | r;
    o[i] = parent_at(p, i, p16) + ((z >> 1) ^ (0u - (z & 1)));
    return rpos + TOK_NX8[t];
}

/* The raw bits of m delta elements from bit rpos of the raw plane (rb, len bytes): out = parent + the
 * unzigzagged z. Returns the new bit position (past the end means a corrupt plane: checked by caller);
 * ORs every symbol into *bad (BAD_SLOT marks a slot without a code). Runs without bounds checks while 29
 * bits an element cannot reach past the plane. */
static inline __attribute__((always_inline)) int64_t raw_delta(
    const uint16_t *syms, Py_ssize_t m, const uint8_t *rb, int64_t len, int64_t rpos, const void *p,
    uint32_t *o, uint32_t *bad, const int p16, int avx2) {
    Py_ssize_t i = 0;
    uint32_t acc = 0;
    if (rpos + 29 * (int64_t)m + 64 <= 8 * len) {
#ifdef HAVE_AVX2_CLONE
        if (avx2 && raw_vec && rpos + 29 * (int64_t)m + 512 <= 8 * len) {
            i = m & ~(Py_ssize_t)7;
            rpos = raw_delta_vbmi(syms, i, rb, rpos, p, o, &acc, p16);
        }
#else
        (void)avx2;
#endif
        for (; i < m; i++) rpos = raw_delta_one(syms, i, rb, len, rpos, p, o, &acc, p16, 1);
    }
    for (; i < m; i++) rpos = raw_delta_one(syms, i, rb, len, rpos, p, o, &acc, p16, 0);
    *bad |= acc;
    return rpos;
}

static inline __attribute__((always_inline)) int64_t raw_plain(
    const uint16_t *syms, Py_ssize_t m, const uint8_t *rb, int64_t len, int64_t rpos, uint32_t *o,
    uint32_t *bad, int avx2) {
    Py_ssize_t i = 0;
    uint32_t acc = 0;
#ifdef HAVE_AVX2_CLONE
    if (avx2 && rpos % 8 == 0 && rpos + 23 * (int64_t)m + 64 <= 8 * len) {
        i = m & ~(Py_ssize_t)7;
        raw_plain_avx2(syms, i, rb + rpos / 8, o, &acc);
        rpos += 23 * (int64_t)i;
        syms += i, o += i, m -= i, i = 0;
    }
#else
    (void)avx2;
#endif
    if (rpos + 23 * (int64_t)m + 64 <= 8 * len) { /* fixed positions: independent loads */
        for (; i < m; i++) {
            uint32_t r = (uint32_t)raw_word(rb, len, rpos + 23 * (int64_t)i, 1) & 0x7FFFFF, t = syms[i];
            acc |= t;
            o[i] = (r >> 22) << 31 | t << 22 | (r & 0x3FFFFF);
        }
        rpos += 23 * (int64_t)m;
    }
    for (; i < m; i++) {
        uint32_t r = (uint32_t)raw_word(rb, len, rpos, 0) & 0x7FFFFF, t = syms[i];
        acc |= t;
        rpos += 23;
        o[i] = (r >> 22) << 31 | t << 22 | (r & 0x3FFFFF);
    }
    *bad |= acc;
    return rpos;
}

/* Every segment: four whole ones side by side where their loads stay in the body, else one at a time
 * with checked refills; after the symbols of each run, its raw bits. Returns 0, or -1 where a slot had no
 * code, a segment's bits do not end in its last byte, or the raw plane does not end where it should.
 * body: the segments at of[0..nseg] then the raw plane (raw_len bytes) at of[nseg]. */
static inline __attribute__((always_inline)) int decode_core(
    int avx2, int delta, const uint8_t *body, const int64_t *of, Py_ssize_t nseg, const uint8_t *rb, int64_t raw_len,
    const void *p, const uint16_t *cm, const uint16_t *dt, uint32_t mask, const uint64_t *tt, Py_ssize_t seg,
    Py_ssize_t n, uint32_t *o, uint16_t *syms, const int p16) {
    const uint8_t *body_end = rb + raw_len;
    int64_t rpos = 0;
    const Py_ssize_t reach = (12 * seg) / 8 + 16; /* bytes a segment's fast decoder may load past its start */
    Py_ssize_t s = 0;
    while (s < nseg) {
        Py_ssize_t a = s * seg, m;
        int fast4 = seg % 4 == 0 && s + 4 <= nseg && (s + 4) * seg <= n && body + of[s + 3] + reach <= body_end;
        if (fast4) {
            const uint8_t *q[4] = {body + of[s], body + of[s + 1], body + of[s + 2], body + of[s + 3]};
            int64_t used[4];
            if (!delta && tt) decode4_triple(q, tt, dt, syms, seg, used);
            else decode4_fast(q, dt, mask, delta ? cm : NULL, parent_from(p, a, p16), syms, seg, used, p16);
            for (int l = 0; l < 4; l++)
                if ((used[l] + 7) / 8 != of[s + l + 1] - of[s + l]) return -1;
            m = 4 * seg;
            s += 4;
        } else {
            reader rt = {body + of[s], body + of[s + 1], 0, 0, 0};
            m = (a + seg < n ? a + seg : n) - a;
            if (decode_symbols(&rt, dt, mask, delta ? cm : NULL, parent_from(p, a, p16), syms, m, p16)) return -1;
            if ((rt.consumed + 7) / 8 != of[s + 1] - of[s]) return -1;
            s += 1;
        }
        uint32_t bad = 0;
        rpos = delta ? raw_delta(syms, m, rb, raw_len, rpos, parent_from(p, a, p16), o + a, &bad, p16, avx2)
                     : raw_plain(syms, m, rb, raw_len, rpos, o + a, &bad, avx2);
        if (rpos > 8 * raw_len || (bad & BAD_SLOT)) return -1;
    }
    return (rpos + 7) / 8 == raw_len ? 0 : -1;
}

/* One instantiation per (instruction set, mode, segment length the writer uses); p16: a BF16 parent. */
#define DECODERS(SUFFIX, ATTR, AVX2)                                                                   \
    ATTR static int decode_##SUFFIX(int delta, const uint8_t *body, const int64_t *of, Py_ssize_t nseg,       \
                                    const uint8_t *rb, int64_t raw_len, const void *p, const uint16_t *cm,     \
                                    const uint16_t *dt, uint32_t mask, const uint64_t *tt, Py_ssize_t seg,     \
                                    Py_ssize_t n, uint32_t *o, uint16_t *sy, int p16) {                        \
        if (!delta && seg == 4096)                                                                             \
            return decode_core(AVX2, 0, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, 4096, n, o, sy, 0);       \
        if (!delta) return decode_core(AVX2, 0, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, seg, n, o, sy, 0); \
        if (p16 && seg == 4096)                                                                                \
            return decode_core(AVX2, 1, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, 4096, n, o, sy, 1);       \
        if (p16) return decode_core(AVX2, 1, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, seg, n, o, sy, 1);   \
        if (seg == 4096)                                                                                       \
            return decode_core(AVX2, 1, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, 4096, n, o, sy, 0);       \
        return decode_core(AVX2, 1, body, of, nseg, rb, raw_len, p, cm, dt, mask, tt, seg, n, o, sy, 0);            \
    }
DECODERS(portable, , 0)
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BMI2_CLONE 1 /* shrx and bzhi for the variable shifts and masks, picked at run time */
DECODERS(bmi2, __attribute__((target("bmi2"))), 0)
DECODERS(avx2, __attribute__((target("avx2,bmi2"))), 1) /* and the plain raw plane eight elements a step */
#endif
static cpu_features cpu; /* set at import from the CPU; set_portable() clears it (tests) */

static uint16_t REV12[1 << LOOKUP]; /* 12-bit reversal, filled at import */

/* The decoder table of compression.exact32.dec_table (the same entries) from code lengths u8[k * ntok], its
 * rows 2^width wide (width <= 12: the lookup takes the next width bits, width >= every code's length): per
 * context the canonical codes (by length, then symbol) fill their 2^(width - length) slots, LSB-first;
 * symbols from `used` on and slots no code reaches hold BAD_SLOT. dec_table is this table at width 12
 * (its slot x is this one's x mod 2^width). Returns 0 if some context's lengths are longer than width bits
 * or no prefix code. */
static int build_dec_table(const uint8_t *len, Py_ssize_t k, int ntok, int used, uint32_t width, uint16_t *dt) {
    for (Py_ssize_t i = 0; i < k << width; i++) dt[i] = BAD_SLOT;
    for (Py_ssize_t c = 0; c < k; c++) {
        const uint8_t *lc = len + c * ntok;
        uint16_t *row = dt + (c << width);
        uint32_t next = 0;
        for (int t = 0; t < ntok; t++) if (lc[t] > width) return 0;
        for (uint32_t l = 1; l <= width; l++)
            for (int t = 0; t < ntok; t++) {
                if (lc[t] != l) continue;
                uint32_t span = 1u << (width - l);
                if (next + span > (1u << width)) return 0;
                uint16_t e = t < used ? (uint16_t)(t | l << 12) : (uint16_t)BAD_SLOT;
                for (uint32_t j = 0; j < span; j++) row[REV12[(next + j) << (LOOKUP - width)]] = e;
                next += span;
            }
    }
    return 1;
}

/* The triple table of a plain decoder table dt whose codes are all <= 11 bits (decode4_triple): per 11
 * bits, the symbol they start with and the one or two after it whose codes also lie within them. */
static void build_triple_table(const uint16_t *dt, uint64_t *tt) {
    for (uint32_t x = 0; x < 2048; x++) {
        uint32_t e[3], used = 0, n = 0;
        while (n < 3) {
            uint32_t en = dt[x >> used], ln = en >> 12;
            if (n > 0 && ((en & BAD_SLOT) || used + ln > 11)) break;
            e[n++] = en;
            used += ln;
            if (en & BAD_SLOT) break;
        }
        uint64_t t = (uint64_t)n << 48 | (uint64_t)used << 58;
        for (uint32_t k = 0; k < n; k++) t |= (uint64_t)(e[k] & 0xFFF) << (16 * k);
        tt[x] = t;
    }
}

/* decode(delta, body, offsets, raw_at, parent, ctxmap, lengths, seg, n, bf16_parent=False, out=None) -> (status,
 * bytes of n u32): body holds the token segments at offsets[0..nseg] and the raw plane from raw_at to its end;
 * lengths is u8[contexts * symbols]; parent n u32, or with bf16_parent n BF16 (u16) read as their exact f32.
 * out: a writable buffer of exactly 4n bytes to decode into (then returned in place of new bytes; on a corrupt
 * stream its bytes are undefined). Status 0, -1 for a corrupt stream, -2 for lengths that are no prefix code
 * (then the bytes are None). */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer body, offs, parent, ctxmap, lengths, dest = {0};
    int delta, p16 = 0;
    Py_ssize_t seg, raw_at, n;
    PyObject *into = Py_None;
    if (!PyArg_ParseTuple(args, "py*y*ny*y*y*nn|pO", &delta, &body, &offs, &raw_at, &parent, &ctxmap, &lengths, &seg,
                          &n, &p16, &into))
        return NULL;
    if (into != Py_None && PyObject_GetBuffer(into, &dest, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&body);
        PyBuffer_Release(&offs);
        PyBuffer_Release(&parent);
        PyBuffer_Release(&ctxmap);
        PyBuffer_Release(&lengths);
        return NULL;
    }
    const int ntok = delta ? NTOK_DELTA : NTOK_PLAIN;
    Py_ssize_t nseg = seg > 0 && n >= 0 ? (n + seg - 1) / seg : 0;
    Py_ssize_t nctx = lengths.len / ntok;
    int ok = seg > 0 && n >= 0 && n <= PY_SSIZE_T_MAX / 4 && offs.len == 8 * (nseg + 1) && nctx > 0 &&
             lengths.len == nctx * ntok && raw_at >= 0 && raw_at <= body.len &&
             (!delta || (parent.len == (p16 ? 2 : 4) * n && ctxmap.len == 256)) && (delta || !p16) &&
             (into == Py_None || dest.len == 4 * n);
    /* Delta tables are as wide as the longest code (at most 12 bits; on weights <= 10): 8 contexts of 2^10
     * entries stay in L1 where 2^12 would not. Plain keeps 12 bits (its triple table is built from them). */
    uint32_t width = LOOKUP;
    if (ok && delta) {
        uint8_t longest = 1;
        for (Py_ssize_t i = 0; i < lengths.len; i++)
            if (((const uint8_t *)lengths.buf)[i] > longest) longest = ((const uint8_t *)lengths.buf)[i];
        width = longest < LOOKUP ? longest : LOOKUP;
    }
    const uint8_t *cmb = ctxmap.buf;
    uint16_t cm[256];
    if (ok && delta)
        for (int e = 0; e < 256; e++) {
            if (cmb[e] >= nctx) ok = 0;
            cm[e] = (uint16_t)(cmb[e] << width);
        }
    if (ok && !delta && nctx != 1) ok = 0;
    const int64_t *of = offs.buf;
    if (ok && (of[0] != 0 || of[nseg] != raw_at)) ok = 0;
    for (Py_ssize_t s = 0; ok && s < nseg; s++) if (of[s + 1] < of[s]) ok = 0;
    int status = 0;
    PyObject *out = NULL;
    uint16_t *syms = NULL, *dt = NULL;
    uint64_t *tt = NULL;
    int triple = !delta && seg >= 1024 && n >= 4 * seg; /* a table of 2048 entries pays from here on */
    for (Py_ssize_t i = 0; triple && i < lengths.len; i++) triple = ((const uint8_t *)lengths.buf)[i] <= 11;
    if (ok) {
        syms = malloc(sizeof(uint16_t) * 4 * (size_t)seg);
        dt = malloc(sizeof(uint16_t) * ((size_t)nctx << width));
        tt = triple ? malloc(sizeof(uint64_t) * 2048) : NULL;
        if (into == Py_None) out = PyBytes_FromStringAndSize(NULL, 4 * n);
        else Py_INCREF(out = into);
        if (!syms || !dt || !out || (triple && !tt)) ok = 0;
    }
    if (ok) {
        const uint8_t *b = body.buf;
        uint32_t *o = into == Py_None ? (uint32_t *)PyBytes_AS_STRING(out) : (uint32_t *)dest.buf;
        Py_BEGIN_ALLOW_THREADS
        const uint8_t *rb = b + raw_at;
        const int64_t rl = body.len - raw_at;
        const uint32_t mask = (1u << width) - 1;
        if (!build_dec_table(lengths.buf, nctx, ntok, delta ? TOK_USED : NTOK_PLAIN, width, dt)) status = -2;
        else {
            if (tt) build_triple_table(dt, tt);
#ifdef HAVE_BMI2_CLONE
            if (cpu.avx2) status = decode_avx2(delta, b, of, nseg, rb, rl, parent.buf, cm, dt, mask, tt, seg, n, o, syms, p16);
            else if (cpu.bmi2) status = decode_bmi2(delta, b, of, nseg, rb, rl, parent.buf, cm, dt, mask, tt, seg, n, o, syms, p16);
            else
#endif
                status = decode_portable(delta, b, of, nseg, rb, rl, parent.buf, cm, dt, mask, tt, seg, n, o, syms, p16);
        }
        Py_END_ALLOW_THREADS
    }
    free(syms);
    free(dt);
    free(tt);
    PyBuffer_Release(&body);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&parent);
    PyBuffer_Release(&ctxmap);
    PyBuffer_Release(&lengths);
    if (dest.obj) PyBuffer_Release(&dest);
    if (!ok) {
        Py_XDECREF(out);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_exact32.decode: bad buffer sizes or tables");
        return NULL;
    }
    if (status) {
        Py_DECREF(out);
        return Py_BuildValue("(iO)", status, Py_None);
    }
    return Py_BuildValue("(iN)", status, out);
}

/* set_portable(flag): use (or not) the plain x86-64 decoder where the CPU has BMI2 (for tests); returns
 * the instruction set now used, "bmi2" or "portable". */
/* The best raw-bit loop of deltas that cpu allows, capped at cap (1 VBMI, 0 scalar). */
static int pick_raw_vec(int cap) {
    int best = 0;
#ifdef HAVE_AVX2_CLONE
    if (cpu.avx2) {
        __builtin_cpu_init();
        best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
    }
#endif
    return best < cap ? best : cap;
}

static PyObject *py_set_portable(PyObject *self, PyObject *args) {
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    cpu = cpu_pick(flag);
    raw_vec = pick_raw_vec(1);
    return PyUnicode_FromString(cpu.avx2 ? "avx2" : cpu.bmi2 ? "bmi2" : "portable");
}

/* set_raw_delta(level): the raw-bit loop of delta decodes, at most level (1 "vbmi", 0 "scalar") and what the
 * CPU and set_portable allow (for tests: both write the same bytes); returns its name. */
static PyObject *py_set_raw_delta(PyObject *self, PyObject *args) {
    int level;
    if (!PyArg_ParseTuple(args, "i", &level)) return NULL;
    raw_vec = pick_raw_vec(level);
    return PyUnicode_FromString(raw_vec ? "vbmi" : "scalar");
}

/* ---------------------------------------------------------------------------------- code lengths */
/* compression.huffman.limited_lengths, the same merges and the same cuts: nodes ordered by (weight, id),
 * leaves numbered 0..m-1 in symbol order, merged nodes m, m+1, ...; keys are distinct, so a binary heap pops
 * them in the order Python's heapq does. Then depths cut to max_len and the prefix code restored by
 * lengthening the longest code shorter than max_len, the rarest (then lowest) one, one bit at a time. */
#define MAX_SYMS NTOK_PLAIN

static inline int key_less(const int64_t *w, int a, int b) { return w[a] < w[b] || (w[a] == w[b] && a < b); }

static void heap_push(int *heap, int *size, const int64_t *w, int node) {
    int i = (*size)++;
    while (i > 0 && key_less(w, node, heap[(i - 1) / 2])) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
    heap[i] = node;
}

static int heap_pop(int *heap, int *size, const int64_t *w) {
    int top = heap[0], last = heap[--(*size)], i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *size) break;
        if (c + 1 < *size && key_less(w, heap[c + 1], heap[c])) c++;
        if (!key_less(w, heap[c], last)) break;
        heap[i] = heap[c];
        i = c;
    }
    if (*size > 0) heap[i] = last;
    return top;
}

static void limited_lengths(const int64_t *cnt, int nsym, int64_t floor, int max_len, uint8_t *len) {
    int64_t w[2 * MAX_SYMS];
    int sym[MAX_SYMS], up[2 * MAX_SYMS], depth[2 * MAX_SYMS], heap[2 * MAX_SYMS], m = 0, size = 0;
    for (int t = 0; t < nsym; t++) {
        len[t] = 0;
        if (cnt[t]) { sym[m] = t; w[m] = cnt[t] > floor ? cnt[t] : floor; m++; }
    }
    if (m == 1) len[sym[0]] = 1;
    if (m <= 1) return;
    for (int j = 0; j < m; j++) heap_push(heap, &size, w, j);
    for (int node = m; node < 2 * m - 1; node++) {
        int a = heap_pop(heap, &size, w), b = heap_pop(heap, &size, w);
        up[a] = up[b] = node;
        w[node] = w[a] + w[b];
        heap_push(heap, &size, w, node);
    }
    depth[2 * m - 2] = 0;
    for (int i = 2 * m - 3; i >= 0; i--) depth[i] = depth[up[i]] + 1;
    int64_t excess = -((int64_t)1 << max_len);
    for (int j = 0; j < m; j++) { if (depth[j] > max_len) depth[j] = max_len; excess += (int64_t)1 << (max_len - depth[j]); }
    while (excess > 0) {
        int top = 0, best = -1;
        for (int j = 0; j < m; j++) if (depth[j] < max_len && depth[j] > top) top = depth[j];
        for (int j = 0; j < m; j++)
            if (depth[j] == top && (best < 0 || w[j] < w[best])) best = j;
        excess -= (int64_t)1 << (max_len - top - 1);
        depth[best]++;
    }
    for (int j = 0; j < m; j++) len[sym[j]] = (uint8_t)depth[j];
}

/* lengths(counts i64[k * nsym], nsym, floor_shift, max_len, out u8[k * nsym]): code lengths of each of k
 * contexts, each used count first raised to (its context's total >> floor_shift, at least 1). */
static PyObject *py_lengths(PyObject *self, PyObject *args) {
    Py_buffer counts, out;
    int nsym, shift, max_len;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &counts, &nsym, &shift, &max_len, &out)) return NULL;
    int ok = nsym > 0 && nsym <= MAX_SYMS && shift >= 0 && shift < 63 && max_len > 0 && max_len <= 30 &&
             counts.len % (8 * nsym) == 0 && out.len * 8 == counts.len;
    const int64_t *c = counts.buf;
    for (Py_ssize_t i = 0; ok && i < counts.len / 8; i++) ok = c[i] >= 0 && c[i] < ((int64_t)1 << 52);
    if (ok) {
        for (Py_ssize_t k = 0; k < out.len / nsym; k++) {
            const int64_t *ck = c + k * nsym;
            int64_t total = 0;
            for (int t = 0; t < nsym; t++) total += ck[t];
            int64_t floor = total >> shift;
            limited_lengths(ck, nsym, floor > 1 ? floor : 1, max_len, (uint8_t *)out.buf + k * nsym);
        }
    }
    PyBuffer_Release(&counts);
    PyBuffer_Release(&out);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact32.lengths: bad arguments"); return NULL; }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"count", py_count, METH_VARARGS, "count(delta, child, parent, counts, tokens): symbol counts"},
    {"encode", py_encode, METH_VARARGS, "encode(delta, child, parent, enc, seg, tok, sizes, raw, tokens)"},
    {"decode", py_decode, METH_VARARGS, "decode(delta, body, offsets, raw_at, parent, ctxmap, lengths, seg, n, bf16_parent=False, out=None)"},
    {"lengths", py_lengths, METH_VARARGS, "lengths(counts, nsym, floor_shift, max_len, out): code lengths"},
    {"set_raw_delta", py_set_raw_delta, METH_VARARGS, "set_raw_delta(level): the raw-bit loop of deltas (tests)"},
    {"set_portable", py_set_portable, METH_VARARGS, "set_portable(flag): the portable decoder, or the CPU's best (avx2, bmi2)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact32", "Format-6 F32 kernels.", -1, methods};

PyMODINIT_FUNC PyInit__exact32(void) {
    init_tokens();
    for (uint32_t i = 0; i < (1u << LOOKUP); i++) {
        uint32_t r = 0;
        for (int b = 0; b < LOOKUP; b++) r |= ((i >> b) & 1u) << (LOOKUP - 1 - b);
        REV12[i] = (uint16_t)r;
    }
    cpu = cpu_pick(0);
    raw_vec = pick_raw_vec(1);
    return PyModule_Create(&module);
}
