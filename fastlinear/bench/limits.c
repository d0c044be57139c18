/* Probes of this machine's two limits for a linear layer: the multiply-add rate of its
 * cores and the rate at which they read memory. Built by limits.py for one ISA path of the
 * native kernel (a probe of this machine, not part of the library's build). */
#include <stddef.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The vector width of the ISA path probed (limits.py passes its flags). */
#if defined(__AVX512F__)
enum { VBYTES = 64 };
#elif defined(__AVX__)
enum { VBYTES = 32 };
#else
enum { VBYTES = 16 };
#endif
typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));
/* Independent chains per thread: more than FMA latency (4-5 cycles) x FMA units (2). */
enum { CHAINS = 12 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* GFLOP/s of `threads` threads each running CHAINS multiply-add chains for `iters`
 * steps; `dtype_size` 4 or 8. The compiler contracts a * b + c into one FMA. `seed`
 * (any value near 1) comes from the caller so that no chain can be folded away. */
double fma_gflops(int dtype_size, long iters, int threads, double seed)
{
    double sink = 0, start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    if (dtype_size == 4) {
        vf acc[CHAINS], mul = (vf){} + (float)seed, add = (vf){} + (float)(seed - 1);
        for (int j = 0; j < CHAINS; j++)
            acc[j] = (vf){} + (float)(seed * j);
        for (long it = 0; it < iters; it++)
            for (int j = 0; j < CHAINS; j++)
                acc[j] = acc[j] * mul + add;
        for (int j = 0; j < CHAINS; j++)
            sink += acc[j][0];
    } else {
        vd acc[CHAINS], mul = (vd){} + seed, add = (vd){} + (seed - 1);
        for (int j = 0; j < CHAINS; j++)
            acc[j] = (vd){} + seed * j;
        for (long it = 0; it < iters; it++)
            for (int j = 0; j < CHAINS; j++)
                acc[j] = acc[j] * mul + add;
        for (int j = 0; j < CHAINS; j++)
            sink += acc[j][0];
    }
    const double seconds = now() - start;
    const double lanes = (double)VBYTES / dtype_size;
    return sink == -1 ? 0 : 2.0 * lanes * CHAINS * (double)iters * threads / seconds / 1e9;
}

/* GB/s of `threads` threads reading `bytes` of `buf` (64-byte aligned, a multiple of
 * threads * VBYTES * 8 bytes) `reps` times, each thread its own contiguous share. */
double read_gbs(const void *buf, size_t bytes, int reps, int threads)
{
    double sink = 0, start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#ifdef _OPENMP
        const size_t t = (size_t)omp_get_thread_num(), team = (size_t)omp_get_num_threads();
#else
        const size_t t = 0, team = 1;
#endif
        const size_t n = bytes / sizeof(vf) / team;
        const vf *v = (const vf *)buf + t * n;
        vf s[8] = {{0}};
        for (int r = 0; r < reps; r++)
            for (size_t i = 0; i + 8 <= n; i += 8)
                for (int j = 0; j < 8; j++)
                    s[j] += v[i + j];
        for (int j = 0; j < 8; j++)
            sink += s[j][0];
    }
    const double seconds = now() - start;
    return sink == -1 ? 0 : (double)bytes * reps / seconds / 1e9;
}
