/* The x86-64 AVX2 path. Compiled without -mavx2: every function carries a target attribute and the
 * table is chosen at run time only when the CPU reports AVX2, FMA and F16C (see dispatch.c). */
#include "kernels.h"

#ifdef EDGERT_HAVE_AVX2

#include <immintrin.h>

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

AVX2_FN static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

AVX2_FN static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

/* 16 bytes of nibbles -> 32 unsigned bytes in element order (low nibbles 0..15, high 16..31). */
AVX2_FN static inline __m256i unpack_nibbles(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* sum over 32 lanes of u[i] * s[i] (u unsigned <= 128, s signed), as 8 int32 partial sums -> fp32 */
AVX2_FN static inline __m256 dot_us8(__m256i u, __m256i s) {
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* ---- q8 activations ---------------------------------------------------------------------- */

AVX2_FN static float dot_q4_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
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
    return hsum_ps(_mm256_add_ps(acc0, acc1)) - 8.0f * offs;
}

AVX2_FN static float dot_q4_1_q8(int64_t nb, const void *wrow, const block_q8a *a) {
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
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + mins;
}

AVX2_FN static float dot_q8_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
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
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* ---- fp32 activations -------------------------------------------------------------------- */

/* 32 signed bytes (element order) times 32 floats, summed into 8 lanes. */
AVX2_FN static inline __m256 dot_i8_f32(__m256i q, const float *x) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                        _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(x + 16), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
                        _mm256_loadu_ps(x + 24), s);
    return s;
}

AVX2_FN static float dot_q4_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_sub_epi8(unpack_nibbles(w[b].qs), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d)), dot_i8_f32(q, x + b * EDGERT_QK), acc);
    }
    return hsum_ps(acc);
}

AVX2_FN static float dot_q4_1_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        __m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                  _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d)), dot_i8_f32(unpack_nibbles(w[b].qs), xb), acc);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].m)), sx, accm);
    }
    return hsum_ps(_mm256_add_ps(acc, accm));
}

AVX2_FN static float dot_q8_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)w[b].qs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w[b].d)), dot_i8_f32(q, x + b * EDGERT_QK), acc);
    }
    return hsum_ps(acc);
}

/* ---- fp32 vector primitives ---------------------------------------------------------------- */

AVX2_FN static float vdot(int64_t n, const float *a, const float *b) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2_FN static void vaxpy(int64_t n, float s, const float *x, float *y) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vs, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += s * x[i];
}

AVX2_FN static void vscale(int64_t n, float s, const float *x, const float *w, float *y) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                              _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = x[i] * s * w[i];
}

const edgert_kernel_table edgert_kernels_avx2 = {
    "x86-avx2",
    {dot_q4_0_q8, dot_q4_1_q8, dot_q8_0_q8},
    {dot_q4_0_f32, dot_q4_1_f32, dot_q8_0_f32},
    vdot,
    vaxpy,
    vscale,
    {NULL, NULL, NULL}, /* no prompt tiles: dot_f32 per row and token */
    NULL,
    {NULL, NULL, NULL}, /* no multi-row kernels: one dot per row */
    {NULL, NULL, NULL},
    NULL, /* attention and SwiGLU: the portable loops of ops.c */
    NULL,
    {NULL, NULL, NULL}, /* no q8 prompt tiles: rows_q8 or dot_q8 per token */
};

#endif /* EDGERT_HAVE_AVX2 */
