/* Format-4 exact coder kernels: one fused scan (tokens, counts, raw bits), rANS over tokens only.
 *
 * The stream is specified in docs/FORMAT.md ("Exact tensor payloads", format 4) and implemented twice:
 * here, and in vectorised numpy in compression/exact_any.py (the fallback when this extension did not
 * build); tests/test_codecs_any.py checks that both write and read the same bytes.
 *
 * Tokens and raw bits as compression/exact_any_tokens.py computes them: raw bits are packed LSB-first
 * into their own bit stream in element order (never through rANS), and
 * the rANS stream (32-bit states, 16-bit words, L = 2^16, 12-bit frequencies) codes tokens only, so
 * each element costs one rANS op, at most one renormalisation, and no divide (a 64-bit reciprocal).
 * Element i of a chunk is in lane i % lanes at step i / lanes; the decoder runs lanes in ascending
 * order, reading a word after a lane's op when its state falls below 2^16; the encoder runs the exact
 * reverse and writes words back to front.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROB_BITS 12
#define PROB_SCALE (1u << PROB_BITS)
#define RANS_L (1u << 16)
#define MAX_LANES 4096
#define MODE_DELTA 0
#define MODE_FLOAT 1

typedef struct {
    int mode, shift, rb;
    uint64_t mask, tmask;
    uint8_t nraw[256], mb[256], sh[256]; /* per token: raw bit count, leading magnitude bits, their shift */
} layout_t;

static inline uint64_t load(const uint8_t *p, Py_ssize_t i, const int width) {
    switch (width) {
    case 1: return p[i];
    case 2: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    default: { uint64_t v; memcpy(&v, p + 8 * i, 8); return v; }
    }
}

static inline void store(uint8_t *p, Py_ssize_t i, const int width, uint64_t v) {
    switch (width) {
    case 1: p[i] = (uint8_t)v; break;
    case 2: { uint16_t w = (uint16_t)v; memcpy(p + 2 * i, &w, 2); break; }
    case 4: { uint32_t w = (uint32_t)v; memcpy(p + 4 * i, &w, 4); break; }
    default: memcpy(p + 8 * i, &v, 8);
    }
}

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int parse_layout(layout_t *L, int width, int mode, int shift, int tbits) {
    if (!(width == 1 || width == 2 || width == 4 || width == 8) || tbits < 0 || tbits > 8 || shift < 0 ||
        shift + tbits > width * 8 || (mode != MODE_DELTA && mode != MODE_FLOAT)) {
        PyErr_SetString(PyExc_ValueError, "_exact_any: bad layout");
        return -1;
    }
    L->mode = mode; L->shift = shift;
    L->mask = width == 8 ? ~0ull : ((1ull << (8 * width)) - 1);
    L->tmask = (1ull << tbits) - 1;
    L->rb = width == 8 ? 1 : 2;
    for (int tok = 0; tok < 256; tok++) {
        int idx = tok >> 1;
        if (mode == MODE_FLOAT) { L->nraw[tok] = (uint8_t)(shift + 1); L->mb[tok] = 0; L->sh[tok] = 0; }
        else if (idx < 4) { L->nraw[tok] = 0; L->mb[tok] = (uint8_t)idx; L->sh[tok] = 0; }
        else {
            int k = 3 + ((idx - 4) >> L->rb), low = k - 1 - L->rb;
            if (k > 8 * width) low = 0; /* a token no encoder writes: decodes to garbage, never out of range */
            L->nraw[tok] = (uint8_t)low;
            L->mb[tok] = (uint8_t)((1 << L->rb) + ((idx - 4) & ((1 << L->rb) - 1)));
            L->sh[tok] = (uint8_t)low;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------- scan */
/* Delta tokens of 1- and 2-byte elements by table (built once at import): the difference d mod 2^bits to
 * token | raw bit count << 8 | raw bits << 12 (rb = 2: at most 13 raw bits). */
static uint32_t delta16[65536], delta8[256];

static uint32_t delta_entry(uint32_t d, int width) {
    uint32_t mask = width == 2 ? 0xFFFF : 0xFF, s = d >> (8 * width - 1), m = s ? (0 - d) & mask : d;
    int k = m ? 32 - __builtin_clz(m) : 0;
    if (k <= 2) return 2 * m + s;
    int low = k - 3;
    uint32_t idx = 4 + ((uint32_t)(k - 3) << 2) + ((m >> low) & 3);
    return (2 * idx + s) | (uint32_t)low << 8 | (m & ((1u << low) - 1)) << 12;
}

static void init_tables(void) {
    for (uint32_t d = 0; d < 65536; d++) delta16[d] = delta_entry(d, 2);
    for (uint32_t d = 0; d < 256; d++) delta8[d] = delta_entry(d, 1);
}

/* One pass: token (u16 context << 8 | token), its count, and its raw bits appended LSB-first to raw
 * (the accumulator is flushed whole bytes at a time with an always-8-byte store; at most 32 bits go in
 * at once, so it never holds more than 39). Specialised per width, mode and parent presence. */
static inline __attribute__((always_inline)) int64_t scan_core(
    const layout_t *L, const int width, const int mode, const int has_parent, const uint8_t *restrict c,
    const uint8_t *restrict p, Py_ssize_t n, uint16_t *restrict syms, uint32_t *restrict counts,
    Py_ssize_t hmask, uint8_t *restrict raw) {
    const int rb = L->rb, top = width * 8 - 1, shift = L->shift;
    const uint64_t rbmask = (1u << rb) - 1, mask = L->mask, tmask = L->tmask;
    const uint32_t *restrict dt = width == 2 ? delta16 : delta8;
    uint64_t acc = 0;
    int cnt = 0;
    uint8_t *restrict out = raw, seen[256] = {0};
#define PUT(v, nb) do { acc |= (uint64_t)(v) << cnt; cnt += (nb); memcpy(out, &acc, 8); \
                        out += cnt >> 3; acc >>= cnt & ~7; cnt &= 7; } while (0)
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t cv = load(c, i, width), r;
        uint32_t sym;
        int nr;
        if (mode == MODE_FLOAT) {
            sym = (uint32_t)((cv >> shift) & tmask);
            r = ((cv >> top) << shift) | (cv & ((1ull << shift) - 1));
            nr = shift + 1;
        } else if (width <= 2) {
            uint64_t pv = has_parent ? load(p, i, width) : 0;
            uint32_t e = dt[(cv - pv) & mask];
            sym = (has_parent ? (uint32_t)((pv >> shift) & tmask) << 8 : 0) | (e & 0xFF);
            nr = (e >> 8) & 15;
            r = e >> 12;
        } else {
            uint64_t pv = has_parent ? load(p, i, width) : 0;
            uint64_t d = (cv - pv) & mask, s = d >> top;
            uint64_t m = s ? ((0 - d) & mask) : d;
            int k = width == 8 ? 64 - __builtin_clzll(m | 1) : 32 - __builtin_clz((uint32_t)m | 1);
            k -= m == 0;
            uint64_t isbig = 0 - (uint64_t)(k >= 3); /* masks, not branches: k is unpredictable */
            int low = (k - 1 - rb) & (int)isbig;
            uint64_t big = 4 + ((uint64_t)(k - 3) << rb) + ((m >> low) & rbmask);
            uint64_t idx = m ^ ((m ^ big) & isbig);
            sym = (uint32_t)((has_parent ? ((pv >> shift) & tmask) << 8 : 0) | (2 * idx + s));
            r = m & ((1ull << low) - 1);
            nr = low;
        }
        counts[(Py_ssize_t)sym * (hmask + 1) + (i & hmask)]++; /* h counters per token: no store-to-load
                                                                  chain on repeats, one cache line */
        syms[i] = (uint16_t)sym;
        seen[sym >> 8] = 1;
        if (width == 8) {
            int lo = nr < 32 ? nr : 32;
            PUT(r & ((1ull << lo) - 1), lo);
            PUT(r >> lo, nr - lo);
        } else {
            PUT(r, nr);
        }
    }
#undef PUT
    if (hmask) /* fold each token's counters into its first, in the contexts that occur */
        for (Py_ssize_t ctx = 0; ctx < 256; ctx++)
            if (seen[ctx])
                for (Py_ssize_t k = ctx << 8; k < (ctx + 1) << 8; k++)
                    for (Py_ssize_t h = 1; h <= hmask; h++) counts[k * (hmask + 1)] += counts[k * (hmask + 1) + h];
    if (cnt) { *out = (uint8_t)acc; out++; }
    return (int64_t)(out - raw) * 8 - (cnt ? 8 - cnt : 0);
}

/* fn specialised for the width, the mode and whether a parent is given. */
#define DISPATCH(fn, width, mode, p, ...)                                                              \
    switch (width) {                                                                                    \
    case 1: DISPATCH_W(fn, 1, mode, p, __VA_ARGS__);                                                    \
    case 2: DISPATCH_W(fn, 2, mode, p, __VA_ARGS__);                                                    \
    case 4: DISPATCH_W(fn, 4, mode, p, __VA_ARGS__);                                                    \
    default: DISPATCH_W(fn, 8, mode, p, __VA_ARGS__);                                                   \
    }
#define DISPATCH_W(fn, w, mode, p, ...)                                                                 \
    return (mode) == MODE_FLOAT ? fn(w, MODE_FLOAT, 0, __VA_ARGS__)                                     \
           : (p) ? fn(w, MODE_DELTA, 1, __VA_ARGS__) : fn(w, MODE_DELTA, 0, __VA_ARGS__)

#define SCAN(w, m, hp, L, c, p, n, syms, counts, hmask, raw) scan_core(L, w, m, hp, c, p, n, syms, counts, hmask, raw)
static int64_t scan_any(const layout_t *L, int width, int mode, const uint8_t *c, const uint8_t *p, Py_ssize_t n,
                        uint16_t *syms, uint32_t *counts, Py_ssize_t hmask, uint8_t *raw) {
    DISPATCH(SCAN, width, mode, p, L, c, p, n, syms, counts, hmask, raw)
}

static int get_parent(PyObject *obj, Py_buffer *buf, Py_ssize_t need) {
    buf->obj = NULL; buf->buf = NULL;
    if (obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE) < 0) return -1;
    if (buf->len != need) {
        PyBuffer_Release(buf);
        buf->obj = NULL;
        PyErr_SetString(PyExc_ValueError, "_exact_any: parent length differs from the tensor's");
        return -1;
    }
    return 0;
}

/* scan(child, parent|None, width, mode, shift, tbits, syms u16[n], counts u32[65536 * h] (added to; h = 1,
 *      2 or 4 counters per token, element i counted in counter i % h; on return the first counter holds
 *      the token's total), raw u8[n*width + 8]) -> raw bits. */
static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer child, syms, counts, raw, parent;
    PyObject *pobj, *ret = NULL;
    int width, mode, shift, tbits;
    layout_t L;
    if (!PyArg_ParseTuple(args, "y*Oiiiiw*w*w*", &child, &pobj, &width, &mode, &shift, &tbits, &syms, &counts,
                          &raw))
        return NULL;
    parent.obj = NULL;
    if (parse_layout(&L, width, mode, shift, tbits) < 0) goto out;
    Py_ssize_t n = child.len / width;
    Py_ssize_t h = counts.len / (4 * 65536);
    if (syms.len != 2 * n || !(h == 1 || h == 2 || h == 4) || counts.len != h * 4 * 65536 ||
        raw.len < n * width + 8) {
        PyErr_SetString(PyExc_ValueError, "_exact_any.scan: bad syms/counts/raw buffer sizes");
        goto out;
    }
    if (get_parent(pobj, &parent, child.len) < 0) goto out;
    int64_t bits;
    Py_BEGIN_ALLOW_THREADS
    bits = scan_any(&L, width, mode, child.buf, parent.buf, n, syms.buf, counts.buf, h - 1, raw.buf);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(bits);
out:
    if (parent.obj) PyBuffer_Release(&parent);
    PyBuffer_Release(&child); PyBuffer_Release(&syms); PyBuffer_Release(&counts); PyBuffer_Release(&raw);
    return ret;
}

/* ----------------------------------------------------------------------------------------- encode */
/* enc: per token (u16 context << 8 | token: every index is in bounds) two u64: the reciprocal, then
 * bias | freq << 32 | (4096 − freq) << 48. */
static Py_ssize_t encode_core(const uint16_t *restrict syms, Py_ssize_t n, int lanes, const uint64_t *restrict enc,
                              uint32_t *restrict x, uint16_t *restrict w, Py_ssize_t pos) {
    for (int j = 0; j < lanes; j++) x[j] = RANS_L;
    Py_ssize_t steps = (n + lanes - 1) / lanes;
    for (Py_ssize_t t = steps - 1; t >= 0; t--) {
        Py_ssize_t base = t * lanes;
        int a = (int)(n - base < lanes ? n - base : lanes);
        for (int j = a - 1; j >= 0; j--) {
            uint32_t s = syms[base + j];
            const uint64_t *e = enc + 2 * (Py_ssize_t)s;
            uint64_t rcp = e[0], meta = e[1];
            uint32_t f = (uint32_t)(meta >> 32) & 0xFFFF, xs = x[j];
            uint32_t need = (xs >> 20) >= f;
            w[pos - 1] = (uint16_t)xs;
            pos -= need;
            xs >>= need << 4;
            uint32_t q = (uint32_t)(((unsigned __int128)xs * rcp) >> 64);
            x[j] = xs + (uint32_t)meta + q * (uint32_t)(meta >> 48);
        }
    }
    return pos;
}

/* encode(syms u16[n], lanes, enc u64[65536*2], states_out u32[lanes], words u16[cap])
 * -> words written (at the end of words). */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer syms, enc, states, words;
    int lanes;
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "y*iy*w*w*", &syms, &lanes, &enc, &states, &words)) return NULL;
    Py_ssize_t n = syms.len / 2, cap = words.len / 2, pos;
    if (lanes < 1 || lanes > MAX_LANES || states.len != 4 * lanes || enc.len != 65536 * 16 || cap < n + 1) {
        PyErr_SetString(PyExc_ValueError, "_exact_any.encode: bad lanes/states/enc/words");
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    pos = encode_core(syms.buf, n, lanes, enc.buf, states.buf, words.buf, cap);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(cap - pos);
out:
    PyBuffer_Release(&syms); PyBuffer_Release(&enc);
    PyBuffer_Release(&states); PyBuffer_Release(&words);
    return ret;
}

/* ----------------------------------------------------------------------------------------- decode */
/* sl: u8 token per (row, slot); fc: u32 per (row, token) = cum | (freq − 1) << 12 (two small tables rather
 * than one u32 per slot: the lookups stay in cache). words has `lanes` words of zero padding
 * and raw `lanes * width + 8` bytes: within one step a lane reads at most one word and 8 * width bits, so
 * checking once per step that neither reader has passed its stream's end keeps every read in bounds
 * (a corrupt stream stops there, and the caller's count check reports it). */
static inline uint64_t bget(const uint8_t *raw, uint64_t *bp, int n) {
    uint64_t r = (load64(raw + (*bp >> 3)) >> (*bp & 7)) & ((1ull << n) - 1);
    *bp += (uint64_t)n;
    return r;
}

static inline __attribute__((always_inline)) int decode_core(
    const layout_t *L, const int width, const int mode, const int has_parent, uint8_t *restrict o,
    const uint8_t *restrict p, Py_ssize_t n, int lanes, const uint16_t *restrict rm, Py_ssize_t nrows,
    const uint8_t *restrict sl, const uint32_t *restrict fc, uint32_t *restrict x, const uint16_t *restrict w,
    Py_ssize_t nw, const uint8_t *restrict raw, uint64_t nbits, Py_ssize_t *wpos, uint64_t *bitpos) {
    uint8_t nrt[256], tk[MAX_LANES];
    uint64_t lead[256], ones[256];
    uint32_t roff[256]; /* context -> its table's offset in lut, or bit 31 where it has none */
    for (int i = 0; i < 256; i++) {
        nrt[i] = L->nraw[i];
        ones[i] = width == 8 ? 0 : (1ull << nrt[i]) - 1;
        lead[i] = (uint64_t)L->mb[i] << L->sh[i];
        roff[i] = (Py_ssize_t)rm[i] < nrows ? (uint32_t)rm[i] << PROB_BITS : 0x80000000u;
    }
    const int top = width * 8 - 1, shift = L->shift;
    const uint64_t mask = L->mask, tmask = L->tmask;
    Py_ssize_t pos = 0;
    uint64_t bp = 0;
    uint32_t bad = 0;
    Py_ssize_t steps = (n + lanes - 1) / lanes;
    for (Py_ssize_t t = 0; t < steps; t++) {
        Py_ssize_t base = t * lanes;
        int a = (int)(n - base < lanes ? n - base : lanes);
        if (pos > nw || bp > nbits) break;
        /* two passes per step: the rANS ops alone (short bodies, so many lanes are in flight at once),
         * then raw bits and values */
        for (int j = 0; j < a; j++) {
            uint64_t pv = has_parent ? load(p, base + j, width) : 0;
            uint32_t ro = roff[mode == MODE_DELTA && has_parent ? (pv >> shift) & tmask : 0];
            bad |= ro;
            ro &= 0x7FFFFFFFu;
            uint32_t xs = x[j], slot = xs & (PROB_SCALE - 1);
            uint32_t tok = sl[ro + slot];
            uint32_t e = fc[(ro >> (PROB_BITS - 8)) + tok];
            xs = ((e >> 12) & 0xFFF) * (xs >> PROB_BITS) + (xs >> PROB_BITS) + slot - (e & 0xFFF);
            uint32_t v = w[pos];
            uint32_t need = xs < RANS_L; /* arithmetic select: a branch here mispredicts ~1 in 5 */
            x[j] = (xs << (need << 4)) | (v & (0u - need));
            pos += need;
            tk[j] = (uint8_t)tok;
        }
        for (int j = 0; j < a; j++) {
            uint32_t tok = tk[j];
            int nr = nrt[tok];
            uint64_t r;
            if (width == 8) {
                int lo = nr < 32 ? nr : 32;
                r = bget(raw, &bp, lo);
                r |= bget(raw, &bp, nr - lo) << lo;
            } else {
                r = (load64(raw + (bp >> 3)) >> (bp & 7)) & ones[tok];
                bp += (uint64_t)nr;
            }
            uint64_t val;
            if (mode == MODE_FLOAT) {
                val = ((r >> shift) << top) | ((uint64_t)tok << shift) | (r & ((1ull << shift) - 1));
            } else {
                uint64_t pv = has_parent ? load(p, base + j, width) : 0;
                uint64_t s = tok & 1, m = lead[tok] | r;
                val = (pv + ((m ^ (0 - s)) + s)) & mask;
            }
            store(o, base + j, width, val);
        }
    }
    *wpos = pos;
    *bitpos = bp;
    return bad >> 31;
}

#define DECODE(w, m, hp, L, o, p, n, lanes, rm, nrows, sl, fc, x, wd, nw, raw, nbits, wpos, bp) \
    decode_core(L, w, m, hp, o, p, n, lanes, rm, nrows, sl, fc, x, wd, nw, raw, nbits, wpos, bp)
static int decode_any(const layout_t *L, int width, int mode, uint8_t *o, const uint8_t *p, Py_ssize_t n, int lanes,
                      const uint16_t *rm, Py_ssize_t nrows, const uint8_t *sl, const uint32_t *fc, uint32_t *x,
                      const uint16_t *wd, Py_ssize_t nw, const uint8_t *raw, uint64_t nbits, Py_ssize_t *wpos,
                      uint64_t *bp) {
    DISPATCH(DECODE, width, mode, p, L, o, p, n, lanes, rm, nrows, sl, fc, x, wd, nw, raw, nbits, wpos, bp)
}

/* decode(words u16[nw + lanes] (zero padding), states u32[lanes] (updated in place), raw u8 (raw bytes, then
 *        lanes * width + 8 bytes of padding), parent|None, width,
 *        mode, shift, tbits, lanes, rowmap u16[256], slots u8[rows*4096], fc u32[rows*256], out) -> (words read, raw bits read),
 *        or None when a context of the parent has no table. The caller checks both counts and the states. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer words, states, raw, rowmap, slots, fcs, out, parent;
    PyObject *pobj, *ret = NULL;
    int width, mode, shift, tbits, lanes;
    layout_t L;
    if (!PyArg_ParseTuple(args, "y*w*y*Oiiiiiy*y*y*w*", &words, &states, &raw, &pobj, &width, &mode, &shift,
                          &tbits, &lanes, &rowmap, &slots, &fcs, &out))
        return NULL;
    parent.obj = NULL;
    if (parse_layout(&L, width, mode, shift, tbits) < 0) goto done;
    Py_ssize_t n = out.len / width, nw = words.len / 2 - lanes, nrows = slots.len / PROB_SCALE, wpos;
    Py_ssize_t pad = (Py_ssize_t)lanes * width + 8;
    if (lanes < 1 || lanes > MAX_LANES || states.len != 4 * lanes || rowmap.len != 512 || nw < 0 ||
        raw.len < pad || ((uintptr_t)words.buf & 1) || fcs.len != nrows * 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "_exact_any.decode: bad lanes/states/rowmap/words/raw padding/tables");
        goto done;
    }
    uint64_t bits, nbits = 8 * (uint64_t)(raw.len - pad);
    if (get_parent(pobj, &parent, out.len) < 0) goto done;
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = decode_any(&L, width, mode, out.buf, parent.buf, n, lanes, rowmap.buf, nrows, slots.buf, fcs.buf, states.buf,
                     words.buf, nw, raw.buf, nbits, &wpos, &bits);
    Py_END_ALLOW_THREADS
    if (bad) { ret = Py_None; Py_INCREF(ret); }
    else ret = Py_BuildValue("nK", wpos, (unsigned long long)bits);
done:
    if (parent.obj) PyBuffer_Release(&parent);
    PyBuffer_Release(&words); PyBuffer_Release(&states); PyBuffer_Release(&raw);
    PyBuffer_Release(&rowmap); PyBuffer_Release(&slots); PyBuffer_Release(&fcs); PyBuffer_Release(&out);
    return ret;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS, "Tokens (u16 context << 8 | token), counts and packed raw bits."},
    {"encode", py_encode, METH_VARARGS, "rANS-encode tokens; words are written at the end of words."},
    {"decode", py_decode, METH_VARARGS, "Decode a chunk into out; returns (words read, raw bits read)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_exact_any", "Format-4 exact coder kernels.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__exact_any(void) {
    init_tables();
    return PyModule_Create(&module);
}
