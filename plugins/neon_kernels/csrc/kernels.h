/* edgert-neon-kernels: quantized matrix products on GGUF weight blocks, used in place.
 *
 * Sections: block formats, activation blocks, per-path kernel tables, the matmul driver.
 *
 * A weight matrix W is [N rows (outputs), K columns (inputs)], each row stored as K/32 GGUF blocks:
 *   Q4_0: f16 d, 16 bytes of nibbles             x = (q - 8) * d
 *   Q4_1: f16 d, f16 m, 16 bytes of nibbles       x = q * d + m
 *   Q8_0: f16 d, 32 int8                          x = q * d
 * In a 4-bit block, byte j holds element j in its low nibble and element j + 16 in its high nibble.
 *
 * y[T, N] = x[T, K] . W^T, accumulated in fp32. Two activation modes:
 *   f32: activations stay fp32; each weight is dequantized in registers and multiplied in fp32.
 *   q8:  each block of 32 activations is first quantized to int8 with one fp32 scale (like
 *        llama.cpp's Q8_0 activations); the block product is an exact integer dot product,
 *        scaled once per block. Faster, with an error bounded by the activation rounding.
 */
#ifndef EDGERT_KERNELS_H
#define EDGERT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define EDGERT_QK 32

/* ---- block formats, exactly as stored in GGUF ---------------------------------------------- */

typedef struct {
    uint16_t d;      /* f16 scale */
    uint8_t qs[16];  /* nibbles */
} block_q4_0;        /* 18 bytes */

typedef struct {
    uint16_t d;      /* f16 scale */
    uint16_t m;      /* f16 minimum */
    uint8_t qs[16];  /* nibbles */
} block_q4_1;        /* 20 bytes */

typedef struct {
    uint16_t d;      /* f16 scale */
    int8_t qs[32];
} block_q8_0;        /* 34 bytes */

enum edgert_wtype { EDGERT_Q4_0 = 0, EDGERT_Q4_1 = 1, EDGERT_Q8_0 = 2, EDGERT_N_WTYPES = 3 };

/* Bytes of one row of K weights (K a multiple of 32), or 0 for an unknown type. */
size_t edgert_row_bytes(int wtype, int64_t k);

/* ---- activation blocks (internal, never stored in a file) ----------------------------------- */

typedef struct {
    float d;         /* scale: x ~= q * d */
    float s;         /* d * sum(q), used by the Q4_0 offset and the Q4_1 minimum */
    int8_t qs[32];
} block_q8a;         /* 40 bytes */

/* Quantize k (multiple of 32) fp32 activations into k/32 blocks: d = max|x| / 127, q = round(x / d).
 * Shared by every path, so SIMD and scalar kernels see identical integer activations. */
void edgert_quantize_q8a(const float *x, block_q8a *out, int64_t k);

/* f16 bits -> fp32 value, exact for every input (zeros, subnormals, inf, nan). */
float edgert_f16_to_f32(uint16_t h);

/* ---- kernel tables ----------------------------------------------------------------------- */

/* Dot product of one weight row (nb blocks) with nb activation blocks. */
typedef float (*edgert_dot_q8_fn)(int64_t nb, const void *wrow, const block_q8a *a);
/* Dot product of one weight row (nb blocks) with 32 * nb fp32 activations. */
typedef float (*edgert_dot_f32_fn)(int64_t nb, const void *wrow, const float *x);

/* fp32 vector primitives the fused ops (ops.c) are built from; n is any length >= 0.
 *   vdot:   sum_i a[i] * b[i]
 *   vaxpy:  y[i] += s * x[i]
 *   vscale: y[i] = x[i] * s * w[i]      (y may alias x) */
typedef float (*edgert_vdot_fn)(int64_t n, const float *a, const float *b);
typedef void (*edgert_vaxpy_fn)(int64_t n, float s, const float *x, float *y);
typedef void (*edgert_vscale_fn)(int64_t n, float s, const float *x, const float *w, float *y);

/* Dequantize one weight row (nb blocks) into 32 * nb fp32 values: the exact weights (fp32 holds
 * every Q4_0 / Q8_0 value exactly; a Q4_1 value q * d + m is rounded once). */
typedef void (*edgert_dequant_fn)(int64_t nb, const void *wrow, float *out);
/* fp32 tile product for prompts (T > 1): y[t * ldy + r] = sum_k w[r * K + k] * x[t * K + k] for
 * r < R <= 4 and t < T (K a multiple of 32). Every output is summed in the same order whatever R
 * and T are, and in the order the path's rows_f32 sums it, so a prompt's outputs are bit for bit
 * those of its tokens one at a time. */
typedef void (*edgert_gemm_f32_fn)(int64_t K, const float *w, int64_t R, const float *x, int64_t T,
                                   float *y, int64_t ldy);

/* Several consecutive rows (row_bytes apart) times one activation vector: y[r] for r < nrows. Each
 * row's result is the same whether it is computed alone or with others. */
typedef void (*edgert_rows_f32_fn)(int64_t nb, const uint8_t *w, size_t row_bytes, int64_t nrows,
                                   const float *x, float *y);
typedef void (*edgert_rows_q8_fn)(int64_t nb, const uint8_t *w, size_t row_bytes, int64_t nrows,
                                  const block_q8a *a, float *y);
/* Prompts in q8 mode: rows r < nrows times T tokens' activation blocks (a + t * nb), into
 * y[t * ldy + r]; each output bit for bit what rows_q8 gives for that row and token. Returns 0
 * when it could not allocate its scratch (nothing written; the driver falls back to rows_q8). */
typedef int (*edgert_gemm_q8_fn)(int64_t nb, const uint8_t *w, size_t row_bytes, int64_t nrows,
                                 const block_q8a *a, int64_t T, float *y, int64_t ldy);

typedef struct {
    const char *name;  /* "portable", "neon", "neon-dotprod", "x86-avx2", "x86-avx512" */
    edgert_dot_q8_fn dot_q8[EDGERT_N_WTYPES];
    edgert_dot_f32_fn dot_f32[EDGERT_N_WTYPES];
    edgert_vdot_fn vdot;
    edgert_vaxpy_fn vaxpy;
    edgert_vscale_fn vscale;
    /* Optional (NULL: the driver runs dot_f32 once per row and token instead): prompts in fp32
     * mode dequantize a tile of rows once and multiply it with every token. */
    edgert_dequant_fn dequant[EDGERT_N_WTYPES];
    edgert_gemm_f32_fn gemm_f32;
    /* Optional (NULL: dot_q8 / dot_f32 per row): several rows per call, sharing activation loads. */
    edgert_rows_q8_fn rows_q8[EDGERT_N_WTYPES];
    edgert_rows_f32_fn rows_f32[EDGERT_N_WTYPES];
    /* Optional (NULL: the portable versions in ops.c) fused-op inner loops:
     *   attn_row: one query row over n cached positions (D % 16 == 0, D <= 256):
     *             o[D] = softmax(q . K[s] * scale, s < n) . V, with scores[n] as scratch.
     *   swiglu:   out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i < n. */
    void (*attn_row)(int64_t D, const float *q, const float *K, const float *V, int64_t n,
                     float scale, float *scores, float *o);
    void (*swiglu)(int64_t n, const float *gate, const float *up, float *out);
    /* Optional (NULL: rows_q8 once per token): prompts in q8 mode, weights unpacked once. */
    edgert_gemm_q8_fn gemm_q8[EDGERT_N_WTYPES];
} edgert_kernel_table;

/* The portable dequantizers (the reference for every path's dequant). */
void edgert_dequant_row(int wtype, int64_t nb, const void *wrow, float *out);

extern const edgert_kernel_table edgert_kernels_portable;
#if defined(__aarch64__)
extern const edgert_kernel_table edgert_kernels_neon;
extern const edgert_kernel_table edgert_kernels_neon_dotprod;
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGERT_HAVE_AVX2 1
extern const edgert_kernel_table edgert_kernels_avx2;
#define EDGERT_HAVE_AVX512 1
extern const edgert_kernel_table edgert_kernels_avx512;
/* edgert_quantize_q8a with AVX2 (bit for bit the same blocks); only on a CPU the x86-avx2 table
 * is supported on. */
void edgert_quantize_q8a_avx2(const float *x, block_q8a *out, int64_t k);
#endif

/* Every table compiled into this build, portable first; *n receives the count. */
const edgert_kernel_table *const *edgert_all_tables(int *n);
/* Whether this CPU can run the table (runtime checks: getauxval / __builtin_cpu_supports). */
int edgert_table_supported(const edgert_kernel_table *t);
/* The fastest supported table. */
const edgert_kernel_table *edgert_best_table(void);
/* 1 when the CPU reports the Armv8.2 dot-product instructions (AT_HWCAP & HWCAP_ASIMDDP). */
int edgert_cpu_has_dotprod(void);

/* ---- the matmul driver ------------------------------------------------------------------- */

/* y[t * N + n] = sum_k x[t * K + k] * W[n, k] for t < T, n < N.
 * w: N rows of edgert_row_bytes(wtype, K) bytes each, contiguous. K must be a multiple of 32.
 * threads: worker count including the caller (<= 1 runs on the caller only).
 * act_q8: 1 quantizes activations to int8 blocks (q8 mode), 0 keeps them fp32.
 * Returns 0, or -1 for bad arguments (unknown type, K not a multiple of 32), -2 out of memory. */
int edgert_linear(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t K,
                  const uint8_t *w, int64_t N, int wtype, float *y, int threads, int act_q8);

/* edgert_linear plus a residual: y[t * N + n] = add[t * N + n] + (x . W^T)[t, n]; add may be y
 * itself (each output reads only its own residual). add NULL: edgert_linear. */
int edgert_linear_add(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t K,
                      const uint8_t *w, int64_t N, int wtype, const float *add, float *y,
                      int threads, int act_q8);

/* Stop and join the worker threads (they are started again on the next call that needs them). */
void edgert_pool_shutdown(void);

/* Run fn(arg, c, n_chunks) for every chunk c < n_chunks on the caller and threads-1 pool workers;
 * returns when all are done. Chunks must be independent. */
typedef void (*edgert_task_fn)(void *arg, int chunk, int n_chunks);
void edgert_parallel(edgert_task_fn fn, void *arg, int n_chunks, int threads);

/* ---- fused ops of one transformer block (ops.c), fp32 throughout ---------------------------- */

/* y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w for t < T; x, y [T, n] (y may alias x). */
void edgert_rmsnorm(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                    const float *w, float eps, float *y);

/* Causal attention of T queries at positions start..start+T-1 over a cache of S >= start+T
 * positions, with grouped KV heads: query head h reads KV head h / (H / Hkv).
 *   q   [T, H, D] contiguous;  k, v: Hkv heads, head j at k + j * head_stride, each [S, D]
 *   out [T, H * D]
 * scores = q . k / sqrt(D), softmax over positions 0..start+t, out = probs . v.
 * Returns 0, -1 for bad arguments, -2 out of memory. */
int edgert_attention(const edgert_kernel_table *kt, const float *q, int64_t T, int64_t H, int64_t D,
                     const float *k, const float *v, int64_t Hkv, int64_t S, int64_t head_stride,
                     int64_t start, float *out, int threads);

/* SwiGLU of gate_up [T, 2 * n] (gate columns, then up columns) into out [T, n]:
 * out = silu(gate) * up = gate / (1 + exp(-gate)) * up, in fp32. */
void edgert_swiglu(const edgert_kernel_table *kt, const float *gate_up, int64_t T, int64_t n,
                   float *out);

/* A Llama attention part in one call, as LlamaBlock.attention runs it op by op: y [T, n] =
 * x + o(attention(rope(q), rope(k), v)) where q, k, v are the fused product of rmsnorm(x, norm_w)
 * with wqkv (N = (H + 2 Hkv) D rows: q, then k, then v); the new keys and values are written to
 * the layer's caches kc, vc ([Hkv, C, D] each) at positions start..start+T-1, which attention then
 * reads up to start+T; cos, sin [T, D/2] are the positions' rows; wo has n rows of H D inputs. y
 * must not alias x. Returns 0, -1 for bad sizes, -2 out of memory. */
int edgert_attention_block(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                           const float *norm_w, float eps, const uint8_t *wqkv, int wtype_qkv,
                           int64_t H, int64_t Hkv, int64_t D, const float *cos_t,
                           const float *sin_t, int interleaved, float *kc, float *vc, int64_t C,
                           int64_t start, const uint8_t *wo, int wtype_o, float *y, int threads,
                           int act_q8);

/* A Llama MLP in one call, as LlamaBlock.mlp_in + mlp_out run it: y [T, n] = x +
 * down(swiglu(rmsnorm(x, norm_w) . wgu^T)) with wgu [2I, n] (gate rows, then up rows) and wdown
 * [n, I]. y may be x itself. Returns 0, -1 for bad sizes, -2 out of memory. */
int edgert_mlp_block(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t n,
                     const float *norm_w, float eps, const uint8_t *wgu, int wtype_gu, int64_t I,
                     const uint8_t *wdown, int wtype_down, float *y, int threads, int act_q8);

/* One Llama block's operands for edgert_llama_blocks: the attention part's RMSNorm weight, stacked
 * q/k/v rows and output rows, the MLP's RMSNorm weight, stacked gate/up rows and down rows (each
 * with its weight type), and the layer's fp32 KV caches [Hkv, C, D]. */
typedef struct {
    const float *attn_norm;
    const uint8_t *wqkv;
    int wtype_qkv;
    const uint8_t *wo;
    int wtype_o;
    const float *ffn_norm;
    const uint8_t *wgu;
    int wtype_gu;
    const uint8_t *wdown;
    int wtype_down;
    float *kc, *vc;
} edgert_llama_layer;

/* Consecutive Llama blocks in one call, as LlamaBlock runs each: for every layer,
 * edgert_attention_block then edgert_mlp_block, so the same bits. x [T, n] is updated in place;
 * every layer has H query heads, Hkv KV heads of D, an MLP of I and caches of C positions.
 * Returns 0, -1 for bad sizes, -2 out of memory (x then holds a partial result). */
int edgert_llama_blocks(const edgert_kernel_table *kt, float *x, int64_t T, int64_t n, float eps,
                        const edgert_llama_layer *layers, int64_t L, int64_t H, int64_t Hkv,
                        int64_t D, int64_t I, const float *cos_t, const float *sin_t,
                        int interleaved, int64_t C, int64_t start, int threads, int act_q8);

/* Rotary embedding of x [T, H, D] with cos, sin [T, D/2] into y [T, H, D] (y may alias x).
 * interleaved: pairs (x[2i], x[2i+1]) (GGUF layout); else pairs (x[i], x[i + D/2]). */
void edgert_rope(const float *x, int64_t T, int64_t H, int64_t D, const float *cos_t,
                 const float *sin_t, int interleaved, float *y);

#endif
