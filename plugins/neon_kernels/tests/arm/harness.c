/* ARM test harness: the extension's C sources (without the Python binding) run under qemu.
 *
 * For every block type, activation mode, shape and scale regime it compares each supported SIMD
 * table (neon, and neon-dotprod when the CPU has it) with an exact double-precision reference and
 * with the portable scalar table, using the same tolerances as the Python tests:
 *   f32 mode: |y - ref| <= 1e-5 * sum |term_i| * |x_i|   (fp32 summation order)
 *   q8 mode:  |y - ref| <= 1.001 * sum_blocks max|x_b| / 254 * sum_b |w_i| + the f32 term
 *             (activation rounding), and |y - portable| <= the f32 term (integer dots are exact)
 * It also checks that threads give identical bits and that the runtime dot-product check matches
 * what the caller expects (--expect-dotprod=0 for -cpu cortex-a72).
 *
 * The fused ops (ops.c) run on each table's fp32 primitives and are held to the Python tests'
 * tolerances (tests/test_neon_ops.py): vdot |y - ref| <= 1e-6 * sum|a b|; vaxpy, vscale within
 * 2.5e-7 relative per element; RMSNorm 1e-5 of the row's largest output; attention 2e-6 * max|v|
 * against a double-precision reference, with identical bits for 1 and 3 threads.
 *
 * Usage: harness [--expect-dotprod=0|1]     Exit status 0 when every case passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define F32_RTOL 1e-5
#define Q8_SLACK 1.001

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static double unif(double a, double b) { return a + (b - a) * (rnd() / 4294967296.0); }
static double normal(void) { /* Box-Muller */
    double u = unif(1e-12, 1.0), v = unif(0.0, 1.0);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* fp32 value -> f16 bits, round to nearest even (normal, subnormal, overflow to max) */
static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    float a = fabsf(f);
    if (a >= 65504.0f) return sign | 0x7bffu;
    if (a < 6.103515625e-05f) { /* subnormal: multiples of 2^-24 */
        long q = lrintf(a / 5.9604644775390625e-08f);
        return sign | (uint16_t)q;
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    long mant = lrintf((m * 2.0f - 1.0f) * 1024.0f);
    int exp = e - 1 + 15;
    if (mant == 1024) {
        mant = 0;
        exp++;
    }
    if (exp >= 31) return sign | 0x7bffu;
    return sign | (uint16_t)(exp << 10) | (uint16_t)mant;
}

enum { SC_NORMAL, SC_TINY, SC_HUGE, SC_ZERO, SC_MIXED, SC_COUNT };
static const char *scale_names[] = {"normal", "tiny", "huge", "zero", "mixed"};

static float random_scale(int regime) {
    int r = regime == SC_MIXED ? (int)(rnd() % 4) : regime;
    double sgn = (rnd() & 1) ? 1.0 : -1.0;
    switch (r) {
    case SC_NORMAL: return (float)(sgn * unif(0.01, 0.1));
    case SC_TINY: return (float)((1 + rnd() % 1023) * 5.9604644775390625e-08);
    case SC_HUGE: return (float)(sgn * unif(1e4, 65504.0));
    default: return 0.0f;
    }
}

static void random_blocks(int wtype, uint8_t *w, int64_t n, int64_t k, int regime) {
    int64_t nb = n * k / EDGERT_QK;
    size_t bb = edgert_row_bytes(wtype, EDGERT_QK);
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *b = w + i * bb;
        for (size_t j = 0; j < bb; j++) b[j] = (uint8_t)rnd();
        uint16_t d = f32_to_f16(random_scale(regime));
        memcpy(b, &d, 2);
        if (wtype == EDGERT_Q4_1) {
            uint16_t m = f32_to_f16(random_scale(regime));
            memcpy(b + 2, &m, 2);
        }
    }
}

/* exact weight value and the size of the terms the kernels add for it (see neon_testutil.py) */
static void weight_at(int wtype, const uint8_t *row, int64_t i, double *val, double *mag) {
    size_t bb = edgert_row_bytes(wtype, EDGERT_QK);
    const uint8_t *b = row + (i / EDGERT_QK) * bb;
    int j = (int)(i % EDGERT_QK);
    uint16_t dh, mh;
    memcpy(&dh, b, 2);
    double d = edgert_f16_to_f32(dh);
    if (wtype == EDGERT_Q8_0) {
        double q = (int8_t)b[2 + j];
        *val = q * d;
        *mag = fabs(q * d);
        return;
    }
    const uint8_t *qs = b + (wtype == EDGERT_Q4_1 ? 4 : 2);
    int q = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
    if (wtype == EDGERT_Q4_0) {
        *val = (q - 8) * d;
        *mag = (q + 8) * fabs(d);
    } else {
        memcpy(&mh, b + 2, 2);
        double m = edgert_f16_to_f32(mh);
        *val = q * d + m;
        *mag = q * fabs(d) + fabs(m);
    }
}

static int n_cases = 0, n_failures = 0;

static void check_case(const edgert_kernel_table *kt, int wtype, int64_t T, int64_t N, int64_t K,
                       int regime, int act_q8) {
    size_t rb = edgert_row_bytes(wtype, K);
    uint8_t *w = malloc((size_t)N * rb);
    float *x = malloc(sizeof(float) * (size_t)(T * K));
    float *y = malloc(sizeof(float) * (size_t)(T * N));
    float *y3 = malloc(sizeof(float) * (size_t)(T * N));
    float *yp = malloc(sizeof(float) * (size_t)(T * N));
    random_blocks(wtype, w, N, K, regime);
    for (int64_t i = 0; i < T * K; i++) x[i] = (float)normal();
    if (T > 1) /* large activations in row 1 */
        for (int64_t i = 0; i < K; i++) x[K + i] *= 1e4f;
    if (T > 2) /* a zero block and a tiny block in row 2 */
        for (int64_t i = 0; i < 32 && i < K; i++) x[2 * K + i] = 0.0f;

    edgert_linear(kt, x, T, K, w, N, wtype, y, 1, act_q8);
    edgert_linear(kt, x, T, K, w, N, wtype, y3, 3, act_q8);
    edgert_linear(&edgert_kernels_portable, x, T, K, w, N, wtype, yp, 1, act_q8);

    double worst = 0.0;
    int bad = 0;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t n = 0; n < N; n++) {
            double ref = 0.0, f32term = 0.0, q8term = 0.0;
            const uint8_t *row = w + n * rb;
            for (int64_t b = 0; b < K / EDGERT_QK; b++) {
                double amax = 0.0, wsum = 0.0;
                for (int64_t j = b * EDGERT_QK; j < (b + 1) * EDGERT_QK; j++) {
                    double v, mag, xv = x[t * K + j];
                    weight_at(wtype, row, j, &v, &mag);
                    ref += v * xv;
                    f32term += mag * fabs(xv);
                    wsum += fabs(v);
                    if (fabs(xv) > amax) amax = fabs(xv);
                }
                q8term += amax / 254.0 * wsum;
            }
            double tol_f32 = F32_RTOL * f32term;
            double tol = act_q8 ? Q8_SLACK * q8term + tol_f32 : tol_f32;
            double got = y[t * N + n];
            double err = fabs(got - ref);
            int ok = isfinite(got) && err <= tol && fabs(got - (double)yp[t * N + n]) <= tol_f32 &&
                     memcmp(&y[t * N + n], &y3[t * N + n], sizeof(float)) == 0;
            if (!ok && bad < 3)
                fprintf(stderr,
                        "MISMATCH %s type=%d T=%lld N=%lld K=%lld scales=%s act=%s t=%lld n=%lld: "
                        "got %.9g ref %.9g portable %.9g threads3 %.9g tol %.3g\n",
                        kt->name, wtype, (long long)T, (long long)N, (long long)K,
                        scale_names[regime], act_q8 ? "q8" : "f32", (long long)t, (long long)n, got,
                        ref, yp[t * N + n], y3[t * N + n], tol);
            if (!ok) bad++;
            if (tol > 0 && err / tol > worst) worst = err / tol;
        }
    }
    n_cases++;
    if (bad) n_failures++;
    free(w);
    free(x);
    free(y);
    free(y3);
    free(yp);
}

/* ---- fused ops on the fp32 primitives ------------------------------------------------------ */

static void report(const char *what, const edgert_kernel_table *kt, int bad, double worst) {
    n_cases++;
    if (bad) {
        n_failures++;
        fprintf(stderr, "MISMATCH %s %s: %d values off, worst error/tolerance %.3g\n", kt->name,
                what, bad, worst);
    }
}

static void check_primitives(const edgert_kernel_table *kt, int64_t n) {
    float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    float *y = malloc(sizeof(float) * (size_t)n), *y0 = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        a[i] = (float)normal();
        b[i] = (float)normal();
        y0[i] = (float)normal();
    }
    double ref = 0.0, mag = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)a[i] * b[i];
        mag += fabs((double)a[i] * b[i]);
    }
    double err = fabs(kt->vdot(n, a, b) - ref);
    report("vdot", kt, err > 1e-6 * mag, mag > 0 ? err / (1e-6 * mag) : 0);

    int bad = 0;
    double worst = 0.0;
    memcpy(y, y0, sizeof(float) * (size_t)n);
    kt->vaxpy(n, 0.37f, a, y);
    for (int64_t i = 0; i < n; i++) {
        double r = y0[i] + (double)0.37f * a[i];
        double tol = 2.5e-7 * (fabs(y0[i]) + fabs((double)0.37f * a[i]));
        double e = fabs(y[i] - r);
        if (e > tol) bad++;
        if (tol > 0 && e / tol > worst) worst = e / tol;
    }
    report("vaxpy", kt, bad, worst);

    bad = 0;
    worst = 0.0;
    kt->vscale(n, 1.7f, a, b, y);
    for (int64_t i = 0; i < n; i++) {
        double r = (double)a[i] * 1.7f * b[i], tol = 2.5e-7 * fabs(r);
        double e = fabs(y[i] - r);
        if (e > tol) bad++;
        if (tol > 0 && e / tol > worst) worst = e / tol;
    }
    report("vscale", kt, bad, worst);
    free(a);
    free(b);
    free(y);
    free(y0);
}

static void check_rmsnorm(const edgert_kernel_table *kt, int64_t T, int64_t n) {
    float *x = malloc(sizeof(float) * (size_t)(T * n)), *w = malloc(sizeof(float) * (size_t)n);
    float *y = malloc(sizeof(float) * (size_t)(T * n));
    for (int64_t i = 0; i < T * n; i++) x[i] = (float)(normal() * (i / n == 1 ? 1e3 : 1.0));
    for (int64_t i = 0; i < n; i++) w[i] = (float)normal();
    edgert_rmsnorm(kt, x, T, n, w, 1e-5f, y);
    int bad = 0;
    double worst = 0.0;
    for (int64_t t = 0; t < T; t++) {
        double ss = 0.0, mx = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)x[t * n + i] * x[t * n + i];
        double r = 1.0 / sqrt(ss / n + (double)1e-5f);
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(x[t * n + i] * r * w[i]));
        for (int64_t i = 0; i < n; i++) {
            double e = fabs(y[t * n + i] - x[t * n + i] * r * w[i]), tol = 1e-5 * mx;
            if (!(e <= tol)) bad++;
            if (tol > 0 && e / tol > worst) worst = e / tol;
        }
    }
    report("rmsnorm", kt, bad, worst);
    free(x);
    free(w);
    free(y);
}

static void check_attention(const edgert_kernel_table *kt, int64_t T, int64_t H, int64_t Hkv,
                            int64_t D, int64_t start, int64_t ctx) {
    int64_t S = start + T, hs = ctx * D; /* views of the first S positions of a ctx-long cache */
    float *q = malloc(sizeof(float) * (size_t)(T * H * D));
    float *k = malloc(sizeof(float) * (size_t)(Hkv * hs)), *v = malloc(sizeof(float) * (size_t)(Hkv * hs));
    float *o1 = malloc(sizeof(float) * (size_t)(T * H * D)), *o3 = malloc(sizeof(float) * (size_t)(T * H * D));
    double *p = malloc(sizeof(double) * (size_t)S);
    for (int64_t i = 0; i < T * H * D; i++) q[i] = (float)normal();
    double vmax = 0.0;
    for (int64_t i = 0; i < Hkv * hs; i++) {
        k[i] = (float)normal();
        v[i] = (float)normal();
        vmax = fmax(vmax, fabs(v[i]));
    }
    int rc1 = edgert_attention(kt, q, T, H, D, k, v, Hkv, S, hs, start, o1, 1);
    int rc3 = edgert_attention(kt, q, T, H, D, k, v, Hkv, S, hs, start, o3, 3);
    int bad = rc1 != 0 || rc3 != 0;
    double worst = 0.0, tol = 2e-6 * vmax;
    for (int64_t t = 0; t < T && !bad; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *K = k + (h / (H / Hkv)) * hs, *V = v + (h / (H / Hkv)) * hs;
            const float *qh = q + (t * H + h) * D;
            int64_t n = start + t + 1;
            double mx = -INFINITY, sum = 0.0;
            for (int64_t s = 0; s < n; s++) {
                double sc = 0.0;
                for (int64_t i = 0; i < D; i++) sc += (double)qh[i] * K[s * D + i];
                p[s] = sc / sqrt((double)D);
                mx = fmax(mx, p[s]);
            }
            for (int64_t s = 0; s < n; s++) sum += (p[s] = exp(p[s] - mx));
            for (int64_t i = 0; i < D; i++) {
                double r = 0.0;
                for (int64_t s = 0; s < n; s++) r += p[s] / sum * V[s * D + i];
                size_t at = (size_t)((t * H + h) * D + i);
                double e = fabs(o1[at] - r);
                if (!(e <= tol) || memcmp(&o1[at], &o3[at], sizeof(float)) != 0) bad++;
                if (e / tol > worst) worst = e / tol;
            }
        }
    char what[96];
    snprintf(what, sizeof what, "attention T=%lld H=%lld Hkv=%lld D=%lld start=%lld", (long long)T,
             (long long)H, (long long)Hkv, (long long)D, (long long)start);
    report(what, kt, bad, worst);
    free(q);
    free(k);
    free(v);
    free(o1);
    free(o3);
    free(p);
}

static void check_ops(const edgert_kernel_table *kt) {
    static const int64_t lens[] = {1, 7, 64, 100, 576, 1539};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) check_primitives(kt, lens[i]);
    check_rmsnorm(kt, 1, 576);
    check_rmsnorm(kt, 3, 1536);
    check_rmsnorm(kt, 2, 100);
    check_attention(kt, 1, 9, 3, 64, 0, 16);
    check_attention(kt, 1, 9, 3, 64, 40, 128);
    check_attention(kt, 5, 9, 3, 64, 0, 8);
    check_attention(kt, 3, 4, 4, 36, 7, 12);
    check_attention(kt, 1, 6, 2, 64, 2100, 2101); /* past the on-stack score buffer */
}

int main(int argc, char **argv) {
    int expect_dotprod = -1;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--expect-dotprod=", 17) == 0) expect_dotprod = atoi(argv[i] + 17);
    }
    int has_dp = edgert_cpu_has_dotprod();
    const edgert_kernel_table *best = edgert_best_table();
    printf("runtime: dotprod=%s, best path=%s\n", has_dp ? "yes" : "no", best->name);
    int setup_ok = 1;
    if (expect_dotprod >= 0 && has_dp != expect_dotprod) {
        fprintf(stderr, "FAIL: runtime check reports dotprod=%d, expected %d\n", has_dp,
                expect_dotprod);
        setup_ok = 0;
    }
#if defined(__aarch64__)
    const char *want = has_dp ? "neon-dotprod" : "neon";
    if (strcmp(best->name, want) != 0) {
        fprintf(stderr, "FAIL: best path is %s, expected %s\n", best->name, want);
        setup_ok = 0;
    }
#endif

    static const int64_t shapes[][3] = {/* T, N, K */
                                        {1, 1, 32},   {1, 67, 96},  {3, 129, 576}, {7, 31, 1536},
                                        {5, 257, 64}, {2, 13, 4096}, {4, 7, 320}};
    int n_tables;
    const edgert_kernel_table *const *tables = edgert_all_tables(&n_tables);
    char tested[256] = "";
    for (int ti = 0; ti < n_tables; ti++) {
        const edgert_kernel_table *kt = tables[ti];
        if (!edgert_table_supported(kt)) continue;
        strncat(tested, tested[0] ? ", " : "", sizeof tested - strlen(tested) - 1);
        strncat(tested, kt->name, sizeof tested - strlen(tested) - 1);
        for (int wtype = 0; wtype < EDGERT_N_WTYPES; wtype++)
            for (int act_q8 = 0; act_q8 < 2; act_q8++) {
                for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                    check_case(kt, wtype, shapes[s][0], shapes[s][1], shapes[s][2], SC_NORMAL,
                               act_q8);
                for (int regime = SC_TINY; regime < SC_COUNT; regime++)
                    check_case(kt, wtype, 3, 45, 320, regime, act_q8);
            }
        check_ops(kt);
    }
    edgert_pool_shutdown();
    int ok = setup_ok && n_failures == 0;
    printf("%s: ARM kernel harness: %d cases, %d failed; paths tested: %s; dotprod %s\n",
           ok ? "PASS" : "FAIL", n_cases, n_failures, tested, has_dp ? "present" : "absent");
    return ok ? 0 : 1;
}
