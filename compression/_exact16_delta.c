/* Format-5 exact coder kernels: canonical Huffman over delta tokens, extra bits inline, segments.
 *
 * Specified in docs/FORMAT.md ("Exact tensor payloads", format 5) and implemented twice: here and in
 * numpy (compression/exact16_delta.py, the fallback when this extension did not build); tests/test_codecs_16_delta.py
 * checks both write and read the same bytes. Elements are 16-bit (BF16/F16). Per element: z = zigzag of
 * the wrapping difference child − parent; its token and extra bit count (token(), ZZ); the context is
 * ctxmap[the parent's exponent]; the bitstream gets the token's bit-reversed canonical code (LSB-first)
 * followed by the extra bits (z's low bits).
 * A tensor is cut in segments of `seg` elements, each its own byte-aligned bitstream, so that the
 * decoder runs eight segments interleaved (eight independent dependency chains) and numpy runs all of
 * them in lockstep. Bits are read with one unaligned 64-bit load per element (>= 57 valid bits; an
 * element takes at most 11 + 16 = 27), read in place from the payload (loads near its end are bounded),
 * written through a 64-bit accumulator flushed whole bytes. The hot loops have a BMI2 clone (shrx, bzhi,
 * rorx; the decoder's in inline assembly) picked at import where the CPU has BMI2, so the module still
 * runs on x86-64-v2; set_portable(True) forces the plain code (tests check both give the same bytes).
 * encode_stream and decode_stream do a whole stream in one call (counts, context map, codes, crc32 by
 * PCLMULQDQ folding); the smaller entry points serve the threaded and checked paths of exact16_delta.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cpu.h"
#include "_half.h"

static cpu_features cpu; /* BMI2 coders and the PCLMULQDQ crc32 where the CPU has them; set at import */

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

/* Token | extra bit count << 8 of a wrapping difference (compression.exact16_delta.ZTAB, computed). */
static inline uint32_t token(uint16_t z) {
    uint32_t zz = (uint16_t)((z << 1) ^ (uint16_t)((int16_t)z >> 15));
    uint32_t k = 32 - (uint32_t)__builtin_clz(zz | 1), big = 0u - (uint32_t)(zz >= 8); /* masks: z is */
    uint32_t nx = (k - 3) & big;                                                  /* unpredictable */
    uint32_t tok = ((4 * k - 8 + ((zz >> nx) & 3)) & big) | (zz & ~big);
    return tok | nx << 8;
}

static inline uint16_t load16(const uint8_t *p, Py_ssize_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }

/* ---------------------------------------------------------------------------------------- crc32
 * zlib's crc32 (the gzip polynomial, reflected), the stream checksum: folded with carry-less multiplies
 * (PCLMULQDQ, Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction"; the
 * constants are zlib/Chromium's crc32_simd.c; 256-bit VPCLMULQDQ where the CPU has it, twice as fast) where
 * the CPU has them, else a byte table. */
static uint32_t CRC_TABLE[256];

static uint32_t crc32_bytes(uint32_t crc, const uint8_t *b, size_t n) { /* crc: the inverted state */
    while (n--) crc = CRC_TABLE[(crc ^ *b++) & 255] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_CLMUL_CLONE 1
#define K3K4 _mm_set_epi64x(0x00ccaa009e, 0x01751997d0) /* 128-bit fold: x^96, x^160 mod P (reflected) */

/* The last 16-byte blocks (n a multiple of 16) folded into the 128-bit state x1, then 128 bits to 64, and
 * Barrett reduction to 32. */
__attribute__((target("pclmul,sse4.1"))) static inline uint32_t crc32_finish(__m128i x1, const uint8_t *buf,
                                                                             size_t n) {
    const __m128i k3k4 = K3K4, k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    for (; n >= 16; buf += 16, n -= 16)
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), _mm_loadu_si128((const __m128i *)buf)),
                           _mm_clmulepi64_si128(x1, k3k4, 0x00));
    const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5k0, 0x00), x2);
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, low32), poly, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x1, x2), 1);
}

/* The 128-bit parts of the lanes, in stream order, folded into the first. */
__attribute__((target("pclmul,sse4.1"))) static inline __m128i crc32_join(__m128i x1, const __m128i *parts, int k) {
    const __m128i k3k4 = K3K4;
    for (int i = 0; i < k; i++)
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), parts[i]),
                           _mm_clmulepi64_si128(x1, k3k4, 0x00));
    return x1;
}

/* n >= 64, a multiple of 16; crc: the inverted state. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_clmul(uint32_t crc, const uint8_t *buf, size_t n) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    __m128i x1 = _mm_loadu_si128((const __m128i *)buf), x2 = _mm_loadu_si128((const __m128i *)(buf + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(buf + 32)), x4 = _mm_loadu_si128((const __m128i *)(buf + 48));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    buf += 64, n -= 64;
    for (; n >= 64; buf += 64, n -= 64) { /* four lanes of 128 bits, each folded 512 bits forward */
        __m128i x5 = _mm_clmulepi64_si128(x1, k1k2, 0x00), x6 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        __m128i x7 = _mm_clmulepi64_si128(x3, k1k2, 0x00), x8 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k1k2, 0x11), x2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        x3 = _mm_clmulepi64_si128(x3, k1k2, 0x11), x4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i *)buf));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i *)(buf + 16)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i *)(buf + 32)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i *)(buf + 48)));
    }
    const __m128i parts[3] = {x2, x3, x4};
    return crc32_finish(crc32_join(x1, parts, 3), buf, n);
}

/* The same with VPCLMULQDQ on 256 bits (twice the bytes a multiply): n >= 128, a multiple of 16; four lanes
 * of 256 bits, each 128-bit half folded 1024 bits forward (x^992, x^1056 mod P, reflected). */
__attribute__((target("avx2,vpclmulqdq,pclmul,sse4.1"))) static uint32_t crc32_vclmul(uint32_t crc, const uint8_t *buf,
                                                                                     size_t n) {
    const __m256i k = _mm256_set_epi64x(0x014a7fe880, 0x01e88ef372, 0x014a7fe880, 0x01e88ef372);
    __m256i y0 = _mm256_loadu_si256((const __m256i *)buf), y1 = _mm256_loadu_si256((const __m256i *)(buf + 32));
    __m256i y2 = _mm256_loadu_si256((const __m256i *)(buf + 64)), y3 = _mm256_loadu_si256((const __m256i *)(buf + 96));
    y0 = _mm256_xor_si256(y0, _mm256_setr_epi32((int)crc, 0, 0, 0, 0, 0, 0, 0));
    buf += 128, n -= 128;
#define FOLD(Y, AT)                                                                                             \
    Y = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(Y, k, 0x00), _mm256_clmulepi64_epi128(Y, k, 0x11)), \
                         _mm256_loadu_si256((const __m256i *)(buf + (AT))))
    for (; n >= 128; buf += 128, n -= 128) {
        FOLD(y0, 0);
        FOLD(y1, 32);
        FOLD(y2, 64);
        FOLD(y3, 96);
    }
#undef FOLD
    const __m128i parts[7] = {_mm256_extracti128_si256(y0, 1), _mm256_castsi256_si128(y1), _mm256_extracti128_si256(y1, 1),
                              _mm256_castsi256_si128(y2), _mm256_extracti128_si256(y2, 1), _mm256_castsi256_si128(y3),
                              _mm256_extracti128_si256(y3, 1)};
    return crc32_finish(crc32_join(_mm256_castsi256_si128(y0), parts, 7), buf, n);
}
#endif

static uint32_t crc32_any(uint32_t crc, const uint8_t *b, size_t n) {
    crc = ~crc;
#ifdef HAVE_CLMUL_CLONE
    if (cpu.clmul && n >= 64) {
        size_t m = n & ~(size_t)15;
        crc = cpu.vclmul && m >= 256 ? crc32_vclmul(crc, b, m) : crc32_clmul(crc, b, m);
        b += m, n -= m;
    }
#endif
    return ~crc32_bytes(crc, b, n);
}

/* crc32(data, value=0): zlib.crc32(data, value), faster. */
static PyObject *py_crc32(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &value)) return NULL;
    uint32_t crc;
    Py_BEGIN_ALLOW_THREADS
    crc = crc32_any(value, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

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
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.count: bad arguments"); return NULL; }
    Py_RETURN_NONE;
}

/* A token's extra bit count and base z (compression.exact16_delta.TOK_EXTRA, TOK_BASE): z itself below 8, else
 * bit length kt = (t - 8) / 4 + 4 with the two bits after the leading one; the escape (63): z's 16 bits. */
#define TOK_KT(t) ((uint32_t)((t) - 8) / 4 + 4)
#define TOK_NX(t) ((t) == 63 ? 16u : (t) < 8 ? 0u : TOK_KT(t) - 3)
#define TOK_BASE(t) \
    ((t) == 63 ? 0u : (t) < 8 ? (uint32_t)(t) : (1u << (TOK_KT(t) - 1)) | (uint32_t)(((t) - 8) % 4) << (TOK_KT(t) - 3))

/* The encoder's tables. ZZ[d] (d the wrapping difference) = token | zigzag(d) << 16; an encoder row per
 * parent exponent: per token a u64 of its bits (bit-reversed canonical code, bits 0-10) | code length << 48 |
 * bits it writes (code + extra bits) << 56; for a token without a code of its own the escape's code with all
 * 16 bits of the zigzag as extra bits. An element's bits are then bzhi((zigzag << length) | entry, bits
 * written): the code, then the zigzag's low bits (its extra bits), the rest cut away. */
static uint32_t ZZ[1 << 16]; /* filled at import */

static uint32_t zz_entry(uint32_t d) {
    uint32_t zz = (uint16_t)((d << 1) ^ (uint16_t)((int16_t)d >> 15));
    uint32_t k = 32 - (uint32_t)__builtin_clz(zz | 1);
    uint32_t tok = zz < 8 ? zz : 4 * k - 8 + ((zz >> (k - 3)) & 3);
    return tok | zz << 16;
}

/* enc (u32 code | length << 16 | escaped << 24 per (row, token), compression.exact16_delta.enc_table) to
 * encoder rows (u64[rows * 64]). */
static void encoder_rows(const uint32_t *enc, Py_ssize_t rows, uint64_t *out) {
    for (Py_ssize_t i = 0; i < rows * NTOK; i++) {
        uint32_t e = enc[i], t = (uint32_t)(i % NTOK), len = (e >> 16) & 255;
        uint32_t nx = e >> 24 ? 16 : TOK_NX(t);
        out[i] = (uint64_t)(e & 0xFFFF) | (uint64_t)len << 48 | (uint64_t)(len + nx) << 56;
    }
}

/* One element: its bits and (in *nbits) their count. */
static inline __attribute__((always_inline)) uint64_t element(
    const uint8_t *c, const uint8_t *p, Py_ssize_t i, const int shift, const uint64_t *const *rowp, uint32_t *nbits,
    const int bmi) {
    uint16_t cv = load16(c, i), pv = load16(p, i);
    uint32_t t = ZZ[(uint16_t)(cv - pv)];
    uint64_t e = rowp[(uint32_t)pv >> shift][t & 255], zz = t >> 16, v;
    uint32_t total = (uint32_t)(e >> 56);
    *nbits = total;
#if defined(__x86_64__) && defined(__GNUC__)
    if (bmi) {
        uint64_t sh = e >> 48;
        __asm__("shlx %2, %1, %0" : "=r"(v) : "r"(zz), "r"(sh)); /* by length (the count's low 6 bits) */
        v |= e;
        __asm__("bzhi %2, %1, %0" : "=r"(v) : "r"(v), "r"((uint64_t)total));
        return v;
    }
#endif
    v = (zz << ((e >> 48) & 63)) | e;
    return v & ((1ull << total) - 1);
}

/* The segments of one tensor; shift is a constant in each instantiation. */
static inline __attribute__((always_inline)) Py_ssize_t encode_core(
    const uint8_t *c, const uint8_t *p, Py_ssize_t n, const int shift, const uint64_t *const *rowp, Py_ssize_t seg,
    uint8_t *o, uint32_t *sz, const int bmi) {
    uint8_t *begin = o;
    for (Py_ssize_t s = 0; s * seg < n; s++) {
        Py_ssize_t a = s * seg, b = a + seg < n ? a + seg : n, i = a;
        uint8_t *start = o;
        uint64_t acc = 0;
        uint32_t cnt = 0;
        for (; i + 2 <= b; i += 2) { /* two elements (<= 54 bits) join the accumulator (< 8) at once */
            uint32_t n0, n1;
            uint64_t v0 = element(c, p, i, shift, rowp, &n0, bmi), v1 = element(c, p, i + 1, shift, rowp, &n1, bmi);
            acc |= (v0 | v1 << n0) << cnt;
            cnt += n0 + n1;
            memcpy(o, &acc, 8);
            o += cnt >> 3; acc >>= cnt & ~7u; cnt &= 7;
        }
        for (; i < b; i++) {
            uint32_t n0;
            uint64_t v0 = element(c, p, i, shift, rowp, &n0, bmi);
            acc |= v0 << cnt;
            cnt += n0;
            memcpy(o, &acc, 8);
            o += cnt >> 3; acc >>= cnt & ~7u; cnt &= 7;
        }
        if (cnt) { memcpy(o, &acc, 8); o++; }
        sz[s] = (uint32_t)(o - start);
    }
    return o - begin;
}

#define ENCODERS(SUFFIX, ATTR, BMI) \
    ATTR static Py_ssize_t encode_##SUFFIX(const uint8_t *c, const uint8_t *p, Py_ssize_t n, int shift, \
                                           const uint64_t *const *rowp, Py_ssize_t seg, uint8_t *o, uint32_t *sz) { \
        if (shift == 7) return encode_core(c, p, n, 7, rowp, seg, o, sz, BMI); \
        return encode_core(c, p, n, 10, rowp, seg, o, sz, BMI); \
    }
ENCODERS(portable, , 0)
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BMI2_CLONE 1
ENCODERS(bmi2, __attribute__((target("bmi2"))), 1)
#endif

/* Codes n elements into o (4 * n + 8 bytes), segment sizes into sz; enc is u32[256 * 64] per (parent
 * exponent, token), as compression.exact16_delta.enc_table. Returns the bytes written, -1 if out of memory. */
static Py_ssize_t encode_body(const uint8_t *c, const uint8_t *p, Py_ssize_t n, int shift, const uint32_t *enc,
                              Py_ssize_t seg, uint8_t *o, uint32_t *sz) {
    uint64_t *rows = malloc(256 * NTOK * sizeof(uint64_t));
    if (!rows) return -1;
    encoder_rows(enc, 256, rows);
    const uint64_t *rowp[512]; /* per parent >> shift (sign and exponent): its exponent's row */
    for (int v = 0; v < 512; v++) rowp[v] = rows + (v & (0x7FFF >> shift)) * NTOK;
    Py_ssize_t total;
#ifdef HAVE_BMI2_CLONE
    if (cpu.bmi2) total = encode_bmi2(c, p, n, shift, rowp, seg, o, sz);
    else
#endif
        total = encode_portable(c, p, n, shift, rowp, seg, o, sz);
    free(rows);
    return total;
}

/* encode(child, parent, shift, ztab, enc, seg, out, sizes): writes the segments back to back into out
 * (byte-aligned each), their byte sizes into sizes; returns the total bytes. enc is u32[256 * 64] per
 * (parent exponent, token) (a token without a code of its own is escaped: the escape token's code, then
 * z's 16 bits). out needs 4 * n + 8 bytes. (ztab, compression.exact16_delta.ZTAB, is checked, not read.) */
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
        Py_BEGIN_ALLOW_THREADS
        total = encode_body(child.buf, parent.buf, n, shift, enc.buf, seg, out.buf, sizes.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&child); PyBuffer_Release(&parent); PyBuffer_Release(&ztab); PyBuffer_Release(&enc);
    PyBuffer_Release(&out); PyBuffer_Release(&sizes);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.encode: bad arguments"); return NULL; }
    if (total < 0) return PyErr_NoMemory();
    return PyLong_FromSsize_t(total);
}

/* ---------------------------------------------------------------------------------------- decode
 * The decoder's own table (built here from the code lengths, not compression.exact16_delta.dec_table): per
 * (context, next 11 bits) a u32 of bits taken (code + extra bits, bits 0-7) | a shift (bits 8-13) | SLOW
 * (bit 14) | a 16-bit value A (bits 16-31). The bit after a code of at most 10 bits is in the lookup, and it
 * is z's low bit (the sign of the difference) whenever the token has extra bits, so the entry knows the
 * sign: the difference is A ^ (the extra bits but the first) = A ^ (low `bits taken` bits >> shift), with
 * A = (base z >> 1) ^ (sign ? 0xFFFF : 0) (base z has zeros where the extra bits go). A token without extra
 * bits has A = its difference and a shift that leaves nothing; an 11-bit code with extra bits is SLOW:
 * A = base z, the shift leaves all the extra bits, and z is unzigzagged the long way (rare: such codes
 * are the rarest tokens). Unreached slots take 11 bits and give 0. */
#define SLOW 0x4000u
#define FILLER (LOOKUP | LOOKUP << 8)
static uint16_t REV11[1 << LOOKUP]; /* 11-bit reversal, filled at import */

static inline uint32_t unzig(uint32_t z) { return (z >> 1) ^ (0u - (z & 1)); }

/* dt[k << 11] from lengths[k * 64]; returns 0 if some context's lengths are not a prefix code. */
static int decode_table(const uint8_t *lengths, Py_ssize_t k, const uint8_t *used, uint32_t *dt) {
    for (Py_ssize_t ctx = 0; ctx < k; ctx++) {
        const uint8_t *len = lengths + ctx * NTOK;
        uint32_t *row = dt + (ctx << LOOKUP), kraft = 0, at[LOOKUP + 2] = {0};
        for (int t = 0; t < NTOK; t++) {
            if (len[t] > LOOKUP) return 0;
            kraft += len[t] ? 1u << (LOOKUP - len[t]) : 0;
            at[len[t] + 1]++;
        }
        if (kraft > (1u << LOOKUP)) return 0;
        if (!used[ctx]) continue; /* no exponent maps to it: never read */
        /* the used tokens in canonical order (by length, then token), with their bit-reversed (LSB-first)
         * codes and entries (sign bit 0, 1) */
        uint32_t code[NTOK], e0[NTOK], e1[NTOK], start = 0;
        uint8_t order[NTOK];
        for (int l = 1; l <= LOOKUP + 1; l++) at[l] += at[l - 1]; /* at[l]: first of length l (0: unused) */
        for (int t = 0; t < NTOK; t++) order[at[len[t]]++] = (uint8_t)t;
        uint32_t from = at[0]; /* at[l] is now the end of length l */
        for (uint32_t i = from; i < at[LOOKUP]; i++) {
            uint32_t t = order[i], l = len[t], nx = TOK_NX(t), base = TOK_BASE(t);
            code[i] = REV11[start], start += 1u << (LOOKUP - l);
            if (nx == 0) e0[i] = e1[i] = l | l << 8 | (unzig(base) & 0xFFFF) << 16;
            else if (l < LOOKUP) {
                e0[i] = (l + nx) | (l + 1) << 8 | (base >> 1) << 16; /* the sign bit after the code: 0 */
                e1[i] = e0[i] ^ 0xFFFF0000u;                         /* 1 */
            } else e0[i] = e1[i] = (l + nx) | l << 8 | SLOW | base << 16;
        }
        /* The table of the first L bits, doubled L = 1..11: a code of l bits and the sign bit after it
         * take their two slots when L = l + 1 (an 11-bit code its one slot when L = 11); copies carry
         * them (and the filler of slots no code reaches) up. */
        row[0] = FILLER;
        uint32_t i = from;
        for (uint32_t L = 1; L <= LOOKUP; L++) {
            memcpy(row + (1u << (L - 1)), row, 4u << (L - 1));
            for (; i < at[L == LOOKUP ? LOOKUP : L - 1]; i++) {
                uint32_t l = len[order[i]];
                row[code[i]] = e0[i];
                if (l < LOOKUP) row[code[i] | 1u << l] = e1[i];
            }
        }
    }
    return 1;
}

/* Bytes a run of B elements of one segment may read past its position: 27 bits each, one 8-byte load. */
#define BLOCK 64
#ifndef GROUP
#define GROUP 8
#endif
#define REACH (BLOCK * 27 / 8 + 9)

static inline __attribute__((always_inline)) uint64_t load_tail(const uint8_t *src, uint64_t at, uint64_t len) {
    uint64_t v = 0;
    if (at < len) memcpy(&v, src + at, len - at < 8 ? len - at : 8);
    return v;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Six segments side by side, elements j0..j1, in one block of BMI2 assembly: the steps of decode_run in
 * 20 instructions an element, all state in registers (bit addresses a0..a5 = (src + byte) * 8 + bit).
 * Segment k's elements are at p/o + 2 * (k * SEG + j). Instantiated for the writer's segment lengths. */
#define ASM_STEP(k) \
    "movzwl " #k "*%c[s](%[p]), %k[at]\n\t" \
    "shrl %[sh], %k[at]\n\t" \
    "movq (%[rowp],%[at],8), %[e]\n\t"          /* the context's table */ \
    "movq %[a" #k "], %[at]\n\t" \
    "shrq $3, %[at]\n\t"                        /* byte address */ \
    "movl %k[a" #k "], %k[bit]\n\t" \
    "andl $7, %k[bit]\n\t"                      /* bit in it */ \
    "shrx %[bit], (%[at]), %[w]\n\t"            /* the next >= 57 bits */ \
    "movl %k[w], %k[at]\n\t" \
    "andl $2047, %k[at]\n\t" \
    "movl (%[e],%[at],4), %k[e]\n\t"            /* the entry of the next 11 bits */ \
    "movzbl %b[e], %k[bit]\n\t" \
    "addq %[bit], %[a" #k "]\n\t"               /* bits taken */ \
    "bzhi %[e], %[w], %[w]\n\t" \
    "rorx $8, %[e], %[bit]\n\t" \
    "shrx %[bit], %[w], %[w]\n\t"               /* x: the extra bits but the first */ \
    "rorx $16, %[e], %[at]\n\t" \
    "xorl %k[w], %k[at]\n\t"                    /* A ^ x */ \
    "testl $0x4000, %k[e]\n\t" \
    "jnz .Lslow" #k "_%=\n" \
    ".Lback" #k "_%=:\n\t" \
    "addw " #k "*%c[s](%[p]), %w[at]\n\t"       /* + parent */ \
    "movw %w[at], " #k "*%c[s](%[o])\n\t"
#define ASM_SLOW(k) \
    ".Lslow" #k "_%=:\n\t"                      /* z = base + x, unzigzagged */ \
    "movl %k[e], %k[at]\n\t" \
    "shrl $16, %k[at]\n\t" \
    "addl %k[w], %k[at]\n\t" \
    "movl %k[at], %k[bit]\n\t" \
    "andl $1, %k[bit]\n\t" \
    "negl %k[bit]\n\t" \
    "shrl $1, %k[at]\n\t" \
    "xorl %k[bit], %k[at]\n\t" \
    "jmp .Lback" #k "_%=\n\t"
#define ASM8(SEG, SH) \
    static inline __attribute__((always_inline)) void run8_##SEG##_##SH( \
        uint64_t *pos, const uint8_t *src, const uint8_t *p, uint8_t *o, Py_ssize_t j0, Py_ssize_t j1, \
        const uint32_t *const *rowp) { \
        if (j1 <= j0) return; \
        const uint64_t base = 8 * (uint64_t)(uintptr_t)src; \
        uint64_t a0 = pos[0] + base, a1 = pos[1] + base, a2 = pos[2] + base, a3 = pos[3] + base; \
        uint64_t a4 = pos[4] + base, a5 = pos[5] + base, a6 = pos[6] + base, a7 = pos[7] + base, at, bit, w, e; \
        const uint8_t *pj = p + 2 * j0, *pend = p + 2 * j1; \
        uint8_t *oj = o + 2 * j0; \
        __asm__ volatile( \
            ".p2align 4\n" \
            ".Lloop_%=:\n\t" \
            ASM_STEP(0) ASM_STEP(1) ASM_STEP(2) ASM_STEP(3) ASM_STEP(4) ASM_STEP(5) ASM_STEP(6) ASM_STEP(7) \
            "addq $2, %[p]\n\t" \
            "addq $2, %[o]\n\t" \
            "cmpq %[p], %[pend]\n\t" \
            "jne .Lloop_%=\n\t" \
            "jmp .Ldone_%=\n\t" \
            ASM_SLOW(0) ASM_SLOW(1) ASM_SLOW(2) ASM_SLOW(3) ASM_SLOW(4) ASM_SLOW(5) ASM_SLOW(6) ASM_SLOW(7) \
            ".Ldone_%=:\n\t" \
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [a4] "+r"(a4), [a5] "+r"(a5), \
              [a6] "+r"(a6), [a7] "+r"(a7), [p] "+r"(pj), [o] "+r"(oj), [at] "=&r"(at), [bit] "=&r"(bit), \
              [w] "=&r"(w), [e] "=&r"(e) \
            : [pend] "m"(pend), [rowp] "r"(rowp), [sh] "i"(SH), [s] "i"(2 * SEG) \
            : "cc", "memory"); \
        pos[0] = a0 - base, pos[1] = a1 - base, pos[2] = a2 - base, pos[3] = a3 - base; \
        pos[4] = a4 - base, pos[5] = a5 - base, pos[6] = a6 - base, pos[7] = a7 - base; \
    }
ASM8(4096, 7)
ASM8(256, 7)
ASM8(4096, 10)
ASM8(256, 10)
ASM8(64, 7) /* BLOCK: the F16 path's bf16 blocks (decode_group) */
#endif

/* Elements j0..j1 of G segments side by side (segment k's elements at p/o + 2 * (k * seg + j)); `tail`:
 * loads bounded by len (the last bytes of the body). */
static inline __attribute__((always_inline)) void decode_run(
    const uint8_t *src, uint64_t len, uint64_t *pos, const int G, const uint8_t *p, uint8_t *o, Py_ssize_t j0,
    Py_ssize_t j1, const Py_ssize_t seg, const int shift, const uint32_t *const *rowp, const int tail, const int bmi) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (bmi && !tail && G == 8 && (seg == 4096 || seg == 256 || (seg == BLOCK && shift == 7))) {
        if (seg == BLOCK) run8_64_7(pos, src, p, o, j0, j1, rowp);
        else if (seg == 4096 && shift == 7) run8_4096_7(pos, src, p, o, j0, j1, rowp);
        else if (seg == 256 && shift == 7) run8_256_7(pos, src, p, o, j0, j1, rowp);
        else if (seg == 4096) run8_4096_10(pos, src, p, o, j0, j1, rowp);
        else run8_256_10(pos, src, p, o, j0, j1, rowp);
        return;
    }
    if (bmi && !tail && G >= 4) { /* the same steps in the fewest instructions (three-operand BMI2) */
        const uint64_t base = 8 * (uint64_t)(uintptr_t)src; /* bit addresses: (src + byte) * 8 + bit */
        uint64_t a0 = pos[0] + base, a1 = pos[1] + base, a2 = pos[2] + base, a3 = pos[3] + base;
        uint64_t a4 = G > 4 ? pos[4] + base : 0, a5 = G > 4 ? pos[5] + base : 0;
        uint64_t a6 = G > 6 ? pos[6] + base : 0, a7 = G > 6 ? pos[7] + base : 0;
#define STEP_BMI2(k, ak) do { \
            uint64_t at, bit, w, e; \
            const uint8_t *pk = p + 2 * ((k) * seg + j); \
            __asm__("movzwl %[pv], %k[at]\n\t" \
                    "shrl %[sh], %k[at]\n\t" \
                    "movq (%[rowp],%[at],8), %[e]\n\t"   /* the context's table */ \
                    "movq %[pos], %[at]\n\t" \
                    "shrq $3, %[at]\n\t"                 /* byte address */ \
                    "movl %k[pos], %k[bit]\n\t" \
                    "andl $7, %k[bit]\n\t"               /* bit in it */ \
                    "shrx %[bit], (%[at]), %[w]\n\t"     /* the next >= 57 bits */ \
                    "movl %k[w], %k[at]\n\t" \
                    "andl $2047, %k[at]\n\t" \
                    "movl (%[e],%[at],4), %k[e]\n\t"     /* the entry of the next 11 bits */ \
                    "movzbl %b[e], %k[bit]\n\t" \
                    "addq %[bit], %[pos]\n\t"            /* bits taken */ \
                    "bzhi %[e], %[w], %[w]\n\t" \
                    "rorx $8, %[e], %[bit]\n\t" \
                    "shrx %[bit], %[w], %[w]\n\t"        /* x: the extra bits but the first */ \
                    "rorx $16, %[e], %[at]\n\t" \
                    "xorl %k[w], %k[at]"                 /* A ^ x in the low 16 bits */ \
                    : [pos] "+r"(ak), [at] "=&r"(at), [bit] "=&r"(bit), [w] "=&r"(w), [e] "=&r"(e) \
                    : [pv] "m"(*(const uint16_t *)pk), [sh] "i"(shift), [rowp] "r"(rowp)); \
            uint32_t d = (uint32_t)at; \
            if (__builtin_expect((e & SLOW) != 0, 0)) d = unzig((uint32_t)(e >> 16) + (uint32_t)w); \
            uint16_t pv, v; \
            memcpy(&pv, pk, 2); \
            v = (uint16_t)(pv + d); \
            memcpy(o + 2 * ((k) * seg + j), &v, 2); \
        } while (0)
        for (Py_ssize_t j = j0; j < j1; j++) {
            STEP_BMI2(0, a0); STEP_BMI2(1, a1); STEP_BMI2(2, a2); STEP_BMI2(3, a3);
            if (G > 4) { STEP_BMI2(4, a4); STEP_BMI2(5, a5); }
            if (G > 6) { STEP_BMI2(6, a6); STEP_BMI2(7, a7); }
        }
#undef STEP_BMI2
        pos[0] = a0 - base, pos[1] = a1 - base, pos[2] = a2 - base, pos[3] = a3 - base;
        if (G > 4) pos[4] = a4 - base, pos[5] = a5 - base;
        if (G > 6) pos[6] = a6 - base, pos[7] = a7 - base;
        return;
    }
#endif
    for (Py_ssize_t j = j0; j < j1; j++) {
#pragma GCC unroll 8
        for (int k = 0; k < G; k++) {
            uint16_t pv;
            memcpy(&pv, p + 2 * (k * seg + j), 2);
            const uint32_t *r = rowp[(uint32_t)pv >> shift];
            uint64_t at = pos[k] >> 3;
            uint64_t w = (tail ? load_tail(src, at, len) : load64(src + at)) >> (pos[k] & 7);
            uint32_t e = r[w & ((1u << LOOKUP) - 1)];
            pos[k] += e & 255;
            uint32_t x = (uint32_t)((w & ((1ull << (e & 255)) - 1)) >> ((e >> 8) & 63));
            uint32_t d = (e >> 16) ^ x;
            if (__builtin_expect((e & SLOW) != 0, 0)) d = unzig((e >> 16) + x);
            uint16_t v = (uint16_t)(pv + d);
            memcpy(o + 2 * (k * seg + j), &v, 2);
        }
    }
}

/* A narrowed F16 tensor (compression.narrow) is a BF16 stream against the bf16 of its F16 parent (rounded to
 * nearest even, as compression.payload.as_child_dtype casts it), widened back to F16 after decoding. In F16
 * mode (f16 != 0) the decoder does both casts itself, a block at a time in L1: each block of the F16 parent
 * cast into a bf16 block, decoded into a bf16 block, widened into the F16 result; no bf16 copy of the
 * parent or the result is ever made. The casts are compression/_half.h's, those of compression._narrow
 * (vec: its AVX2 + F16C loops), so the bytes are the two-step route's. A NaN in the parent is reported
 * (ANY_NAN): that route casts it with torch instead, and the caller takes it. */
#define ANY_NAN 2

/* G whole segments from segment s (or one segment of `count` elements when G == 1); bit 0 set if a
 * segment's bits do not end in its last byte, ANY_NAN in F16 mode if the parent holds a NaN. */
static inline __attribute__((always_inline)) int decode_group(
    const uint8_t *src, uint64_t len, const int64_t *of, Py_ssize_t s, const int G, Py_ssize_t count,
    const uint8_t *p, uint8_t *o, const Py_ssize_t seg, const int shift, const uint32_t *const *rowp,
    const int bmi, const int f16, const int vec) {
    uint64_t pos[8];
    uint16_t pb[8 * BLOCK], ob[8 * BLOCK]; /* F16 mode: segment k's block at pb/ob + k * BLOCK */
    uint32_t nan = 0;
    for (int k = 0; k < G; k++) pos[k] = 8 * (uint64_t)of[s + k];
    p += 2 * s * seg;
    o += 2 * s * seg;
    for (Py_ssize_t j = 0; j < count; j += BLOCK) {
        Py_ssize_t j1 = j + BLOCK < count ? j + BLOCK : count;
        int near_end = 0;
        for (int k = 0; k < G; k++) near_end |= (pos[k] >> 3) + REACH > len;
        if (f16) {
            const uint8_t *bp = (const uint8_t *)pb;
            for (int k = 0; k < G; k++) {
                const uint16_t *from = (const uint16_t *)(p + 2 * (k * seg + j));
                nan |= vec ? rne_vec(from, pb + k * BLOCK, j1 - j) : rne_scalar(from, pb + k * BLOCK, j1 - j);
            }
            if (__builtin_expect(near_end, 0))
                decode_run(src, len, pos, G, bp, (uint8_t *)ob, 0, j1 - j, BLOCK, shift, rowp, 1, bmi);
            else decode_run(src, len, pos, G, bp, (uint8_t *)ob, 0, j1 - j, BLOCK, shift, rowp, 0, bmi);
            for (int k = 0; k < G; k++) {
                uint16_t *to = (uint16_t *)(o + 2 * (k * seg + j));
                if (vec) widen_vec(ob + k * BLOCK, to, j1 - j);
                else widen_scalar(ob + k * BLOCK, to, j1 - j);
            }
        } else if (__builtin_expect(near_end, 0)) decode_run(src, len, pos, G, p, o, j, j1, seg, shift, rowp, 1, bmi);
        else decode_run(src, len, pos, G, p, o, j, j1, seg, shift, rowp, 0, bmi);
    }
    int bad = nan ? ANY_NAN : 0;
    for (int k = 0; k < G; k++) bad |= (pos[k] + 7) / 8 != (uint64_t)of[s + k + 1];
    return bad;
}

/* All segments: eight, then four, two, one whole ones side by side, then the short last one. */
static inline __attribute__((always_inline)) int decode_core(
    const uint8_t *src, uint64_t len, const int64_t *of, Py_ssize_t nseg, Py_ssize_t n, const uint8_t *p,
    const int shift, const uint32_t *const *rowp, const Py_ssize_t seg, uint8_t *o, const int bmi, const int f16,
    const int vec) {
    Py_ssize_t whole = n / seg, s = 0;
    int bad = 0;
#define GROUP_OF(G, COUNT) decode_group(src, len, of, s, G, COUNT, p, o, seg, shift, rowp, bmi, f16, vec)
    for (; s + GROUP <= whole; s += GROUP) bad |= GROUP_OF(GROUP, seg);
    if (s + 4 <= whole) { bad |= GROUP_OF(4, seg); s += 4; }
    if (s + 2 <= whole) { bad |= GROUP_OF(2, seg); s += 2; }
    if (s < whole) { bad |= GROUP_OF(1, seg); s += 1; }
    if (s < nseg) bad |= GROUP_OF(1, n - s * seg);
#undef GROUP_OF
    return bad;
}

/* One instantiation per (instruction set, shift, segment length the writer uses, F16 mode: BF16 streams
 * only). BMI2 (shrx, bzhi: the compiler finds them in the plain shifts and masks above) is picked at run
 * time, so that the module still runs on x86-64-v2; so are the F16 mode's vector casts (vec). */
#define DECODERS(SUFFIX, ATTR, BMI) \
    ATTR static int decode_##SUFFIX(const uint8_t *src, uint64_t len, const int64_t *of, Py_ssize_t nseg, \
                                    Py_ssize_t n, const uint8_t *p, int shift, const uint32_t *const *rowp, \
                                    Py_ssize_t seg, uint8_t *o, int f16, int vec) { \
        if (f16 && seg == 4096) return decode_core(src, len, of, nseg, n, p, 7, rowp, 4096, o, BMI, 1, vec); \
        if (f16 && seg == 256) return decode_core(src, len, of, nseg, n, p, 7, rowp, 256, o, BMI, 1, vec); \
        if (f16) return decode_core(src, len, of, nseg, n, p, 7, rowp, seg, o, BMI, 1, vec); \
        if (shift == 7 && seg == 4096) return decode_core(src, len, of, nseg, n, p, 7, rowp, 4096, o, BMI, 0, 0); \
        if (shift == 7 && seg == 256) return decode_core(src, len, of, nseg, n, p, 7, rowp, 256, o, BMI, 0, 0); \
        if (shift == 10 && seg == 4096) return decode_core(src, len, of, nseg, n, p, 10, rowp, 4096, o, BMI, 0, 0); \
        if (shift == 10 && seg == 256) return decode_core(src, len, of, nseg, n, p, 10, rowp, 256, o, BMI, 0, 0); \
        if (shift == 7) return decode_core(src, len, of, nseg, n, p, 7, rowp, seg, o, BMI, 0, 0); \
        return decode_core(src, len, of, nseg, n, p, 10, rowp, seg, o, BMI, 0, 0); \
    }
DECODERS(portable, , 0)
#ifdef HAVE_BMI2_CLONE
DECODERS(bmi2, __attribute__((target("bmi2"))), 1)
#endif

/* decode(src, offsets, parent, shift, ctxmap, lengths, seg, out): decodes n = len(out) / 2 elements; src
 * is the body (the segments back to back, at offsets[0..nseg]; read only within it). Returns 0, -1 if a
 * segment's bits do not end in its last byte, -2 if the lengths are not a prefix code. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer srcb, offs, parent, ctxmap, lens, out;
    int shift;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "y*y*y*iy*y*nw*", &srcb, &offs, &parent, &shift, &ctxmap, &lens, &seg, &out))
        return NULL;
    Py_ssize_t n = out.len / 2, nseg = seg > 0 ? (n + seg - 1) / seg : 0, k = lens.len / NTOK;
    int ok = seg > 0 && parent.len == out.len && lens.len % NTOK == 0 && k > 0 && ctx_ok(&ctxmap, k) &&
             offs.len == (nseg + 1) * 8 && (shift == 7 || shift == 10), result = 0;
    if (ok) {
        const int64_t *of = offs.buf;
        for (Py_ssize_t s = 0; s <= nseg; s++)
            if (of[s] < 0 || (s && of[s] < of[s - 1]) || of[s] > srcb.len) ok = 0;
    }
    uint32_t *dt = ok ? malloc((size_t)k * (4 << LOOKUP)) : NULL;
    if (ok && !dt) { PyBuffer_Release(&srcb); PyBuffer_Release(&offs); PyBuffer_Release(&parent);
                     PyBuffer_Release(&ctxmap); PyBuffer_Release(&lens); PyBuffer_Release(&out);
                     return PyErr_NoMemory(); }
    if (ok) {
        const uint8_t *cm = ctxmap.buf;
        uint8_t used[256] = {0};
        for (int e = 0; e < 256; e++) used[cm[e]] = 1;
        Py_BEGIN_ALLOW_THREADS
        if (!decode_table(lens.buf, k, used, dt)) result = -2;
        else {
            const uint32_t *rowp[512]; /* per parent >> shift (sign and exponent): its context's table */
            for (int v = 0; v < 512; v++) rowp[v] = dt + ((uint32_t)cm[v & (0x7FFF >> shift)] << LOOKUP);
            int bad;
#ifdef HAVE_BMI2_CLONE
            if (cpu.bmi2)
                bad = decode_bmi2(srcb.buf, (uint64_t)srcb.len, offs.buf, nseg, n, parent.buf, shift, rowp, seg,
                                  out.buf, 0, 0);
            else
#endif
                bad = decode_portable(srcb.buf, (uint64_t)srcb.len, offs.buf, nseg, n, parent.buf, shift, rowp, seg,
                                      out.buf, 0, 0);
            result = bad ? -1 : 0;
        }
        Py_END_ALLOW_THREADS
    }
    free(dt);
    PyBuffer_Release(&srcb); PyBuffer_Release(&offs); PyBuffer_Release(&parent); PyBuffer_Release(&ctxmap);
    PyBuffer_Release(&lens); PyBuffer_Release(&out);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.decode: bad arguments"); return NULL; }
    return PyLong_FromLong(result);
}

/* decode_stream(buf, offset, n, parent, shift, f16=False, out=None) -> (the n elements' bytes, or out, a writable
 * buffer of exactly 2n bytes decoded into; offset past the stream), or
 * an int (nonzero) where the stream is corrupt: compression.exact16_delta.decode_stream then reads it again the
 * long way, which names the fault. The same checks, in one call. f16: a BF16 stream (shift 7) of a narrowed
 * F16 tensor, parent its F16 parent, the result in F16 (decode_group's F16 mode); 10 if the parent holds a
 * NaN (then the caller casts the parent with torch and decodes in two steps). */
static PyObject *py_decode_stream(PyObject *self, PyObject *args) {
    Py_buffer buf, parent, dest = {0};
    Py_ssize_t offset, n;
    int shift, f16 = 0;
    PyObject *into = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*i|pO", &buf, &offset, &n, &parent, &shift, &f16, &into)) return NULL;
    if (into != Py_None && PyObject_GetBuffer(into, &dest, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&parent);
        return NULL;
    }
    const uint8_t *b = buf.buf;
    Py_ssize_t len = buf.len, start = offset, fault = 0;
    uint32_t seg = 0, k = 0, crc = 0;
    int64_t *of = NULL;
    uint32_t *dt = NULL;
    PyObject *out = NULL;
    if (n < 0 || parent.len != 2 * n || offset < 0 || (shift != 7 && shift != 10) || (f16 && shift != 7) ||
        (into != Py_None && dest.len != 2 * n))
        fault = 1;
    else if (offset + 5 + 256 > len) fault = 2;
    else {
        memcpy(&seg, b + offset, 4);
        k = b[offset + 4];
        if (seg == 0 || seg > 65536 || k == 0) fault = 3;
    }
    Py_ssize_t nseg = fault ? 0 : (n + seg - 1) / seg;
    const uint8_t *cm = b + offset + 5, *lengths = cm + 256;
    if (!fault) {
        offset += 5 + 256;
        for (int e = 0; e < 256; e++) if (cm[e] >= k) fault = 4;
        if (offset + (Py_ssize_t)k * NTOK + 4 * nseg > len) fault = 4;
    }
    if (!fault) {
        offset += (Py_ssize_t)k * NTOK;
        of = malloc((nseg + 1) * sizeof(int64_t));
        dt = malloc((size_t)k * (4 << LOOKUP));
        if (!of || !dt) fault = 5;
    }
    if (!fault) {
        of[0] = 0;
        for (Py_ssize_t s = 0; s < nseg; s++) {
            uint32_t sz;
            memcpy(&sz, b + offset + 4 * s, 4);
            of[s + 1] = of[s] + sz;
        }
        offset += 4 * nseg;
        if (offset + of[nseg] + 4 > len) fault = 6;
    }
    if (!fault && into == Py_None) out = PyBytes_FromStringAndSize(NULL, 2 * n);
    else if (!fault) Py_INCREF(out = into);
    if (!fault && !out) fault = 5;
    if (!fault) {
        const uint8_t *src = b + offset;
        Py_ssize_t end = offset + of[nseg];
        uint8_t used[256] = {0};
        for (int e = 0; e < 256; e++) used[cm[e]] = 1;
        uint8_t *o = into == Py_None ? (uint8_t *)PyBytes_AS_STRING(out) : (uint8_t *)dest.buf;
        Py_BEGIN_ALLOW_THREADS
        memcpy(&crc, b + end, 4);
        if (crc32_any(0, b + start, (size_t)(end - start)) != crc) fault = 7;
        else if (!decode_table(lengths, k, used, dt)) fault = 8;
        else {
            const uint32_t *rowp[512];
            for (int v = 0; v < 512; v++) rowp[v] = dt + ((uint32_t)cm[v & (0x7FFF >> shift)] << LOOKUP);
            int bad, vec = cpu.avx2 && has_vec(); /* the F16 mode's casts: AVX2 + F16C unless portable */
#ifdef HAVE_BMI2_CLONE
            if (cpu.bmi2) bad = decode_bmi2(src, (uint64_t)of[nseg], of, nseg, n, parent.buf, shift, rowp, seg, o, f16, vec);
            else
#endif
                bad = decode_portable(src, (uint64_t)of[nseg], of, nseg, n, parent.buf, shift, rowp, seg, o, f16, vec);
            if (bad & 1) fault = 9;
            else if (bad & ANY_NAN) fault = 10;
        }
        Py_END_ALLOW_THREADS
        offset = end + 4;
    }
    free(of); free(dt);
    PyBuffer_Release(&buf); PyBuffer_Release(&parent);
    if (dest.obj) PyBuffer_Release(&dest);
    if (fault) { Py_XDECREF(out); return PyLong_FromSsize_t(fault); }
    return Py_BuildValue("(Nn)", out, offset);
}

/* set_portable(flag): use (or not) the plain x86-64 coders and the byte-table crc32 where the CPU has BMI2
 * and PCLMULQDQ (for tests); returns the instruction set now used, "bmi2" or "portable". */
static PyObject *py_set_portable(PyObject *self, PyObject *args) {
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    cpu = cpu_pick(flag);
    return PyUnicode_FromString(cpu.bmi2 ? "bmi2" : "portable");
}

/* Code lengths of one context, as compression.exact16_delta.code_lengths computes them (the same merges:
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
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.lengths: bad arguments (counts < 2^32 each)"); return NULL; }
    Py_RETURN_NONE;
}

/* tables(lengths u8[k * 64], tok_extra i64[64], tok_base i64[64], enc u32[k * 64], dec u32[k << 11]): the
 * canonical codes of compression.exact16_delta.enc_table and dec_table (same entries, same filler), built here
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
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.tables: bad arguments or not a prefix code"); return NULL; }
    Py_RETURN_NONE;
}

/* The canonical codes of one context's lengths (compression.exact16_delta.enc_table): per token its bit-reversed
 * code | length << 16, a token without a code the escape's | 1 << 24; 0 if the lengths are no prefix code. */
static int context_codes(const uint8_t *len, uint32_t *erow) {
    uint32_t start = 0; /* next free slot, MSB-first, in 11-bit space */
    for (int t = 0; t < NTOK; t++) erow[t] = 0;
    for (uint32_t l = 1; l <= LOOKUP; l++)
        for (int t = 0; t < NTOK; t++) {
            if (len[t] != l) continue;
            if (start + (1u << (LOOKUP - l)) > (1u << LOOKUP)) return 0;
            erow[t] = REV11[start] | l << 16;
            start += 1u << (LOOKUP - l);
        }
    if (len[63])
        for (int t = 0; t < NTOK; t++) if (!len[t]) erow[t] = erow[63] | 1u << 24;
    return 1;
}

#define CONTEXTS 8 /* compression.exact16_delta.CONTEXTS */

/* encode_stream(child, parent, shift, stride, seg, prefix) -> prefix + the whole format-5 stream (head,
 * context map, code lengths, segment sizes, segments, crc32), as compression.exact16_delta.encode_stream writes
 * it with one thread: the same counts (every stride-th element), context map, codes and bytes. */
static PyObject *py_encode_stream(PyObject *self, PyObject *args) {
    Py_buffer child, parent, prefix;
    int shift;
    Py_ssize_t stride, seg;
    if (!PyArg_ParseTuple(args, "y*y*inny*", &child, &parent, &shift, &stride, &seg, &prefix)) return NULL;
    Py_ssize_t n = child.len / 2, nseg = seg > 0 ? (n + seg - 1) / seg : 0;
    int ok = seg > 0 && seg <= 65536 && stride >= 1 && parent.len == child.len && child.len % 2 == 0 &&
             (shift == 7 || shift == 10) && n / stride < 0xFFFFFFFFll;
    Py_ssize_t head = 5 + 256 + CONTEXTS * NTOK, at = prefix.len + head + 4 * nseg;
    PyObject *res = ok ? PyBytes_FromStringAndSize(NULL, at + 4 * n + 8 + 4) : NULL;
    uint32_t *hist = res ? calloc(256 * NTOK, 4) : NULL;
    uint64_t *rows = hist ? malloc(CONTEXTS * NTOK * 8) : NULL;
    uint32_t *sizes = rows ? malloc(nseg * 4 + 4) : NULL;
    Py_ssize_t total = 0;
    if (ok && sizes) {
        const uint8_t *c = child.buf, *p = parent.buf;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(res), *s = o + prefix.len;
        memcpy(o, prefix.buf, prefix.len);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i += stride) { /* counts per (parent exponent, token) */
            uint16_t cv = load16(c, i), pv = load16(p, i);
            hist[((uint32_t)(pv & 0x7FFF) >> shift) * NTOK + (ZZ[(uint16_t)(cv - pv)] & 255)]++;
        }
        uint64_t per_exp[256], all = 0, above = 0;
        for (int e = 0; e < 256; e++) {
            per_exp[e] = 0;
            for (int t = 0; t < NTOK; t++) per_exp[e] += hist[e * NTOK + t];
            all += per_exp[e];
        }
        int top = 0; /* the highest exponent at or above which lie >= 1/1000 of the elements */
        uint64_t need = all / 1000 > 1 ? all / 1000 : 1;
        if (all)
            for (top = 255; top > 0; top--) if ((above += per_exp[top]) >= need) break;
        uint8_t *ctxmap = s + 5, *lengths = ctxmap + 256;
        uint32_t counts[CONTEXTS][NTOK];
        memset(counts, 0, sizeof counts);
        for (int e = 0; e < 256; e++) {
            int ctx = top - e < 0 ? 0 : top - e > CONTEXTS - 1 ? CONTEXTS - 1 : top - e;
            ctxmap[e] = (uint8_t)ctx;
            for (int t = 0; t < NTOK; t++) counts[ctx][t] += hist[e * NTOK + t];
        }
        uint32_t enc[CONTEXTS * NTOK];
        for (int ctx = 0; ctx < CONTEXTS; ctx++) {
            if (stride > 1) counts[ctx][63] += 1; /* a sample: the tokens it missed are escaped */
            context_lengths(counts[ctx], lengths + ctx * NTOK);
            context_codes(lengths + ctx * NTOK, enc + ctx * NTOK); /* a prefix code by construction */
        }
        encoder_rows(enc, CONTEXTS, rows);
        const uint64_t *rowp[512]; /* per parent >> shift (sign and exponent): its context's row */
        for (int v = 0; v < 512; v++) rowp[v] = rows + ctxmap[v & (0x7FFF >> shift)] * NTOK;
        uint32_t seg32 = (uint32_t)seg;
        memcpy(s, &seg32, 4);
        s[4] = CONTEXTS;
#ifdef HAVE_BMI2_CLONE
        if (cpu.bmi2) total = encode_bmi2(c, p, n, shift, rowp, seg, o + at, sizes);
        else
#endif
            total = encode_portable(c, p, n, shift, rowp, seg, o + at, sizes);
        memcpy(s + head, sizes, 4 * nseg); /* little-endian hosts only (as the numpy path's "<u4") */
        uint32_t crc = crc32_any(0, s, (size_t)(head + 4 * nseg + total));
        memcpy(o + at + total, &crc, 4);
        Py_END_ALLOW_THREADS
    }
    free(hist); free(rows); free(sizes);
    PyBuffer_Release(&child); PyBuffer_Release(&parent); PyBuffer_Release(&prefix);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "_exact16_delta.encode_stream: bad arguments"); return NULL; }
    if (!sizes) { Py_XDECREF(res); return res ? PyErr_NoMemory() : NULL; }
    if (_PyBytes_Resize(&res, at + total + 4) < 0) return NULL;
    return res;
}

static PyMethodDef methods[] = {
    {"count", py_count, METH_VARARGS, "count(child, parent, shift, stride, counts)"},
    {"lengths", py_lengths, METH_VARARGS, "lengths(counts, out)"},
    {"tables", py_tables, METH_VARARGS, "tables(lengths, tok_extra, tok_base, enc, dec)"},
    {"encode_stream", py_encode_stream, METH_VARARGS, "encode_stream(child, parent, shift, stride, seg, prefix)"},
    {"encode", py_encode, METH_VARARGS, "encode(child, parent, shift, ztab, enc, seg, out, sizes)"},
    {"decode_stream", py_decode_stream, METH_VARARGS, "decode_stream(buf, offset, n, parent, shift, f16=False, out=None)"},
    {"decode", py_decode, METH_VARARGS, "decode(src, offsets, parent, shift, ctxmap, lengths, seg, out)"},
    {"crc32", py_crc32, METH_VARARGS, "crc32(data, value=0) -> zlib.crc32(data, value)"},
    {"set_portable", py_set_portable, METH_VARARGS, "set_portable(flag) -> instruction set used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact16_delta", "Format-5 BF16/F16 delta kernels.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__exact16_delta(void) {
    for (uint32_t j = 0; j < (1u << LOOKUP); j++) {
        uint32_t rev = 0;
        for (int b = 0; b < LOOKUP; b++) rev |= ((j >> b) & 1u) << (LOOKUP - 1 - b);
        REV11[j] = (uint16_t)rev;
    }
    for (uint32_t d = 0; d < (1u << 16); d++) ZZ[d] = zz_entry(d);
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        CRC_TABLE[i] = c;
    }
    cpu = cpu_pick(0);
    return PyModule_Create(&module);
}
