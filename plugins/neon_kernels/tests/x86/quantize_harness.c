/* edgert_quantize_q8a_avx2 against the scalar edgert_quantize_q8a, byte for byte, on random
 * activations, tiny ones, all-zero blocks and exact .5 ties (a block whose max is 127 has scale 1,
 * so x = k + 0.5 lands on a tie, where roundf rounds away from zero). Prints "bad=N"; exits 1 on
 * any difference. Built by tests/test_neon_quantize_avx2.py with the csrc sources. */
#include <stdio.h>
#include <string.h>

#include "kernels.h"

static unsigned long long state = 88172645463325252ull;
static unsigned long long next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
static float uniform(void) { return (float)(next() % 2000001) / 1000000.0f - 1.0f; }

int main(void) {
    enum { K = 32 * 64 };
    static float x[K];
    static block_q8a a[K / 32], b[K / 32];
    long bad = 0;
    for (int it = 0; it < 20000; it++) {
        int mode = it % 5;
        for (int i = 0; i < K; i++) {
            float v = uniform();
            if (mode == 1) v *= 1e-30f;
            else if (mode == 2) v = (float)((int)(next() % 255) - 127) * 0.5f;
            else if (mode == 3) v = (float)((int)(next() % 509) - 254) / 2.0f * (float)(1 + next() % 7);
            else if (mode == 4 && next() % 3 == 0) v = 0.0f;
            x[i] = v;
        }
        if (mode == 2) /* max 127 in every block: scale 1, so the .5 values are ties */
            for (int i = 0; i < K; i += 32) x[i + (int)(next() % 32)] = (next() & 1) ? 127.0f : -127.0f;
        if (it % 7 == 0)
            for (int i = 0; i < 32; i++) x[i] = 0.0f;
        edgert_quantize_q8a(x, a, K);
        edgert_quantize_q8a_avx2(x, b, K);
        if (memcmp(a, b, sizeof a)) bad++;
    }
    printf("bad=%ld\n", bad);
    return bad != 0;
}
