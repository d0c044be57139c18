/* Probes of this machine's two limits for a linear layer: the multiply-add rate of its
 * cores, and the time they take to read a layer's packed weights. Built by limits.py for
 * one ISA path of the native kernel (a probe of this machine, not part of the library's
 * build), with that path's vector width and the way its kernel reads a weight panel:
 * ROW_VECTORS vectors per k row, TWO_PANELS if one row of x takes two panels at once. */
#include <stddef.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
enum { VBYTES = 64 };
#elif defined(__AVX__)
enum { VBYTES = 32 };
#else
enum { VBYTES = 16 };
#endif
#ifndef ROW_VECTORS
#define ROW_VECTORS 4
#endif
#ifndef TWO_PANELS
#define TWO_PANELS 0
#endif
typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));
typedef long long vi __attribute__((vector_size(VBYTES)));
/* Independent chains per thread: more than FMA latency (4-5 cycles) x FMA units (2). */
enum { CHAINS = 12 };
/* The kernels prefetch each panel this far ahead of the k row they read: src_c/blocking.h's
 * FL_PREFETCH_BYTES (a test keeps the two equal). */
enum { PREFETCH_BYTES = 16384 };
enum { ROW_BYTES = ROW_VECTORS * VBYTES };

#define INLINE static inline __attribute__((always_inline))

/* Where the probes leave what they computed, so that no loop can be optimised away. */
volatile double fl_probe_sink;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void thread_of(size_t *t, size_t *team)
{
#ifdef _OPENMP
    *t = (size_t)omp_get_thread_num();
    *team = (size_t)omp_get_num_threads();
#else
    *t = 0;
    *team = 1;
#endif
}

/* The bytes of one k row of a weight panel, and whether one row of x reads two panels at
 * once: limits.py lays out a shape's weights from these. */
int row_bytes(void) { return ROW_BYTES; }
int two_panels(void) { return TWO_PANELS; }

/* GFLOP/s of `threads` threads each running CHAINS multiply-add chains for at least
 * `seconds` (checked every 2^14 steps, so that the run's length, not a step count, is
 * fixed whatever the clock); `dtype_size` 4 or 8. The compiler contracts a * b + c into
 * one FMA where the flags allow it. `seed` (any value near 1) comes from the caller so
 * that no chain can be folded away. */
double fma_gflops(int dtype_size, double seconds, int threads, double seed)
{
    enum { BLOCK = 1 << 14 };
    double sink = 0, steps = 0;
    const double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink, steps)
    {
        long done = 0;
        if (dtype_size == 4) {
            vf acc[CHAINS], mul = (vf){} + (float)seed, add = (vf){} + (float)(seed - 1);
            for (int j = 0; j < CHAINS; j++)
                acc[j] = (vf){} + (float)(seed * j);
            do {
                for (long it = 0; it < BLOCK; it++)
                    for (int j = 0; j < CHAINS; j++)
                        acc[j] = acc[j] * mul + add;
                done += BLOCK;
            } while (now() - start < seconds);
            for (int j = 0; j < CHAINS; j++)
                sink += acc[j][0];
        } else {
            vd acc[CHAINS], mul = (vd){} + seed, add = (vd){} + (seed - 1);
            for (int j = 0; j < CHAINS; j++)
                acc[j] = (vd){} + seed * j;
            do {
                for (long it = 0; it < BLOCK; it++)
                    for (int j = 0; j < CHAINS; j++)
                        acc[j] = acc[j] * mul + add;
                done += BLOCK;
            } while (now() - start < seconds);
            for (int j = 0; j < CHAINS; j++)
                sink += acc[j][0];
        }
        steps += (double)done;
    }
    const double elapsed = now() - start;
    const double lanes = (double)VBYTES / dtype_size;
    fl_probe_sink = sink;
    return 2.0 * lanes * CHAINS * steps / elapsed / 1e9;
}

/* Integer activations: GOP/s (a multiply and an add per product) of `threads` threads
 * each running CHAINS chains of the integer kernel's instruction for int8 x int8 sums:
 * vpdpbusd (4 byte products per int32 lane) with AVX-512 VNNI, else vpmaddwd (2 int16
 * products per lane) and the vpaddd that adds them up, else (the portable kernel) an
 * int32 multiply and add per lane. An operand passes through an empty asm before each
 * product, so that none can be hoisted out of the loop or shared between chains. */
typedef int vs32 __attribute__((vector_size(VBYTES)));
#if defined(__AVX512VNNI__) || defined(__AVX2__)
#include <immintrin.h>
#endif

INLINE vs32 int_step(vs32 acc, vs32 a, vs32 b, double *products)
{
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    *products = 4 * 16;
    return (vs32)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)a, (__m512i)b);
#elif defined(__AVX512BW__)
    *products = 2 * 16;
    return (vs32)_mm512_add_epi32((__m512i)acc, _mm512_madd_epi16((__m512i)a, (__m512i)b));
#elif defined(__AVX2__)
    *products = 2 * 8;
    return (vs32)_mm256_add_epi32((__m256i)acc, _mm256_madd_epi16((__m256i)a, (__m256i)b));
#else
    *products = VBYTES / 4;
    return acc + a * b;
#endif
}

double int8_gops(double seconds, int threads, int seed)
{
    enum { BLOCK = 1 << 14 };
    double sink = 0, steps = 0, products = 0;
    const double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink, steps) reduction(max : products)
    {
        long done = 0;
        vs32 acc[CHAINS], a = (vs32){} + seed, b = (vs32){} + (seed + 1);
        for (int j = 0; j < CHAINS; j++)
            acc[j] = (vs32){} + j;
        do {
            for (long it = 0; it < BLOCK; it++)
                for (int j = 0; j < CHAINS; j++) {
                    __asm__("" : "+x"(b));  /* a new operand for each product */
                    acc[j] = int_step(acc[j], a, b, &products);
                }
            done += BLOCK;
        } while (now() - start < seconds);
        for (int j = 0; j < CHAINS; j++)
            sink += acc[j][0];
        steps += (double)done;
    }
    const double elapsed = now() - start;
    fl_probe_sink = sink;
    return 2.0 * products * CHAINS * steps / elapsed / 1e9;
}

/* One k row of `np` panels (np and pf constants at each call), as the kernels' k step
 * reads it: with `pf`, a prefetch of each panel's row PREFETCH_BYTES ahead, one cache
 * line at a time; then the row's vectors. OR, not an add, gathers them: a one-cycle
 * dependency, so the loads, not a chain, set the pace. */
INLINE void read_row(const char *w, size_t panel_bytes, int np, int pf,
                     vi acc[2 * ROW_VECTORS])
{
    if (pf)
        for (int p = 0; p < np; p++)
            for (int l = 0; l < ROW_BYTES; l += 64)
                __builtin_prefetch(w + p * panel_bytes + PREFETCH_BYTES + l, 0, 3);
    for (int p = 0; p < np; p++)
        for (int v = 0; v < ROW_VECTORS; v++)
            acc[p * ROW_VECTORS + v] |= *(const vi *)(w + p * panel_bytes + v * VBYTES);
}

/* `reps` passes over the band of panels [lo, hi), `step` (1 or 2) at a time. */
INLINE void read_band(const char *buf, size_t lo, size_t hi, size_t panel_bytes, size_t k,
                      size_t step, int pf, int reps, vi acc[2 * ROW_VECTORS])
{
    for (int r = 0; r < reps; r++)
        for (size_t q = lo; q < hi; q += step) {
            const char *w = buf + q * panel_bytes;
            if (step == 2 && q + 1 < hi)
                for (size_t i = 0; i < k; i++)
                    read_row(w + i * ROW_BYTES, panel_bytes, 2, pf, acc);
            else
                for (size_t i = 0; i < k; i++)
                    read_row(w + i * ROW_BYTES, panel_bytes, 1, pf, acc);
        }
}

/* Seconds that `threads` threads take for `reps` passes over the `panels` weight panels
 * at `buf` (contiguous, `panel_bytes` each, a multiple of 64, 64-byte aligned), read as
 * the kernel reads weights for rows of x taken in place: thread t of the team takes the
 * band of panels [panels t / team, panels (t + 1) / team) and streams it front to back,
 * each panel's `k` rows in order (`pairs`: two panels side by side, row by row, as for
 * one row of x), with the kernel's prefetch if `prefetch`. Only the k * ROW_BYTES bytes
 * of each panel that the kernel reads are read. The team is timed as one call of the
 * kernel is: until its slowest thread ends. */
double read_panels(const void *buf, size_t panels, size_t panel_bytes, size_t k, int pairs,
                   int prefetch, int reps, int threads)
{
    long long sink = 0;
    const double start = now();
#pragma omp parallel num_threads(threads) reduction(| : sink)
    {
        size_t t, team;
        thread_of(&t, &team);
        const size_t lo = panels * t / team, hi = panels * (t + 1) / team;
        const size_t step = pairs && TWO_PANELS ? 2 : 1;
        vi acc[2 * ROW_VECTORS] = {{0}};
        if (prefetch)
            read_band(buf, lo, hi, panel_bytes, k, step, 1, reps, acc);
        else
            read_band(buf, lo, hi, panel_bytes, k, step, 0, reps, acc);
        for (int v = 0; v < 2 * ROW_VECTORS; v++)
            sink |= acc[v][0];
    }
    const double elapsed = now() - start;
    fl_probe_sink = (double)sink;
    return elapsed;
}
