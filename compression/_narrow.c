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
#include "_half.h"

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
