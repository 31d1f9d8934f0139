/* F16 <-> BF16 for compression.narrow: the casts of bf16 weights saved as f16, without torch.
 *
 * Both directions are exact IEEE conversions for the values they are used on: every finite or infinite
 * f16 whose f32 value has zero low 16 bits is a bf16 value, and a bf16 value that came from an f16 goes
 * back to that f16 exactly. NaNs are refused (conversions of NaN payloads differ between instruction sets
 * and libraries), so the bytes never depend on the machine. f16_to_bf16 also checks the round trip
 * through bf16_to_f16, the very function the decoder runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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
VEC static uint32_t exact_vec(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
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
static int portable = 0; /* set_portable(True): the scalar loops (tests compare both) */

/* (src, dst) of one even length, dst writable; 0 or -1 with the error set. */
static int buffers(PyObject *args, Py_buffer *s, Py_buffer *d, const char *what) {
    PyObject *so, *dobj;
    if (!PyArg_ParseTuple(args, "OO", &so, &dobj)) return -1;
    if (PyObject_GetBuffer(so, s, PyBUF_SIMPLE) < 0) return -1;
    if (PyObject_GetBuffer(dobj, d, PyBUF_WRITABLE) < 0) { PyBuffer_Release(s); return -1; }
    if (s->len != d->len || s->len % 2) {
        PyBuffer_Release(s); PyBuffer_Release(d);
        PyErr_Format(PyExc_ValueError, "_narrow.%s: two buffers of one even length", what);
        return -1;
    }
    return 0;
}

enum { EXACT, WIDEN, RNE };

static PyObject *run(PyObject *args, int op, const char *what) {
    Py_buffer s, d;
    if (buffers(args, &s, &d, what) < 0) return NULL;
    const uint16_t *src = s.buf;
    uint16_t *dst = d.buf;
    Py_ssize_t n = s.len / 2;
    uint32_t bad = 0;
    int vec = has_vec() && !portable;
    Py_BEGIN_ALLOW_THREADS
    if (op == EXACT) bad = vec ? exact_vec(src, dst, n) : exact_scalar(src, dst, n);
    else if (op == RNE) bad = vec ? rne_vec(src, dst, n) : rne_scalar(src, dst, n);
    else if (vec) widen_vec(src, dst, n);
    else widen_scalar(src, dst, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&s); PyBuffer_Release(&d);
    if (op == WIDEN) Py_RETURN_NONE;
    return PyBool_FromLong(bad == 0);
}

/* f16_to_bf16(src, dst) -> bool: dst = the bf16 of every f16 of src; True if bf16 holds each exactly
 * and none is NaN (else False, dst unspecified). */
static PyObject *py_f16_to_bf16(PyObject *self, PyObject *args) { return run(args, EXACT, "f16_to_bf16"); }

/* bf16_to_f16(src, dst): the inverse, for what f16_to_bf16 accepted. */
static PyObject *py_bf16_to_f16(PyObject *self, PyObject *args) { return run(args, WIDEN, "bf16_to_f16"); }

/* bf16_to_f16_bytes(src) -> bytes: bf16_to_f16 into a new bytes object (the decoder's result: no copy). */
static PyObject *py_bf16_to_f16_bytes(PyObject *self, PyObject *args) {
    Py_buffer s;
    if (!PyArg_ParseTuple(args, "y*", &s)) return NULL;
    PyObject *out = s.len % 2 ? NULL : PyBytes_FromStringAndSize(NULL, s.len);
    if (out) {
        const uint16_t *src = s.buf;
        uint16_t *dst = (uint16_t *)PyBytes_AS_STRING(out);
        Py_ssize_t n = s.len / 2;
        int vec = has_vec() && !portable;
        Py_BEGIN_ALLOW_THREADS
        if (vec) widen_vec(src, dst, n);
        else widen_scalar(src, dst, n);
        Py_END_ALLOW_THREADS
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "bf16_to_f16_bytes: an odd number of bytes");
    }
    PyBuffer_Release(&s);
    return out;
}

/* bf16_to_f32_bytes(src) -> bytes: each bf16 the high half of an f32 (exact), into a new bytes object. */
static PyObject *py_bf16_to_f32_bytes(PyObject *self, PyObject *args) {
    Py_buffer s;
    if (!PyArg_ParseTuple(args, "y*", &s)) return NULL;
    PyObject *out = s.len % 2 ? NULL : PyBytes_FromStringAndSize(NULL, 2 * s.len);
    if (out) {
        const uint16_t *src = s.buf;
        uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(out);
        Py_ssize_t n = s.len / 2;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = (uint32_t)src[i] << 16;
        Py_END_ALLOW_THREADS
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "bf16_to_f32_bytes: an odd number of bytes");
    }
    PyBuffer_Release(&s);
    return out;
}

/* f16_to_bf16_rne(src, dst) -> bool: rounded to nearest even (torch's cast); False if one is NaN. */
static PyObject *py_f16_to_bf16_rne(PyObject *self, PyObject *args) { return run(args, RNE, "f16_to_bf16_rne"); }

static PyObject *py_set_portable(PyObject *self, PyObject *arg) {
    portable = PyObject_IsTrue(arg);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"f16_to_bf16", py_f16_to_bf16, METH_VARARGS, "f16_to_bf16(src, dst) -> bool"},
    {"bf16_to_f16", py_bf16_to_f16, METH_VARARGS, "bf16_to_f16(src, dst)"},
    {"bf16_to_f16_bytes", py_bf16_to_f16_bytes, METH_VARARGS, "bf16_to_f16_bytes(src) -> bytes"},
    {"bf16_to_f32_bytes", py_bf16_to_f32_bytes, METH_VARARGS, "bf16_to_f32_bytes(src) -> bytes"},
    {"f16_to_bf16_rne", py_f16_to_bf16_rne, METH_VARARGS, "f16_to_bf16_rne(src, dst) -> bool"},
    {"set_portable", py_set_portable, METH_O, "set_portable(flag): scalar loops only"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_narrow", "F16 <-> BF16 casts, exact.", -1, methods};

PyMODINIT_FUNC PyInit__narrow(void) { return PyModule_Create(&module); }
