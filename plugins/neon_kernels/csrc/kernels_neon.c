/* The AArch64 NEON paths.
 *
 * "neon" uses only the ARMv8-A baseline (Cortex-A72, Raspberry Pi 4): int8 products with
 * vmull_s8 / vmlal_high_s8 into int16 (two products per lane, at most 2 * 128 * 127 = 32512, so
 * no overflow) and pairwise widening adds into int32.
 * "neon-dotprod" uses the Armv8.2 SDOT instruction (vdotq_s32); its functions are compiled with a
 * target attribute and chosen only when getauxval(AT_HWCAP) reports HWCAP_ASIMDDP (dispatch.c). */
#include "kernels.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <string.h>

#if defined(__clang__)
#define DOTPROD_FN __attribute__((target("dotprod")))
#else
#define DOTPROD_FN __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

static inline float f16(uint16_t h) {
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

/* int32x4 partial sums of a0 . b0 + a1 . b1 over 2 x 16 int8 lanes (ARMv8-A baseline). */
static inline int32x4_t dot2_s8(int8x16_t a0, int8x16_t b0, int8x16_t a1, int8x16_t b1) {
    int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)), a0, b0);
    int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)), a1, b1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

DOTPROD_FN static inline int32x4_t dot2_s8_dp(int8x16_t a0, int8x16_t b0, int8x16_t a1,
                                              int8x16_t b1) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, b0), a1, b1);
}

/* Nibbles of a 4-bit block as int8: elements 0..15 in *lo, 16..31 in *hi, minus `offset`. */
static inline void unpack4(const uint8_t *qs, int8_t offset, int8x16_t *lo, int8x16_t *hi) {
    uint8x16_t raw = vld1q_u8(qs);
    int8x16_t off = vdupq_n_s8(offset);
    *lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0f))), off);
    *hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), off);
}

/* The q8 kernels are written once as macros and instantiated with the baseline and SDOT dots. */
#define DEFINE_Q8_KERNELS(SUFFIX, ATTR, DOT)                                                     \
    ATTR static float dot_q4_0_q8##SUFFIX(int64_t nb, const void *wrow, const block_q8a *a) {   \
        const block_q4_0 *w = (const block_q4_0 *)wrow;                                          \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                          \
        int64_t b = 0;                                                                           \
        for (; b + 1 < nb; b += 2) {                                                             \
            int8x16_t l0, h0, l1, h1;                                                            \
            unpack4(w[b].qs, 8, &l0, &h0);                                                       \
            unpack4(w[b + 1].qs, 8, &l1, &h1);                                                   \
            int32x4_t p0 = DOT(l0, vld1q_s8(a[b].qs), h0, vld1q_s8(a[b].qs + 16));               \
            int32x4_t p1 = DOT(l1, vld1q_s8(a[b + 1].qs), h1, vld1q_s8(a[b + 1].qs + 16));       \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), f16(w[b + 1].d) * a[b + 1].d);           \
        }                                                                                        \
        for (; b < nb; b++) {                                                                    \
            int8x16_t l0, h0;                                                                    \
            unpack4(w[b].qs, 8, &l0, &h0);                                                       \
            int32x4_t p0 = DOT(l0, vld1q_s8(a[b].qs), h0, vld1q_s8(a[b].qs + 16));               \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
        }                                                                                        \
        return vaddvq_f32(vaddq_f32(acc0, acc1));                                                \
    }                                                                                            \
    ATTR static float dot_q4_1_q8##SUFFIX(int64_t nb, const void *wrow, const block_q8a *a) {   \
        const block_q4_1 *w = (const block_q4_1 *)wrow;                                          \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                          \
        float mins = 0.0f;                                                                       \
        int64_t b = 0;                                                                           \
        for (; b + 1 < nb; b += 2) {                                                             \
            int8x16_t l0, h0, l1, h1;                                                            \
            unpack4(w[b].qs, 0, &l0, &h0);                                                       \
            unpack4(w[b + 1].qs, 0, &l1, &h1);                                                   \
            int32x4_t p0 = DOT(l0, vld1q_s8(a[b].qs), h0, vld1q_s8(a[b].qs + 16));               \
            int32x4_t p1 = DOT(l1, vld1q_s8(a[b + 1].qs), h1, vld1q_s8(a[b + 1].qs + 16));       \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), f16(w[b + 1].d) * a[b + 1].d);           \
            mins += f16(w[b].m) * a[b].s + f16(w[b + 1].m) * a[b + 1].s;                         \
        }                                                                                        \
        for (; b < nb; b++) {                                                                    \
            int8x16_t l0, h0;                                                                    \
            unpack4(w[b].qs, 0, &l0, &h0);                                                       \
            int32x4_t p0 = DOT(l0, vld1q_s8(a[b].qs), h0, vld1q_s8(a[b].qs + 16));               \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
            mins += f16(w[b].m) * a[b].s;                                                        \
        }                                                                                        \
        return vaddvq_f32(vaddq_f32(acc0, acc1)) + mins;                                         \
    }                                                                                            \
    ATTR static float dot_q8_0_q8##SUFFIX(int64_t nb, const void *wrow, const block_q8a *a) {   \
        const block_q8_0 *w = (const block_q8_0 *)wrow;                                          \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                          \
        int64_t b = 0;                                                                           \
        for (; b + 1 < nb; b += 2) {                                                             \
            int32x4_t p0 = DOT(vld1q_s8(w[b].qs), vld1q_s8(a[b].qs), vld1q_s8(w[b].qs + 16),     \
                               vld1q_s8(a[b].qs + 16));                                          \
            int32x4_t p1 = DOT(vld1q_s8(w[b + 1].qs), vld1q_s8(a[b + 1].qs),                     \
                               vld1q_s8(w[b + 1].qs + 16), vld1q_s8(a[b + 1].qs + 16));          \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), f16(w[b + 1].d) * a[b + 1].d);           \
        }                                                                                        \
        for (; b < nb; b++) {                                                                    \
            int32x4_t p0 = DOT(vld1q_s8(w[b].qs), vld1q_s8(a[b].qs), vld1q_s8(w[b].qs + 16),     \
                               vld1q_s8(a[b].qs + 16));                                          \
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), f16(w[b].d) * a[b].d);                   \
        }                                                                                        \
        return vaddvq_f32(vaddq_f32(acc0, acc1));                                                \
    }

DEFINE_Q8_KERNELS(, , dot2_s8)
DEFINE_Q8_KERNELS(_dp, DOTPROD_FN, dot2_s8_dp)

/* ---- fp32 activations -------------------------------------------------------------------- */

/* s + 16 int8 weights (widened to fp32) times 16 floats, in 4 lanes. */
static inline float32x4_t fma_i8x16(float32x4_t s, int8x16_t q, const float *x) {
    int16x8_t a = vmovl_s8(vget_low_s8(q)), b = vmovl_high_s8(q);
    s = vfmaq_f32(s, vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), vld1q_f32(x));
    s = vfmaq_f32(s, vcvtq_f32_s32(vmovl_high_s16(a)), vld1q_f32(x + 4));
    s = vfmaq_f32(s, vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), vld1q_f32(x + 8));
    s = vfmaq_f32(s, vcvtq_f32_s32(vmovl_high_s16(b)), vld1q_f32(x + 12));
    return s;
}

static float dot_q4_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        int8x16_t lo, hi;
        unpack4(w[b].qs, 8, &lo, &hi);
        float32x4_t s = fma_i8x16(fma_i8x16(vdupq_n_f32(0.0f), lo, xb), hi, xb + 16);
        acc = vfmaq_n_f32(acc, s, f16(w[b].d));
    }
    return vaddvq_f32(acc);
}

static float dot_q4_1_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    float32x4_t acc = vdupq_n_f32(0.0f), accm = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        int8x16_t lo, hi;
        unpack4(w[b].qs, 0, &lo, &hi);
        float32x4_t s = fma_i8x16(fma_i8x16(vdupq_n_f32(0.0f), lo, xb), hi, xb + 16);
        float32x4_t sx = vaddq_f32(
            vaddq_f32(vaddq_f32(vld1q_f32(xb), vld1q_f32(xb + 4)),
                      vaddq_f32(vld1q_f32(xb + 8), vld1q_f32(xb + 12))),
            vaddq_f32(vaddq_f32(vld1q_f32(xb + 16), vld1q_f32(xb + 20)),
                      vaddq_f32(vld1q_f32(xb + 24), vld1q_f32(xb + 28))));
        acc = vfmaq_n_f32(acc, s, f16(w[b].d));
        accm = vfmaq_n_f32(accm, sx, f16(w[b].m));
    }
    return vaddvq_f32(vaddq_f32(acc, accm));
}

static float dot_q8_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        float32x4_t s = fma_i8x16(vdupq_n_f32(0.0f), vld1q_s8(w[b].qs), xb);
        s = fma_i8x16(s, vld1q_s8(w[b].qs + 16), xb + 16);
        acc = vfmaq_n_f32(acc, s, f16(w[b].d));
    }
    return vaddvq_f32(acc);
}

/* ---- fp32 vector primitives ---------------------------------------------------------------- */

static float vdot(int64_t n, const float *a, const float *b) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void vaxpy(int64_t n, float s, const float *x, float *y) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), s));
    for (; i < n; i++) y[i] += s * x[i];
}

static void vscale(int64_t n, float s, const float *x, const float *w, float *y) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), s), vld1q_f32(w + i)));
    for (; i < n; i++) y[i] = x[i] * s * w[i];
}

const edgert_kernel_table edgert_kernels_neon = {
    "neon",
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

/* SDOT changes only the integer dots; the fp32 kernels and primitives are the baseline ones. */
const edgert_kernel_table edgert_kernels_neon_dotprod = {
    "neon-dotprod",
    {dot_q4_0_q8_dp, dot_q4_1_q8_dp, dot_q8_0_q8_dp},
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

#endif /* __aarch64__ */
