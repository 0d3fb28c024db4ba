/* The x86-64 AVX2 path. Compiled without -mavx2: every function carries a target attribute and the
 * table is chosen at run time only when the CPU reports AVX2, FMA and F16C (see dispatch.c).
 *
 * fp32 activations: each weight is dequantized in registers to the fp32 value the portable
 * dequantizer gives (Q4_0 (q - 8) * d, Q4_1 fma(q, d, m), Q8_0 q * d), then multiplied with its
 * activation by an FMA. Each output has two 8-lane accumulators: per block of 32, elements 0..7
 * and 16..23 go to the first, 8..15 and 24..31 to the second, in that order; the result is the lane
 * sum of their sum. The one-row dots, the multi-row kernels (decode) and the prompt tile kernel
 * (gemm_f32, on rows dequantized once) all compute every output by that sequence, so a prompt's
 * products are bit for bit its tokens' products one at a time.
 * q8 activations: integer block dots with vpmaddubsw (unsigned weights x signed activations) and
 * vpmaddwd, scaled once per block (4-bit weights two blocks at a time, see below). The prompt
 * kernels (gemm_q8) unpack a tile of rows once for every token and run the same operations, so
 * there too a prompt's products are bit for bit its tokens' ones, and each row's result is the same
 * whether it is computed alone or with others. */
#include "kernels.h"

#ifdef EDGERT_HAVE_AVX2

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define INLINE_ALWAYS __attribute__((always_inline)) inline
/* Rows per group in the multi-row kernels (decode) and in the q8 prompt tiles. Every row's result
 * is computed by the same sequence whether its group has 1 or ROWS rows. */
#define ROWS 4
/* Decode (weights streamed from memory): rows longer than this many bytes go one at a time. Four
 * interleaved streams of long rows measured up to 2x slower than one sequential stream on an AMD
 * EPYC (Q8_0 49152 x 576 output projection: 5.3 ms vs 2.8 ms fp32, 4.5 vs 2.2 ms q8, one thread),
 * while short rows (Q4_1, K = 576: 360 bytes) gain from sharing the activation loads. */
#ifndef MULTI_ROW_MAX_BYTES
#define MULTI_ROW_MAX_BYTES 512
#endif
/* Decode kernels prefetch the weights PF_GROUPS row groups ahead (a group: the ROWS rows, or the
 * one row, that one pass of the loop reads; rows lie back to back, so that is the same position
 * PF_GROUPS * R rows on). The hardware prefetchers stop at each 4 KiB page, and without this the
 * streamed weights of a decoded token ran well below what the memory gives: on the AMD EPYC this was
 * measured on (2 threads, q8 activations), 30 different SmolLM2 gate/up matrices took 2.60 ms
 * without and 1.72 ms with it (0 or 2 groups; 1 and 4 measured between), and whole-model q8 decode
 * went from 100-121 to 114-139 tok/s in alternating runs. The address is computed as an integer
 * (a pointer past the matrix's end would be undefined behaviour); a prefetch there is harmless (it
 * never faults). The one-row dots (rb 0) prefetch their own block: a no-op. */
#ifndef PF_GROUPS
#define PF_GROUPS 2
#endif

/* Prefetch `lines` cache lines at byte `offset` of each of the R rows (rb bytes apart) PF_GROUPS
 * groups on from w. */
static INLINE_ALWAYS void prefetch_ahead(const uint8_t *w, size_t rb, const int R, size_t offset,
                                         const int lines) {
    for (int r = 0; r < R; r++)
        for (int i = 0; i < lines; i++)
            _mm_prefetch((const char *)((uintptr_t)w + (size_t)(r + PF_GROUPS * R) * rb + offset +
                                        64 * (size_t)i),
                         _MM_HINT_T0);
}

AVX2_FN static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

AVX2_FN static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

AVX2_FN static INLINE_ALWAYS uint16_t load_u16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return h;
}

/* sum over 32 lanes of u[i] * s[i] (u unsigned <= 128, s signed), as 8 int32 partial sums -> fp32 */
AVX2_FN static inline __m256 dot_us8(__m256i u, __m256i s) {
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* ---- fp32 activations -------------------------------------------------------------------- */

/* The 32 weights of one block as four vectors of 8 fp32 values (elements 0..7, 8..15, 16..23,
 * 24..31), each exactly as edgert_dequant_row computes it. wtype 0 Q4_0, 1 Q4_1, 2 Q8_0; blk
 * points at the block. */
AVX2_FN static INLINE_ALWAYS void block_weights(const int wtype, const uint8_t *blk, __m256 wv[4]) {
    if (wtype == 2) {
        __m256 d = _mm256_set1_ps(f16(load_u16(blk)));
        for (int g = 0; g < 4; g++)
            wv[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                      _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * g)))),
                                  d);
        return;
    }
    const uint8_t *qs = blk + (wtype == 1 ? 4 : 2);
    /* bytes 0..7 and 8..15 as dwords: the low nibble is element j, the high one element j + 16 */
    __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    const __m256i m4 = _mm256_set1_epi32(0x0f);
    __m256i q[4] = {_mm256_and_si256(b0, m4), _mm256_and_si256(b1, m4), _mm256_srli_epi32(b0, 4),
                    _mm256_srli_epi32(b1, 4)};
    if (wtype == 1) {
        uint32_t dm;
        memcpy(&dm, blk, sizeof dm);
        __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm)); /* d, m, 0, 0 */
        __m256 d = _mm256_broadcastss_ps(both);
        __m256 m = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(both), _mm256_set1_epi32(1));
        for (int g = 0; g < 4; g++) wv[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[g]), d, m);
    } else {
        __m256 d = _mm256_set1_ps(f16(load_u16(blk)));
        const __m256i eight = _mm256_set1_epi32(8);
        for (int g = 0; g < 4; g++)
            wv[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[g], eight)), d);
    }
}

static INLINE_ALWAYS int block_bytes(const int wtype) {
    return wtype == 0 ? (int)sizeof(block_q4_0) : wtype == 1 ? (int)sizeof(block_q4_1)
                                                              : (int)sizeof(block_q8_0);
}

/* R rows (rb bytes apart) times one token's activations: y[r] for r < R. */
AVX2_FN static INLINE_ALWAYS void rows_f32_r(const int R, const int wtype, int64_t nb,
                                             const uint8_t *w, size_t rb, const float *x,
                                             float *y) {
    const int bs = block_bytes(wtype);
    __m256 a0[ROWS], a1[ROWS];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        if (PF_GROUPS > 0) prefetch_ahead(w, rb, R, (size_t)b * bs, 1);
        for (int r = 0; r < R; r++) {
            __m256 wv[4];
            block_weights(wtype, w + (size_t)r * rb + (size_t)b * bs, wv);
            a0[r] = _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(xb), a0[r]);
            a1[r] = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xb + 8), a1[r]);
            a0[r] = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xb + 16), a0[r]);
            a1[r] = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xb + 24), a1[r]);
        }
    }
    for (int r = 0; r < R; r++) y[r] = hsum_ps(_mm256_add_ps(a0[r], a1[r]));
}

AVX2_FN static float dot_q4_0_f32(int64_t nb, const void *wrow, const float *x) {
    float y;
    rows_f32_r(1, 0, nb, (const uint8_t *)wrow, 0, x, &y);
    return y;
}
AVX2_FN static float dot_q4_1_f32(int64_t nb, const void *wrow, const float *x) {
    float y;
    rows_f32_r(1, 1, nb, (const uint8_t *)wrow, 0, x, &y);
    return y;
}
AVX2_FN static float dot_q8_0_f32(int64_t nb, const void *wrow, const float *x) {
    float y;
    rows_f32_r(1, 2, nb, (const uint8_t *)wrow, 0, x, &y);
    return y;
}

#define ROWS_F32(NAME, WT)                                                                      \
    AVX2_FN static void NAME(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,           \
                             const float *x, float *y) {                                       \
        int64_t r = 0;                                                                         \
        if (rb <= MULTI_ROW_MAX_BYTES)                                                         \
            for (; r + ROWS <= nrows; r += ROWS)                                               \
                rows_f32_r(ROWS, WT, nb, w + (size_t)r * rb, rb, x, y + r);                    \
        for (; r < nrows; r++) rows_f32_r(1, WT, nb, w + (size_t)r * rb, rb, x, y + r);        \
    }
ROWS_F32(rows_q4_0_f32, 0)
ROWS_F32(rows_q4_1_f32, 1)
ROWS_F32(rows_q8_0_f32, 2)

/* ---- dequantization and the fp32 tile product (prompts) ----------------------------------- */

#define DEQUANT(NAME, WT)                                                                       \
    AVX2_FN static void NAME(int64_t nb, const void *wrow, float *out) {                       \
        const uint8_t *w = (const uint8_t *)wrow;                                              \
        for (int64_t b = 0; b < nb; b++) {                                                     \
            __m256 wv[4];                                                                      \
            block_weights(WT, w + (size_t)b * block_bytes(WT), wv);                            \
            for (int g = 0; g < 4; g++) _mm256_storeu_ps(out + b * EDGERT_QK + 8 * g, wv[g]);  \
        }                                                                                      \
    }
DEQUANT(dequant_q4_0, 0)
DEQUANT(dequant_q4_1, 1)
DEQUANT(dequant_q8_0, 2)

/* R rows (w, K apart) x T tokens (x, K apart), each output with the two accumulators and the
 * order of rows_f32_r: 2 R T accumulators (12 for 2 x 3). */
AVX2_FN static INLINE_ALWAYS void tile_f32(const int R, const int T, int64_t K, const float *w,
                                           const float *x, float *y, int64_t ldy) {
    __m256 acc[2][2][3]; /* [accumulator][row][token] */
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[0][r][t] = acc[1][r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += EDGERT_QK)
        for (int g = 0; g < 4; g++) {
            __m256 xv[3];
            for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * K + k + 8 * g);
            for (int r = 0; r < R; r++) {
                __m256 wv = _mm256_loadu_ps(w + r * K + k + 8 * g);
                for (int t = 0; t < T; t++)
                    acc[g & 1][r][t] = _mm256_fmadd_ps(wv, xv[t], acc[g & 1][r][t]);
            }
        }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            y[t * ldy + r] = hsum_ps(_mm256_add_ps(acc[0][r][t], acc[1][r][t]));
}

AVX2_FN static void gemm_f32(int64_t K, const float *w, int64_t R, const float *x, int64_t T,
                             float *y, int64_t ldy) {
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) {
        int64_t t = 0;
        for (; t + 3 <= T; t += 3) tile_f32(2, 3, K, w + r * K, x + t * K, y + t * ldy + r, ldy);
        for (; t < T; t++) tile_f32(2, 1, K, w + r * K, x + t * K, y + t * ldy + r, ldy);
    }
    for (; r < R; r++) {
        int64_t t = 0;
        for (; t + 3 <= T; t += 3) tile_f32(1, 3, K, w + r * K, x + t * K, y + t * ldy + r, ldy);
        for (; t < T; t++) tile_f32(1, 1, K, w + r * K, x + t * K, y + t * ldy + r, ldy);
    }
}

/* ---- q8 activations on Q8_0 weights ------------------------------------------------------- *
 * Per row: even blocks' products into acc0, odd ones' into acc1, each block's 8 int32 partial
 * sums (signed x signed as |w| x (a * sign(w)); |-128| reads as unsigned 128, still exact) scaled
 * by d_w * d_a. The decode kernels read the weights as they go; the prompt kernel (gemm_q8_0_q8)
 * loads a tile of rows once (q8_wblock) and runs the same operations for every token. */

typedef struct {
    __m256i u, s; /* |w| and the raw signed weights (the activations take their signs) */
    float d;
} q8_wblock;

AVX2_FN static INLINE_ALWAYS q8_wblock q8_load_block(const uint8_t *blk) {
    q8_wblock b;
    b.d = f16(load_u16(blk));
    b.s = _mm256_loadu_si256((const __m256i *)(blk + 2));
    b.u = _mm256_sign_epi8(b.s, b.s);
    return b;
}

/* acc + the block's product with activation block a */
AVX2_FN static INLINE_ALWAYS __m256 q8_block_product(const q8_wblock *wb, const block_q8a *a,
                                                     __m256 acc) {
    __m256i av = _mm256_loadu_si256((const __m256i *)a->qs);
    __m256 p = dot_us8(wb->u, _mm256_sign_epi8(av, wb->s));
    return _mm256_fmadd_ps(_mm256_set1_ps(wb->d * a->d), p, acc);
}

/* R rows (rb bytes apart) times one token's activation blocks. wp: NULL (read the blocks from w)
 * or R prepared rows of nb blocks each (wp[r * nb + b], the prompt kernel). */
AVX2_FN static INLINE_ALWAYS void rows_q8_r(const int R, int64_t nb, const uint8_t *w, size_t rb,
                                            const q8_wblock *wp, const block_q8a *a, float *y) {
    const int bs = (int)sizeof(block_q8_0);
    __m256 acc0[ROWS], acc1[ROWS];
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        if (!wp && PF_GROUPS > 0) prefetch_ahead(w, rb, R, (size_t)b * bs, 2); /* 2 blocks: 68 B */
        for (int r = 0; r < R; r++) {
            q8_wblock w0 = wp ? wp[r * nb + b] : q8_load_block(w + (size_t)r * rb + (size_t)b * bs);
            q8_wblock w1 = wp ? wp[r * nb + b + 1]
                              : q8_load_block(w + (size_t)r * rb + (size_t)(b + 1) * bs);
            acc0[r] = q8_block_product(&w0, a + b, acc0[r]);
            acc1[r] = q8_block_product(&w1, a + b + 1, acc1[r]);
        }
    }
    if (b < nb)
        for (int r = 0; r < R; r++) {
            q8_wblock w0 = wp ? wp[r * nb + b] : q8_load_block(w + (size_t)r * rb + (size_t)b * bs);
            acc0[r] = q8_block_product(&w0, a + b, acc0[r]);
        }
    for (int r = 0; r < R; r++) y[r] = hsum_ps(_mm256_add_ps(acc0[r], acc1[r]));
}

AVX2_FN static float dot_q8_0_q8(int64_t nb, const void *wrow, const block_q8a *a) {
    float y;
    rows_q8_r(1, nb, (const uint8_t *)wrow, 0, NULL, a, &y);
    return y;
}

AVX2_FN static void rows_q8_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                 const block_q8a *a, float *y) {
    int64_t r = 0;
    if (rb <= MULTI_ROW_MAX_BYTES)
        for (; r + ROWS <= nrows; r += ROWS) rows_q8_r(ROWS, nb, w + (size_t)r * rb, rb, NULL, a, y + r);
    for (; r < nrows; r++) rows_q8_r(1, nb, w + (size_t)r * rb, rb, NULL, a, y + r);
}

/* Returns 0 when the scratch could not be allocated (the driver then runs rows_q8 per token). */
AVX2_FN static int gemm_q8_0_q8(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,
                                const block_q8a *a, int64_t T, float *y, int64_t ldy) {
    const int bs = (int)sizeof(block_q8_0);
    q8_wblock *wp = (q8_wblock *)aligned_alloc(32, (size_t)(ROWS * nb) * sizeof(q8_wblock));
    if (!wp) return 0;
    for (int64_t r = 0; r < nrows; r += ROWS) {
        int R = nrows - r < ROWS ? (int)(nrows - r) : ROWS;
        for (int i = 0; i < R; i++)
            for (int64_t b = 0; b < nb; b++)
                wp[i * nb + b] = q8_load_block(w + (size_t)(r + i) * rb + (size_t)b * bs);
        for (int64_t t = 0; t < T; t++) {
            if (R == ROWS)
                rows_q8_r(ROWS, nb, NULL, 0, wp, a + t * nb, y + t * ldy + r);
            else
                for (int i = 0; i < R; i++)
                    rows_q8_r(1, nb, NULL, 0, wp + i * nb, a + t * nb, y + t * ldy + r + i);
        }
    }
    free(wp);
    return 1;
}

/* ---- q8 activations on 4-bit weights, two blocks at a time ---------------------------------- *
 * The 16 nibble bytes of blocks b and b+1 are loaded as one vector: its low nibbles are elements
 * 0..15 of both blocks, its high nibbles elements 16..31. The token's activations are arranged to
 * match once per product (q8_tok_pair, shared by every row): lo = [a_b 0..15 | a_b+1 0..15], hi =
 * [a_b 16..31 | a_b+1 16..31]. vpmaddubsw of each half gives pair sums of at most 2 * 15 * 127, so
 * the two halves add in int16 and one vpmaddwd leaves int32 lanes 0..3 for block b, 4..7 for b+1.
 * Scales: the weights' [d_b, m_b, d_b+1, m_b+1] (Q4_0: [d_b, d_b, d_b+1, d_b+1]) times the token's
 * [da_b, sa_b, da_b+1, sa_b+1] in one multiply; lanes 0 and 2 scale the integer lanes, lanes 1
 * and 3 add to the side sum (Q4_1 sum m_w s_a; Q4_0 sum d_w s_a, times -8 at the end). One 8-lane
 * accumulator per row. An odd last block is a pair whose second block is zero (weights, activations
 * and scales). The decode kernels read the weights as they go; the prompt kernel unpacks a tile of
 * rows once (q4_wpair) and runs the same operations for every token. */

typedef struct {
    __m256i lo, hi; /* activations arranged as above */
    __m128 dsa;     /* da_b, sa_b, da_b+1, sa_b+1 */
} q8_tok_pair;

typedef struct {
    __m256i lo, hi; /* unsigned weights, elements 0..15 and 16..31 of both blocks */
    __m128 dm;      /* d_b, m_b, d_b+1, m_b+1 (Q4_0: d_b, d_b, d_b+1, d_b+1) */
} q4_wpair;

AVX2_FN static INLINE_ALWAYS q8_tok_pair tok_pair(const block_q8a *a, int64_t nb, int64_t p) {
    q8_tok_pair t;
    const block_q8a *a0 = a + 2 * p;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)a0->qs), x1;
    if (2 * p + 1 < nb) {
        const block_q8a *a1 = a0 + 1;
        x1 = _mm256_loadu_si256((const __m256i *)a1->qs);
        t.dsa = _mm_setr_ps(a0->d, a0->s, a1->d, a1->s);
    } else {
        x1 = _mm256_setzero_si256();
        t.dsa = _mm_setr_ps(a0->d, a0->s, 0.0f, 0.0f);
    }
    t.lo = _mm256_permute2x128_si256(x0, x1, 0x20);
    t.hi = _mm256_permute2x128_si256(x0, x1, 0x31);
    return t;
}

/* Blocks 2p, 2p+1 of a 4-bit row (blk at block 2p; only block 2p when it is the row's last). */
AVX2_FN static INLINE_ALWAYS q4_wpair w_pair(const int wtype, const uint8_t *blk, int second) {
    const int bs = block_bytes(wtype), qoff = wtype == 1 ? 4 : 2;
    q4_wpair w;
    __m128i q0 = _mm_loadu_si128((const __m128i *)(blk + qoff));
    __m128i q1 = second ? _mm_loadu_si128((const __m128i *)(blk + bs + qoff)) : _mm_setzero_si128();
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    w.lo = _mm256_and_si256(v, m4);
    w.hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    uint32_t h0, h1 = 0;
    if (wtype == 1) {
        memcpy(&h0, blk, 4);
        if (second) memcpy(&h1, blk + bs, 4);
    } else {
        uint16_t d0 = load_u16(blk), d1 = second ? load_u16(blk + bs) : 0;
        h0 = (uint32_t)d0 | (uint32_t)d0 << 16;
        h1 = (uint32_t)d1 | (uint32_t)d1 << 16;
    }
    w.dm = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)((uint64_t)h0 | (uint64_t)h1 << 32)));
    return w;
}

/* acc, side += the pair's products */
AVX2_FN static INLINE_ALWAYS void q4_pair_product(const q4_wpair *w, const q8_tok_pair *t,
                                                  __m256 *acc, __m128 *side) {
    __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(w->lo, t->lo),
                                   _mm256_maddubs_epi16(w->hi, t->hi));
    __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
    __m128 sc = _mm_mul_ps(w->dm, t->dsa);
    *side = _mm_add_ps(*side, sc);
    __m256 scv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc),
                                          _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
    *acc = _mm256_fmadd_ps(scv, p, *acc);
}

AVX2_FN static INLINE_ALWAYS float q4_finish(const int wtype, __m256 acc, __m128 side) {
    float sd[4];
    _mm_storeu_ps(sd, side);
    float sv = sd[1] + sd[3];
    return hsum_ps(acc) + (wtype == 0 ? -8.0f * sv : sv);
}

/* R rows (rb bytes apart) times one token. tp: the token's np prepared pairs, or NULL (arranged
 * on the fly, the same values). wp: NULL (weights read from w) or R prepared rows of np pairs. */
AVX2_FN static INLINE_ALWAYS void rows_q4q8_r(const int R, const int wtype, int64_t nb,
                                              const uint8_t *w, size_t rb, const q4_wpair *wp,
                                              const q8_tok_pair *tp, const block_q8a *a, float *y) {
    const int bs = block_bytes(wtype);
    const int64_t np = (nb + 1) / 2;
    __m256 acc[ROWS];
    __m128 side[ROWS];
    for (int r = 0; r < R; r++) {
        acc[r] = _mm256_setzero_ps();
        side[r] = _mm_setzero_ps();
    }
    for (int64_t p = 0; p < np; p++) {
        q8_tok_pair t = tp ? tp[p] : tok_pair(a, nb, p);
        if (!wp && PF_GROUPS > 0) prefetch_ahead(w, rb, R, (size_t)(2 * p) * bs, 1);
        if (2 * p + 1 < nb) /* two blocks: the loop's body, without a branch per row */
            for (int r = 0; r < R; r++) {
                q4_wpair wv = wp ? wp[r * np + p]
                                 : w_pair(wtype, w + (size_t)r * rb + (size_t)(2 * p) * bs, 1);
                q4_pair_product(&wv, &t, &acc[r], &side[r]);
            }
        else /* the odd last block */
            for (int r = 0; r < R; r++) {
                q4_wpair wv = wp ? wp[r * np + p]
                                 : w_pair(wtype, w + (size_t)r * rb + (size_t)(2 * p) * bs, 0);
                q4_pair_product(&wv, &t, &acc[r], &side[r]);
            }
    }
    for (int r = 0; r < R; r++) y[r] = q4_finish(wtype, acc[r], side[r]);
}

/* The token's pairs on the stack up to this many (K = 16384), else on the heap. */
#define TOK_STACK_PAIRS 256

#define Q4Q8(DOT, ROWSF, GEMM, WT)                                                               \
    AVX2_FN static float DOT(int64_t nb, const void *wrow, const block_q8a *a) {                 \
        float y;                                                                                 \
        rows_q4q8_r(1, WT, nb, (const uint8_t *)wrow, 0, NULL, NULL, a, &y);                      \
        return y;                                                                                \
    }                                                                                            \
    AVX2_FN static void ROWSF(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,            \
                              const block_q8a *a, float *y) {                                    \
        int64_t np = (nb + 1) / 2;                                                               \
        q8_tok_pair stack[TOK_STACK_PAIRS];                                                      \
        q8_tok_pair *tp = np <= TOK_STACK_PAIRS                                                  \
            ? stack : (q8_tok_pair *)aligned_alloc(32, (size_t)np * sizeof(q8_tok_pair));        \
        if (tp)                                                                                  \
            for (int64_t p = 0; p < np; p++) tp[p] = tok_pair(a, nb, p);                         \
        int64_t r = 0;                                                                           \
        if (rb <= MULTI_ROW_MAX_BYTES)                                                           \
            for (; r + ROWS <= nrows; r += ROWS)                                                 \
                rows_q4q8_r(ROWS, WT, nb, w + (size_t)r * rb, rb, NULL, tp, a, y + r);           \
        for (; r < nrows; r++) rows_q4q8_r(1, WT, nb, w + (size_t)r * rb, rb, NULL, tp, a, y + r); \
        if (tp != stack) free(tp);                                                               \
    }                                                                                            \
    AVX2_FN static int GEMM(int64_t nb, const uint8_t *w, size_t rb, int64_t nrows,              \
                            const block_q8a *a, int64_t T, float *y, int64_t ldy) {              \
        const int bs = block_bytes(WT);                                                          \
        int64_t np = (nb + 1) / 2;                                                               \
        q4_wpair *wp = (q4_wpair *)aligned_alloc(32, (size_t)(ROWS * np) * sizeof(q4_wpair));     \
        q8_tok_pair *tp = (q8_tok_pair *)aligned_alloc(32, (size_t)(T * np) * sizeof(q8_tok_pair)); \
        if (!wp || !tp) {                                                                        \
            free(wp);                                                                            \
            free(tp);                                                                            \
            return 0;                                                                            \
        }                                                                                        \
        for (int64_t t = 0; t < T; t++)                                                          \
            for (int64_t p = 0; p < np; p++) tp[t * np + p] = tok_pair(a + t * nb, nb, p);       \
        for (int64_t r = 0; r < nrows; r += ROWS) {                                              \
            int R = nrows - r < ROWS ? (int)(nrows - r) : ROWS;                                  \
            for (int i = 0; i < R; i++)                                                          \
                for (int64_t p = 0; p < np; p++)                                                 \
                    wp[i * np + p] = w_pair(WT, w + (size_t)(r + i) * rb + (size_t)(2 * p) * bs, \
                                            2 * p + 1 < nb);                                     \
            for (int64_t t = 0; t < T; t++) {                                                    \
                if (R == ROWS)                                                                   \
                    rows_q4q8_r(ROWS, WT, nb, NULL, 0, wp, tp + t * np, NULL, y + t * ldy + r);  \
                else                                                                             \
                    for (int i = 0; i < R; i++)                                                  \
                        rows_q4q8_r(1, WT, nb, NULL, 0, wp + i * np, tp + t * np, NULL,          \
                                    y + t * ldy + r + i);                                        \
            }                                                                                    \
        }                                                                                        \
        free(wp);                                                                                \
        free(tp);                                                                                \
        return 1;                                                                                \
    }
Q4Q8(dot_q4_0_q8, rows_q4_0_q8, gemm_q4_0_q8, 0)
Q4Q8(dot_q4_1_q8, rows_q4_1_q8, gemm_q4_1_q8, 1)

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

/* ---- q8 activations, exp, attention row, SwiGLU ------------------------------------------- */

/* edgert_quantize_q8a, 8 lanes at a time, bit for bit the scalar one: the same amax (a max is
 * exact in any order), the same scalar d and 1/d, the same product x * id, and roundf's rule
 * (half away from zero) as trunc(v) plus sign(v) where |v - trunc(v)| >= 0.5 (v - trunc(v) is
 * exact in fp32), then the same clamp to +-127. */
AVX2_FN void edgert_quantize_q8a_avx2(const float *x, block_q8a *out, int64_t k) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    int64_t nb = k / EDGERT_QK;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * EDGERT_QK;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int g = 0; g < 4; g++) {
            v[g] = _mm256_loadu_ps(xb + 8 * g);
            /* max(|x|, m) keeps m when x is NaN, as the scalar `v > amax` does */
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[g]), m);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i q32[4];
        for (int g = 0; g < 4; g++) {
            __m256 p = _mm256_mul_ps(v[g], vid);
            __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));
            __m256 step = _mm256_or_ps(_mm256_and_ps(p, sign), one); /* +-1 with p's sign */
            __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step));
            r = _mm256_max_ps(_mm256_min_ps(r, hi), lo);
            q32[g] = _mm256_cvttps_epi32(r);
        }
        /* int32 -> int8 in element order: packs work within 128-bit lanes, a permute restores it */
        __m256i p16a = _mm256_packs_epi32(q32[0], q32[1]); /* 0-3 8-11 | 4-7 12-15 */
        __m256i p16b = _mm256_packs_epi32(q32[2], q32[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)out[b].qs, p8);
        __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(q32[0], q32[1]), _mm256_add_epi32(q32[2], q32[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        int32_t sum = _mm_cvtsi128_si32(s4);
        out[b].d = d;
        out[b].s = d * (float)sum;
    }
}

/* exp(x) in fp32, 8 lanes: x clamped to [-87, 88] (results stay normal and finite), x = k ln2 + r
 * with |r| <= ln2/2 (ln2 split in two for an exact reduction), a degree-7 polynomial for e^r
 * (Cephes' expf coefficients, about 1 ulp, as the AVX-512 path), times 2^k through the exponent
 * bits. */
AVX2_FN static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* One query row (D a multiple of 16, at most 256): the query and the output stay in registers
 * (D / 8 vectors each); scores q . K[s] * scale, their max, exp(score - max) 8 at a time, then
 * o = sum_s p_s V[s] / sum. */
AVX2_FN static void attn_row(int64_t D, const float *q, const float *K, const float *V, int64_t n,
                             float scale, float *scores, float *o) {
    const int nv = (int)(D / 8);
    __m256 qv[32], ov[32];
    for (int j = 0; j < nv; j++) {
        qv[j] = _mm256_loadu_ps(q + 8 * j);
        ov[j] = _mm256_setzero_ps();
    }
    float mx = -INFINITY;
    for (int64_t s = 0; s < n; s++) {
        const float *kr = K + s * D;
        __m256 a0 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr));
        __m256 a1 = _mm256_mul_ps(qv[1], _mm256_loadu_ps(kr + 8));
        for (int j = 2; j < nv; j += 2) {
            a0 = _mm256_fmadd_ps(qv[j], _mm256_loadu_ps(kr + 8 * j), a0);
            a1 = _mm256_fmadd_ps(qv[j + 1], _mm256_loadu_ps(kr + 8 * j + 8), a1);
        }
        float sc = hsum_ps(_mm256_add_ps(a0, a1)) * scale;
        scores[s] = sc;
        if (sc > mx) mx = sc;
    }
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    int64_t s = 0;
    for (; s + 8 <= n; s += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + s), vmx));
        _mm256_storeu_ps(scores + s, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum_ps(vsum);
    if (s < n) {
        float tail[8] = {0};
        memcpy(tail, scores + s, (size_t)(n - s) * sizeof(float));
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(tail), vmx));
        _mm256_storeu_ps(tail, e);
        for (int64_t i = s; i < n; i++) {
            scores[i] = tail[i - s];
            sum += tail[i - s];
        }
    }
    float inv = 1.0f / sum;
    for (s = 0; s < n; s++) {
        __m256 p = _mm256_set1_ps(scores[s] * inv);
        const float *vr = V + s * D;
        for (int j = 0; j < nv; j++) ov[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * j), ov[j]);
    }
    for (int j = 0; j < nv; j++) _mm256_storeu_ps(o + 8 * j, ov[j]);
}

AVX2_FN static void swiglu(int64_t n, const float *gate, const float *up, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, e), _mm256_loadu_ps(up + i)));
    }
    if (i < n) {
        float g8[8] = {0}, u8[8] = {0};
        memcpy(g8, gate + i, (size_t)(n - i) * sizeof(float));
        memcpy(u8, up + i, (size_t)(n - i) * sizeof(float));
        __m256 g = _mm256_loadu_ps(g8);
        __m256 e = _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        _mm256_storeu_ps(g8, _mm256_mul_ps(_mm256_div_ps(g, e), _mm256_loadu_ps(u8)));
        memcpy(out + i, g8, (size_t)(n - i) * sizeof(float));
    }
}

const edgert_kernel_table edgert_kernels_avx2 = {
    "x86-avx2",
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

#endif /* EDGERT_HAVE_AVX2 */
