/* F16 <-> BF16 conversions shared by compression/_narrow.c (the casts of compression.narrow) and
 * compression/_exact16_delta.c (which decodes a narrowed F16 tensor's stream straight to F16 with them):
 * one copy of each cast, so both give the same bits. Scalar and AVX2 + F16C loops (has_vec says which
 * the CPU runs); exact on the values they are used on, NaNs refused where a cast could depend on the
 * machine (see _narrow.c). Include after Python.h (Py_ssize_t). */
#ifndef DELTAZOO_HALF_H
#define DELTAZOO_HALF_H
#include <stdint.h>
static inline uint32_t f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0x1F) return sign | 0x7F800000u | m << 13;
    if (e) return sign | (e + 112) << 23 | m << 13;
    if (!m) return sign;
    int p = 31 - __builtin_clz(m); /* subnormal: m * 2^-24 = 2^(p - 24) * 1.x */
    return sign | (uint32_t)(p + 103) << 23 | ((m << (23 - p)) & 0x7FFFFF);
}

/* Exact for f32 values that are f16 values (the only ones passed here). */
static inline uint16_t f32_to_f16(uint32_t x) {
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xFF, m = x & 0x7FFFFF;
    if (e == 0xFF) return (uint16_t)(sign | 0x7C00 | m >> 13);
    if (e < 103) return (uint16_t)sign; /* zero (smaller values are no f16) */
    if (e >= 113) return (uint16_t)(sign | (e - 112) << 10 | m >> 13);
    return (uint16_t)(sign | (m | 0x800000) >> (126 - e)); /* f16 subnormal */
}

static inline uint16_t bf16_to_f16(uint16_t b) { return f32_to_f16((uint32_t)b << 16); }

static inline int is_nan16(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }

/* f32 -> bf16, round to nearest even (not for NaN). */
static inline uint16_t f32_to_bf16_rne(uint32_t f) { return (uint16_t)((f + 0x7FFF + ((f >> 16) & 1)) >> 16); }

/* The three loops, scalar; returns nonzero when an element fails (exact: not held or NaN; rne: NaN). */
static uint32_t exact_scalar(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t f = f16_to_f32(src[i]);
        dst[i] = (uint16_t)(f >> 16);
        bad |= (f & 0xFFFF) | (uint32_t)is_nan16(src[i]);
    }
    return bad;
}
static void widen_scalar(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) dst[i] = bf16_to_f16(src[i]);
}
static uint32_t rne_scalar(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[i] = f32_to_bf16_rne(f16_to_f32(src[i]));
        bad |= (uint32_t)is_nan16(src[i]);
    }
    return bad;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VEC __attribute__((target("avx2,f16c")))
/* 8 f16 -> their f32 bits (vcvtph2ps: exact for every non-NaN f16). */
VEC static inline __m256i wide8(const uint16_t *p) {
    return _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
}
/* 8 u32 -> their high (hi=1) halves as 8 u16. */
VEC static inline __m128i high8(__m256i v) {
    __m256i h = _mm256_srli_epi32(v, 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
/* 8 f16: their NaN lanes as all-ones 16-bit lanes. */
VEC static inline __m128i nan8(const uint16_t *p) {
    __m128i h = _mm_and_si128(_mm_loadu_si128((const __m128i *)p), _mm_set1_epi16(0x7FFF));
    return _mm_cmpgt_epi16(h, _mm_set1_epi16(0x7C00)); /* > inf: NaN (signed compare fine: < 0x8000) */
}
VEC static __attribute__((unused)) uint32_t exact_vec(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    __m256i low = _mm256_setzero_si256();
    __m128i nan = _mm_setzero_si128();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i f = wide8(src + i);
        low = _mm256_or_si256(low, _mm256_and_si256(f, _mm256_set1_epi32(0xFFFF)));
        nan = _mm_or_si128(nan, nan8(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), high8(f));
    }
    uint32_t bad = (uint32_t)!_mm256_testz_si256(low, low) | (uint32_t)!_mm_testz_si128(nan, nan);
    return bad | exact_scalar(src + i, dst + i, n - i);
}
VEC static void widen_vec(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i f = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i))), 16);
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_castsi256_ps(f), _MM_FROUND_TO_NEAREST_INT));
    }
    widen_scalar(src + i, dst + i, n - i);
}
VEC static uint32_t rne_vec(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    __m128i nan = _mm_setzero_si128();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i f = wide8(src + i);
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(f, 16), _mm256_set1_epi32(1));
        f = _mm256_add_epi32(f, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
        nan = _mm_or_si128(nan, nan8(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), high8(f));
    }
    return (uint32_t)!_mm_testz_si128(nan, nan) | rne_scalar(src + i, dst + i, n - i);
}
static int has_vec(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return known;
}
#else
static int has_vec(void) { return 0; }
#define exact_vec exact_scalar
#define widen_vec widen_scalar
#define rne_vec rne_scalar
#endif

#endif
