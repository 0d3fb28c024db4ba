/* Runtime CPU checks, the thread pool and the matmul driver.
 *
 * edgert_linear is where the time goes: it splits the output rows into chunks that the caller and
 * the pool's workers claim, and calls one kernel-table dot product per (row, token). The pool is
 * started on first use and keeps its workers: idle workers poll briefly (SPIN_NS) before sleeping,
 * so the ~200 small matrix-vector products of one decoded token do not each pay for a wake-up. */
#define _GNU_SOURCE 1 /* clock_gettime, getauxval with -std=c11 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__linux__) && defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

#if defined(EDGERT_HAVE_AVX2)
#include <cpuid.h>
#endif

/* ---- CPU features ------------------------------------------------------------------------- */

int edgert_cpu_has_dotprod(void) {
#if defined(__linux__) && defined(__aarch64__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? 1 : 0;
#else
    return 0;
#endif
}

#if defined(EDGERT_HAVE_AVX2)
static int cpu_has_avx2_fma_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C)) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

#if defined(EDGERT_HAVE_AVX512)
static int cpu_has_avx512(void) {
    if (!cpu_has_avx2_fma_f16c()) return 0;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

static const edgert_kernel_table *const all_tables[] = {
    &edgert_kernels_portable,
#if defined(__aarch64__)
    &edgert_kernels_neon,
    &edgert_kernels_neon_dotprod,
#endif
#if defined(EDGERT_HAVE_AVX2)
    &edgert_kernels_avx2,
#endif
#if defined(EDGERT_HAVE_AVX512)
    &edgert_kernels_avx512,
#endif
};

const edgert_kernel_table *const *edgert_all_tables(int *n) {
    *n = (int)(sizeof all_tables / sizeof all_tables[0]);
    return all_tables;
}

int edgert_table_supported(const edgert_kernel_table *t) {
    if (t == &edgert_kernels_portable) return 1;
#if defined(__aarch64__)
    if (t == &edgert_kernels_neon) return 1; /* NEON (ASIMD) is part of the ARMv8-A baseline */
    if (t == &edgert_kernels_neon_dotprod) return edgert_cpu_has_dotprod();
#endif
#if defined(EDGERT_HAVE_AVX2)
    if (t == &edgert_kernels_avx2) return cpu_has_avx2_fma_f16c();
#endif
#if defined(EDGERT_HAVE_AVX512)
    if (t == &edgert_kernels_avx512) return cpu_has_avx512();
#endif
    return 0;
}

const edgert_kernel_table *edgert_best_table(void) {
    int n;
    const edgert_kernel_table *const *tables = edgert_all_tables(&n);
    for (int i = n - 1; i >= 0; i--) /* listed from slowest to fastest */
        if (edgert_table_supported(tables[i])) return tables[i];
    return &edgert_kernels_portable;
}

/* ---- thread pool -------------------------------------------------------------------------- *
 *
 * A job is n_chunks independent chunks (ranges of output rows). The caller and the workers claim
 * chunks with one atomic fetch-add on `work` = generation | n_chunks | next chunk, so a worker the
 * OS has descheduled never holds the caller up: the caller claims whatever is left itself and
 * returns when every claimed chunk is done. A worker that claims past n_chunks does nothing; the
 * generation tells sleeping workers that a new job arrived. */

typedef void (*task_fn)(void *arg, int chunk, int n_chunks);

#if defined(_WIN32) && !defined(__MINGW32__)
#define EDGERT_NO_THREADS 1
#endif

#ifdef EDGERT_NO_THREADS

static void pool_run(task_fn fn, void *arg, int n_chunks, int threads) {
    (void)threads;
    for (int c = 0; c < n_chunks; c++) fn(arg, c, n_chunks);
}
void edgert_pool_shutdown(void) {}

#else

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define SPIN_NS 2000000L /* an idle worker polls this long for the next job before it sleeps */
#define PAUSE_SPINS 2048  /* busy-wait polls before polling turns to sched_yield() */

#define W_BITS 20 /* n_chunks and next chunk: 20 bits each; the generation above them */
#define W_MASK ((1ull << W_BITS) - 1)
#define W_NEXT(w) ((int)((w) & W_MASK))
#define W_N(w) ((int)(((w) >> W_BITS) & W_MASK))
#define W_GEN(w) ((w) >> (2 * W_BITS))

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* One poll of a wait loop: busy-wait first (lowest latency), then yield the CPU, so that when
 * there are more runnable threads than cores (another process, BLAS threads) the thread we wait
 * for gets to run instead of waiting for the scheduler tick. */
static inline void wait_step(int spins) {
    if (spins < PAUSE_SPINS)
        cpu_relax();
    else
        sched_yield();
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

typedef struct {
    int n_workers;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t work;
    atomic_int done;
    atomic_int stop;
    task_fn fn; /* the current job; stable while any of its chunks is unfinished */
    void *arg;
} pool_t;

static pool_t *g_pool = NULL;
static pthread_mutex_t g_submit = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static int g_atfork_registered = 0;

/* Claim and run chunks of the current job until none is left; returns how many ran. */
static int run_chunks(pool_t *pool) {
    int ran = 0;
    for (;;) {
        uint64_t w = atomic_load_explicit(&pool->work, memory_order_acquire);
        if (W_NEXT(w) >= W_N(w)) return ran;
        uint64_t got = atomic_fetch_add_explicit(&pool->work, 1, memory_order_acq_rel);
        int c = W_NEXT(got), n = W_N(got);
        if (c >= n) return ran;
        pool->fn(pool->arg, c, n);
        atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
        ran++;
    }
}

static void *worker_main(void *p) {
    pool_t *pool = (pool_t *)p;
    for (;;) {
        uint64_t gen = W_GEN(atomic_load_explicit(&pool->work, memory_order_acquire));
        run_chunks(pool);
        long spin_start = now_ns();
        for (int spins = 0;; spins++) {
            if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
            uint64_t w = atomic_load_explicit(&pool->work, memory_order_acquire);
            if (W_GEN(w) != gen || W_NEXT(w) < W_N(w)) break;
            wait_step(spins);
            if (spins % 256 == 255 && now_ns() - spin_start > SPIN_NS) {
                pthread_mutex_lock(&pool->lock);
                while (W_GEN(atomic_load(&pool->work)) == gen && !atomic_load(&pool->stop))
                    pthread_cond_wait(&pool->wake, &pool->lock);
                pthread_mutex_unlock(&pool->lock);
            }
        }
    }
}

static void pool_destroy(pool_t *pool) {
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_workers; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

static pool_t *pool_create(int n_workers) {
    pool_t *pool = (pool_t *)calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->threads = (pthread_t *)calloc((size_t)n_workers, sizeof(pthread_t));
    if (!pool->threads) {
        free(pool);
        return NULL;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    atomic_init(&pool->work, 0u);
    atomic_init(&pool->done, 0);
    atomic_init(&pool->stop, 0);
    for (int i = 0; i < n_workers; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) break;
        pool->n_workers = i + 1;
    }
    return pool;
}

/* After fork() only the calling thread exists: forget the parent's pool (it is not ours to join). */
static void atfork_prepare(void) { pthread_mutex_lock(&g_submit); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_submit); }
static void atfork_child(void) {
    g_pool = NULL;
    pthread_mutex_unlock(&g_submit);
}

/* Run chunks 0..n_chunks-1 of fn on the caller and threads-1 workers. */
static void pool_run(task_fn fn, void *arg, int n_chunks, int threads) {
    if (threads <= 1 || n_chunks <= 1) {
        for (int c = 0; c < n_chunks; c++) fn(arg, c, n_chunks);
        return;
    }
    pthread_mutex_lock(&g_submit);
    if (!g_atfork_registered) {
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        g_atfork_registered = 1;
    }
    if (g_pool && g_pool->n_workers != threads - 1) {
        pool_destroy(g_pool);
        g_pool = NULL;
    }
    if (!g_pool) g_pool = pool_create(threads - 1);
    pool_t *pool = g_pool;
    if (!pool || pool->n_workers == 0) { /* could not start threads: run on the caller */
        pthread_mutex_unlock(&g_submit);
        for (int c = 0; c < n_chunks; c++) fn(arg, c, n_chunks);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    uint64_t gen = W_GEN(atomic_load_explicit(&pool->work, memory_order_relaxed)) + 1;
    pthread_mutex_lock(&pool->lock);
    atomic_store_explicit(&pool->work, (gen << (2 * W_BITS)) | ((uint64_t)n_chunks << W_BITS),
                          memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    run_chunks(pool);
    for (int spins = 0; atomic_load_explicit(&pool->done, memory_order_acquire) < n_chunks; spins++)
        wait_step(spins);
    pthread_mutex_unlock(&g_submit);
}

void edgert_pool_shutdown(void) {
    pthread_mutex_lock(&g_submit);
    if (g_pool) pool_destroy(g_pool);
    g_pool = NULL;
    pthread_mutex_unlock(&g_submit);
}

#endif /* EDGERT_NO_THREADS */

void edgert_parallel(edgert_task_fn fn, void *arg, int n_chunks, int threads) {
    pool_run(fn, arg, n_chunks, threads);
}

/* ---- the matmul driver -------------------------------------------------------------------- */

/* A chunk of rows smaller than this many multiply-adds costs more to hand over than to compute. */
#define MIN_MACS_PER_CHUNK 16384
/* Chunks per thread: more chunks balance uneven progress (a descheduled worker) at little cost. */
#define CHUNKS_PER_THREAD 4

typedef struct {
    const edgert_kernel_table *kt;
    const float *x;
    const block_q8a *xq;
    int64_t T, K, N;
    const uint8_t *w;
    size_t row_bytes;
    int wtype;
    float *y;
    const float *add; /* NULL, or [T, N] added to the products (a residual) */
} linear_job;

/* The outputs of rows r0..r1-1 for every token, into yb[t * ldy + (r - r0)]. */
static void linear_rows(const linear_job *job, int64_t r0, int64_t r1, float *yb, int64_t ldy);

/* Prompts in fp32 mode, on a path with gemm_f32: rows r0..r1 dequantized GEMM_ROWS at a time into
 * a scratch tile, each tile multiplied with all T tokens. Returns 0 when the scratch could not be
 * allocated (the caller then runs the per-row dots). */
#define GEMM_ROWS 4
static int linear_rows_gemm(const linear_job *job, int64_t r0, int64_t r1, float *yb, int64_t ldy) {
    const edgert_kernel_table *kt = job->kt;
    int64_t K = job->K, nb = K / EDGERT_QK;
    float *tile = (float *)malloc((size_t)(GEMM_ROWS * K) * sizeof(float));
    if (!tile) return 0;
    edgert_dequant_fn dq = kt->dequant[job->wtype];
    for (int64_t r = r0; r < r1; r += GEMM_ROWS) {
        int64_t R = r1 - r < GEMM_ROWS ? r1 - r : GEMM_ROWS;
        for (int64_t i = 0; i < R; i++) dq(nb, job->w + (size_t)(r + i) * job->row_bytes, tile + i * K);
        kt->gemm_f32(K, tile, R, job->x, job->T, yb + (r - r0), ldy);
    }
    free(tile);
    return 1;
}

/* From this many tokens on, products unpack each row once (gemm_f32, gemm_q8). */
#define GEMM_MIN_T 4
/* A residual's chunk of products goes through a scratch this big on the stack (else the heap). */
#define STACK_PRODUCTS 2048

static void linear_task(void *p, int chunk, int n_chunks) {
    const linear_job *job = (const linear_job *)p;
    int64_t per = (job->N + n_chunks - 1) / n_chunks;
    if (per % GEMM_ROWS && per > GEMM_ROWS) per += GEMM_ROWS - per % GEMM_ROWS; /* whole tiles */
    int64_t r0 = per * chunk, r1 = r0 + per < job->N ? r0 + per : job->N;
    if (r0 >= r1) return;
    if (!job->add) {
        linear_rows(job, r0, r1, job->y + r0, job->N);
        return;
    }
    /* y = add + products, where add may be y itself: the products go to a scratch first */
    int64_t n = r1 - r0, cnt = n * job->T;
    float stack[STACK_PRODUCTS], *tmp = cnt <= STACK_PRODUCTS ? stack : (float *)malloc((size_t)cnt * sizeof(float));
    if (!tmp) { /* out of memory for the scratch: one token at a time through the stack */
        for (int64_t r = r0; r < r1; r += STACK_PRODUCTS) {
            int64_t e = r + STACK_PRODUCTS < r1 ? r + STACK_PRODUCTS : r1;
            linear_job one = *job;
            one.T = 1;
            for (int64_t t = 0; t < job->T; t++) {
                one.x = job->x + t * job->K;
                one.xq = job->xq ? job->xq + t * (job->K / EDGERT_QK) : NULL;
                linear_rows(&one, r, e, stack, e - r);
                for (int64_t i = r; i < e; i++)
                    job->y[t * job->N + i] = job->add[t * job->N + i] + stack[i - r];
            }
        }
        return;
    }
    linear_rows(job, r0, r1, tmp, n);
    for (int64_t t = 0; t < job->T; t++)
        for (int64_t r = r0; r < r1; r++)
            job->y[t * job->N + r] = job->add[t * job->N + r] + tmp[t * n + (r - r0)];
    if (tmp != stack) free(tmp);
}

static void linear_rows(const linear_job *job, int64_t r0, int64_t r1, float *yb, int64_t ldy) {
    int64_t nb = job->K / EDGERT_QK;
    if (!job->xq && job->T >= GEMM_MIN_T && job->kt->gemm_f32 && job->kt->dequant[job->wtype] &&
        linear_rows_gemm(job, r0, r1, yb, ldy))
        return;
    if (job->xq && job->T >= GEMM_MIN_T && job->kt->gemm_q8[job->wtype] &&
        job->kt->gemm_q8[job->wtype](nb, job->w + (size_t)r0 * job->row_bytes, job->row_bytes,
                                     r1 - r0, job->xq, job->T, yb, ldy))
        return;
    if (job->xq && job->kt->rows_q8[job->wtype]) {
        edgert_rows_q8_fn rows = job->kt->rows_q8[job->wtype];
        for (int64_t t = 0; t < job->T; t++)
            rows(nb, job->w + (size_t)r0 * job->row_bytes, job->row_bytes, r1 - r0, job->xq + t * nb,
                 yb + t * ldy);
        return;
    }
    if (!job->xq && job->kt->rows_f32[job->wtype]) {
        edgert_rows_f32_fn rows = job->kt->rows_f32[job->wtype];
        for (int64_t t = 0; t < job->T; t++)
            rows(nb, job->w + (size_t)r0 * job->row_bytes, job->row_bytes, r1 - r0,
                 job->x + t * job->K, yb + t * ldy);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = job->w + (size_t)r * job->row_bytes;
        if (job->xq) {
            edgert_dot_q8_fn dot = job->kt->dot_q8[job->wtype];
            for (int64_t t = 0; t < job->T; t++) yb[t * ldy + (r - r0)] = dot(nb, wr, job->xq + t * nb);
        } else {
            edgert_dot_f32_fn dot = job->kt->dot_f32[job->wtype];
            for (int64_t t = 0; t < job->T; t++)
                yb[t * ldy + (r - r0)] = dot(nb, wr, job->x + t * job->K);
        }
    }
}

int edgert_linear(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t K,
                  const uint8_t *w, int64_t N, int wtype, float *y, int threads, int act_q8) {
    return edgert_linear_add(kt, x, T, K, w, N, wtype, NULL, y, threads, act_q8);
}

int edgert_linear_add(const edgert_kernel_table *kt, const float *x, int64_t T, int64_t K,
                      const uint8_t *w, int64_t N, int wtype, const float *add, float *y,
                      int threads, int act_q8) {
    if (wtype < 0 || wtype >= EDGERT_N_WTYPES || K <= 0 || K % EDGERT_QK != 0 || T < 0 || N < 0)
        return -1;
    if (T == 0 || N == 0) return 0;
    linear_job job = {kt, x, NULL, T, K, N, w, edgert_row_bytes(wtype, K), wtype, y, add};
    block_q8a *xq = NULL;
    if (act_q8) {
        xq = (block_q8a *)malloc((size_t)(T * (K / EDGERT_QK)) * sizeof(block_q8a));
        if (!xq) return -2;
        void (*quantize)(const float *, block_q8a *, int64_t) = edgert_quantize_q8a;
#if defined(EDGERT_HAVE_AVX2)
        /* the AVX2 quantizer gives the same blocks; AVX-512 tables imply AVX2, FMA and F16C */
        if (kt == &edgert_kernels_avx2 || kt == &edgert_kernels_avx512) quantize = edgert_quantize_q8a_avx2;
#endif
        for (int64_t t = 0; t < T; t++) quantize(x + t * K, xq + t * (K / EDGERT_QK), K);
        job.xq = xq;
    }
    if (threads < 1) threads = 1;
    int64_t n_chunks = (N * K * T) / MIN_MACS_PER_CHUNK;
    if (n_chunks > (int64_t)threads * CHUNKS_PER_THREAD) n_chunks = (int64_t)threads * CHUNKS_PER_THREAD;
    if (n_chunks > N) n_chunks = N;
    if (n_chunks < 1) n_chunks = 1;
    pool_run(linear_task, &job, (int)n_chunks, threads);
    free(xq);
    return 0;
}
