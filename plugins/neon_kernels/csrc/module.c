/* Python binding: edgert_neon_kernels._kernels.
 *
 * Arrays cross as buffers (no numpy headers at build time). The GIL is released while a kernel
 * runs. Argument checks here guard memory safety; friendlier shape and dtype errors come from the
 * Python wrapper (edgert_neon_kernels/kernels.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "kernels.h"

static const edgert_kernel_table *g_table = NULL; /* the active path */

static const edgert_kernel_table *active_table(void) {
    if (!g_table) g_table = edgert_best_table();
    return g_table;
}

/* float32 in native byte order ("f", "=f", or "<f" on a little-endian machine) */
static int is_float32_buffer(const Py_buffer *b) {
    const char *f = b->format;
    if (b->itemsize != 4 || f == NULL) return 0;
    if (*f == '=' || *f == '@' || (*f == '<' && PY_LITTLE_ENDIAN) || (*f == '>' && !PY_LITTLE_ENDIAN))
        f++;
    return strcmp(f, "f") == 0;
}

PyDoc_STRVAR(linear_doc,
             "linear(x, w, y, T, K, N, wtype, threads, act_q8)\n\n"
             "y[T, N] = x[T, K] . W[N, K]^T on GGUF blocks in place. x: float32 [T, K] C-contiguous;\n"
             "w: N rows of quantized blocks (wtype 0=Q4_0, 1=Q4_1, 2=Q8_0); y: writable float32\n"
             "[T, N]; threads: worker count including the caller; act_q8: quantize activations to\n"
             "int8 blocks first (faster) instead of keeping them fp32.");

static PyObject *py_linear(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *yo;
    Py_ssize_t T, K, N;
    int wtype, threads, act_q8;
    if (!PyArg_ParseTuple(args, "OOOnnniip", &xo, &wo, &yo, &T, &K, &N, &wtype, &threads,
                          &act_q8))
        return NULL;
    Py_buffer x, w, y;
    if (PyObject_GetBuffer(xo, &x, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(wo, &w, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (PyObject_GetBuffer(yo, &y, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&w);
        return NULL;
    }
    PyObject *result = NULL;
    size_t row_bytes = edgert_row_bytes(wtype, K);
    if (row_bytes == 0 || K % EDGERT_QK != 0 || T < 0 || N < 0) {
        PyErr_Format(PyExc_ValueError,
                     "linear: unknown weight type %d or K=%zd not a positive multiple of 32", wtype,
                     K);
    } else if (!is_float32_buffer(&x) || !is_float32_buffer(&y)) {
        PyErr_SetString(PyExc_TypeError, "linear: x and y must be float32 buffers");
    } else if (x.len < T * K * 4 || y.len < T * N * 4 || w.len < (Py_ssize_t)((size_t)N * row_bytes)) {
        PyErr_Format(PyExc_ValueError,
                     "linear: buffers too small for T=%zd K=%zd N=%zd (x %zd, w %zd, y %zd bytes)",
                     T, K, N, x.len, w.len, y.len);
    } else {
        const edgert_kernel_table *kt = active_table();
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = edgert_linear(kt, (const float *)x.buf, T, K, (const uint8_t *)w.buf, N, wtype,
                           (float *)y.buf, threads, act_q8);
        Py_END_ALLOW_THREADS
        if (rc == -2)
            PyErr_NoMemory();
        else if (rc != 0)
            PyErr_SetString(PyExc_ValueError, "linear: bad arguments");
        else
            result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&y);
    return result;
}

static PyObject *py_path(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(active_table()->name);
}

static PyObject *py_paths(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    int n;
    const edgert_kernel_table *const *tables = edgert_all_tables(&n);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *ok = PyBool_FromLong(edgert_table_supported(tables[i]));
        int rc = PyDict_SetItemString(d, tables[i]->name, ok);
        Py_DECREF(ok);
        if (rc < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *py_set_path(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    int n;
    const edgert_kernel_table *const *tables = edgert_all_tables(&n);
    for (int i = 0; i < n; i++) {
        if (strcmp(tables[i]->name, name) == 0) {
            if (!edgert_table_supported(tables[i])) {
                PyErr_Format(PyExc_ValueError, "kernel path %s is not supported by this CPU", name);
                return NULL;
            }
            g_table = tables[i];
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "kernel path %s is not compiled into this build", name);
    return NULL;
}

static PyObject *py_has_dotprod(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(edgert_cpu_has_dotprod());
}

static PyObject *py_row_bytes(PyObject *self, PyObject *args) {
    (void)self;
    int wtype;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "in", &wtype, &k)) return NULL;
    return PyLong_FromSize_t(edgert_row_bytes(wtype, k));
}

static PyObject *py_shutdown(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS
    edgert_pool_shutdown();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"linear", py_linear, METH_VARARGS, linear_doc},
    {"path", py_path, METH_NOARGS, "The active kernel path: portable, neon, neon-dotprod, x86-avx2."},
    {"paths", py_paths, METH_NOARGS, "Every path compiled in, mapped to whether this CPU runs it."},
    {"set_path", py_set_path, METH_VARARGS, "Choose the kernel path by name (tests, benchmarks)."},
    {"has_dotprod", py_has_dotprod, METH_NOARGS, "Whether the CPU has the Armv8.2 SDOT instruction."},
    {"row_bytes", py_row_bytes, METH_VARARGS, "Bytes of one row of K weights of a weight type."},
    {"shutdown_pool", py_shutdown, METH_NOARGS, "Stop the worker threads (restarted on demand)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_kernels", "Quantized GGUF matrix kernels (NEON, AVX2, portable C).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "Q4_0", EDGERT_Q4_0) < 0 ||
        PyModule_AddIntConstant(m, "Q4_1", EDGERT_Q4_1) < 0 ||
        PyModule_AddIntConstant(m, "Q8_0", EDGERT_Q8_0) < 0 ||
        PyModule_AddIntConstant(m, "QK", EDGERT_QK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
