/* The non-matmul work of a transformer block, fused so one decoded token does not pay numpy's
 * per-call overhead for each small array operation: RMSNorm, RoPE and attention of new queries
 * over the fp32 KV cache (grouped KV heads, causal).
 *
 * RMSNorm and attention are built from the kernel table's fp32 primitives (vdot, vaxpy, vscale), so
 * they run NEON or AVX2 where the table has them; RoPE is plain C (a handful of multiplies per
 * element). Every op computes in fp32 like the numpy reference (edgert_core/backends/numpy_ref.py),
 * in a different summation order. SwiGLU (silu(gate) * up) runs the path's vectorized exp where
 * the table has one (AVX-512, AVX2), else a scalar expf loop. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ---- RMSNorm ------------------------------------------------------------------------------- */

void edgert_rmsnorm(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                    const float *w, float eps, float *y) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n;
        float ms = kt->vdot(n, xt, xt) * (1.0f / (float)n) + eps;
        kt->vscale(n, 1.0f / sqrtf(ms), xt, w, y + t * n);
    }
}

/* ---- RoPE ---------------------------------------------------------------------------------- */

void edgert_rope(const float *x, int64_t T, int64_t H, int64_t D, const float *cos_t,
                 const float *sin_t, int interleaved, float *y) {
    int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < H; h++) {
            const float *xh = x + (t * H + h) * D;
            float *yh = y + (t * H + h) * D;
            for (int64_t i = 0; i < half; i++) {
                int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
                float x1 = xh[i1], x2 = xh[i2];
                yh[i1] = x1 * c[i] - x2 * s[i];
                yh[i2] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* ---- attention ----------------------------------------------------------------------------- */

/* Scores of one (query, head) pair live on the stack up to this many positions, else on the heap. */
#define STACK_SCORES 2048
/* Fewer multiply-adds than this per chunk cost more to hand to a worker than to compute. */
#define MIN_MACS_PER_CHUNK 16384
#define CHUNKS_PER_THREAD 4

typedef struct {
    const edgert_kernel_table *kt;
    const float *q, *k, *v;
    int64_t T, H, D, G, S, head_stride, start;
    float *out;
    atomic_int failed;
} attn_job;

/* One query token t and head h: out[t, h*D : (h+1)*D] = softmax(q . K^T / sqrt(D)) . V. */
static void attend_one(const attn_job *job, int64_t t, int64_t h, float *scores) {
    const edgert_kernel_table *kt = job->kt;
    int64_t D = job->D, n = job->start + t + 1; /* causal: positions 0 .. start+t */
    const float *qh = job->q + (t * job->H + h) * D;
    const float *K = job->k + (h / job->G) * job->head_stride;
    const float *V = job->v + (h / job->G) * job->head_stride;
    float *o = job->out + (t * job->H + h) * D;
    float scale = 1.0f / sqrtf((float)D), mx = -INFINITY, sum = 0.0f;
    if (kt->attn_row && D % 16 == 0 && D <= 256) {
        kt->attn_row(D, qh, K, V, n, scale, scores, o);
        return;
    }
    for (int64_t s = 0; s < n; s++) {
        scores[s] = kt->vdot(D, qh, K + s * D) * scale;
        if (scores[s] > mx) mx = scores[s];
    }
    for (int64_t s = 0; s < n; s++) {
        scores[s] = expf(scores[s] - mx);
        sum += scores[s];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < D; i++) o[i] = 0.0f;
    for (int64_t s = 0; s < n; s++) kt->vaxpy(D, scores[s] * inv, V + s * D, o);
}

static void attn_task(void *p, int chunk, int n_chunks) {
    attn_job *job = (attn_job *)p;
    int64_t items = job->T * job->H, per = (items + n_chunks - 1) / n_chunks;
    int64_t i0 = per * chunk, i1 = i0 + per < items ? i0 + per : items;
    if (i0 >= i1) return;
    float stack[STACK_SCORES], *scores = stack;
    if (job->S > STACK_SCORES) {
        scores = (float *)malloc((size_t)job->S * sizeof(float));
        if (!scores) {
            atomic_store(&job->failed, 1);
            return;
        }
    }
    for (int64_t i = i0; i < i1; i++) attend_one(job, i / job->H, i % job->H, scores);
    if (scores != stack) free(scores);
}

int edgert_attention(const edgert_kernel_table *kt, const float *q, int64_t T, int64_t H, int64_t D,
                     const float *k, const float *v, int64_t Hkv, int64_t S, int64_t head_stride,
                     int64_t start, float *out, int threads) {
    if (T < 0 || H <= 0 || D <= 0 || Hkv <= 0 || H % Hkv != 0 || start < 0 || start + T > S ||
        head_stride < S * D)
        return -1;
    if (T == 0) return 0;
    attn_job job = {kt, q, k, v, T, H, D, H / Hkv, S, head_stride, start, out, 0};
    int64_t items = T * H;
    int64_t macs = items * (start + (T + 1) / 2) * D * 2; /* average causal length */
    int64_t n_chunks = macs / MIN_MACS_PER_CHUNK;
    if (threads < 1) threads = 1;
    if (n_chunks > (int64_t)threads * CHUNKS_PER_THREAD) n_chunks = (int64_t)threads * CHUNKS_PER_THREAD;
    if (n_chunks > items) n_chunks = items;
    if (n_chunks < 1) n_chunks = 1;
    edgert_parallel(attn_task, &job, (int)n_chunks, threads);
    return atomic_load(&job.failed) ? -2 : 0;
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

static void swiglu_portable(int64_t n, const float *gate, const float *up, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void edgert_swiglu(const edgert_kernel_table *kt, const float *gate_up, int64_t T, int64_t n,
                   float *out) {
    void (*fn)(int64_t, const float *, const float *, float *) = kt->swiglu ? kt->swiglu : swiglu_portable;
    for (int64_t t = 0; t < T; t++) fn(n, gate_up + t * 2 * n, gate_up + t * 2 * n + n, out + t * n);
}

/* ---- whole block parts (Llama family, decode and prompts) ------------------------------------ *
 * The ops above and the matmul driver in the order the Python model code calls them one by one
 * (edgert_core/models/transformer.py, LlamaBlock.attention / mlp_in + mlp_out), in one call, so a
 * decoded token does not pay the interpreter's per-op cost ~10 times a layer. Same kernels, same
 * order: the results are bit for bit those of the separate calls. */

int edgert_attention_block(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                           const float *norm_w, float eps, const uint8_t *wqkv, int wtype_qkv,
                           int64_t H, int64_t Hkv, int64_t D, const float *cos_t,
                           const float *sin_t, int interleaved, float *kc, float *vc, int64_t C,
                           int64_t start, const uint8_t *wo, int wtype_o, float *y, int threads,
                           int act_q8) {
    if (T <= 0 || n <= 0 || H <= 0 || Hkv <= 0 || D <= 0 || D % 2 || H % Hkv || start < 0 ||
        start + T > C)
        return -1;
    int64_t nq = H * D, nkv = Hkv * D, N = nq + 2 * nkv;
    float *h = (float *)malloc((size_t)(T * n) * sizeof(float));
    float *qkv = (float *)malloc((size_t)(T * N) * sizeof(float));
    float *q = (float *)malloc((size_t)(T * nq) * sizeof(float));
    float *k = (float *)malloc((size_t)(T * nkv) * sizeof(float));
    float *a = (float *)malloc((size_t)(T * nq) * sizeof(float));
    int rc = -2;
    if (!h || !qkv || !q || !k || !a) goto done;
    edgert_rmsnorm(kt, x, T, n, norm_w, eps, h);
    rc = edgert_linear(kt, h, T, n, wqkv, N, wtype_qkv, qkv, threads, act_q8);
    if (rc != 0) goto done;
    for (int64_t t = 0; t < T; t++) {
        memcpy(q + t * nq, qkv + t * N, (size_t)nq * sizeof(float));
        memcpy(k + t * nkv, qkv + t * N + nq, (size_t)nkv * sizeof(float));
    }
    edgert_rope(q, T, H, D, cos_t, sin_t, interleaved, q);
    edgert_rope(k, T, Hkv, D, cos_t, sin_t, interleaved, k);
    for (int64_t t = 0; t < T; t++) /* the cache: [Hkv, C, D] per layer, position start + t */
        for (int64_t j = 0; j < Hkv; j++) {
            memcpy(kc + (j * C + start + t) * D, k + t * nkv + j * D, (size_t)D * sizeof(float));
            memcpy(vc + (j * C + start + t) * D, qkv + t * N + nq + nkv + j * D,
                   (size_t)D * sizeof(float));
        }
    rc = edgert_attention(kt, q, T, H, D, kc, vc, Hkv, start + T, C * D, start, a, threads);
    if (rc != 0) goto done;
    rc = edgert_linear_add(kt, a, T, nq, wo, n, wtype_o, x, y, threads, act_q8);
done:
    free(h);
    free(qkv);
    free(q);
    free(k);
    free(a);
    return rc;
}

int edgert_mlp_block(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                     const float *norm_w, float eps, const uint8_t *wgu, int wtype_gu, int64_t I,
                     const uint8_t *wdown, int wtype_down, float *y, int threads, int act_q8) {
    if (T <= 0 || n <= 0 || I <= 0) return -1;
    float *h = (float *)malloc((size_t)(T * n) * sizeof(float));
    float *gu = (float *)malloc((size_t)(T * 2 * I) * sizeof(float));
    float *inner = (float *)malloc((size_t)(T * I) * sizeof(float));
    int rc = -2;
    if (!h || !gu || !inner) goto done;
    edgert_rmsnorm(kt, x, T, n, norm_w, eps, h);
    rc = edgert_linear(kt, h, T, n, wgu, 2 * I, wtype_gu, gu, threads, act_q8);
    if (rc != 0) goto done;
    edgert_swiglu(kt, gu, T, I, inner);
    rc = edgert_linear_add(kt, inner, T, I, wdown, n, wtype_down, x, y, threads, act_q8);
done:
    free(h);
    free(gu);
    free(inner);
    return rc;
}

int edgert_llama_blocks(const edgert_kernel_table *kt, float *x, int64_t T, int64_t n, float eps,
                        const edgert_llama_layer *layers, int64_t L, int64_t H, int64_t Hkv,
                        int64_t D, int64_t I, const float *cos_t, const float *sin_t,
                        int interleaved, int64_t C, int64_t start, int threads, int act_q8) {
    if (T <= 0 || n <= 0 || L < 0 || I <= 0) return -1;
    float *mid = (float *)malloc((size_t)(T * n) * sizeof(float)); /* after a layer's attention */
    if (!mid) return -2;
    int rc = 0;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const edgert_llama_layer *ly = &layers[l];
        rc = edgert_attention_block(kt, x, T, n, ly->attn_norm, eps, ly->wqkv, ly->wtype_qkv, H,
                                    Hkv, D, cos_t, sin_t, interleaved, ly->kc, ly->vc, C, start,
                                    ly->wo, ly->wtype_o, mid, threads, act_q8);
        if (rc == 0)
            rc = edgert_mlp_block(kt, mid, T, n, ly->ffn_norm, eps, ly->wgu, ly->wtype_gu, I,
                                  ly->wdown, ly->wtype_down, x, threads, act_q8);
    }
    free(mid);
    return rc;
}
