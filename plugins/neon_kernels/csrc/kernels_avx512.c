/* The x86-64 AVX-512 path (Skylake-SP and later servers, Ice Lake, Sapphire Rapids, Zen 4).
 * Compiled without -mavx512f: every function carries a target attribute and the table is chosen at
 * run time only when the CPU reports AVX-512 F/BW/VL/VNNI, FMA and F16C (see dispatch.c).
 *
 * fp32 activations: a 4-bit block is dequantized in registers through a 16-entry table, the block's
 * 16 possible values (q * d + m, or (q - 8) * d), looked up by nibble with one vpermps per 16
 * weights, then multiplied by the activations with FMAs. Q8_0 weights are converted with vcvtdq2ps.
 * q8 activations: integer block dots with vpdpbusd (VNNI, unsigned weights x signed activations),
 * scaled once per block. Prompts (T >= 4): in fp32 mode rows are dequantized once into a tile and
 * multiplied with every token (gemm_f32); in q8 mode a tile's nibbles are unpacked and its scales
 * gathered once for every token (gemm_q8). Both compute each output exactly as the decode kernels
 * (rows_*) do, so a prompt's products are bit for bit its tokens' products one at a time. */
#include "kernels.h"

#ifdef EDGERT_HAVE_AVX512

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

AVX512_FN static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

AVX512_FN static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

/* 0, 1, ..., 15 as floats: the nibble values a block's table is built from */
#define IOTA16 _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

/* ---- block scales, 16 blocks at a time ------------------------------------------------------ *
 * The f16 scale (and Q4_1 minimum) of 16 consecutive blocks, gathered with one vpgatherdd and
 * converted to fp32 into d[16] (and m[16]), so the block loops read them with broadcast loads
 * instead of spending shuffle-port work on a scalar conversion per block. n < 16 reads n blocks
 * (the rest of d is 0). */
AVX512_FN static inline void scales16(const uint8_t *blocks, int stride, int n, float *d, float *m) {
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32(stride));
    __mmask16 k = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, blocks, 1);
    _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)));
    if (m) _mm512_storeu_ps(m, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))));
}

/* The same for blocks without a minimum, one scale at a time. Q4_0's 18-byte and Q8_0's 34-byte
 * blocks put some of the gather's 4-byte elements across a cache line, and such a gather stalls
 * when it misses the cache: on the 49152-row Q8_0 output projection, streamed from memory, the
 * fp32 kernel took 3.9x as long with the gather. The fp32 kernels read the scales as scalars, so
 * they always take this route for those two types; the q8 kernels load them as a vector (a vector
 * load of scalar stores waits for them), and take it for Q8_0 only, where it measured faster. */
AVX512_FN static inline void scales16_scalar(const uint8_t *blocks, int stride, int n, float *d) {
    for (int i = 0; i < 16; i++) {
        uint16_t h = 0;
        if (i < n) memcpy(&h, blocks + (size_t)i * (size_t)stride, sizeof h);
        d[i] = f16(h);
    }
}

/* ---- fp32 activations -------------------------------------------------------------------- */

/* The 16 nibbles of bytes qs[0..15] as dword indexes: low nibbles (elements 0..15) and, in the
 * high bits of the same dwords, the high nibbles (elements 16..31); vpermps reads the low 4 bits. */
AVX512_FN static inline __m512i nib_idx(const uint8_t *qs) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
}

/* acc0/acc1 += the block's 32 weights (looked up in table) times xb's 32 activations */
#define TABLE_BLOCK(table, qs, xb, acc0, acc1)                                                 \
    do {                                                                                       \
        __m512i lo_ = nib_idx(qs), hi_ = _mm512_srli_epi32(lo_, 4);                            \
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo_, table), _mm512_loadu_ps(xb), acc0);  \
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi_, table), _mm512_loadu_ps((xb) + 16),  \
                               acc1);                                                          \
    } while (0)

/* A 4-bit row: per block, table = iota * d (+ m), looked up by nibble; two accumulator pairs
 * (even and odd blocks) so FMA latency does not bound the loop. */
#define DOT_Q4_F32(BLOCK_T, HAS_M, IOTA)                                                       \
    const BLOCK_T *w = (const BLOCK_T *)wrow;                                                  \
    const __m512 iota = IOTA;                                                                  \
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),            \
                     _mm512_setzero_ps()};                                                     \
    float d[16], m[16];                                                                        \
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {                                                  \
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;                                            \
        if (HAS_M)                                                                             \
            scales16((const uint8_t *)(w + b0), (int)sizeof(BLOCK_T), n, d, m);                \
        else                                                                                   \
            scales16_scalar((const uint8_t *)(w + b0), (int)sizeof(BLOCK_T), n, d);            \
        for (int i = 0; i < n; i++) {                                                          \
            __m512 table = HAS_M ? _mm512_fmadd_ps(iota, _mm512_set1_ps(d[i]), _mm512_set1_ps(m[i])) \
                                 : _mm512_mul_ps(iota, _mm512_set1_ps(d[i]));                  \
            int j = (i & 1) * 2;                                                               \
            TABLE_BLOCK(table, w[b0 + i].qs, x + (b0 + i) * EDGERT_QK, acc[j], acc[j + 1]);     \
        }                                                                                      \
    }                                                                                          \
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),                   \
                                              _mm512_add_ps(acc[2], acc[3])));

AVX512_FN static float dot_q4_0_f32(int64_t nb, const void *wrow, const float *x) {
    DOT_Q4_F32(block_q4_0, 0, _mm512_sub_ps(IOTA16, _mm512_set1_ps(8.0f)))
}

AVX512_FN static float dot_q4_1_f32(int64_t nb, const void *wrow, const float *x) {
    DOT_Q4_F32(block_q4_1, 1, IOTA16)
}

AVX512_FN static float dot_q8_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    float d[16];
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;
        scales16_scalar((const uint8_t *)(w + b0), (int)sizeof(block_q8_0), n, d);
        for (int i = 0; i < n; i++) {
            const block_q8_0 *wb = w + b0 + i;
            const float *xb = x + (b0 + i) * EDGERT_QK;
            __m512 dv = _mm512_set1_ps(d[i]);
            __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)wb->qs)));
            __m512 q1 = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(wb->qs + 16))));
            int j = (i & 1) * 2;
            acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(q0, dv), _mm512_loadu_ps(xb), acc[j]);
            acc[j + 1] = _mm512_fmadd_ps(_mm512_mul_ps(q1, dv), _mm512_loadu_ps(xb + 16), acc[j + 1]);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),
                                              _mm512_add_ps(acc[2], acc[3])));
}

/* ---- dequantization to fp32 (prompts) ------------------------------------------------------ */

AVX512_FN static void dequant_q4_0(int64_t nb, const void *wrow, float *out) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    const __m512 iota = _mm512_sub_ps(IOTA16, _mm512_set1_ps(8.0f));
    for (int64_t b = 0; b < nb; b++) {
        __m512 table = _mm512_mul_ps(iota, _mm512_set1_ps(f16(w[b].d)));
        __m512i lo = nib_idx(w[b].qs);
        _mm512_storeu_ps(out + b * EDGERT_QK, _mm512_permutexvar_ps(lo, table));
        _mm512_storeu_ps(out + b * EDGERT_QK + 16,
                         _mm512_permutexvar_ps(_mm512_srli_epi32(lo, 4), table));
    }
}

AVX512_FN static void dequant_q4_1(int64_t nb, const void *wrow, float *out) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    for (int64_t b = 0; b < nb; b++) {
        __m512 table = _mm512_fmadd_ps(IOTA16, _mm512_set1_ps(f16(w[b].d)), _mm512_set1_ps(f16(w[b].m)));
        __m512i lo = nib_idx(w[b].qs);
        _mm512_storeu_ps(out + b * EDGERT_QK, _mm512_permutexvar_ps(lo, table));
        _mm512_storeu_ps(out + b * EDGERT_QK + 16,
                         _mm512_permutexvar_ps(_mm512_srli_epi32(lo, 4), table));
    }
}

AVX512_FN static void dequant_q8_0(int64_t nb, const void *wrow, float *out) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    for (int64_t b = 0; b < nb; b++) {
        __m512 d = _mm512_set1_ps(f16(w[b].d));
        for (int h = 0; h < 2; h++) {
            __m512 q = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w[b].qs + 16 * h))));
            _mm512_storeu_ps(out + b * EDGERT_QK + 16 * h, _mm512_mul_ps(q, d));
        }
    }
}

/* One output: sum_k w[k] x[k] as rows_q4_f32_r / rows_q8_0_f32_r sum it: per block of 32, the
 * first 16 products into one 16-lane accumulator and the last 16 into another, then the lanes of
 * their sum. The tile kernel below computes exactly this for each of its outputs, so a prompt's
 * outputs are bit for bit those of its tokens decoded one at a time. */
AVX512_FN static float dot1(int64_t K, const float *w, const float *x) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += EDGERT_QK) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* 4 rows x 3 tokens, each output with its two accumulators (24 in all): 7 loads per 12 FMAs. */
#define TILE_HALF(h, c0, c1, c2, c3)                                                           \
    do {                                                                                       \
        __m512 v0 = _mm512_loadu_ps(x0 + k + h), v1 = _mm512_loadu_ps(x1 + k + h);             \
        __m512 v2 = _mm512_loadu_ps(x2 + k + h), u = _mm512_loadu_ps(w0 + k + h);              \
        c0[0] = _mm512_fmadd_ps(u, v0, c0[0]);                                                 \
        c0[1] = _mm512_fmadd_ps(u, v1, c0[1]);                                                 \
        c0[2] = _mm512_fmadd_ps(u, v2, c0[2]);                                                 \
        u = _mm512_loadu_ps(w1 + k + h);                                                       \
        c1[0] = _mm512_fmadd_ps(u, v0, c1[0]);                                                 \
        c1[1] = _mm512_fmadd_ps(u, v1, c1[1]);                                                 \
        c1[2] = _mm512_fmadd_ps(u, v2, c1[2]);                                                 \
        u = _mm512_loadu_ps(w2 + k + h);                                                       \
        c2[0] = _mm512_fmadd_ps(u, v0, c2[0]);                                                 \
        c2[1] = _mm512_fmadd_ps(u, v1, c2[1]);                                                 \
        c2[2] = _mm512_fmadd_ps(u, v2, c2[2]);                                                 \
        u = _mm512_loadu_ps(w3 + k + h);                                                       \
        c3[0] = _mm512_fmadd_ps(u, v0, c3[0]);                                                 \
        c3[1] = _mm512_fmadd_ps(u, v1, c3[1]);                                                 \
        c3[2] = _mm512_fmadd_ps(u, v2, c3[2]);                                                 \
    } while (0)

AVX512_FN static void tile4x3(int64_t K, const float *w, const float *x, float *y, int64_t ldy) {
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K;
    /* a<r>[t]: first halves of the blocks, b<r>[t]: second halves */
    __m512 a0[3], a1[3], a2[3], a3[3], b0[3], b1[3], b2[3], b3[3];
    for (int t = 0; t < 3; t++)
        a0[t] = a1[t] = a2[t] = a3[t] = b0[t] = b1[t] = b2[t] = b3[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += EDGERT_QK) {
        TILE_HALF(0, a0, a1, a2, a3);
        TILE_HALF(16, b0, b1, b2, b3);
    }
    for (int t = 0; t < 3; t++) {
        y[t * ldy + 0] = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], b0[t]));
        y[t * ldy + 1] = _mm512_reduce_add_ps(_mm512_add_ps(a1[t], b1[t]));
        y[t * ldy + 2] = _mm512_reduce_add_ps(_mm512_add_ps(a2[t], b2[t]));
        y[t * ldy + 3] = _mm512_reduce_add_ps(_mm512_add_ps(a3[t], b3[t]));
    }
}

AVX512_FN static void gemm_f32(int64_t K, const float *w, int64_t R, const float *x, int64_t T,
                               float *y, int64_t ldy) {
    int64_t t = 0;
    if (R == 4)
        for (; t + 3 <= T; t += 3) tile4x3(K, w, x + t * K, y + t * ldy, ldy);
    for (; t < T; t++)
        for (int64_t r = 0; r < R; r++) y[t * ldy + r] = dot1(K, w + r * K, x + t * K);
}

/* ---- q8 activations (VNNI) ----------------------------------------------------------------- */

/* 16 bytes of nibbles -> 32 unsigned bytes in element order (low nibbles 0..15, high 16..31). */
AVX512_FN static inline __m256i unpack_nibbles(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* sum over 32 lanes of u[i] * s[i] (u unsigned, s signed) as 8 int32 partial sums -> fp32 */
AVX512_FN static inline __m256 dot_us8(__m256i u, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
}

AVX512_FN static float dot_q4_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float offs = 0.0f; /* sum d_w * s_a: the (q - 8) offset, subtracted once at the end */
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        float d0 = f16(w[b].d), d1 = f16(w[b + 1].d);
        __m256 p0 = dot_us8(unpack_nibbles(w[b].qs), _mm256_loadu_si256((const __m256i *)a[b].qs));
        __m256 p1 = dot_us8(unpack_nibbles(w[b + 1].qs),
                            _mm256_loadu_si256((const __m256i *)a[b + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[b].d), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a[b + 1].d), p1, acc1);
        offs += d0 * a[b].s + d1 * a[b + 1].s;
    }
    for (; b < nb; b++) {
        float d0 = f16(w[b].d);
        __m256 p0 = dot_us8(unpack_nibbles(w[b].qs), _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[b].d), p0, acc0);
        offs += d0 * a[b].s;
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) - 8.0f * offs;
}

AVX512_FN static float dot_q4_1_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float mins = 0.0f; /* sum m_w * s_a */
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        __m256 p0 = dot_us8(unpack_nibbles(w[b].qs), _mm256_loadu_si256((const __m256i *)a[b].qs));
        __m256 p1 = dot_us8(unpack_nibbles(w[b + 1].qs),
                            _mm256_loadu_si256((const __m256i *)a[b + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d) * a[b].d), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b + 1].d) * a[b + 1].d), p1, acc1);
        mins += f16(w[b].m) * a[b].s + f16(w[b + 1].m) * a[b + 1].s;
    }
    for (; b < nb; b++) {
        __m256 p0 = dot_us8(unpack_nibbles(w[b].qs), _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d) * a[b].d), p0, acc0);
        mins += f16(w[b].m) * a[b].s;
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) + mins;
}

AVX512_FN static float dot_q8_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i w1 = _mm256_loadu_si256((const __m256i *)w[b + 1].qs);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256i y1 = _mm256_loadu_si256((const __m256i *)a[b + 1].qs);
        /* signed x signed via |w| x (y * sign(w)); |-128| reads as unsigned 128, still exact */
        __m256 p0 = dot_us8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(y0, w0));
        __m256 p1 = dot_us8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(y1, w1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d) * a[b].d), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b + 1].d) * a[b + 1].d), p1, acc1);
    }
    for (; b < nb; b++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 p0 = dot_us8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(y0, w0));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d) * a[b].d), p0, acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}


/* ---- several rows per call (decode) ------------------------------------------------------- *
 * Up to ROWS rows share each block's activation loads and give the core independent FMA chains;
 * every row's result is computed by the same sequence whether its group has 1 or ROWS rows. */
#define ROWS 4
#define INLINE_ALWAYS __attribute__((always_inline)) inline

/* fp32 activations on Q4_0 (has_m 0) / Q4_1 (has_m 1) rows */
AVX512_FN static INLINE_ALWAYS void rows_q4_f32_r(const int R, const int has_m, int64_t nb,
                                                  const uint8_t *w, size_t rb, const float *x,
                                                  float *y) {
    const int bs = has_m ? (int)sizeof(block_q4_1) : (int)sizeof(block_q4_0), qoff = has_m ? 4 : 2;
    const __m512 iota = has_m ? IOTA16 : _mm512_sub_ps(IOTA16, _mm512_set1_ps(8.0f));
    __m512 a0[ROWS], a1[ROWS];
    float d[ROWS][16], m[ROWS][16];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;
        for (int r = 0; r < R; r++)
            if (has_m)
                scales16(w + r * rb + (size_t)b0 * bs, bs, n, d[r], m[r]);
            else
                scales16_scalar(w + r * rb + (size_t)b0 * bs, bs, n, d[r]);
        for (int i = 0; i < n; i++) {
            const float *xb = x + (b0 + i) * EDGERT_QK;
            __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
            for (int r = 0; r < R; r++) {
                const uint8_t *qs = w + r * rb + (size_t)(b0 + i) * bs + qoff;
                __m512 table = has_m ? _mm512_fmadd_ps(iota, _mm512_set1_ps(d[r][i]), _mm512_set1_ps(m[r][i]))
                                     : _mm512_mul_ps(iota, _mm512_set1_ps(d[r][i]));
                __m512i lo = nib_idx(qs), hi = _mm512_srli_epi32(lo, 4);
                a0[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo, table), x0, a0[r]);
                a1[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi, table), x1, a1[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

AVX512_FN static INLINE_ALWAYS void rows_q8_0_f32_r(const int R, int64_t nb, const uint8_t *w,
                                                    size_t rb, const float *x, float *y) {
    const int bs = (int)sizeof(block_q8_0);
    __m512 a0[ROWS], a1[ROWS];
    float d[ROWS][16];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;
        for (int r = 0; r < R; r++) scales16_scalar(w + r * rb + (size_t)b0 * bs, bs, n, d[r]);
        for (int i = 0; i < n; i++) {
            const float *xb = x + (b0 + i) * EDGERT_QK;
            __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
            for (int r = 0; r < R; r++) {
                const int8_t *qs = (const int8_t *)(w + r * rb + (size_t)(b0 + i) * bs + 2);
                __m512 dv = _mm512_set1_ps(d[r][i]);
                __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
                __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
                a0[r] = _mm512_fmadd_ps(_mm512_mul_ps(q0, dv), x0, a0[r]);
                a1[r] = _mm512_fmadd_ps(_mm512_mul_ps(q1, dv), x1, a1[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

/* A token's q8 activations as the q8 kernels read them, prepared once per product (tok_prep)
 * and shared by every row: per group of 16 blocks the scales as vectors and the pairs arranged
 * for vpdpbusd. */
typedef struct {          /* one token's activations, per group of 16 blocks */
    float d[16], s[16];   /* block scales d_a and d_a * sum(q), 0 past the row's end */
    __m512i ap[8];        /* pairs (2p, 2p+1) arranged as rows_q8_r arranges them */
    __m256i tail;         /* the odd last block of a group */
} q8_tok_group;

AVX512_FN static void tok_prep(const int wtype, int64_t nb, const block_q8a *a, q8_tok_group *g) {
    for (int64_t b0 = 0, gi = 0; b0 < nb; b0 += 16, gi++) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;
        for (int i = 0; i < 16; i++) {
            g[gi].d[i] = i < n ? a[b0 + i].d : 0.0f;
            g[gi].s[i] = i < n ? a[b0 + i].s : 0.0f;
        }
        for (int p = 0; p < n / 2; p++) {
            __m256i x0 = _mm256_loadu_si256((const __m256i *)a[b0 + 2 * p].qs);
            __m256i x1 = _mm256_loadu_si256((const __m256i *)a[b0 + 2 * p + 1].qs);
            if (wtype == 2) {
                g[gi].ap[p] = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
            } else {
                __m256i lo = _mm256_permute2x128_si256(x0, x1, 0x20);
                __m256i hi = _mm256_permute2x128_si256(x0, x1, 0x31);
                g[gi].ap[p] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            }
        }
        if (n & 1) g[gi].tail = _mm256_loadu_si256((const __m256i *)a[b0 + n - 1].qs);
    }
}

/* q8 activations: wtype 0 Q4_0, 1 Q4_1, 2 Q8_0. Two blocks per 512-bit vpdpbusd: the weights of
 * blocks b, b+1 as [lo nibbles b, lo b+1, hi b, hi b+1] (Q8_0: [b, b+1]), the activations of the
 * pair rearranged once per group of 16 blocks to match, and each int32 lane scaled by its block's
 * d_w * d_a (a vpermps of the group's 16 scales). An odd last block takes the 256-bit route. */
/* The pieces rows_q8_r (weights unpacked as it goes, decode) and tile_q8_r (weights unpacked once
 * by row_prep, prompts) are built from, so both compute every output by the same operations. */
AVX512_FN static INLINE_ALWAYS int q8_block_bytes(const int wtype) {
    return wtype == 0 ? (int)sizeof(block_q4_0) : wtype == 1 ? (int)sizeof(block_q4_1)
                                                              : (int)sizeof(block_q8_0);
}
AVX512_FN static INLINE_ALWAYS int q8_qs_offset(const int wtype) { return wtype == 1 ? 4 : 2; }

/* lane -> block of the pair: Q4 [b, b+1, b, b+1] per 4 lanes; Q8_0 [b x8, b+1 x8] */
AVX512_FN static INLINE_ALWAYS __m512i q8_lane_blk(const int wtype) {
    return wtype == 2 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                      : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
}

/* The scales (and Q4_1 minimums) of a group of n <= 16 blocks (see scales16_scalar for Q8_0). */
AVX512_FN static INLINE_ALWAYS void q8_scales(const int wtype, const uint8_t *blocks, int n, float *d,
                                              float *m) {
    if (wtype == 2)
        scales16_scalar(blocks, q8_block_bytes(wtype), n, d);
    else
        scales16(blocks, q8_block_bytes(wtype), n, d, wtype == 1 ? m : NULL);
}

/* The weights of blocks b, b+1 (quants at q0, q1) as vpdpbusd's unsigned operand: Q4 as
 * [lo nibbles b, lo b+1, hi b, hi b+1]; Q8_0 as |w|, with *neg the lanes where w < 0. */
AVX512_FN static INLINE_ALWAYS __m512i q8_pair_weights(const int wtype, const uint8_t *q0,
                                                       const uint8_t *q1, __mmask64 *neg) {
    if (wtype == 2) {
        __m512i wv = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q0)),
            _mm256_loadu_si256((const __m256i *)q1), 1);
        *neg = _mm512_movepi8_mask(wv);
        return _mm512_abs_epi8(wv);
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)q0)),
                                        _mm_loadu_si128((const __m128i *)q1), 1);
    *neg = 0;
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                              _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
}

/* The odd last block of a group: Q4 unpacked, Q8_0 its raw int8 weights. */
AVX512_FN static INLINE_ALWAYS __m256i q8_tail_weights(const int wtype, const uint8_t *qs) {
    return wtype == 2 ? _mm256_loadu_si256((const __m256i *)qs) : unpack_nibbles(qs);
}

/* Per row and group: the side sum (Q4_1 sum m_w * s_a; Q4_0 sum d_w * s_a, times -8 at the end)
 * and the block products' scales d_w * d_a. */
AVX512_FN static INLINE_ALWAYS void q8_group_scales(const int wtype, const float *d, const float *m,
                                                    __m512 vad, __m512 vas, __m512 *side,
                                                    __m512 *sc) {
    __m512 vd = _mm512_loadu_ps(d);
    if (wtype == 1) *side = _mm512_fmadd_ps(_mm512_loadu_ps(m), vas, *side);
    if (wtype == 0) *side = _mm512_fmadd_ps(vd, vas, *side);
    *sc = _mm512_mul_ps(vd, vad);
}

/* acc + the pair's two block products, each scaled by its block's d_w * d_a (signed x signed for
 * Q8_0 as |w| x (a negated where w < 0)). */
AVX512_FN static INLINE_ALWAYS __m512 q8_pair_product(const int wtype, __m512i wv, __mmask64 neg,
                                                      __m512i ap, __m512i idx, __m512 sc,
                                                      __m512 acc) {
    __m512i av = wtype == 2 ? _mm512_mask_sub_epi8(ap, neg, _mm512_setzero_si512(), ap) : ap;
    __m512i iw = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av);
    return _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, sc), _mm512_cvtepi32_ps(iw), acc);
}

/* tail + block i's product (weights from q8_tail_weights) scaled by lane i of sc. */
AVX512_FN static INLINE_ALWAYS __m256 q8_tail_product(const int wtype, __m256i wv, __m256i av,
                                                      __m512 sc, int i, __m256 tail) {
    __m256 pr = wtype == 2 ? dot_us8(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv))
                           : dot_us8(wv, av);
    float scale[16];
    _mm512_storeu_ps(scale, sc);
    return _mm256_fmadd_ps(_mm256_set1_ps(scale[i]), pr, tail);
}

AVX512_FN static INLINE_ALWAYS float q8_finish(const int wtype, __m512 acc, __m512 side, __m256 tail) {
    float sv = _mm512_reduce_add_ps(side);
    return _mm512_reduce_add_ps(acc) + hsum256(tail) +
           (wtype == 0 ? -8.0f * sv : wtype == 1 ? sv : 0.0f);
}

AVX512_FN static INLINE_ALWAYS void rows_q8_r(const int R, const int wtype, int64_t nb,
                                              const uint8_t *w, size_t rb, const q8_tok_group *tg,
                                              float *y) {
    const int bs = q8_block_bytes(wtype), qoff = q8_qs_offset(wtype);
    const __m512i lane_blk = q8_lane_blk(wtype);
    __m512 acc[ROWS], side[ROWS], sc[ROWS];
    __m256 tail[ROWS];
    float d[ROWS][16], m[ROWS][16];
    for (int r = 0; r < R; r++) {
        acc[r] = side[r] = _mm512_setzero_ps();
        tail[r] = _mm256_setzero_ps();
    }
    for (int64_t b0 = 0, gi = 0; b0 < nb; b0 += 16, gi++) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16, np = n / 2;
        const q8_tok_group *t = tg + gi;
        __m512 vad = _mm512_loadu_ps(t->d), vas = _mm512_loadu_ps(t->s);
        for (int r = 0; r < R; r++) {
            q8_scales(wtype, w + r * rb + (size_t)b0 * bs, n, d[r], m[r]);
            q8_group_scales(wtype, d[r], m[r], vad, vas, &side[r], &sc[r]);
        }
        for (int p = 0; p < np; p++) {
            __m512i idx = _mm512_add_epi32(lane_blk, _mm512_set1_epi32(2 * p));
            for (int r = 0; r < R; r++) {
                const uint8_t *q0 = w + r * rb + (size_t)(b0 + 2 * p) * bs + qoff;
                __mmask64 neg;
                __m512i wv = q8_pair_weights(wtype, q0, q0 + bs, &neg);
                acc[r] = q8_pair_product(wtype, wv, neg, t->ap[p], idx, sc[r], acc[r]);
            }
        }
        if (n & 1)
            for (int r = 0; r < R; r++) {
                const uint8_t *qs = w + r * rb + (size_t)(b0 + n - 1) * bs + qoff;
                tail[r] = q8_tail_product(wtype, q8_tail_weights(wtype, qs), t->tail, sc[r], n - 1,
                                          tail[r]);
            }
    }
    for (int r = 0; r < R; r++) y[r] = q8_finish(wtype, acc[r], side[r], tail[r]);
}

/* ---- q8 activations, prompts (T > 1) ------------------------------------------------------ *
 * rows_q8_r unpacks a row's nibbles, gathers its scales and rearranges the activation pairs for
 * every token; a prompt repeats that work T times per row. gemm_q8 does each once: the tokens'
 * activation pairs and scales once per call (tok_prep), a tile of rows' unpacked weights and scales
 * once per tile (row_prep), then every (row, token) output with the very operations rows_q8_r uses
 * for it, in the same order, so a prompt's outputs are bit for bit its tokens' one-at-a-time ones. */

typedef struct {          /* one weight row, per group of 16 blocks */
    float d[16], m[16];
    __m512i wv[8];        /* the pair's unsigned weights (Q8_0: |w|) */
    __mmask64 neg[8];     /* Q8_0: lanes whose weight is negative */
    __m256i tail;         /* the odd last block, unpacked (Q8_0: the raw int8 weights) */
} q8_row_group;

AVX512_FN static void row_prep(const int wtype, int64_t nb, const uint8_t *w, q8_row_group *g) {
    const int bs = q8_block_bytes(wtype), qoff = q8_qs_offset(wtype);
    for (int64_t b0 = 0, gi = 0; b0 < nb; b0 += 16, gi++) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16;
        q8_scales(wtype, w + (size_t)b0 * bs, n, g[gi].d, g[gi].m);
        for (int p = 0; p < n / 2; p++) {
            const uint8_t *q0 = w + (size_t)(b0 + 2 * p) * bs + qoff;
            g[gi].wv[p] = q8_pair_weights(wtype, q0, q0 + bs, &g[gi].neg[p]);
        }
        if (n & 1) g[gi].tail = q8_tail_weights(wtype, w + (size_t)(b0 + n - 1) * bs + qoff);
    }
}

/* R rows (prepared, ng groups each, rg[r * ng + gi]) times one token: y[r] for r < R. */
AVX512_FN static INLINE_ALWAYS void tile_q8_r(const int R, const int wtype, int64_t nb,
                                              const q8_row_group *rg, int64_t ng,
                                              const q8_tok_group *tg, float *y) {
    const __m512i lane_blk = q8_lane_blk(wtype);
    __m512 acc[ROWS], side[ROWS], sc[ROWS];
    __m256 tail[ROWS];
    for (int r = 0; r < R; r++) {
        acc[r] = side[r] = _mm512_setzero_ps();
        tail[r] = _mm256_setzero_ps();
    }
    for (int64_t b0 = 0, gi = 0; b0 < nb; b0 += 16, gi++) {
        int n = nb - b0 < 16 ? (int)(nb - b0) : 16, np = n / 2;
        const q8_tok_group *t = tg + gi;
        __m512 vad = _mm512_loadu_ps(t->d), vas = _mm512_loadu_ps(t->s);
        for (int r = 0; r < R; r++) {
            const q8_row_group *g = rg + r * ng + gi;
            q8_group_scales(wtype, g->d, g->m, vad, vas, &side[r], &sc[r]);
        }
        for (int p = 0; p < np; p++) {
            __m512i idx = _mm512_add_epi32(lane_blk, _mm512_set1_epi32(2 * p));
            for (int r = 0; r < R; r++) {
                const q8_row_group *g = rg + r * ng + gi;
                acc[r] = q8_pair_product(wtype, g->wv[p], g->neg[p], t->ap[p], idx, sc[r], acc[r]);
            }
        }
        if (n & 1)
            for (int r = 0; r < R; r++)
                tail[r] = q8_tail_product(wtype, rg[r * ng + gi].tail, t->tail, sc[r], n - 1, tail[r]);
    }
    for (int r = 0; r < R; r++) y[r] = q8_finish(wtype, acc[r], side[r], tail[r]);
}

/* Rows 0..nrows-1 (row_bytes apart) times T tokens: y[t * ldy + r]. Returns 0 when its scratch
 * could not be allocated (the driver then runs rows_q8 per token). */
AVX512_FN static INLINE_ALWAYS int gemm_q8_w(const int wtype, int64_t nb, const uint8_t *w,
                                             size_t rb, int64_t nrows, const block_q8a *a,
                                             int64_t T, float *y, int64_t ldy) {
    int64_t ng = (nb + 15) / 16;
    q8_tok_group *tg = (q8_tok_group *)aligned_alloc(64, (size_t)(T * ng) * sizeof(q8_tok_group));
    q8_row_group *rg = (q8_row_group *)aligned_alloc(64, (size_t)(ROWS * ng) * sizeof(q8_row_group));
    if (!tg || !rg) {
        free(tg);
        free(rg);
        return 0;
    }
    for (int64_t t = 0; t < T; t++) tok_prep(wtype, nb, a + t * nb, tg + t * ng);
    for (int64_t r = 0; r < nrows; r += ROWS) {
        int R = nrows - r < ROWS ? (int)(nrows - r) : ROWS;
        for (int i = 0; i < R; i++) row_prep(wtype, nb, w + (size_t)(r + i) * rb, rg + i * ng);
        for (int64_t t = 0; t < T; t++) {
            if (R == ROWS)
                tile_q8_r(ROWS, wtype, nb, rg, ng, tg + t * ng, y + t * ldy + r);
            else
                for (int i = 0; i < R; i++)
                    tile_q8_r(1, wtype, nb, rg + i * ng, ng, tg + t * ng, y + t * ldy + r + i);
        }
    }
    free(tg);
    free(rg);
    return 1;
}

AVX512_FN static int gemm_q4_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                  const block_q8a *a, int64_t T, float *y, int64_t ldy) {
    return gemm_q8_w(0, nb, w, rb, nrows, a, T, y, ldy);
}
AVX512_FN static int gemm_q4_1_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                  const block_q8a *a, int64_t T, float *y, int64_t ldy) {
    return gemm_q8_w(1, nb, w, rb, nrows, a, T, y, ldy);
}
AVX512_FN static int gemm_q8_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                  const block_q8a *a, int64_t T, float *y, int64_t ldy) {
    return gemm_q8_w(2, nb, w, rb, nrows, a, T, y, ldy);
}

/* Software prefetch of the rows PREFETCH_ROWS ahead: decode streams every weight from memory once
 * per token, and the hardware prefetchers alone leave one core well below the memory bandwidth. */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif
static inline void prefetch_rows(const uint8_t *w, size_t rb, int64_t r, int64_t nrows) {
    if (r + PREFETCH_ROWS + ROWS > nrows) return;
    const uint8_t *p = w + (size_t)(r + PREFETCH_ROWS) * rb, *e = p + ROWS * rb;
    for (; p < e; p += 64) _mm_prefetch((const char *)p, _MM_HINT_T0);
}

#define ROWS_DRIVER(NAME, CALL4, CALL1, ATYPE)                                                  \
    AVX512_FN static void NAME(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,         \
                               const ATYPE *x, float *y) {                                     \
        int64_t r = 0;                                                                         \
        for (; r + ROWS <= nrows; r += ROWS) {                                                 \
            prefetch_rows(w, rb, r, nrows);                                                    \
            CALL4;                                                                             \
        }                                                                                      \
        for (; r < nrows; r++) CALL1;                                                          \
    }

ROWS_DRIVER(rows_q4_0_f32, rows_q4_f32_r(4, 0, nb, w + r * rb, rb, x, y + r),
            rows_q4_f32_r(1, 0, nb, w + r * rb, rb, x, y + r), float)
ROWS_DRIVER(rows_q4_1_f32, rows_q4_f32_r(4, 1, nb, w + r * rb, rb, x, y + r),
            rows_q4_f32_r(1, 1, nb, w + r * rb, rb, x, y + r), float)
ROWS_DRIVER(rows_q8_0_f32, rows_q8_0_f32_r(4, nb, w + r * rb, rb, x, y + r),
            rows_q8_0_f32_r(1, nb, w + r * rb, rb, x, y + r), float)
/* q8 rows: the token's activations prepared once for all the rows, on the stack up to K = 16384
 * (22 KiB), else on the heap; without heap memory, each row's dot_q8 (the same integer products,
 * only the fp32 scaling order differs). */
#define TOK_STACK_GROUPS 32
AVX512_FN static INLINE_ALWAYS void rows_q8_w(const int wtype, int64_t nb, const uint8_t *w,
                                              size_t rb, int64_t nrows, const block_q8a *a,
                                              float *y) {
    int64_t ng = (nb + 15) / 16;
    q8_tok_group stack[TOK_STACK_GROUPS];
    q8_tok_group *tg = ng <= TOK_STACK_GROUPS
        ? stack : (q8_tok_group *)aligned_alloc(64, (size_t)ng * sizeof(q8_tok_group));
    if (!tg) {
        for (int64_t r = 0; r < nrows; r++)
            y[r] = edgert_kernels_avx512.dot_q8[wtype](nb, w + (size_t)r * rb, a);
        return;
    }
    tok_prep(wtype, nb, a, tg);
    int64_t r = 0;
    for (; r + ROWS <= nrows; r += ROWS) {
        prefetch_rows(w, rb, r, nrows);
        rows_q8_r(ROWS, wtype, nb, w + r * rb, rb, tg, y + r);
    }
    for (; r < nrows; r++) rows_q8_r(1, wtype, nb, w + r * rb, rb, tg, y + r);
    if (tg != stack) free(tg);
}

AVX512_FN static void rows_q4_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                   const block_q8a *a, float *y) {
    rows_q8_w(0, nb, w, rb, nrows, a, y);
}
AVX512_FN static void rows_q4_1_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                   const block_q8a *a, float *y) {
    rows_q8_w(1, nb, w, rb, nrows, a, y);
}
AVX512_FN static void rows_q8_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                   const block_q8a *a, float *y) {
    rows_q8_w(2, nb, w, rb, nrows, a, y);
}

/* ---- fp32 vector primitives ---------------------------------------------------------------- */

AVX512_FN static float vdot(int64_t n, const float *a, const float *b) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

AVX512_FN static void vaxpy(int64_t n, float s, const float *x, float *y) {
    __m512 vs = _mm512_set1_ps(s);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(vs, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(vs, _mm512_maskz_loadu_ps(m, x + i),
                                                        _mm512_maskz_loadu_ps(m, y + i)));
    }
}

AVX512_FN static void vscale(int64_t n, float s, const float *x, const float *w, float *y) {
    __m512 vs = _mm512_set1_ps(s);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs),
                                              _mm512_loadu_ps(w + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs),
                                                      _mm512_maskz_loadu_ps(m, w + i)));
    }
}


/* ---- exp, attention row, SwiGLU ------------------------------------------------------------ */

/* exp(x) in fp32, 16 lanes: x = k ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * reduction), a degree-7 polynomial for e^r (Cephes' expf coefficients, about 1 ulp), times 2^k
 * by vscalefps (which also gives 0 below -104 and inf above 88.7 without special cases). */
AVX512_FN static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7228391f)), _mm512_set1_ps(-104.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

/* One query row (D a multiple of 16, at most 256): the query and the output stay in registers;
 * scores q . K[s] * scale, their max, exp(score - max) 16 at a time, then o = sum_s p_s V[s] / sum. */
AVX512_FN static void attn_row(int64_t D, const float *q, const float *K, const float *V, int64_t n,
                               float scale, float *scores, float *o) {
    const int nv = (int)(D / 16);
    __m512 qv[16], ov[16];
    for (int j = 0; j < nv; j++) {
        qv[j] = _mm512_loadu_ps(q + 16 * j);
        ov[j] = _mm512_setzero_ps();
    }
    float mx = -INFINITY;
    for (int64_t s = 0; s < n; s++) {
        const float *k = K + s * D;
        __m512 a0 = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k)), a1 = _mm512_setzero_ps();
        for (int j = 1; j < nv; j++) {
            if (j & 1)
                a1 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k + 16 * j), a1);
            else
                a0 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k + 16 * j), a0);
        }
        float sc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
        scores[s] = sc;
        if (sc > mx) mx = sc;
    }
    __m512 vmx = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
    int64_t s = 0;
    for (; s + 16 <= n; s += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(scores + s), vmx));
        _mm512_storeu_ps(scores + s, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (s < n) {
        __mmask16 m = (__mmask16)((1u << (n - s)) - 1u);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + s), vmx));
        _mm512_mask_storeu_ps(scores + s, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    float inv = 1.0f / _mm512_reduce_add_ps(vsum);
    for (s = 0; s < n; s++) {
        __m512 p = _mm512_set1_ps(scores[s] * inv);
        const float *v = V + s * D;
        for (int j = 0; j < nv; j++) ov[j] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * j), ov[j]);
    }
    for (int j = 0; j < nv; j++) _mm512_storeu_ps(o + 16 * j, ov[j]);
}

AVX512_FN static void swiglu(int64_t n, const float *gate, const float *up, float *out) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 e = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g)));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, e), _mm512_loadu_ps(up + i)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 e = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g)));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_div_ps(g, e), _mm512_maskz_loadu_ps(m, up + i)));
    }
}

const edgert_kernel_table edgert_kernels_avx512 = {
    "x86-avx512",
    {dot_q4_0_q8, dot_q4_1_q8, dot_q8_0_q8},
    {dot_q4_0_f32, dot_q4_1_f32, dot_q8_0_f32},
    vdot,
    vaxpy,
    vscale,
    {dequant_q4_0, dequant_q4_1, dequant_q8_0},
    gemm_f32,
    {rows_q4_0_q8, rows_q4_1_q8, rows_q8_0_q8},
    {rows_q4_0_f32, rows_q4_1_f32, rows_q8_0_f32},
    attn_row,
    swiglu,
    {gemm_q4_0_q8, gemm_q4_1_q8, gemm_q8_0_q8},
};

#endif /* EDGERT_HAVE_AVX512 */
