/* AVX2 + FMA micro-kernels (kernel.h contract) for x86-64 CPUs without AVX-512 (Haswell
 * and later, Zen 1-3, and CPUs or VMs that hide AVX-512). One FMA per k and element.
 *
 * One tile body serves float32 and float64: every vector is held as __m256 and
 * reinterpreted (free) for double arithmetic, so both dtypes share the tile of MR rows x
 * NV ymm (NR = NV * lanes). Per k step it keeps MR*NV accumulators, the MR broadcast x
 * values and one weight vector live: 12 + 3 + 1 = 16 ymm, all there are. The row and
 * vector loops are unrolled (FL_UNROLL, kernel.h) so that the accumulators can live in
 * registers; tests/test_disassembly.py checks that they do. Edge columns are handled
 * outside the k loop: full vectors load and store plainly (masked stores are microcoded
 * on AMD), the one partial vector with a mask, vectors wholly past n not at all. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX2

enum { MR = FL_AVX2_MR, NV = FL_AVX2_NV, VBYTES = 32 };
_Static_assert(MR * NV + MR + 1 <= 16, "accumulators, broadcasts and a weight vector in 16 ymm");

INLINE __m256 vload(fl_dtype dt, const char *p)
{
    (void)dt;
    return _mm256_loadu_ps((const float *)p);
}

INLINE void vstore(fl_dtype dt, char *p, __m256 v)
{
    (void)dt;
    _mm256_storeu_ps((float *)p, v);
}

INLINE __m256 vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F32 ? _mm256_broadcast_ss((const float *)p)
                        : _mm256_castpd_ps(_mm256_broadcast_sd((const double *)p));
}

/* a * b + c, one rounding. */
INLINE __m256 vfma(fl_dtype dt, __m256 a, __m256 b, __m256 c)
{
    return dt == FL_F32 ? _mm256_fmadd_ps(a, b, c)
                        : _mm256_castpd_ps(_mm256_fmadd_pd(_mm256_castps_pd(a),
                                                           _mm256_castps_pd(b),
                                                           _mm256_castps_pd(c)));
}

INLINE __m256 vadd(fl_dtype dt, __m256 a, __m256 b)
{
    return dt == FL_F32 ? _mm256_add_ps(a, b)
                        : _mm256_castpd_ps(_mm256_add_pd(_mm256_castps_pd(a),
                                                         _mm256_castps_pd(b)));
}

/* The first `bytes` (< VBYTES, a multiple of 4) of a vector, as a mask of 32-bit lanes;
 * its top bits serve as a mask of 64-bit lanes too. */
INLINE __m256i head_mask(size_t bytes)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(bytes / 4)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* `m` and the x strides are compile-time constants at every call site below, so the
 * loops over rows and vectors unroll completely. */
INLINE void tile(const fl_dtype dt, const size_t m, size_t kc, const char *a,
                 const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w, char *y,
                 size_t ldy, size_t n, int first, const char *bias)
{
    const size_t size = dt == FL_F32 ? 4 : 8, nr_bytes = NV * VBYTES;
    const size_t full = n * size / VBYTES, tail = n * size % VBYTES; /* vectors, bytes */
    const ptrdiff_t rs = a_rs * (ptrdiff_t)size, cs = a_cs * (ptrdiff_t)size;
    ldy *= size;
    __m256 acc[MR][NV];
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            char *yv = y + i * ldy + v * VBYTES;
            acc[i][v] = first                 ? _mm256_setzero_ps()
                        : v < full            ? vload(dt, yv)
                        : v == full && tail   ? _mm256_maskload_ps((const float *)yv,
                                                                   head_mask(tail))
                                              : _mm256_setzero_ps();
        }
    for (size_t k = 0; k < kc; k++) {
        const char *ak = a + (ptrdiff_t)k * cs, *wk = w + k * nr_bytes;
FL_UNROLL
        for (size_t l = 0; l < nr_bytes; l += 64)
            _mm_prefetch(wk + FL_PREFETCH_BYTES + l, _MM_HINT_T0);
        __m256 ai[MR];
FL_UNROLL
        for (size_t i = 0; i < m; i++)
            ai[i] = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            const __m256 wv = vload(dt, wk + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vfma(dt, ai[i], wv, acc[i][v]);
        }
    }
    if (bias)
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            const __m256 bv = vload(dt, bias + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vadd(dt, acc[i][v], bv);
        }
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            char *yv = y + i * ldy + v * VBYTES;
            if (v < full)
                vstore(dt, yv, acc[i][v]);
            else if (v == full && tail)
                _mm256_maskstore_ps((float *)yv, head_mask(tail), acc[i][v]);
        }
}

/* One instance per tile height the driver asks for (kernel.h: MR, then powers of two
 * below it); the x strides are constants in each of the two calls of ukernel, so each
 * x layout gets its own instances. */
INLINE void rows(const fl_dtype dt, size_t m, size_t kc, const char *a, const ptrdiff_t a_rs,
                 const ptrdiff_t a_cs, const char *w, char *y, size_t ldy, size_t n,
                 int first, const char *bias)
{
    switch (m) {
    case MR: tile(dt, MR, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile(dt, 2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile(dt, 1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}
_Static_assert(MR == 3, "one case per tile height above");

INLINE void ukernel(const fl_dtype dt, size_t kc, const void *a, ptrdiff_t a_rs,
                    ptrdiff_t a_cs, const void *w, void *y, size_t ldy, size_t m, size_t n,
                    int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows(dt, m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows(dt, m, kc, a, 1, MR, w, y, ldy, n, first, bias);
}

static AVX2 void avx2_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                          const void *w, void *y, size_t ldy, size_t m, size_t n,
                          int first, const void *bias)
{
    ukernel(FL_F32, kc, a, a_rs, a_cs, w, y, ldy, m, n, first, bias);
}

static AVX2 void avx2_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                          const void *w, void *y, size_t ldy, size_t m, size_t n,
                          int first, const void *bias)
{
    ukernel(FL_F64, kc, a, a_rs, a_cs, w, y, ldy, m, n, first, bias);
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const fl_isa fl_isa_avx2 = {
    "avx2", cpu_has_avx2,
    {{avx2_f32, MR, NV * 8, FL_AVX2_F32_KC, FL_AVX2_F32_MC, FL_AVX2_F32_NC},
     {avx2_f64, MR, NV * 4, FL_AVX2_F64_KC, FL_AVX2_F64_MC, FL_AVX2_F64_NC}},
};
#endif
