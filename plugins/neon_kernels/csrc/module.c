/* Python binding: edgert_neon_kernels._kernels.
 *
 * Arrays cross as buffers (no numpy headers at build time). The GIL is released while a kernel
 * runs. Argument checks here guard memory safety; friendlier shape and dtype errors come from the
 * Python wrapper (edgert_neon_kernels/kernels.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static const edgert_kernel_table *g_table = NULL; /* the active path */

/* Time spent inside the C ops (wall clock on the calling thread, from entry after the argument
 * checks to the end of the kernel), for benchmarks: a run's time minus this is the Python work. */
static int64_t g_c_ns = 0, g_c_calls = 0;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define C_TIMED_BEGIN int64_t c_t0_ = mono_ns();
#define C_TIMED_END                     \
    g_c_ns += mono_ns() - c_t0_;        \
    g_c_calls++;

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
             "linear(x, w, y, T, K, N, wtype, threads, act_q8[, add])\n\n"
             "y[T, N] = x[T, K] . W[N, K]^T on GGUF blocks in place. x: float32 [T, K] C-contiguous;\n"
             "w: N rows of quantized blocks (wtype 0=Q4_0, 1=Q4_1, 2=Q8_0); y: writable float32\n"
             "[T, N]; threads: worker count including the caller; act_q8: quantize activations to\n"
             "int8 blocks first (faster) instead of keeping them fp32; add: float32 [T, N] added\n"
             "to the products (a residual; may be y itself).");

static PyObject *py_linear(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *yo, *ao = Py_None;
    Py_ssize_t T, K, N;
    int wtype, threads, act_q8;
    if (!PyArg_ParseTuple(args, "OOOnnniip|O", &xo, &wo, &yo, &T, &K, &N, &wtype, &threads,
                          &act_q8, &ao))
        return NULL;
    Py_buffer x, w, y, add;
    int has_add = ao != Py_None;
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
    if (has_add && PyObject_GetBuffer(ao, &add, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&w);
        PyBuffer_Release(&y);
        return NULL;
    }
    PyObject *result = NULL;
    size_t row_bytes = edgert_row_bytes(wtype, K);
    if (row_bytes == 0 || K % EDGERT_QK != 0 || T < 0 || N < 0) {
        PyErr_Format(PyExc_ValueError,
                     "linear: unknown weight type %d or K=%zd not a positive multiple of 32", wtype,
                     K);
    } else if (!is_float32_buffer(&x) || !is_float32_buffer(&y) ||
               (has_add && !is_float32_buffer(&add))) {
        PyErr_SetString(PyExc_TypeError, "linear: x, y (and add) must be float32 buffers");
    } else if (has_add && add.len < T * N * 4) {
        PyErr_Format(PyExc_ValueError, "linear: add holds %zd bytes, needs %zd", add.len, T * N * 4);
    } else if (x.len < T * K * 4 || y.len < T * N * 4 || w.len < (Py_ssize_t)((size_t)N * row_bytes)) {
        PyErr_Format(PyExc_ValueError,
                     "linear: buffers too small for T=%zd K=%zd N=%zd (x %zd, w %zd, y %zd bytes)",
                     T, K, N, x.len, w.len, y.len);
    } else {
        const edgert_kernel_table *kt = active_table();
        int rc;
        C_TIMED_BEGIN
        Py_BEGIN_ALLOW_THREADS
        rc = edgert_linear_add(kt, (const float *)x.buf, T, K, (const uint8_t *)w.buf, N, wtype,
                               has_add ? (const float *)add.buf : NULL, (float *)y.buf, threads,
                               act_q8);
        Py_END_ALLOW_THREADS
        C_TIMED_END
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
    if (has_add) PyBuffer_Release(&add);
    return result;
}

/* ---- fused ops -------------------------------------------------------------------------- */

/* Release the GIL around an op only when it is big enough for another Python thread to gain. */
#define RELEASE_GIL_ELEMENTS 65536

/* A float32 buffer of at least `need` elements; C-contiguous, writable when asked. */
static int get_f32(PyObject *o, Py_buffer *b, Py_ssize_t need, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, b, flags) < 0) return -1;
    if (!is_float32_buffer(b)) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float32 buffer", what);
        PyBuffer_Release(b);
        return -1;
    }
    if (b->len < need * 4) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd", what, b->len, need * 4);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(rmsnorm_doc,
             "rmsnorm(x, w, y, T, n, eps)\n\n"
             "y[T, n] = x[T, n] / sqrt(mean(x^2) + eps) * w[n], float32 C-contiguous (y may be x).");

static PyObject *py_rmsnorm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *yo;
    Py_ssize_t T, n;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOnnf", &xo, &wo, &yo, &T, &n, &eps)) return NULL;
    if (T < 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "rmsnorm: T must be >= 0 and n > 0");
        return NULL;
    }
    Py_buffer x, w, y;
    if (get_f32(xo, &x, T * n, 0, "rmsnorm x") < 0) return NULL;
    if (get_f32(wo, &w, n, 0, "rmsnorm w") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_f32(yo, &y, T * n, 1, "rmsnorm y") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&w);
        return NULL;
    }
    const edgert_kernel_table *kt = active_table();
    C_TIMED_BEGIN
    if (T * n >= RELEASE_GIL_ELEMENTS) {
        Py_BEGIN_ALLOW_THREADS
        edgert_rmsnorm(kt, (const float *)x.buf, T, n, (const float *)w.buf, eps, (float *)y.buf);
        Py_END_ALLOW_THREADS
    } else {
        edgert_rmsnorm(kt, (const float *)x.buf, T, n, (const float *)w.buf, eps, (float *)y.buf);
    }
    C_TIMED_END
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&y);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(rope_doc,
             "rope(x, cos, sin, y, T, H, D, interleaved)\n\n"
             "Rotary embedding of x [T, H, D] with cos, sin [T, D/2] into y [T, H, D] (may be x),\n"
             "float32 C-contiguous; interleaved pairs (2i, 2i+1), else (i, i + D/2).");

static PyObject *py_rope(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *co, *so, *yo;
    Py_ssize_t T, H, D;
    int interleaved;
    if (!PyArg_ParseTuple(args, "OOOOnnnp", &xo, &co, &so, &yo, &T, &H, &D, &interleaved))
        return NULL;
    if (T < 0 || H < 0 || D <= 0 || D % 2) {
        PyErr_SetString(PyExc_ValueError, "rope: T, H must be >= 0 and D even and positive");
        return NULL;
    }
    Py_buffer x, c, s, y;
    if (get_f32(xo, &x, T * H * D, 0, "rope x") < 0) return NULL;
    if (get_f32(co, &c, T * D / 2, 0, "rope cos") < 0) goto fail_x;
    if (get_f32(so, &s, T * D / 2, 0, "rope sin") < 0) goto fail_c;
    if (get_f32(yo, &y, T * H * D, 1, "rope y") < 0) goto fail_s;
    C_TIMED_BEGIN
    edgert_rope((const float *)x.buf, T, H, D, (const float *)c.buf, (const float *)s.buf,
                interleaved, (float *)y.buf);
    C_TIMED_END
    PyBuffer_Release(&y);
    PyBuffer_Release(&s);
    PyBuffer_Release(&c);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
fail_s:
    PyBuffer_Release(&s);
fail_c:
    PyBuffer_Release(&c);
fail_x:
    PyBuffer_Release(&x);
    return NULL;
}

/* A float32 [Hkv, S, D] cache view whose rows are contiguous ([S, D] per head) and whose heads may
 * be further apart (a slice of a preallocated cache); *head_stride receives that gap in floats. */
static int get_kv(PyObject *o, Py_buffer *b, Py_ssize_t Hkv, Py_ssize_t S, Py_ssize_t D,
                  Py_ssize_t *head_stride, const char *what) {
    if (PyObject_GetBuffer(o, b, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return -1;
    if (!is_float32_buffer(b) || b->ndim != 3 || b->shape[0] != Hkv || b->shape[1] != S ||
        b->shape[2] != D || b->strides[2] != 4 || b->strides[1] != 4 * D ||
        (Hkv > 1 && (b->strides[0] % 4 != 0 || b->strides[0] < 4 * S * D))) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be float32 [%zd, %zd, %zd] with contiguous [S, D] rows per head",
                     what, Hkv, S, D);
        PyBuffer_Release(b);
        return -1;
    }
    *head_stride = Hkv > 1 ? b->strides[0] / 4 : S * D;
    return 0;
}

PyDoc_STRVAR(attention_doc,
             "attention(q, k, v, out, T, H, D, Hkv, S, start, threads)\n\n"
             "Causal attention of q [T, H, D] (positions start..start+T-1) over k, v [Hkv, S, D]\n"
             "(each head's [S, D] contiguous; heads may be strided) into out [T, H * D]; float32.");

static PyObject *py_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *qo, *ko, *vo, *oo;
    Py_ssize_t T, H, D, Hkv, S, start;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOnnnnnni", &qo, &ko, &vo, &oo, &T, &H, &D, &Hkv, &S, &start,
                          &threads))
        return NULL;
    if (T < 0 || H <= 0 || D <= 0 || Hkv <= 0 || H % Hkv || start < 0 || start + T > S) {
        PyErr_Format(PyExc_ValueError,
                     "attention: bad sizes T=%zd H=%zd D=%zd Hkv=%zd S=%zd start=%zd", T, H, D, Hkv,
                     S, start);
        return NULL;
    }
    Py_buffer q, k, v, out;
    Py_ssize_t ks, vs;
    if (get_f32(qo, &q, T * H * D, 0, "attention q") < 0) return NULL;
    if (get_kv(ko, &k, Hkv, S, D, &ks, "attention k") < 0) goto fail_q;
    if (get_kv(vo, &v, Hkv, S, D, &vs, "attention v") < 0) goto fail_k;
    if (ks != vs) {
        PyErr_SetString(PyExc_ValueError, "attention: k and v must have the same head stride");
        goto fail_v;
    }
    if (get_f32(oo, &out, T * H * D, 1, "attention out") < 0) goto fail_v;
    const edgert_kernel_table *kt = active_table();
    int rc;
    C_TIMED_BEGIN
    Py_BEGIN_ALLOW_THREADS
    rc = edgert_attention(kt, (const float *)q.buf, T, H, D, (const float *)k.buf,
                          (const float *)v.buf, Hkv, S, ks, start, (float *)out.buf, threads);
    Py_END_ALLOW_THREADS
    C_TIMED_END
    PyBuffer_Release(&out);
    PyBuffer_Release(&v);
    PyBuffer_Release(&k);
    PyBuffer_Release(&q);
    if (rc == -2) return PyErr_NoMemory();
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError, "attention: bad arguments");
        return NULL;
    }
    Py_RETURN_NONE;
fail_v:
    PyBuffer_Release(&v);
fail_k:
    PyBuffer_Release(&k);
fail_q:
    PyBuffer_Release(&q);
    return NULL;
}

/* Quantized weight rows: a C-contiguous buffer of at least `rows` rows of K weights of `wtype`. */
static int get_blocks(PyObject *o, Py_buffer *b, int wtype, Py_ssize_t rows, Py_ssize_t K,
                      const char *what) {
    size_t rb = edgert_row_bytes(wtype, K);
    if (rb == 0 || K % EDGERT_QK) {
        PyErr_Format(PyExc_ValueError, "%s: unknown weight type %d or K=%zd not a multiple of 32",
                     what, wtype, K);
        return -1;
    }
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (b->len < (Py_ssize_t)((size_t)rows * rb)) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd rows of %zu", what, b->len,
                     rows, rb);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static PyObject *block_result(int rc, const char *what) {
    if (rc == -2) return PyErr_NoMemory();
    if (rc != 0) {
        PyErr_Format(PyExc_ValueError, "%s: bad sizes", what);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(attention_block_doc,
             "attention_block(x, norm_w, wqkv, cos, sin, kc, vc, wo, y, T, n, eps, wtype_qkv, H, Hkv,\n"
             "                D, interleaved, C, start, wtype_o, threads, act_q8)\n\n"
             "A Llama attention part in one call (see edgert_attention_block in kernels.h): y [T, n] =\n"
             "x + o(attention(...)) with the new keys and values written to kc, vc [Hkv, C, D].");

static PyObject *py_attention_block(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *nwo, *wqo, *co, *so, *kco, *vco, *woo, *yo;
    Py_ssize_t T, n, H, Hkv, D, C, start;
    double eps;
    int wq_type, wo_type, interleaved, threads, act_q8;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOnndinnnpnniip", &xo, &nwo, &wqo, &co, &so, &kco, &vco,
                          &woo, &yo, &T, &n, &eps, &wq_type, &H, &Hkv, &D, &interleaved, &C,
                          &start, &wo_type, &threads, &act_q8))
        return NULL;
    if (T <= 0 || n <= 0 || H <= 0 || Hkv <= 0 || D <= 0 || D % 2 || H % Hkv || start < 0 ||
        start + T > C) {
        PyErr_Format(PyExc_ValueError,
                     "attention_block: bad sizes T=%zd n=%zd H=%zd Hkv=%zd D=%zd C=%zd start=%zd",
                     T, n, H, Hkv, D, C, start);
        return NULL;
    }
    Py_ssize_t N = (H + 2 * Hkv) * D;
    Py_buffer x, nw, wq, c, sn, kc, vc, wo, y;
    PyObject *result = NULL;
    if (get_f32(xo, &x, T * n, 0, "attention_block x") < 0) return NULL;
    if (get_f32(nwo, &nw, n, 0, "attention_block norm") < 0) goto f_x;
    if (get_blocks(wqo, &wq, wq_type, N, n, "attention_block qkv weight") < 0) goto f_nw;
    if (get_f32(co, &c, T * D / 2, 0, "attention_block cos") < 0) goto f_wq;
    if (get_f32(so, &sn, T * D / 2, 0, "attention_block sin") < 0) goto f_c;
    if (get_f32(kco, &kc, Hkv * C * D, 1, "attention_block key cache") < 0) goto f_s;
    if (get_f32(vco, &vc, Hkv * C * D, 1, "attention_block value cache") < 0) goto f_kc;
    if (get_blocks(woo, &wo, wo_type, n, H * D, "attention_block output weight") < 0) goto f_vc;
    if (get_f32(yo, &y, T * n, 1, "attention_block y") < 0) goto f_wo;
    {
        const edgert_kernel_table *kt = active_table();
        int rc;
        C_TIMED_BEGIN
        Py_BEGIN_ALLOW_THREADS
        rc = edgert_attention_block(kt, (const float *)x.buf, T, n, (const float *)nw.buf,
                                    (float)eps, (const uint8_t *)wq.buf, wq_type, H, Hkv, D,
                                    (const float *)c.buf, (const float *)sn.buf, interleaved,
                                    (float *)kc.buf, (float *)vc.buf, C, start,
                                    (const uint8_t *)wo.buf, wo_type, (float *)y.buf, threads,
                                    act_q8);
        Py_END_ALLOW_THREADS
        C_TIMED_END
        result = block_result(rc, "attention_block");
    }
    PyBuffer_Release(&y);
f_wo:
    PyBuffer_Release(&wo);
f_vc:
    PyBuffer_Release(&vc);
f_kc:
    PyBuffer_Release(&kc);
f_s:
    PyBuffer_Release(&sn);
f_c:
    PyBuffer_Release(&c);
f_wq:
    PyBuffer_Release(&wq);
f_nw:
    PyBuffer_Release(&nw);
f_x:
    PyBuffer_Release(&x);
    return result;
}

PyDoc_STRVAR(mlp_block_doc,
             "mlp_block(x, norm_w, wgu, wdown, y, T, n, eps, wtype_gu, I, wtype_down, threads, act_q8)\n\n"
             "A Llama SwiGLU MLP with its residual in one call (see edgert_mlp_block in kernels.h):\n"
             "y [T, n] = x + down(swiglu(rmsnorm(x) . wgu^T)); y may be x.");

static PyObject *py_mlp_block(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *nwo, *wgo, *wdo, *yo;
    Py_ssize_t T, n, I;
    double eps;
    int wg_type, wd_type, threads, act_q8;
    if (!PyArg_ParseTuple(args, "OOOOOnndiniip", &xo, &nwo, &wgo, &wdo, &yo, &T, &n, &eps,
                          &wg_type, &I, &wd_type, &threads, &act_q8))
        return NULL;
    if (T <= 0 || n <= 0 || I <= 0) {
        PyErr_Format(PyExc_ValueError, "mlp_block: bad sizes T=%zd n=%zd I=%zd", T, n, I);
        return NULL;
    }
    Py_buffer x, nw, wg, wd, y;
    PyObject *result = NULL;
    if (get_f32(xo, &x, T * n, 0, "mlp_block x") < 0) return NULL;
    if (get_f32(nwo, &nw, n, 0, "mlp_block norm") < 0) goto f_x;
    if (get_blocks(wgo, &wg, wg_type, 2 * I, n, "mlp_block gate/up weight") < 0) goto f_nw;
    if (get_blocks(wdo, &wd, wd_type, n, I, "mlp_block down weight") < 0) goto f_wg;
    if (get_f32(yo, &y, T * n, 1, "mlp_block y") < 0) goto f_wd;
    {
        const edgert_kernel_table *kt = active_table();
        int rc;
        C_TIMED_BEGIN
        Py_BEGIN_ALLOW_THREADS
        rc = edgert_mlp_block(kt, (const float *)x.buf, T, n, (const float *)nw.buf, (float)eps,
                              (const uint8_t *)wg.buf, wg_type, I, (const uint8_t *)wd.buf,
                              wd_type, (float *)y.buf, threads, act_q8);
        Py_END_ALLOW_THREADS
        C_TIMED_END
        result = block_result(rc, "mlp_block");
    }
    PyBuffer_Release(&y);
f_wd:
    PyBuffer_Release(&wd);
f_wg:
    PyBuffer_Release(&wg);
f_nw:
    PyBuffer_Release(&nw);
f_x:
    PyBuffer_Release(&x);
    return result;
}

PyDoc_STRVAR(llama_blocks_doc,
             "llama_blocks(x, cos, sin, layers, T, n, eps, H, Hkv, D, I, interleaved, C, start, threads,\n"
             "             act_q8)\n\n"
             "Consecutive Llama blocks in one call (see edgert_llama_blocks in kernels.h): x [T, n]\n"
             "updated in place. layers: a sequence of tuples (attn_norm, wqkv, wtype_qkv, wo, wtype_o,\n"
             "ffn_norm, wgu, wtype_gu, wdown, wtype_down, kc, vc), one per block, in order.");

enum { LB_BUFS = 8 }; /* buffers per layer: two norms, four weights, two caches */

static void release_layers(Py_buffer *b, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) PyBuffer_Release(&b[i]);
}

/* Take one layer's tuple: its eight buffers (sizes checked) into b[0..7], its pointers into ly.
 * On failure nothing of this layer is held. */
static int get_layer(PyObject *item, Py_buffer *b, edgert_llama_layer *ly, Py_ssize_t n,
                     Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t D, Py_ssize_t I, Py_ssize_t C) {
    PyObject *an, *wq, *wo, *fn, *wg, *wd, *kc, *vc;
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "llama_blocks: each layer must be a tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(item, "OOiOiOOiOiOO", &an, &wq, &ly->wtype_qkv, &wo, &ly->wtype_o, &fn,
                          &wg, &ly->wtype_gu, &wd, &ly->wtype_down, &kc, &vc))
        return -1;
    int got = 0;
    if (get_f32(an, &b[got], n, 0, "llama_blocks attention norm") < 0) goto fail;
    got++;
    if (get_blocks(wq, &b[got], ly->wtype_qkv, (H + 2 * Hkv) * D, n, "llama_blocks qkv weight") < 0)
        goto fail;
    got++;
    if (get_blocks(wo, &b[got], ly->wtype_o, n, H * D, "llama_blocks output weight") < 0) goto fail;
    got++;
    if (get_f32(fn, &b[got], n, 0, "llama_blocks MLP norm") < 0) goto fail;
    got++;
    if (get_blocks(wg, &b[got], ly->wtype_gu, 2 * I, n, "llama_blocks gate/up weight") < 0) goto fail;
    got++;
    if (get_blocks(wd, &b[got], ly->wtype_down, n, I, "llama_blocks down weight") < 0) goto fail;
    got++;
    if (get_f32(kc, &b[got], Hkv * C * D, 1, "llama_blocks key cache") < 0) goto fail;
    got++;
    if (get_f32(vc, &b[got], Hkv * C * D, 1, "llama_blocks value cache") < 0) goto fail;
    got++;
    ly->attn_norm = (const float *)b[0].buf;
    ly->wqkv = (const uint8_t *)b[1].buf;
    ly->wo = (const uint8_t *)b[2].buf;
    ly->ffn_norm = (const float *)b[3].buf;
    ly->wgu = (const uint8_t *)b[4].buf;
    ly->wdown = (const uint8_t *)b[5].buf;
    ly->kc = (float *)b[6].buf;
    ly->vc = (float *)b[7].buf;
    return 0;
fail:
    release_layers(b, got);
    return -1;
}

static PyObject *py_llama_blocks(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *co, *so, *layers_o;
    Py_ssize_t T, n, H, Hkv, D, I, C, start;
    double eps;
    int interleaved, threads, act_q8;
    if (!PyArg_ParseTuple(args, "OOOOnndnnnnpnnip", &xo, &co, &so, &layers_o, &T, &n, &eps, &H,
                          &Hkv, &D, &I, &interleaved, &C, &start, &threads, &act_q8))
        return NULL;
    if (T <= 0 || n <= 0 || H <= 0 || Hkv <= 0 || D <= 0 || D % 2 || H % Hkv || I <= 0 ||
        start < 0 || start + T > C) {
        PyErr_Format(PyExc_ValueError,
                     "llama_blocks: bad sizes T=%zd n=%zd H=%zd Hkv=%zd D=%zd I=%zd C=%zd start=%zd",
                     T, n, H, Hkv, D, I, C, start);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(layers_o, "llama_blocks: layers must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t L = PySequence_Fast_GET_SIZE(seq);
    Py_buffer x, c, sn;
    PyObject *result = NULL;
    Py_buffer *bufs = NULL;
    edgert_llama_layer *lys = NULL;
    Py_ssize_t held = 0; /* layers whose buffers are held */
    if (get_f32(xo, &x, T * n, 1, "llama_blocks x") < 0) goto f_seq;
    if (get_f32(co, &c, T * D / 2, 0, "llama_blocks cos") < 0) goto f_x;
    if (get_f32(so, &sn, T * D / 2, 0, "llama_blocks sin") < 0) goto f_c;
    bufs = (Py_buffer *)PyMem_Calloc((size_t)(L > 0 ? L : 1) * LB_BUFS, sizeof(Py_buffer));
    lys = (edgert_llama_layer *)PyMem_Calloc((size_t)(L > 0 ? L : 1), sizeof(edgert_llama_layer));
    if (!bufs || !lys) {
        PyErr_NoMemory();
        goto f_s;
    }
    for (; held < L; held++)
        if (get_layer(PySequence_Fast_GET_ITEM(seq, held), &bufs[held * LB_BUFS], &lys[held], n, H,
                      Hkv, D, I, C) < 0)
            goto f_layers;
    {
        const edgert_kernel_table *kt = active_table();
        int rc;
        C_TIMED_BEGIN
        Py_BEGIN_ALLOW_THREADS
        rc = edgert_llama_blocks(kt, (float *)x.buf, T, n, (float)eps, lys, L, H, Hkv, D, I,
                                 (const float *)c.buf, (const float *)sn.buf, interleaved, C, start,
                                 threads, act_q8);
        Py_END_ALLOW_THREADS
        C_TIMED_END
        result = block_result(rc, "llama_blocks");
    }
f_layers:
    release_layers(bufs, held * LB_BUFS);
f_s:
    PyMem_Free(bufs);
    PyMem_Free(lys);
    PyBuffer_Release(&sn);
f_c:
    PyBuffer_Release(&c);
f_x:
    PyBuffer_Release(&x);
f_seq:
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(swiglu_doc,
             "swiglu(gate_up, out, T, n)\n\n"
             "out[T, n] = silu(gate) * up for gate_up [T, 2n] (gate columns, then up), float32.");

static PyObject *py_swiglu(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *go, *oo;
    Py_ssize_t T, n;
    if (!PyArg_ParseTuple(args, "OOnn", &go, &oo, &T, &n)) return NULL;
    if (T < 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "swiglu: T must be >= 0 and n > 0");
        return NULL;
    }
    Py_buffer g, o;
    if (get_f32(go, &g, T * 2 * n, 0, "swiglu gate_up") < 0) return NULL;
    if (get_f32(oo, &o, T * n, 1, "swiglu out") < 0) {
        PyBuffer_Release(&g);
        return NULL;
    }
    const edgert_kernel_table *kt = active_table();
    C_TIMED_BEGIN
    if (T * n >= RELEASE_GIL_ELEMENTS) {
        Py_BEGIN_ALLOW_THREADS
        edgert_swiglu(kt, (const float *)g.buf, T, n, (float *)o.buf);
        Py_END_ALLOW_THREADS
    } else {
        edgert_swiglu(kt, (const float *)g.buf, T, n, (float *)o.buf);
    }
    C_TIMED_END
    PyBuffer_Release(&g);
    PyBuffer_Release(&o);
    Py_RETURN_NONE;
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

static PyObject *py_c_time(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("(Ld)", (long long)g_c_calls, (double)g_c_ns * 1e-9);
}

static PyMethodDef methods[] = {
    {"linear", py_linear, METH_VARARGS, linear_doc},
    {"rmsnorm", py_rmsnorm, METH_VARARGS, rmsnorm_doc},
    {"rope", py_rope, METH_VARARGS, rope_doc},
    {"swiglu", py_swiglu, METH_VARARGS, swiglu_doc},
    {"attention", py_attention, METH_VARARGS, attention_doc},
    {"attention_block", py_attention_block, METH_VARARGS, attention_block_doc},
    {"mlp_block", py_mlp_block, METH_VARARGS, mlp_block_doc},
    {"llama_blocks", py_llama_blocks, METH_VARARGS, llama_blocks_doc},
    {"path", py_path, METH_NOARGS, "The active kernel path: portable, neon, neon-dotprod, x86-avx2."},
    {"paths", py_paths, METH_NOARGS, "Every path compiled in, mapped to whether this CPU runs it."},
    {"set_path", py_set_path, METH_VARARGS, "Choose the kernel path by name (tests, benchmarks)."},
    {"has_dotprod", py_has_dotprod, METH_NOARGS, "Whether the CPU has the Armv8.2 SDOT instruction."},
    {"row_bytes", py_row_bytes, METH_VARARGS, "Bytes of one row of K weights of a weight type."},
    {"c_time", py_c_time, METH_NOARGS,
     "(calls, seconds): how many C ops ran and the wall time spent inside them so far."},
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
