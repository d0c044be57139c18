/* AVX-512F micro-kernels (kernel.h contract). One FMA per k and element.
 *
 * As in avx2.c, one tile body serves float32 and float64 (vectors held as __m512 and
 * reinterpreted for doubles): MR rows x NV zmm, NR = NV * lanes. Per k step it keeps
 * MR*NV accumulators, the NV weight vectors and one broadcast x value live: 24 + 4 + 1 of
 * the 32 zmm. Edge columns: full vectors load and store plainly, the one partial vector
 * through a mask register, vectors wholly past n not at all. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"

#define AVX512 __attribute__((target("avx512f,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX512

enum { MR = FL_AVX512_MR, NV = FL_AVX512_NV, VBYTES = 64 };
_Static_assert(MR * NV + NV + 1 <= 32, "accumulators, weight vectors and a broadcast in 32 zmm");

INLINE __m512 vload(fl_dtype dt, const char *p)
{
    (void)dt;
    return _mm512_loadu_ps((const float *)p);
}

INLINE void vstore(fl_dtype dt, char *p, __m512 v)
{
    (void)dt;
    _mm512_storeu_ps((float *)p, v);
}

/* The first `bytes` (< VBYTES) of a vector at p; the rest zero, not read. */
INLINE __m512 vload_head(fl_dtype dt, const char *p, size_t bytes)
{
    return dt == FL_F32
        ? _mm512_maskz_loadu_ps((__mmask16)((1u << bytes / 4) - 1), (const float *)p)
        : _mm512_castpd_ps(_mm512_maskz_loadu_pd((__mmask8)((1u << bytes / 8) - 1),
                                                 (const double *)p));
}

/* Stores the first `bytes` (< VBYTES) of v at p, nothing past them. */
INLINE void vstore_head(fl_dtype dt, char *p, size_t bytes, __m512 v)
{
    if (dt == FL_F32)
        _mm512_mask_storeu_ps((float *)p, (__mmask16)((1u << bytes / 4) - 1), v);
    else
        _mm512_mask_storeu_pd((double *)p, (__mmask8)((1u << bytes / 8) - 1),
                              _mm512_castps_pd(v));
}

INLINE __m512 vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F32 ? _mm512_set1_ps(*(const float *)p)
                        : _mm512_castpd_ps(_mm512_set1_pd(*(const double *)p));
}

/* a * b + c, one rounding. */
INLINE __m512 vfma(fl_dtype dt, __m512 a, __m512 b, __m512 c)
{
    return dt == FL_F32 ? _mm512_fmadd_ps(a, b, c)
                        : _mm512_castpd_ps(_mm512_fmadd_pd(_mm512_castps_pd(a),
                                                           _mm512_castps_pd(b),
                                                           _mm512_castps_pd(c)));
}

INLINE __m512 vadd(fl_dtype dt, __m512 a, __m512 b)
{
    return dt == FL_F32 ? _mm512_add_ps(a, b)
                        : _mm512_castpd_ps(_mm512_add_pd(_mm512_castps_pd(a),
                                                         _mm512_castps_pd(b)));
}

/* `m` and the x strides are compile-time constants at every call site below, so the
 * loops over rows and vectors unroll completely and x addresses fold into the loads. */
INLINE void tile(const fl_dtype dt, const size_t m, size_t kc, const char *a,
                 const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w, char *y,
                 size_t ldy, size_t n, int first, const char *bias)
{
    const size_t size = dt == FL_F32 ? 4 : 8, nr_bytes = NV * VBYTES;
    const size_t full = n * size / VBYTES, tail = n * size % VBYTES; /* vectors, bytes */
    const ptrdiff_t rs = a_rs * (ptrdiff_t)size, cs = a_cs * (ptrdiff_t)size;
    ldy *= size;
    __m512 acc[MR][NV];
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            const char *yv = y + i * ldy + v * VBYTES;
            acc[i][v] = first                ? _mm512_setzero_ps()
                        : v < full           ? vload(dt, yv)
                        : v == full && tail  ? vload_head(dt, yv, tail)
                                             : _mm512_setzero_ps();
        }
    for (size_t k = 0; k < kc; k++) {
        const char *ak = a + (ptrdiff_t)k * cs, *wk = w + k * nr_bytes;
FL_UNROLL
        for (size_t l = 0; l < nr_bytes; l += 64)
            _mm_prefetch(wk + FL_PREFETCH_BYTES + l, _MM_HINT_T0);
        __m512 wv[NV];
FL_UNROLL
        for (size_t v = 0; v < NV; v++)
            wv[v] = vload(dt, wk + v * VBYTES);
FL_UNROLL
        for (size_t i = 0; i < m; i++) {
            const __m512 ai = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
            for (size_t v = 0; v < NV; v++)
                acc[i][v] = vfma(dt, ai, wv[v], acc[i][v]);
        }
    }
    if (bias)
FL_UNROLL
        for (size_t v = 0; v < NV; v++) {
            const __m512 bv = vload(dt, bias + v * VBYTES);
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
                vstore_head(dt, yv, tail, acc[i][v]);
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
    case 4: tile(dt, 4, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile(dt, 2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile(dt, 1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}
_Static_assert(MR > 4 && MR < 8, "one case per tile height above");

INLINE void ukernel(const fl_dtype dt, size_t kc, const void *a, ptrdiff_t a_rs,
                    ptrdiff_t a_cs, const void *w, void *y, size_t ldy, size_t m, size_t n,
                    int first, const void *bias)
{
    if (a_cs == 1)  /* x in place */
        rows(dt, m, kc, a, a_rs, 1, w, y, ldy, n, first, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows(dt, m, kc, a, 1, MR, w, y, ldy, n, first, bias);
}

static AVX512 void avx512_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                              const void *w, void *y, size_t ldy, size_t m, size_t n,
                              int first, const void *bias)
{
    ukernel(FL_F32, kc, a, a_rs, a_cs, w, y, ldy, m, n, first, bias);
}

static AVX512 void avx512_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                              const void *w, void *y, size_t ldy, size_t m, size_t n,
                              int first, const void *bias)
{
    ukernel(FL_F64, kc, a, a_rs, a_cs, w, y, ldy, m, n, first, bias);
}

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

const fl_isa fl_isa_avx512 = {
    "avx512", cpu_has_avx512,
    {{avx512_f32, MR, NV * 16, FL_AVX512_F32_KC, FL_AVX512_F32_MC, FL_AVX512_F32_NC},
     {avx512_f64, MR, NV * 8, FL_AVX512_F64_KC, FL_AVX512_F64_MC, FL_AVX512_F64_NC}},
};
#endif
