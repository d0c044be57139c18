/* AVX2 + FMA micro-kernels (kernel.h contract) for x86-64 CPUs without AVX-512 (Haswell
 * and later, Zen 1-3). One FMA per k and element, masked loads and stores at the right
 * edge, so a column rounds the same in a full or an edge tile. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"

#define AVX2 __attribute__((target("avx2,fma")))

enum {
    MR32 = FL_AVX2_F32_MR, NV32 = FL_AVX2_F32_NR / 8, /* ymm per tile row */
    MR64 = FL_AVX2_F64_MR, NV64 = FL_AVX2_F64_NR / 4,
};
_Static_assert(FL_AVX2_F32_NR % 8 == 0 && FL_AVX2_F64_NR % 4 == 0, "whole ymm rows");

/* Lanes [lo, lo + lanes) that lie below n, as an all-ones mask per 32-bit lane. */
static inline __attribute__((always_inline)) AVX2 __m256i edge_mask32(size_t n, size_t lo)
{
    const long long left = (long long)n - (long long)lo;
    const int count = left <= 0 ? 0 : left >= 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The same per 64-bit lane (4 lanes). */
static inline __attribute__((always_inline)) AVX2 __m256i edge_mask64(size_t n, size_t lo)
{
    const long long left = (long long)n - (long long)lo;
    const long long count = left <= 0 ? 0 : left >= 4 ? 4 : left;
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* `m` and the x strides are compile-time constants at every call site below. */
static inline __attribute__((always_inline)) AVX2 void
tile_f32(const size_t m, size_t kc, const float *a, const ptrdiff_t a_rs,
         const ptrdiff_t a_cs, const float *w, float *y, size_t ldy, size_t n, int first,
         const float *bias)
{
    __m256i mask[NV32];
    for (size_t v = 0; v < NV32; v++)
        mask[v] = edge_mask32(n, 8 * v);
    __m256 acc[MR32][NV32];
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV32; v++)
            acc[i][v] = first ? _mm256_setzero_ps()
                              : _mm256_maskload_ps(y + i * ldy + 8 * v, mask[v]);
    for (size_t k = 0; k < kc; k++) {
        __m256 wk[NV32];
        for (size_t v = 0; v < NV32; v++)
            wk[v] = _mm256_load_ps(w + k * FL_AVX2_F32_NR + 8 * v);
        for (size_t i = 0; i < m; i++) {
            const __m256 ai = _mm256_broadcast_ss(&a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs]);
            for (size_t v = 0; v < NV32; v++)
                acc[i][v] = _mm256_fmadd_ps(ai, wk[v], acc[i][v]);
        }
    }
    if (bias)
        for (size_t v = 0; v < NV32; v++) {
            const __m256 bv = _mm256_load_ps(bias + 8 * v);
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm256_add_ps(acc[i][v], bv);
        }
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV32; v++)
            _mm256_maskstore_ps(y + i * ldy + 8 * v, mask[v], acc[i][v]);
}

static inline __attribute__((always_inline)) AVX2 void
tile_f64(const size_t m, size_t kc, const double *a, const ptrdiff_t a_rs,
         const ptrdiff_t a_cs, const double *w, double *y, size_t ldy, size_t n, int first,
         const double *bias)
{
    __m256i mask[NV64];
    for (size_t v = 0; v < NV64; v++)
        mask[v] = edge_mask64(n, 4 * v);
    __m256d acc[MR64][NV64];
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV64; v++)
            acc[i][v] = first ? _mm256_setzero_pd()
                              : _mm256_maskload_pd(y + i * ldy + 4 * v, mask[v]);
    for (size_t k = 0; k < kc; k++) {
        __m256d wk[NV64];
        for (size_t v = 0; v < NV64; v++)
            wk[v] = _mm256_load_pd(w + k * FL_AVX2_F64_NR + 4 * v);
        for (size_t i = 0; i < m; i++) {
            const __m256d ai = _mm256_broadcast_sd(&a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs]);
            for (size_t v = 0; v < NV64; v++)
                acc[i][v] = _mm256_fmadd_pd(ai, wk[v], acc[i][v]);
        }
    }
    if (bias)
        for (size_t v = 0; v < NV64; v++) {
            const __m256d bv = _mm256_load_pd(bias + 4 * v);
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm256_add_pd(acc[i][v], bv);
        }
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV64; v++)
            _mm256_maskstore_pd(y + i * ldy + 4 * v, mask[v], acc[i][v]);
}

/* One instance per tile height the driver asks for (kernel.h: MR, 4, 2, 1); the x
 * strides are constants in each of the two calls of ukernel_*, so each x layout gets its
 * own instances. */
static inline __attribute__((always_inline)) AVX2 void
rows_f32(size_t m, size_t kc, const float *a, const ptrdiff_t a_rs, const ptrdiff_t a_cs,
         const float *w, float *y, size_t ldy, size_t n, int first, const float *bias)
{
    switch (m) {
    case MR32: tile_f32(MR32, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 4: tile_f32(4, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile_f32(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile_f32(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}

static inline __attribute__((always_inline)) AVX2 void
rows_f64(size_t m, size_t kc, const double *a, const ptrdiff_t a_rs, const ptrdiff_t a_cs,
         const double *w, double *y, size_t ldy, size_t n, int first, const double *bias)
{
    switch (m) {
    case MR64: tile_f64(MR64, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 4: tile_f64(4, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile_f64(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile_f64(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}

_Static_assert(MR32 > 4 && MR32 < 8 && MR64 > 4 && MR64 < 8, "one case per tile height above");

static AVX2 void ukernel_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                             const void *w, void *y, size_t ldy, size_t m, size_t n,
                             int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows_f32(m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows_f32(m, kc, a, 1, MR32, w, y, ldy, n, first, bias);
}

static AVX2 void ukernel_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                             const void *w, void *y, size_t ldy, size_t m, size_t n,
                             int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows_f64(m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows_f64(m, kc, a, 1, MR64, w, y, ldy, n, first, bias);
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const fl_isa fl_isa_avx2 = {
    "avx2", cpu_has_avx2,
    {{ukernel_f32, FL_AVX2_F32_MR, FL_AVX2_F32_NR, FL_AVX2_F32_KC, FL_AVX2_F32_MC,
      FL_AVX2_F32_NC},
     {ukernel_f64, FL_AVX2_F64_MR, FL_AVX2_F64_NR, FL_AVX2_F64_KC, FL_AVX2_F64_MC,
      FL_AVX2_F64_NC}},
};
#endif
