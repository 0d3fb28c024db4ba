/* The portable path: plain C that any C99 compiler builds, and the scalar reference the SIMD paths
 * are tested against. Also the helpers every path shares (f16 conversion, activation quantization). */
#include <math.h>
#include <string.h>

#include "kernels.h"

size_t edgert_row_bytes(int wtype, int64_t k) {
    size_t nb = (size_t)(k / EDGERT_QK);
    switch (wtype) {
    case EDGERT_Q4_0: return nb * sizeof(block_q4_0);
    case EDGERT_Q4_1: return nb * sizeof(block_q4_1);
    case EDGERT_Q8_0: return nb * sizeof(block_q8_0);
    default: return 0;
    }
}

float edgert_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        f = (float)mant * 5.9604644775390625e-08f;
        return sign ? -f : f;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf / nan */
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

void edgert_quantize_q8a(const float *x, block_q8a *out, int64_t k) {
    int64_t nb = k / EDGERT_QK;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        float amax = 0.0f;
        for (int j = 0; j < EDGERT_QK; j++) {
            float v = fabsf(xb[j]);
            if (v > amax) amax = v;
        }
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < EDGERT_QK; j++) {
            float v = roundf(xb[j] * id);
            /* |x * id| <= 127 up to one rounding of id; clamp so an ulp never overflows int8 */
            if (v > 127.0f) v = 127.0f;
            if (v < -127.0f) v = -127.0f;
            out[b].qs[j] = (int8_t)v;
            sum += (int8_t)v;
        }
        out[b].d = d;
        out[b].s = d * (float)sum;
    }
}

/* ---- q8 activations: integer dot per block ---------------------------------------------- */

static float dot_q4_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += ((int32_t)(w[b].qs[j] & 0x0f) - 8) * a[b].qs[j];
            isum += ((int32_t)(w[b].qs[j] >> 4) - 8) * a[b].qs[j + 16];
        }
        acc += edgert_f16_to_f32(w[b].d) * a[b].d * (float)isum;
    }
    return acc;
}

static float dot_q4_1_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += (int32_t)(w[b].qs[j] & 0x0f) * a[b].qs[j];
            isum += (int32_t)(w[b].qs[j] >> 4) * a[b].qs[j + 16];
        }
        acc += edgert_f16_to_f32(w[b].d) * a[b].d * (float)isum + edgert_f16_to_f32(w[b].m) * a[b].s;
    }
    return acc;
}

static float dot_q8_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) isum += (int32_t)w[b].qs[j] * a[b].qs[j];
        acc += edgert_f16_to_f32(w[b].d) * a[b].d * (float)isum;
    }
    return acc;
}

/* ---- fp32 activations: dequantize each weight, multiply in fp32 -------------------------- */

static float dot_q4_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_0 *w = (const block_q4_0 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) {
            s += (float)((int)(w[b].qs[j] & 0x0f) - 8) * xb[j];
            s += (float)((int)(w[b].qs[j] >> 4) - 8) * xb[j + 16];
        }
        acc += edgert_f16_to_f32(w[b].d) * s;
    }
    return acc;
}

static float dot_q4_1_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q4_1 *w = (const block_q4_1 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        float s = 0.0f, sx = 0.0f;
        for (int j = 0; j < 16; j++) {
            s += (float)(w[b].qs[j] & 0x0f) * xb[j];
            s += (float)(w[b].qs[j] >> 4) * xb[j + 16];
            sx += xb[j] + xb[j + 16];
        }
        acc += edgert_f16_to_f32(w[b].d) * s + edgert_f16_to_f32(w[b].m) * sx;
    }
    return acc;
}

static float dot_q8_0_f32(int64_t nb, const void *wrow, const float *x) {
    const block_q8_0 *w = (const block_q8_0 *)wrow;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += (float)w[b].qs[j] * xb[j];
        acc += edgert_f16_to_f32(w[b].d) * s;
    }
    return acc;
}

/* ---- fp32 vector primitives ---------------------------------------------------------------- */

/* Four partial sums, so the compiler may keep them in SIMD lanes without reordering a single sum. */
static float vdot(int64_t n, const float *a, const float *b) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static void vaxpy(int64_t n, float s, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += s * x[i];
}

static void vscale(int64_t n, float s, const float *x, const float *w, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s * w[i];
}

const edgert_kernel_table edgert_kernels_portable = {
    "portable",
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

/* ---- dequantization (the reference of every path's dequant) ------------------------------- */

void edgert_dequant_row(int wtype, int64_t nb, const void *wrow, float *out) {
    for (int64_t b = 0; b < nb; b++) {
        float *o = out + b * EDGERT_QK;
        if (wtype == EDGERT_Q4_0) {
            const block_q4_0 *w = (const block_q4_0 *)wrow + b;
            float d = edgert_f16_to_f32(w->d);
            for (int j = 0; j < 16; j++) {
                o[j] = (float)((int)(w->qs[j] & 0x0f) - 8) * d;
                o[j + 16] = (float)((int)(w->qs[j] >> 4) - 8) * d;
            }
        } else if (wtype == EDGERT_Q4_1) {
            const block_q4_1 *w = (const block_q4_1 *)wrow + b;
            float d = edgert_f16_to_f32(w->d), m = edgert_f16_to_f32(w->m);
            for (int j = 0; j < 16; j++) {
                o[j] = fmaf((float)(w->qs[j] & 0x0f), d, m);
                o[j + 16] = fmaf((float)(w->qs[j] >> 4), d, m);
            }
        } else {
            const block_q8_0 *w = (const block_q8_0 *)wrow + b;
            float d = edgert_f16_to_f32(w->d);
            for (int j = 0; j < 32; j++) o[j] = (float)w->qs[j] * d;
        }
    }
}
