/* Plain (no parent) 16-bit float streams of format 5: canonical Huffman over the exponent and the top
 * k mantissa bits, the sign and the other mantissa bits as a packed raw plane.
 *
 * Specified in docs/FORMAT.md ("Exact tensor payloads", format 5, plain streams) and implemented twice:
 * here and in numpy (compression/exact16_plain.py, the fallback when this extension did not build);
 * tests/test_codecs_16_plain.py checks both write and read the same bytes. For BF16 (E = 8 exponent bits,
 * M = 7 mantissa bits) and F16 (E = 5, M = 10), element x: symbol s = (x & 0x7FFF) >> (M − k) (E + k
 * bits), raw r = sign << (M − k) | low M − k mantissa bits (R = 1 + M − k bits). Symbols are coded in
 * segments of `seg` elements, each its own byte-aligned LSB-first bitstream; raw values are packed
 * LSB-first before the segments (the raw plane is written in the pass that counts symbols).
 *
 * Decoding speed comes from a 4096-entry table (codes are at most 12 bits) whose entry holds up to four
 * decoded symbols, already in place as four u16 lanes (symbol << (M − k)), with the bits taken, the
 * symbol count and the first symbol's length in the low bits of lanes 0, 1, 2 (bits the symbol never
 * uses: M − k >= 4). One lookup writes the entry as 8 bytes and advances by its count (BF16 weights
 * average ~3.6 bits a symbol); three lookups per 64-bit load; four segments interleaved. The raw plane is
 * then merged in per run of four segments, 16 elements a step with AVX2 (runtime dispatch; BF16 by byte
 * shuffle and multiply, F16 by pdep) or four at a time with shifts (portable).
 * Every read from the payload is bounds-checked (batches are sized so that no load can pass the end).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the plain5 kernel reads and writes little-endian words in place; numpy runs the format elsewhere"
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_BMI2_CLONE 1
#endif

#define MAXLEN 12
#define TSIZE (1u << MAXLEN)
#ifndef DBITS
#define DBITS 12 /* the decoder's lookup width (>= MAXLEN) */
#endif
#define DSIZE (1u << DBITS)
#define STEPBYTES ((3 * DBITS + 7) / 8) /* a fast step's three lookups take at most this many bytes */
#define MAXSEG 32768
#define STORED 0xFF
#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t rd64_safe(const uint8_t *buf, size_t len, size_t at) {
    if (at + 8 <= len) return rd64(buf + at);
    uint64_t v = 0;
    for (size_t i = 0; i < 8 && at + i < len; i++) v |= (uint64_t)buf[at + i] << (8 * i);
    return v;
}

static int portable_only = 0; /* tests force the portable path to check it writes and reads the same */

/* ------------------------------------------------------------------------------ Huffman lengths */
typedef struct { uint64_t w; int sym; } Leaf;
static int leaf_cmp(const void *a, const void *b) {
    const Leaf *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? -1 : 1;
    return x->sym - y->sym;
}

/* Code lengths (<= MAXLEN) of counts[0..a): two-queue Huffman over the used symbols sorted by (count,
 * symbol), a leaf taken before an internal node of equal weight; depths over MAXLEN cut to MAXLEN and
 * the prefix property restored by lengthening, one bit at a time, a longest code still below MAXLEN
 * (the one with the smallest (count, symbol)). A lone symbol gets length 1. Returns 0 on no memory. */
static int huffman_lengths(const uint64_t *counts, int a, uint8_t *len) {
    memset(len, 0, (size_t)a);
    int m = 0;
    for (int s = 0; s < a; s++) m += counts[s] > 0;
    if (m == 0) return 1;
    if (m == 1) {
        for (int s = 0; s < a; s++)
            if (counts[s]) len[s] = 1;
        return 1;
    }
    Leaf *leaf = malloc(sizeof(Leaf) * (size_t)m);
    uint64_t *w = malloc(sizeof(uint64_t) * (size_t)(2 * m));
    int *up = malloc(sizeof(int) * (size_t)(2 * m)), *depth = malloc(sizeof(int) * (size_t)(2 * m));
    if (!leaf || !w || !up || !depth) {
        free(leaf); free(w); free(up); free(depth);
        return 0;
    }
    for (int s = 0, j = 0; s < a; s++)
        if (counts[s]) leaf[j++] = (Leaf){counts[s], s};
    qsort(leaf, (size_t)m, sizeof(Leaf), leaf_cmp);
    for (int j = 0; j < m; j++) w[j] = leaf[j].w;
    int nl = 0, ni = m, next = m; /* next leaf, next internal node to take, next node to create */
    while (next < 2 * m - 1) {
        int pick[2];
        for (int t = 0; t < 2; t++) {
            if (nl < m && (ni == next || w[nl] <= w[ni])) pick[t] = nl++;
            else pick[t] = ni++;
        }
        w[next] = w[pick[0]] + w[pick[1]];
        up[pick[0]] = up[pick[1]] = next++;
    }
    depth[2 * m - 2] = 0;
    for (int i = 2 * m - 3; i >= 0; i--) depth[i] = depth[up[i]] + 1;
    int64_t excess = -(int64_t)TSIZE;
    for (int j = 0; j < m; j++) {
        int d = depth[j] > MAXLEN ? MAXLEN : depth[j];
        len[leaf[j].sym] = (uint8_t)d;
        excess += (int64_t)1 << (MAXLEN - d);
    }
    while (excess > 0) { /* leaves are in (count, symbol) order: the first at the top length wins */
        int top = 0, at = -1;
        for (int j = 0; j < m; j++) {
            int d = len[leaf[j].sym];
            if (d < MAXLEN && d > top) top = d, at = j;
        }
        len[leaf[at].sym]++;
        excess -= (int64_t)1 << (MAXLEN - top - 1);
    }
    free(leaf); free(w); free(up); free(depth);
    return 1;
}

/* Canonical codes: symbols sorted by (length, symbol), consecutive codes from 0 (MSB-first), stored
 * bit-reversed (the stream is LSB-first). enc[s] = reversed code | length << 16. */
static void canonical(const uint8_t *len, int a, uint32_t *enc) {
    uint32_t count[MAXLEN + 1] = {0}, next[MAXLEN + 1] = {0}, code = 0;
    for (int s = 0; s < a; s++) count[len[s]]++;
    count[0] = 0;
    for (int l = 1; l <= MAXLEN; l++) next[l] = code = (code + count[l - 1]) << 1; /* first code of length l */
    for (int s = 0; s < a; s++) {
        uint32_t l = len[s], c = next[l]++, rev = 0;
        if (!l) continue;
        for (uint32_t b = 0; b < l; b++) rev |= ((c >> b) & 1u) << (l - 1 - b);
        enc[s] = rev | l << 16;
    }
}

/* multi = 0: one symbol per entry (small tensors: cheaper to build than to use). */
static int dec_table(const uint8_t *len, int a, int shift, int multi, uint64_t *T) {
    uint64_t kraft = 0;
    for (int s = 0; s < a; s++) {
        if (len[s] > MAXLEN) return 0;
        if (len[s]) kraft += 1u << (MAXLEN - len[s]);
    }
    if (kraft > TSIZE) return 0;
    uint32_t enc[TSIZE]; /* alphabets have at most 2^12 symbols; only those with a code are read */
    uint32_t *one = malloc(4 * DSIZE); /* symbol | length << 16; length 0: no code reaches the slot */
    if (!one) return 0;
    memset(one, 0, 4 * DSIZE);
    canonical(len, a, enc);
    for (int s = 0; s < a; s++) {
        if (!len[s]) continue;
        uint32_t l = len[s], rev = enc[s] & 0xFFFF;
        for (uint32_t t = 0; t < (DSIZE >> l); t++) one[rev | t << l] = (uint32_t)s | l << 16;
    }
    /* T[i] is i's first symbol followed by those of T[i >> l] (l: that symbol's length; i >> l < i for
     * i > 0, so it is built) whose codes end within the 12 − l bits left, at most three. cum[i] holds the
     * bits taken after each of T[i]'s symbols (a nibble each), real[i] their number (0: no code). */
    uint16_t cum[DSIZE];
    uint8_t real[DSIZE];
    uint64_t symbits = (0x7FFFull & ~((1ull << shift) - 1)) * 0x0001000100010001ull;
    static const uint64_t keep[4] = {0, 0xFFFF0000ull, 0xFFFFFFFF0000ull, 0xFFFFFFFFFFFF0000ull};
    for (uint32_t i = 0; i < DSIZE; i++) {
        uint32_t e = one[i], l = e >> 16, c = 0;
        uint64_t lanes = (uint64_t)(e & 0xFFFF) << shift;
        uint32_t total = l, sums = l;
        if (l == 0) { /* no code: garbage that still moves on */
            T[i] = MAXLEN | 1ull << 16 | (uint64_t)MAXLEN << 32, cum[i] = 0, real[i] = 0;
            continue;
        }
        uint32_t j = i >> l, avail = DBITS - l;
        if (multi && i > 0) {
            uint32_t cj = cum[j], rj = real[j];
            c = (rj > 0 && (cj & 15) <= avail) + (rj > 1 && (cj >> 4 & 15) <= avail) +
                (rj > 2 && (cj >> 8 & 15) <= avail); /* cumulative: the ones that fit come first */
            lanes |= ((T[j] & symbits) << 16) & keep[c];
            total += c ? (cj >> (4 * (c - 1))) & 15 : 0;
            sums |= ((cj + l * 0x111u) & ((1u << (4 * c)) - 1)) << 4;
        } else if (multi) { /* i = 0: all zero bits, the same first code again while it fits */
            for (; c < 3 && total + l <= DBITS; c++) {
                lanes |= lanes << 16 & 0xFFFF0000ull << (16 * c);
                total += l;
                sums |= total << (4 * (c + 1));
            }
        }
        T[i] = lanes | total | (uint64_t)(c + 1) << 16 | (uint64_t)l << 32;
        cum[i] = (uint16_t)sums, real[i] = (uint8_t)(c + 1);
    }
    free(one);
    return 1;
}

/* ------------------------------------------------------------------------------ checksum */
/* Fletcher over u64 words of the bytes (zero-padded to 8): s1 = sum w_i, s2 = sum (N − i) w_i, mod 2^64.
 * From (a, b) of the words before: a += w, b += a per word. */
static void fletcher_from(const uint8_t *p, size_t len, uint64_t *s1, uint64_t *s2) {
    uint64_t a = *s1, b = *s2;
    size_t i = 0;
    for (; i + 32 <= len; i += 32) { /* four words a step: b += 4a + 4w0 + 3w1 + 2w2 + w3 */
        uint64_t w0 = rd64(p + i), w1 = rd64(p + i + 8), w2 = rd64(p + i + 16), w3 = rd64(p + i + 24);
        b += 4 * a + 4 * w0 + 3 * w1 + 2 * w2 + w3;
        a += w0 + w1 + w2 + w3;
    }
    for (; i + 8 <= len; i += 8) a += rd64(p + i), b += a;
    if (i < len) {
        uint64_t v = 0;
        memcpy(&v, p + i, len - i);
        a += v, b += a;
    }
    *s1 = a, *s2 = b;
}

#ifdef HAVE_BMI2_CLONE
/* Eight lanes (word 8t + q in lane q): A_q = sum w, B_q = sum (T − t) w over T steps; then
 * s1 = sum A_q and s2 = sum 8 B_q − q A_q; the words after the last whole step as above. */
__attribute__((target("avx2"))) static void fletcher_avx2(const uint8_t *p, size_t len, uint64_t *s1,
                                                          uint64_t *s2) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
    size_t i = 0;
    for (; i + 64 <= len; i += 64) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        b0 = _mm256_add_epi64(b0, a0);
        b1 = _mm256_add_epi64(b1, a1);
    }
    uint64_t A[8], B[8], a = 0, b = 0;
    _mm256_storeu_si256((__m256i *)A, a0), _mm256_storeu_si256((__m256i *)(A + 4), a1);
    _mm256_storeu_si256((__m256i *)B, b0), _mm256_storeu_si256((__m256i *)(B + 4), b1);
    for (int q = 0; q < 8; q++) a += A[q], b += 8 * B[q] - (uint64_t)q * A[q];
    *s1 = a, *s2 = b;
    fletcher_from(p + i, len - i, s1, s2);
}
#endif

static void fletcher(const uint8_t *p, size_t len, uint64_t *s1, uint64_t *s2) {
#ifdef HAVE_BMI2_CLONE
    if (!portable_only && __builtin_cpu_supports("avx2")) {
        fletcher_avx2(p, len, s1, s2);
        return;
    }
#endif
    *s1 = *s2 = 0;
    fletcher_from(p, len, s1, s2);
}

/* ------------------------------------------------------------------------------ encode */
typedef struct {
    int E, M, k;
    int shift, R, a; /* M − k, raw bits, alphabet size 2^(E + k) */
} Layout;

static Layout layout(int E, int M, int k) {
    Layout L = {E, M, k, M - k, 1 + M - k, 1 << (E + k)};
    return L;
}

/* code[x >> shift], clen[x >> shift]: the element's symbol's code (bit-reversed) and length, the sign
 * bit included in the index (the tables hold both halves) so that no mask is needed. */
ALWAYS_INLINE size_t encode_segments(const uint16_t *x, size_t n, size_t seg, const uint16_t *code,
                                     const uint8_t *clen, int shift, uint8_t *sizes, uint8_t *dst) {
    uint8_t *d0 = dst;
    size_t nseg = (n + seg - 1) / seg;
    for (size_t g = 0; g < nseg; g++) {
        size_t a = g * seg, b = a + seg < n ? a + seg : n, i = a;
        uint8_t *start = dst;
        uint64_t acc = 0;
        unsigned nb = 0;
        for (; i + 4 <= b; i += 4) { /* <= 4 * 12 bits over < 8 held: one flush per four */
            for (int j = 0; j < 4; j++) {
                unsigned v = (unsigned)x[i + j] >> shift;
                acc |= (uint64_t)code[v] << nb;
                nb += clen[v];
            }
            wr64(dst, acc);
            dst += nb >> 3;
            acc >>= (nb & ~7u);
            nb &= 7;
        }
        for (; i < b; i++) {
            unsigned v = (unsigned)x[i] >> shift;
            acc |= (uint64_t)code[v] << nb;
            nb += clen[v];
            wr64(dst, acc);
            dst += nb >> 3;
            acc = acc >> (nb & ~7u);
            nb &= 7;
        }
        if (nb) wr64(dst, acc), dst++;
        uint16_t sz = (uint16_t)(dst - start);
        memcpy(sizes + 2 * g, &sz, 2);
    }
    return (size_t)(dst - d0);
}

static inline uint64_t raw_of(uint16_t x, int shift) {
    return (uint64_t)((x >> 15) << shift | (x & ((1u << shift) - 1)));
}

/* Raw values from element i on (acc holding nb < 8 bits), then the last partial byte; bytes written. */
static size_t pack_raw_tail(const uint16_t *x, size_t n, int shift, int R, uint8_t *dst, uint64_t acc,
                            unsigned nb) {
    uint8_t *d0 = dst;
    for (size_t i = 0; i < n; i++) {
        acc |= raw_of(x[i], shift) << nb, nb += (unsigned)R;
        wr64(dst, acc);
        dst += nb >> 3;
        acc >>= (nb & ~7u);
        nb &= 7;
    }
    if (nb) wr64(dst, acc), dst++;
    return (size_t)(dst - d0);
}

#define COUNT4(v)                                                                                  \
    {                                                                                              \
        sub[(v >> shift) & am]++;                                                                  \
        sub[a + ((v >> (16 + shift)) & am)]++;                                                     \
        sub[2 * a + ((v >> (32 + shift)) & am)]++;                                                 \
        sub[3 * a + ((v >> (48 + shift)) & am)]++;                                                 \
    }

/* One pass over x: symbol counts into sub (4 histograms of a bins: no store-to-load chain on one bin)
 * and the raw plane (R bits each, LSB first) into dst (8 bytes of slack); returns its bytes. */
static size_t count_and_pack_portable(const uint16_t *x, size_t n, int shift, int a, int R, uint32_t *sub,
                                      uint8_t *dst) {
    uint8_t *d0 = dst;
    uint64_t acc = 0, am = (uint64_t)a - 1;
    unsigned nb = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) { /* 4 R <= 40 bits over < 8 held */
        uint64_t v = rd64((const uint8_t *)(x + i));
        COUNT4(v)
        for (int j = 0; j < 4; j++) acc |= raw_of(x[i + j], shift) << nb, nb += (unsigned)R;
        wr64(dst, acc);
        dst += nb >> 3;
        acc >>= (nb & ~7u);
        nb &= 7;
    }
    for (size_t j = i; j < n; j++) sub[(x[j] & 0x7FFF) >> shift]++;
    return (size_t)(dst - d0) + pack_raw_tail(x + i, n - i, shift, R, dst, acc, nb);
}

#ifdef HAVE_BMI2_CLONE
__attribute__((target("bmi2,avx2"))) static size_t count_and_pack_bmi2(const uint16_t *x, size_t n, int shift,
                                                                        int a, int R, uint32_t *sub,
                                                                        uint8_t *dst) {
    uint64_t lane = 0x8000u | ((1u << shift) - 1), mask = lane * 0x0001000100010001ull, am = (uint64_t)a - 1;
    uint8_t *d0 = dst;
    unsigned half = 4u * (unsigned)R;
    size_t i = 0;
    if (R <= 8) { /* 8 elements are R whole bytes */
        for (; i + 8 <= n; i += 8) {
            uint64_t v = rd64((const uint8_t *)(x + i)), w = rd64((const uint8_t *)(x + i + 4));
            COUNT4(v)
            COUNT4(w)
            wr64(dst, _pext_u64(v, mask) | _pext_u64(w, mask) << half);
            dst += R;
        }
    } else if (R % 2 == 0) { /* 4 elements are R / 2 whole bytes */
        for (; i + 4 <= n; i += 4) {
            uint64_t v = rd64((const uint8_t *)(x + i));
            COUNT4(v)
            wr64(dst, _pext_u64(v, mask));
            dst += R / 2;
        }
    }
    if (i == 0) return count_and_pack_portable(x, n, shift, a, R, sub, dst);
    for (size_t j = i; j < n; j++) sub[(x[j] & 0x7FFF) >> shift]++;
    return (size_t)(dst - d0) + pack_raw_tail(x + i, n - i, shift, R, dst, 0, 0);
}

__attribute__((target("bmi2,avx2"))) static size_t encode_segments_bmi2(const uint16_t *x, size_t n, size_t seg,
                                                                         const uint16_t *code, const uint8_t *clen,
                                                                         int shift, uint8_t *sizes, uint8_t *dst) {
    return encode_segments(x, n, seg, code, clen, shift, sizes, dst);
}
#endif

static size_t encode_segments_portable(const uint16_t *x, size_t n, size_t seg, const uint16_t *code,
                                       const uint8_t *clen, int shift, uint8_t *sizes, uint8_t *dst) {
    return encode_segments(x, n, seg, code, clen, shift, sizes, dst);
}

static int use_bmi2(void) {
#ifdef HAVE_BMI2_CLONE
    return !portable_only && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* Stream bytes of n elements: 1 (k) + 4 (seg) + a / 2 (lengths) + 2 nseg (sizes) + segments + raw + 16. */
static size_t coded_bound(size_t n, size_t seg, Layout L) {
    size_t nseg = (n + seg - 1) / seg;
    return 5 + (size_t)L.a / 2 + 3 * nseg + (n * MAXLEN + 7) / 8 + (n * (size_t)L.R + 7) / 8 + 16;
}

/* encode(src, E, M, k, seg, prefix) -> bytes: prefix + the plain stream of the 16-bit elements of src. */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer src;
    int E, M, k;
    Py_ssize_t seg;
    PyObject *prefix;
    if (!PyArg_ParseTuple(args, "y*iiinS", &src, &E, &M, &k, &seg, &prefix)) return NULL;
    if (src.len % 2 || E < 1 || E > 12 || M > 15 || M - k < 4 || k < 0 || E + k > 12 || seg < 1 || seg > MAXSEG) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "encode: bad layout, segment size or odd byte length");
        return NULL;
    }
    Layout L = layout(E, M, k);
    size_t n = (size_t)src.len / 2, nseg = (n + (size_t)seg - 1) / (size_t)seg;
    size_t plen = (size_t)PyBytes_GET_SIZE(prefix);
    size_t stored = 1 + 2 * n + 16, bound = coded_bound(n, (size_t)seg, L);
    size_t cap = plen + (bound > stored ? bound : stored) + 16;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    uint64_t *counts = calloc((size_t)L.a, 8);
    uint8_t *len = malloc((size_t)L.a);
    uint32_t *enc = calloc(4 * (size_t)L.a, 4); /* then code (2a x u16) and clen (2a x u8) */
    if (!out || !counts || !len || !enc) {
        Py_XDECREF(out); free(counts); free(len); free(enc); PyBuffer_Release(&src);
        return PyErr_NoMemory();
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out), *s0 = o + plen, *d;
    memcpy(o, PyBytes_AS_STRING(prefix), plen);
    const uint16_t *x = src.buf;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    /* the raw plane goes after the segment sizes: known before the segments are coded */
    size_t head = 5 + (size_t)L.a / 2 + 2 * nseg, rawlen = 0;
    int fast = use_bmi2();
    uint32_t *sub = calloc(4 * (size_t)L.a, 4);
    if (sub) {
        for (size_t i = 0; i < n;) { /* u32 bins: flushed every 2^30 elements */
            size_t m = n - i < (1u << 30) ? n - i : (1u << 30);
#ifdef HAVE_BMI2_CLONE
            if (fast) rawlen += count_and_pack_bmi2(x + i, m, L.shift, L.a, L.R, sub, s0 + head + rawlen);
#endif
            if (!fast) rawlen += count_and_pack_portable(x + i, m, L.shift, L.a, L.R, sub, s0 + head + rawlen);
            for (int q = 0; q < 4 * L.a; q++) counts[q % L.a] += sub[q], sub[q] = 0;
            i += m;
        }
    }
    ok = sub != NULL && huffman_lengths(counts, L.a, len);
    free(sub);
    uint64_t bits = 8 * (5 + (uint64_t)L.a / 2 + 3 * (uint64_t)nseg) + (uint64_t)n * (uint64_t)L.R;
    for (int s = 0; s < L.a; s++) bits += counts[s] * len[s];
    d = s0;
    if (ok && bits < 16 * (uint64_t)n) {
        canonical(len, L.a, enc);
        *d++ = (uint8_t)k;
        uint32_t sg = (uint32_t)seg;
        memcpy(d, &sg, 4), d += 4;
        for (int s = 0; s < L.a; s += 2) *d++ = (uint8_t)(len[s] | len[s + 1] << 4);
        uint8_t *sizes = d;
        d += 2 * nseg + rawlen;
        uint16_t *code = (uint16_t *)(enc + L.a); /* enc has room for both halves of both tables */
        uint8_t *clen = (uint8_t *)(code + 2 * L.a);
        for (int v = 0; v < 2 * L.a; v++) code[v] = (uint16_t)enc[v % L.a], clen[v] = (uint8_t)(enc[v % L.a] >> 16);
#ifdef HAVE_BMI2_CLONE
        if (fast) d += encode_segments_bmi2(x, n, (size_t)seg, code, clen, L.shift, sizes, d);
#endif
        if (!fast) d += encode_segments_portable(x, n, (size_t)seg, code, clen, L.shift, sizes, d);
    } else if (ok) {
        *d++ = STORED;
        memcpy(d, x, 2 * n), d += 2 * n;
    }
    uint64_t c[2];
    fletcher(s0, (size_t)(d - s0), c, c + 1);
    memcpy(d, c, 16), d += 16;
    Py_END_ALLOW_THREADS
    free(counts); free(len); free(enc);
    PyBuffer_Release(&src);
    if (!ok) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)(d - o)) < 0) return NULL;
    return out;
}

/* ------------------------------------------------------------------------------ decode */
typedef struct {
    const uint8_t *buf;
    size_t len;           /* bytes of buf: no load passes it */
    const uint8_t *sizes; /* nseg x u16 */
    size_t body, rawat;   /* byte offsets of the first segment and of the raw plane (before them) */
    size_t n, seg, nseg;
    const uint64_t *T;
    Layout L;
} Dec;

#define STEP3(j)                                                                                   \
    {                                                                                              \
        uint64_t w = rd64(buf + (p##j >> 3)) >> (p##j & 7), e = T[w & (DSIZE - 1)];               \
        wr64((uint8_t *)o##j, e);                                                                  \
        unsigned t = (unsigned)e & 15;                                                             \
        o##j += (e >> 16) & 7;                                                                     \
        uint64_t f = T[(w >> t) & (DSIZE - 1)];                                                    \
        wr64((uint8_t *)o##j, f);                                                                  \
        t += (unsigned)f & 15;                                                                     \
        o##j += (f >> 16) & 7;                                                                     \
        uint64_t g = T[(w >> t) & (DSIZE - 1)];                                                    \
        wr64((uint8_t *)o##j, g);                                                                  \
        o##j += (g >> 16) & 7;                                                                     \
        p##j += t + ((unsigned)g & 15);                                                            \
    }

/* Four segments interleaved while each has >= 12 symbols left and no load can pass the end (a step
 * takes three lookups, at most 36 of the >= 57 bits one load gives). */
ALWAYS_INLINE void decode_fast4(const uint8_t *buf, size_t len, const uint64_t *T, size_t pos[4], uint16_t *o[4],
                                size_t rem[4]) {
    size_t p0 = pos[0], p1 = pos[1], p2 = pos[2], p3 = pos[3];
    uint16_t *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
    for (;;) {
        size_t steps = SIZE_MAX;
        size_t ps[4] = {p0, p1, p2, p3};
        for (int j = 0; j < 4; j++) {
            size_t byte = ps[j] >> 3, room = byte + 8 <= len ? (len - 8 - byte) / STEPBYTES : 0;
            if (rem[j] / 12 < steps) steps = rem[j] / 12;
            if (room < steps) steps = room;
        }
        if (steps == 0) break;
        uint16_t *s0 = o0, *s1 = o1, *s2 = o2, *s3 = o3;
        for (size_t s = 0; s < steps; s++) {
            STEP3(0) STEP3(1) STEP3(2) STEP3(3)
        }
        rem[0] -= (size_t)(o0 - s0), rem[1] -= (size_t)(o1 - s1);
        rem[2] -= (size_t)(o2 - s2), rem[3] -= (size_t)(o3 - s3);
    }
    pos[0] = p0, pos[1] = p1, pos[2] = p2, pos[3] = p3;
    o[0] = o0, o[1] = o1, o[2] = o2, o[3] = o3;
}

/* One segment alone (the others of its group ended) while it has >= 12 symbols left and no load can
 * pass the end. */
ALWAYS_INLINE void decode_fast1(const uint8_t *buf, size_t len, const uint64_t *T, size_t *pos, uint16_t **o,
                                size_t *rem) {
    size_t p0 = *pos;
    uint16_t *o0 = *o;
    for (;;) {
        size_t byte = p0 >> 3, room = byte + 8 <= len ? (len - 8 - byte) / STEPBYTES : 0;
        size_t steps = *rem / 12 < room ? *rem / 12 : room;
        if (steps == 0) break;
        uint16_t *s0 = o0;
        for (size_t s = 0; s < steps; s++) STEP3(0)
        *rem -= (size_t)(o0 - s0);
    }
    *pos = p0, *o = o0;
}

/* One symbol per lookup, loads bounds-checked: segment tails and short groups. */
static size_t decode_slow(const uint8_t *buf, size_t len, const uint64_t *T, size_t pos, uint16_t *o, size_t rem) {
    for (; rem; rem--) {
        uint64_t w = rd64_safe(buf, len, pos >> 3) >> (pos & 7), e = T[w & (DSIZE - 1)];
        *o++ = (uint16_t)e;
        pos += (e >> 32) & 15;
    }
    return pos;
}

/* out[i] = symbol bits of out[i] | sign and low mantissa from the raw plane, for i in [a, b). */
ALWAYS_INLINE void merge_tail(const Dec *D, uint16_t *out, size_t i, size_t b) {
    int sh = D->L.shift, R = D->L.R;
    uint16_t sym = (uint16_t)(0x7FFF & ~((1u << sh) - 1));
    for (; i < b; i++) {
        size_t bit = (size_t)R * i;
        uint64_t r = rd64_safe(D->buf, D->len, D->rawat + (bit >> 3)) >> (bit & 7);
        out[i] = (uint16_t)((out[i] & sym) | ((r >> sh) & 1) << 15 | (r & ((1u << sh) - 1)));
    }
}

static void merge_portable(const Dec *D, uint16_t *out, size_t a, size_t b) {
    int sh = D->L.shift, R = D->L.R;
    uint16_t sym = (uint16_t)(0x7FFF & ~((1u << sh) - 1)), low = (uint16_t)((1u << sh) - 1);
    uint64_t rmask = (1u << R) - 1;
    size_t i = a;
    for (; i + 4 <= b; i += 4) { /* 4 R <= 40 bits from one load (the raw plane has 16 bytes after it) */
        size_t bit = (size_t)R * i;
        uint64_t v = rd64(D->buf + D->rawat + (bit >> 3)) >> (bit & 7);
        for (int j = 0; j < 4; j++) {
            uint64_t r = (v >> (R * j)) & rmask;
            out[i + j] = (uint16_t)((out[i + j] & sym) | (r >> sh) << 15 | (r & low));
        }
    }
    merge_tail(D, out, i, b);
}

typedef void (*Merge)(const Dec *, uint16_t *, size_t, size_t);

ALWAYS_INLINE int decode_body(const Dec *D, uint16_t *out, Merge merge) {
    const uint8_t *buf = D->buf;
    size_t len = D->len, at = D->body, seg = D->seg, bad = 0;
    for (size_t g = 0; g < D->nseg; g += 4) {
        size_t ns = D->nseg - g < 4 ? D->nseg - g : 4, pos[4], rem[4], end[4];
        uint16_t *o[4];
        for (size_t j = 0; j < ns; j++) {
            uint16_t sz;
            memcpy(&sz, D->sizes + 2 * (g + j), 2);
            size_t a = (g + j) * seg, b = a + seg < D->n ? a + seg : D->n;
            pos[j] = 8 * at, o[j] = out + a, rem[j] = b - a;
            at += sz, end[j] = at;
        }
        if (ns == 4) decode_fast4(buf, len, D->T, pos, o, rem);
        for (size_t j = 0; j < ns; j++) {
            decode_fast1(buf, len, D->T, pos + j, o + j, rem + j);
            size_t p = decode_slow(buf, len, D->T, pos[j], o[j], rem[j]);
            bad |= (p + 7) >> 3 != end[j];
        }
        size_t a = g * seg, b = (g + ns) * seg < D->n ? (g + ns) * seg : D->n;
        merge(D, out, a, b);
    }
    return bad == 0;
}

#ifdef HAVE_BMI2_CLONE
__attribute__((target("bmi2,avx2"))) static void merge_bmi2(const Dec *D, uint16_t *out, size_t a, size_t b) {
    int sh = D->L.shift, R = D->L.R;
    uint64_t sym = (0x7FFFull & ~((1ull << sh) - 1)) * 0x0001000100010001ull;
    uint64_t raw = (0x8000ull | ((1ull << sh) - 1)) * 0x0001000100010001ull;
    const uint8_t *plane = D->buf + D->rawat;
    size_t i = a;
    if (a % 8 == 0 && R == 7) { /* BF16 as written: 16 elements from 14 bytes, no pdep */
        /* lane q of each half: the 7 bits at bit 7q of its 8-element group, taken from bytes 7q/8 and
         * 7q/8 + 1, moved to bits 8..14 by a multiply, then sign to bit 15 and low bits to 0..5 */
        const __m256i pick = _mm256_setr_epi8(0, 1, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 0, 1, 0, 1, 1, 2, 2,
                                              3, 3, 4, 4, 5, 5, 6, 6, 7);
        const __m256i mul = _mm256_setr_epi16(256, 2, 4, 8, 16, 32, 64, 128, 256, 2, 4, 8, 16, 32, 64, 128);
        const __m256i symv = _mm256_set1_epi64x((long long)sym), low = _mm256_set1_epi16(0x3F);
        const __m256i top = _mm256_set1_epi16((short)0x8000);
        for (; i + 16 <= b; i += 16) { /* reads up to 23 bytes on: the raw plane has 16 after it */
            const uint8_t *p = plane + 7 * (i / 8);
            __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                                _mm_loadu_si128((const __m128i *)(p + 7)), 1);
            __m256i t = _mm256_mullo_epi16(_mm256_shuffle_epi8(v, pick), mul);
            __m256i lanes = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(t, 8), low),
                                            _mm256_and_si256(_mm256_slli_epi16(t, 1), top));
            __m256i o = _mm256_loadu_si256((const __m256i *)(out + i));
            _mm256_storeu_si256((__m256i *)(out + i), _mm256_or_si256(_mm256_and_si256(o, symv), lanes));
        }
    }
    if (i % 8 == 0 && (R <= 8 || R % 2 == 0)) { /* 16 elements a step: 2 R bytes from one or two loads each 8 */
        __m256i symv = _mm256_set1_epi64x((long long)sym);
        unsigned half = 4u * (unsigned)R;
        for (; i + 16 <= b; i += 16) { /* the raw plane has 16 bytes after it: loads stay in the payload */
            const uint8_t *p = plane + (size_t)R * (i / 8);
            uint64_t v0 = rd64(p), v1 = rd64(p + R), q0, q1, q2, q3;
            if (R <= 8) {
                q0 = _pdep_u64(v0, raw), q1 = _pdep_u64(v0 >> half, raw);
                q2 = _pdep_u64(v1, raw), q3 = _pdep_u64(v1 >> half, raw);
            } else {
                q0 = _pdep_u64(v0, raw), q1 = _pdep_u64(rd64(p + R / 2), raw);
                q2 = _pdep_u64(v1, raw), q3 = _pdep_u64(rd64(p + R + R / 2), raw);
            }
            __m256i lanes = _mm256_set_epi64x((long long)q3, (long long)q2, (long long)q1, (long long)q0);
            __m256i o = _mm256_loadu_si256((const __m256i *)(out + i));
            _mm256_storeu_si256((__m256i *)(out + i), _mm256_or_si256(_mm256_and_si256(o, symv), lanes));
        }
    }
    for (; i + 4 <= b; i += 4) { /* 4 R <= 40 bits from one load (the raw plane has 16 bytes after it) */
        size_t bit = (size_t)R * i;
        uint64_t v = rd64(plane + (bit >> 3)) >> (bit & 7);
        wr64((uint8_t *)(out + i), (rd64((const uint8_t *)(out + i)) & sym) | _pdep_u64(v, raw));
    }
    merge_tail(D, out, i, b);
}

__attribute__((target("bmi2,avx2"))) static int decode_body_bmi2(const Dec *D, uint16_t *out) {
    return decode_body(D, out, merge_bmi2);
}
#endif
static int decode_body_portable(const Dec *D, uint16_t *out) { return decode_body(D, out, merge_portable); }

static PyObject *corrupt(const char *what) {
    PyErr_Format(PyExc_ValueError, "corrupt payload: %s", what);
    return NULL;
}

/* decode(payload, offset, n, E, M, out=None) -> (bytes of n u16 elements, offset just past the stream); out: a
 * writable buffer of exactly 2n bytes to decode into, returned in place of new bytes. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer pb, dest = {0};
    Py_ssize_t offset, ns;
    int E, M;
    PyObject *into = Py_None;
    if (!PyArg_ParseTuple(args, "y*nnii|O", &pb, &offset, &ns, &E, &M, &into)) return NULL;
    PyObject *res = NULL, *out = NULL;
    uint64_t *T = NULL;
    if (into != Py_None) {
        if (PyObject_GetBuffer(into, &dest, PyBUF_WRITABLE) < 0) goto done;
        if (ns < 0 || dest.len != 2 * ns) {
            PyErr_SetString(PyExc_TypeError, "_exact16_plain.decode: out must hold exactly 2n bytes");
            goto done;
        }
    }
    const uint8_t *buf = pb.buf;
    size_t len = (size_t)pb.len, at = (size_t)offset, n = (size_t)ns;
    if (offset < 0 || ns < 0 || E < 1 || E > 12 || M < 5 || M > 15 || at >= len) {
        corrupt("truncated format-5 plain stream");
        goto done;
    }
    int k = buf[at];
    size_t start = at++;
    if (k == STORED) {
        if (n > (len - at) / 2 || len - at - 2 * n < 16) { corrupt("truncated stored plain stream"); goto done; }
        at += 2 * n;
    } else {
        if (k > M - 4 || E + k > 12) { corrupt("plain stream with an unknown mantissa split"); goto done; }
        Layout L = layout(E, M, k);
        uint32_t seg;
        if (len - at < 4 + (size_t)L.a / 2) { corrupt("truncated plain stream header"); goto done; }
        memcpy(&seg, buf + at, 4);
        if (seg < 1 || seg > MAXSEG) { corrupt("plain stream segment size out of 1..32768"); goto done; }
        at += 4 + (size_t)L.a / 2;
        size_t nseg = (n + seg - 1) / seg;
        if (nseg > (len - at) / 2) { corrupt("truncated plain stream segment sizes"); goto done; }
        size_t body = at + 2 * nseg, total = 0;
        for (size_t g = 0; g < nseg; g++) {
            uint16_t sz;
            memcpy(&sz, buf + at + 2 * g, 2);
            total += sz;
        }
        if (n > SIZE_MAX / 16) { corrupt("element count"); goto done; }
        size_t rawlen = (n * (size_t)L.R + 7) / 8;
        if (body > len || total > len - body || rawlen > len - body - total || len - body - total - rawlen < 16) {
            corrupt("truncated plain stream segments or raw plane");
            goto done;
        }
        at = body + total + rawlen;
    }
    uint64_t c[2], want[2];
    fletcher(buf + start, at - start, c, c + 1);
    memcpy(want, buf + at, 16);
    if (c[0] != want[0] || c[1] != want[1]) { corrupt("plain stream checksum mismatch"); goto done; }
    if (into == Py_None) out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(2 * n));
    else Py_INCREF(out = into);
    if (!out) goto done;
    uint16_t *o = into == Py_None ? (uint16_t *)PyBytes_AS_STRING(out) : (uint16_t *)dest.buf;
    if (k == STORED) {
        memcpy(o, buf + start + 1, 2 * n);
    } else {
        Layout L = layout(E, M, k);
        uint32_t seg;
        memcpy(&seg, buf + start + 1, 4);
        uint8_t lens[4096] = {0};
        for (int s = 0; s < L.a; s += 2) {
            uint8_t v = buf[start + 5 + (size_t)s / 2];
            lens[s] = v & 15, lens[s + 1] = v >> 4;
        }
        T = malloc(8 * DSIZE);
        if (!T) { PyErr_NoMemory(); goto done; }
        if (!dec_table(lens, L.a, L.shift, n >= 16384, T)) { corrupt("plain stream code lengths are not a prefix code"); goto done; }
        size_t nseg = (n + seg - 1) / seg, rawat = start + 5 + (size_t)L.a / 2 + 2 * nseg;
        size_t body = rawat + (n * (size_t)L.R + 7) / 8; /* the segments follow the raw plane */
        Dec D = {buf, len, buf + start + 5 + (size_t)L.a / 2, body, rawat, n, seg, nseg, T, L};
        int ok;
        Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_BMI2_CLONE
        ok = use_bmi2() ? decode_body_bmi2(&D, o) : decode_body_portable(&D, o);
#else
        ok = decode_body_portable(&D, o);
#endif
        Py_END_ALLOW_THREADS
        if (!ok) { corrupt("a plain stream segment does not end where its size says"); goto done; }
    }
    res = Py_BuildValue("(On)", out, (Py_ssize_t)(at + 16));
done:
    Py_XDECREF(out);
    free(T);
    PyBuffer_Release(&pb);
    if (dest.obj) PyBuffer_Release(&dest);
    return res;
}

static PyObject *py_set_portable(PyObject *self, PyObject *args) {
    (void)self;
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    portable_only = flag;
    return PyUnicode_FromString(use_bmi2() ? "bmi2,avx2" : "portable");
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS, "encode(src, E, M, k, seg, prefix) -> prefix + plain stream"},
    {"decode", py_decode, METH_VARARGS, "decode(payload, offset, n, E, M, out=None) -> (bytes or out, end offset)"},
    {"set_portable", py_set_portable, METH_VARARGS, "set_portable(flag) -> instruction set used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact16_plain", "Format-5 plain stream kernels.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__exact16_plain(void) { return PyModule_Create(&module); }
