/* Format-3 exact coder kernels: token mapping + interleaved static rANS, encode and decode.
 *
 * The bit stream is specified in docs/FORMAT.md ("Exact tensor payloads", format 3) and implemented
 * twice: here, and in pure numpy in compression/exact_rans.py (the fallback when this extension did not
 * build). Both must produce and read the same bytes; tests/test_codecs_rans.py checks that they do.
 *
 * rANS: 32-bit states, 16-bit words, L = 2^16, 12-bit frequencies. Element i goes to lane i % lanes at
 * step i / lanes. Within a step the decoder runs, for lanes in ascending order, first every token op,
 * then raw-bit piece 0 of every lane, then piece 1, ... (op-major), reading a word whenever a state
 * falls below 2^16. The encoder runs the exact reverse and writes words back to front.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROB_BITS 12
#define PROB_SCALE (1u << PROB_BITS)
#define RANS_L (1u << 16)
#define ALPHA 256 /* token table stride; tokens are < 256 */
#define MAX_LANES 4096
#define MODE_DELTA 0
#define MODE_FLOAT 1

typedef struct {
    int width, mode, shift, tbits, pieces, rb;
    uint64_t mask;
    uint8_t nraw[256], mb[256], sh[256]; /* per token: raw bit count, leading magnitude bits, their shift */
} layout_t;

static inline uint64_t load(const uint8_t *p, Py_ssize_t i, int width) {
    switch (width) {
    case 1: return p[i];
    case 2: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    default: { uint64_t v; memcpy(&v, p + 8 * i, 8); return v; }
    }
}

static inline void store(uint8_t *p, Py_ssize_t i, int width, uint64_t v) {
    switch (width) {
    case 1: p[i] = (uint8_t)v; break;
    case 2: { uint16_t w = (uint16_t)v; memcpy(p + 2 * i, &w, 2); break; }
    case 4: { uint32_t w = (uint32_t)v; memcpy(p + 4 * i, &w, 4); break; }
    default: memcpy(p + 8 * i, &v, 8);
    }
}

static inline int bitlen(uint64_t m) { return m ? 64 - __builtin_clzll(m) : 0; }

/* One element to (context, token, raw bits, raw bit count). */
static inline void tokenize(const layout_t *L, uint64_t c, uint64_t p, uint32_t *ctx, uint32_t *tok,
                            uint64_t *raw, int *nraw) {
    uint64_t tmask = (1ull << L->tbits) - 1;
    if (L->mode == MODE_FLOAT) {
        *ctx = 0;
        *tok = (uint32_t)((c >> L->shift) & tmask);
        *raw = ((c >> (L->width * 8 - 1)) << L->shift) | (c & ((1ull << L->shift) - 1));
        *nraw = L->shift + 1;
        return;
    }
    *ctx = (uint32_t)((p >> L->shift) & tmask);
    uint64_t d = (c - p) & L->mask;
    uint32_t s = (uint32_t)(d >> (L->width * 8 - 1));
    uint64_t m = s ? ((0 - d) & L->mask) : d;
    int k = bitlen(m), rb = L->rb;
    uint32_t idx;
    if (k <= 2) {
        idx = k == 2 ? 2 + (uint32_t)(m & 1) : (uint32_t)k;
        *raw = 0;
        *nraw = 0;
    } else {
        int low = k - 1 - rb;
        idx = 4 + ((uint32_t)(k - 3) << rb) + (uint32_t)((m >> low) & ((1u << rb) - 1));
        *raw = m & ((1ull << low) - 1);
        *nraw = low;
    }
    *tok = 2 * idx + s;
}

static inline uint64_t untokenize(const layout_t *L, uint32_t tok, uint64_t raw, uint64_t p) {
    if (L->mode == MODE_FLOAT) {
        uint64_t low = (1ull << L->shift) - 1;
        return ((raw >> L->shift) << (L->width * 8 - 1)) | ((uint64_t)tok << L->shift) | (raw & low);
    }
    uint64_t s = tok & 1, m = ((uint64_t)L->mb[tok] << L->sh[tok]) | raw;
    return (p + ((m ^ (0 - s)) + s)) & L->mask;
}

static int parse_layout(layout_t *L, int width, int mode, int shift, int tbits) {
    if (!(width == 1 || width == 2 || width == 4 || width == 8) || tbits < 0 || tbits > 8 || shift < 0 ||
        shift + tbits > width * 8 || (mode != MODE_DELTA && mode != MODE_FLOAT)) {
        PyErr_SetString(PyExc_ValueError, "_exactc: bad layout");
        return -1;
    }
    L->width = width; L->mode = mode; L->shift = shift; L->tbits = tbits;
    L->mask = width == 8 ? ~0ull : ((1ull << (8 * width)) - 1);
    L->rb = width == 8 ? 1 : 2;
    int maxraw = mode == MODE_FLOAT ? shift + 1 : width * 8 - 1 - L->rb;
    L->pieces = (maxraw + 15) / 16;
    for (int tok = 0; tok < 256; tok++) {
        uint32_t idx = (uint32_t)tok >> 1;
        if (mode == MODE_FLOAT) { L->nraw[tok] = (uint8_t)(shift + 1); L->mb[tok] = 0; L->sh[tok] = 0; }
        else if (idx < 4) { L->nraw[tok] = 0; L->mb[tok] = (uint8_t)idx; L->sh[tok] = 0; }
        else {
            int k = 3 + (int)((idx - 4) >> L->rb), low = k - 1 - L->rb;
            if (k > 8 * width) low = 0; /* a token no encoder writes: decodes to garbage, never out of range */
            L->nraw[tok] = (uint8_t)low;
            L->mb[tok] = (uint8_t)((1u << L->rb) + ((idx - 4) & ((1u << L->rb) - 1)));
            L->sh[tok] = (uint8_t)low;
        }
    }
    return 0;
}

/* Optional parent: None or a buffer of the child's byte length. */
static int get_parent(PyObject *obj, Py_buffer *buf, Py_ssize_t need) {
    if (obj == Py_None) { buf->buf = NULL; buf->obj = NULL; return 0; }
    if (PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE) < 0) return -1;
    if (buf->len != need) {
        PyBuffer_Release(buf);
        PyErr_SetString(PyExc_ValueError, "_exactc: parent length differs from the tensor's");
        return -1;
    }
    return 0;
}

static PyObject *py_hist(PyObject *self, PyObject *args) {
    Py_buffer child, counts, parent;
    PyObject *pobj;
    int width, mode, shift, tbits;
    layout_t L;
    if (!PyArg_ParseTuple(args, "y*Oiiiiw*", &child, &pobj, &width, &mode, &shift, &tbits, &counts))
        return NULL;
    PyObject *ret = NULL;
    if (parse_layout(&L, width, mode, shift, tbits) < 0) goto out;
    if (counts.len != (Py_ssize_t)(256 * ALPHA * sizeof(uint32_t))) {
        PyErr_SetString(PyExc_ValueError, "_exactc.hist: counts must be uint32[256*512]");
        goto out;
    }
    if (get_parent(pobj, &parent, child.len) < 0) goto out;
    {
        Py_ssize_t n = child.len / width;
        uint32_t *cnt = (uint32_t *)counts.buf;
        const uint8_t *c = child.buf, *p = parent.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t ctx, tok; uint64_t raw; int nraw;
            tokenize(&L, load(c, i, width), p ? load(p, i, width) : 0, &ctx, &tok, &raw, &nraw);
            cnt[ctx * ALPHA + tok]++;
        }
        Py_END_ALLOW_THREADS
    }
    if (parent.obj) PyBuffer_Release(&parent);
    ret = Py_None; Py_INCREF(ret);
out:
    PyBuffer_Release(&child); PyBuffer_Release(&counts);
    return ret;
}

/* The encoder's and decoder's loops, inlined once per element width so that loads and stores are plain. */
static inline __attribute__((always_inline)) Py_ssize_t encode_core(
    const layout_t *L, const int width, const uint8_t *c, const uint8_t *p, Py_ssize_t n, int lanes,
    const uint16_t *rm, const uint32_t *fr, const uint32_t *cu, uint32_t *x, uint16_t *w, Py_ssize_t pos) {
    uint32_t sym[MAX_LANES];
    uint64_t rawv[MAX_LANES];
    int nraw[MAX_LANES];
    for (int j = 0; j < lanes; j++) x[j] = RANS_L;
    Py_ssize_t steps = (n + lanes - 1) / lanes;
    for (Py_ssize_t t = steps - 1; t >= 0; t--) {
        Py_ssize_t base = t * lanes;
        int a = (int)(n - base < lanes ? n - base : lanes);
        for (int j = 0; j < a; j++) {
            uint32_t ctx, tok;
            tokenize(L, load(c, base + j, width), p ? load(p, base + j, width) : 0, &ctx, &tok, &rawv[j],
                     &nraw[j]);
            sym[j] = (uint32_t)rm[ctx] * ALPHA + tok;
        }
        for (int k = L->pieces - 1; k >= 0; k--) {
            for (int j = a - 1; j >= 0; j--) {
                int wi = nraw[j] - 16 * k;
                wi = wi < 0 ? 0 : (wi > 16 ? 16 : wi);
                uint32_t val = (uint32_t)((rawv[j] >> (16 * k)) & ((1u << wi) - 1));
                uint32_t xs = x[j];
                uint32_t need = (uint64_t)xs >= (1ull << (32 - wi));
                w[pos - 1] = (uint16_t)xs;
                pos -= need;
                xs = need ? xs >> 16 : xs;
                x[j] = (uint32_t)(((uint64_t)xs << wi) | val);
            }
        }
        for (int j = a - 1; j >= 0; j--) {
            uint32_t f = fr[sym[j]], xs = x[j];
            uint32_t need = (uint64_t)xs >= ((uint64_t)f << (32 - PROB_BITS));
            w[pos - 1] = (uint16_t)xs;
            pos -= need;
            xs = need ? xs >> 16 : xs;
            x[j] = ((xs / f) << PROB_BITS) + (xs % f) + cu[sym[j]];
        }
    }
    return pos;
}

/* lut: u32 per (row, slot) = cum | (freq − 1) << 12 | token << 24. w has one zero word of padding. */
static inline __attribute__((always_inline)) Py_ssize_t decode_core(
    const layout_t *L, const int width, uint8_t *o, const uint8_t *p, Py_ssize_t n, int lanes,
    const uint16_t *rm, Py_ssize_t nrows, const uint32_t *lu, uint32_t *x, const uint16_t *w, Py_ssize_t nw) {
    uint32_t tok[MAX_LANES];
    uint64_t rawv[MAX_LANES], par[MAX_LANES];
    uint64_t tmask = (1ull << L->tbits) - 1;
    Py_ssize_t pos = 0;
    Py_ssize_t steps = (n + lanes - 1) / lanes;
    for (Py_ssize_t t = 0; t < steps; t++) {
        Py_ssize_t base = t * lanes;
        int a = (int)(n - base < lanes ? n - base : lanes);
        int bad = 0;
        for (int j = 0; j < a; j++) {
            uint64_t pv = p ? load(p, base + j, width) : 0;
            uint32_t row = rm[L->mode == MODE_FLOAT ? 0 : (uint32_t)((pv >> L->shift) & tmask)];
            bad |= (Py_ssize_t)row >= nrows;
            row = (Py_ssize_t)row >= nrows ? 0 : row;
            par[j] = pv;
            uint32_t xs = x[j], slot = xs & (PROB_SCALE - 1);
            uint32_t e = lu[(Py_ssize_t)row * PROB_SCALE + slot];
            xs = ((e >> 12) & 0xFFF) * (xs >> PROB_BITS) + (xs >> PROB_BITS) + slot - (e & 0xFFF);
            uint32_t need = xs < RANS_L;
            uint32_t v = w[pos < nw ? pos : nw];
            xs = need ? (xs << 16) | v : xs;
            pos += need;
            x[j] = xs;
            tok[j] = e >> 24;
            rawv[j] = 0;
        }
        if (bad) return -1;
        for (int k = 0; k < L->pieces; k++) {
            for (int j = 0; j < a; j++) {
                int wi = (int)L->nraw[tok[j]] - 16 * k;
                wi = wi < 0 ? 0 : (wi > 16 ? 16 : wi);
                uint32_t xs = x[j];
                rawv[j] |= (uint64_t)(xs & ((1u << wi) - 1)) << (16 * k);
                xs >>= wi;
                uint32_t need = xs < RANS_L;
                uint32_t v = w[pos < nw ? pos : nw];
                xs = need ? (xs << 16) | v : xs;
                pos += need;
                x[j] = xs;
            }
        }
        for (int j = 0; j < a; j++) store(o, base + j, width, untokenize(L, tok[j], rawv[j], par[j]));
    }
    return pos;
}

#define BY_WIDTH(call, width, ...)                                                                      \
    ((width) == 1 ? call(__VA_ARGS__, 1) : (width) == 2 ? call(__VA_ARGS__, 2)                         \
     : (width) == 4 ? call(__VA_ARGS__, 4) : call(__VA_ARGS__, 8))

/* encode(child, parent|None, width, mode, shift, tbits, lanes, rowmap u16[256], freq u32[rows*256],
 *        cum u32[rows*256], states_out u32[lanes], words_out u16[cap]) -> number of words (at the end;
 *        words_out[0] is scratch). */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer child, rowmap, freq, cum, states, words, parent;
    PyObject *pobj;
    int width, mode, shift, tbits, lanes;
    layout_t L;
    if (!PyArg_ParseTuple(args, "y*Oiiiiiy*y*y*w*w*", &child, &pobj, &width, &mode, &shift, &tbits, &lanes,
                          &rowmap, &freq, &cum, &states, &words))
        return NULL;
    PyObject *ret = NULL;
    parent.obj = NULL;
    if (parse_layout(&L, width, mode, shift, tbits) < 0) goto out;
    if (lanes < 1 || lanes > MAX_LANES || states.len != (Py_ssize_t)(4 * lanes)) {
        PyErr_SetString(PyExc_ValueError, "_exactc.encode: bad lanes/states");
        goto out;
    }
    Py_ssize_t n = child.len / width, cap = words.len / 2, pos;
    if (cap < n * (L.pieces + 1) + 1) {
        PyErr_SetString(PyExc_ValueError, "_exactc.encode: word buffer too small");
        goto out;
    }
    if (get_parent(pobj, &parent, child.len) < 0) goto out;
    Py_BEGIN_ALLOW_THREADS
#define ENC(l, c, p, n, lanes, rm, fr, cu, x, w, pos, width) encode_core(l, width, c, p, n, lanes, rm, fr, cu, x, w, pos)
    pos = BY_WIDTH(ENC, width, &L, child.buf, parent.buf, n, lanes, rowmap.buf, freq.buf, cum.buf, states.buf,
                   words.buf, cap);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(cap - pos);
out:
    if (parent.obj) PyBuffer_Release(&parent);
    PyBuffer_Release(&child); PyBuffer_Release(&rowmap); PyBuffer_Release(&freq);
    PyBuffer_Release(&cum); PyBuffer_Release(&states); PyBuffer_Release(&words);
    return ret;
}

/* decode(words u16[nw + 1] (last = padding), states u32[lanes] (updated in place), parent|None, width, mode,
 *        shift, tbits, lanes, rowmap u16[256], lut u32[rows*4096], out) -> words read, or -1 (a context
 *        without a table). The caller checks words read == nw and every state == 2^16. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer words, states, rowmap, lut, out, parent;
    PyObject *pobj;
    int width, mode, shift, tbits, lanes;
    layout_t L;
    if (!PyArg_ParseTuple(args, "y*w*Oiiiiiy*y*w*", &words, &states, &pobj, &width, &mode, &shift, &tbits,
                          &lanes, &rowmap, &lut, &out))
        return NULL;
    PyObject *ret = NULL;
    parent.obj = NULL;
    if (parse_layout(&L, width, mode, shift, tbits) < 0) goto done;
    if (lanes < 1 || lanes > MAX_LANES || states.len != (Py_ssize_t)(4 * lanes) || words.len < 2 ||
        rowmap.len != 512) {
        PyErr_SetString(PyExc_ValueError, "_exactc.decode: bad lanes/states/words/rowmap");
        goto done;
    }
    if (get_parent(pobj, &parent, out.len) < 0) goto done;
    Py_ssize_t n = out.len / width, nw = words.len / 2 - 1, nrows = lut.len / (4 * PROB_SCALE), got;
    Py_BEGIN_ALLOW_THREADS
#define DEC(l, o, p, n, lanes, rm, nrows, lu, x, w, nw, width) decode_core(l, width, o, p, n, lanes, rm, nrows, lu, x, w, nw)
    got = BY_WIDTH(DEC, width, &L, out.buf, parent.buf, n, lanes, rowmap.buf, nrows, lut.buf, states.buf,
                   words.buf, nw);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(got);
done:
    if (parent.obj) PyBuffer_Release(&parent);
    PyBuffer_Release(&words); PyBuffer_Release(&states); PyBuffer_Release(&rowmap);
    PyBuffer_Release(&lut); PyBuffer_Release(&out);
    return ret;
}

static PyMethodDef methods[] = {
    {"hist", py_hist, METH_VARARGS, "Token counts per (context, token) into a uint32[256*512] buffer."},
    {"encode", py_encode, METH_VARARGS, "rANS-encode a tensor; words are written at the end of words_out."},
    {"decode", py_decode, METH_VARARGS, "rANS-decode a tensor into out; returns words read or < 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exactc", "Format-3 exact coder kernels.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__exactc(void) { return PyModule_Create(&module); }
