/* AVX-512F micro-kernels (kernel.h contract). One FMA per k and element, masked loads
 * and stores at the right edge, so a column rounds the same in a full or an edge tile. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"

#define AVX512 __attribute__((target("avx512f,fma")))

enum {
    MR32 = FL_AVX512_F32_MR, NV32 = FL_AVX512_F32_NR / 16, /* zmm per tile row */
    MR64 = FL_AVX512_F64_MR, NV64 = FL_AVX512_F64_NR / 8,
};
_Static_assert(FL_AVX512_F32_NR % 16 == 0 && FL_AVX512_F64_NR % 8 == 0, "whole zmm rows");

/* `m` and the x strides are compile-time constants at every call site below, so rows
 * unroll, accumulators stay in registers and x addresses fold into the loads. */
static inline __attribute__((always_inline)) AVX512 void
tile_f32(const size_t m, size_t kc, const float *a, const ptrdiff_t a_rs,
         const ptrdiff_t a_cs, const float *w, float *y, size_t ldy, size_t n, int first,
         const float *bias)
{
    __mmask16 mask[NV32];
    for (size_t v = 0; v < NV32; v++) {
        const size_t lo = 16 * v;
        mask[v] = n >= lo + 16 ? 0xFFFF : n <= lo ? 0 : (__mmask16)((1u << (n - lo)) - 1);
    }
    __m512 acc[MR32][NV32];
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV32; v++)
            acc[i][v] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(mask[v], y + i * ldy + 16 * v);
    for (size_t k = 0; k < kc; k++) {
        __m512 wk[NV32];
        for (size_t v = 0; v < NV32; v++)
            wk[v] = _mm512_load_ps(w + k * FL_AVX512_F32_NR + 16 * v);
        for (size_t i = 0; i < m; i++) {
            const __m512 ai = _mm512_set1_ps(a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs]);
            for (size_t v = 0; v < NV32; v++)
                acc[i][v] = _mm512_fmadd_ps(ai, wk[v], acc[i][v]);
        }
    }
    if (bias)
        for (size_t v = 0; v < NV32; v++) {
            const __m512 bv = _mm512_load_ps(bias + 16 * v);
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm512_add_ps(acc[i][v], bv);
        }
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV32; v++)
            _mm512_mask_storeu_ps(y + i * ldy + 16 * v, mask[v], acc[i][v]);
}

static inline __attribute__((always_inline)) AVX512 void
tile_f64(const size_t m, size_t kc, const double *a, const ptrdiff_t a_rs,
         const ptrdiff_t a_cs, const double *w, double *y, size_t ldy, size_t n, int first,
         const double *bias)
{
    __mmask8 mask[NV64];
    for (size_t v = 0; v < NV64; v++) {
        const size_t lo = 8 * v;
        mask[v] = n >= lo + 8 ? 0xFF : n <= lo ? 0 : (__mmask8)((1u << (n - lo)) - 1);
    }
    __m512d acc[MR64][NV64];
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV64; v++)
            acc[i][v] = first ? _mm512_setzero_pd()
                              : _mm512_maskz_loadu_pd(mask[v], y + i * ldy + 8 * v);
    for (size_t k = 0; k < kc; k++) {
        __m512d wk[NV64];
        for (size_t v = 0; v < NV64; v++)
            wk[v] = _mm512_load_pd(w + k * FL_AVX512_F64_NR + 8 * v);
        for (size_t i = 0; i < m; i++) {
            const __m512d ai = _mm512_set1_pd(a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs]);
            for (size_t v = 0; v < NV64; v++)
                acc[i][v] = _mm512_fmadd_pd(ai, wk[v], acc[i][v]);
        }
    }
    if (bias)
        for (size_t v = 0; v < NV64; v++) {
            const __m512d bv = _mm512_load_pd(bias + 8 * v);
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm512_add_pd(acc[i][v], bv);
        }
    for (size_t i = 0; i < m; i++)
        for (size_t v = 0; v < NV64; v++)
            _mm512_mask_storeu_pd(y + i * ldy + 8 * v, mask[v], acc[i][v]);
}

/* One instance per tile height the driver asks for (kernel.h: MR, 4, 2, 1); the x
 * strides are constants in each of the two calls of ukernel_*, so each x layout gets its
 * own instances. */
static inline __attribute__((always_inline)) AVX512 void
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

static inline __attribute__((always_inline)) AVX512 void
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

static AVX512 void avx512_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                               const void *w, void *y, size_t ldy, size_t m, size_t n,
                               int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows_f32(m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows_f32(m, kc, a, 1, MR32, w, y, ldy, n, first, bias);
}

static AVX512 void avx512_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                               const void *w, void *y, size_t ldy, size_t m, size_t n,
                               int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows_f64(m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows_f64(m, kc, a, 1, MR64, w, y, ldy, n, first, bias);
}

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

const fl_isa fl_isa_avx512 = {
    "avx512", cpu_has_avx512,
    {{avx512_f32, FL_AVX512_F32_MR, FL_AVX512_F32_NR, FL_AVX512_F32_KC, FL_AVX512_F32_MC,
      FL_AVX512_F32_NC},
     {avx512_f64, FL_AVX512_F64_MR, FL_AVX512_F64_NR, FL_AVX512_F64_KC, FL_AVX512_F64_MC,
      FL_AVX512_F64_NC}},
};
#endif
