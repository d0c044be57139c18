/* AVX-512F micro-kernels (kernel.h contract). One FMA per k and element.
 *
 * As in avx2.c, one tile body serves every weight format (vectors held as __m512,
 * reinterpreted for doubles; compressed weights widened exactly to float32 in
 * registers): MR rows x NV zmm, NR = NV * lanes. Per k step it keeps MR*NV accumulators,
 * the NV weight vectors and one broadcast x value live: 24 + 4 + 1 of the 32 zmm, which
 * leaves three for widening weights. Edge columns: full vectors load and store plainly,
 * the one partial vector through a mask register, vectors wholly past n not at all. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"
#define FL_VBYTES 64  /* activations: one zmm per vector */
#include "../activation.h"
#include "../rowops.h"

#define AVX512 __attribute__((target("avx512f,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX512

enum { MR = FL_AVX512_MR, NV = FL_AVX512_NV, VBYTES = 64 };
_Static_assert(MR * NV + NV + 1 <= 32, "accumulators, weight vectors and a broadcast in 32 zmm");
_Static_assert(NV % 2 == 0, "int4 rows: the high nibbles fill the second half of the vectors");

INLINE __m512 vload(const char *p) { return _mm512_loadu_ps((const float *)p); }

INLINE void vstore(char *p, __m512 v) { _mm512_storeu_ps((float *)p, v); }

/* The first `bytes` (< VBYTES) of a vector at p; the rest zero, not read. */
INLINE __m512 vload_head(fl_dtype dt, const char *p, size_t bytes)
{
    return dt == FL_F64
        ? _mm512_castpd_ps(_mm512_maskz_loadu_pd((__mmask8)((1u << bytes / 8) - 1),
                                                 (const double *)p))
        : _mm512_maskz_loadu_ps((__mmask16)((1u << bytes / 4) - 1), (const float *)p);
}

/* Stores the first `bytes` (< VBYTES) of v at p, nothing past them. */
INLINE void vstore_head(fl_dtype dt, char *p, size_t bytes, __m512 v)
{
    if (dt == FL_F64)
        _mm512_mask_storeu_pd((double *)p, (__mmask8)((1u << bytes / 8) - 1),
                              _mm512_castps_pd(v));
    else
        _mm512_mask_storeu_ps((float *)p, (__mmask16)((1u << bytes / 4) - 1), v);
}

INLINE __m512 vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_set1_pd(*(const double *)p))
                        : _mm512_set1_ps(*(const float *)p);
}

/* a * b + c, one rounding. */
INLINE __m512 vfma(fl_dtype dt, __m512 a, __m512 b, __m512 c)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_fmadd_pd(_mm512_castps_pd(a),
                                                           _mm512_castps_pd(b),
                                                           _mm512_castps_pd(c)))
                        : _mm512_fmadd_ps(a, b, c);
}

INLINE __m512 vadd(fl_dtype dt, __m512 a, __m512 b)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_add_pd(_mm512_castps_pd(a),
                                                         _mm512_castps_pd(b)))
                        : _mm512_add_ps(a, b);
}

/* Bytes of one k row of a packed panel (int4: of its nibbles). */
INLINE size_t row_bytes(fl_dtype dt)
{
    switch (dt) {
    case FL_F32: case FL_F64: return NV * VBYTES;
    case FL_BF16: case FL_F16: return NV * VBYTES / 2;
    case FL_I8: return NV * VBYTES / 4;
    default: return NV * VBYTES / 8;
    }
}

/* Vector v of the weights W(k, .) in the k row at wk, widened exactly (kernel.h);
 * sg: the scales of the row's int4 group. */
INLINE __m512 weight(fl_dtype dt, const char *wk, size_t v, const char *sg)
{
    const __m256i *half = (const __m256i *)(wk + v * VBYTES / 2);
    const __m128i *quarter = (const __m128i *)(wk + v * VBYTES / 4);
    switch (dt) {
    case FL_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(half)), 16));
    case FL_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256(half));
    case FL_I8:
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(quarter)));
    case FL_I4: {
        /* Vectors v and v + NV/2 share bytes: low nibbles, then high ones. A nibble
         * indexes the table of the 16 values it stands for (vpermps reads the low four
         * bits of each lane): one instruction instead of two shifts and a conversion. */
        const __m512i bytes = _mm512_cvtepu8_epi32(
            _mm_loadu_si128((const __m128i *)(wk + v % (NV / 2) * (VBYTES / 4))));
        const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7,
                                             -8, -7, -6, -5, -4, -3, -2, -1);
        const __m512i nibbles = v < NV / 2 ? bytes : _mm512_srli_epi32(bytes, 4);
        return _mm512_mul_ps(_mm512_permutexvar_ps(nibbles, values), vload(sg + v * VBYTES));
    }
    default:
        return vload(wk + v * VBYTES);
    }
}

/* k rows [0, kr) of x (at a, strides rs and cs in bytes) and of the weights (at w,
 * row_bytes apart; sg: the scales of their int4 group) accumulated into acc. */
INLINE void steps(const fl_dtype dt, const size_t m, const size_t np, size_t kr,
                  const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                  ptrdiff_t w_next, const char *sg, __m512 acc[MR][2 * NV])
{
    const size_t rb = row_bytes(dt);
    for (size_t k = 0; k < kr; k++) {
        const char *ak = a + (ptrdiff_t)k * cs, *wk = w + k * rb;
        /* int4: an opaque step that depends on k, so that the group's scales are read
         * from L1 at each use: hoisted out of the loop, NV more registers would push out
         * accumulators. (Not a volatile asm: clang then keeps the accumulators in
         * memory across it.) */
        if (dt == FL_I4)
            __asm__("" : "+r"(sg) : "r"(k));
FL_UNROLL
        for (size_t l = 0; l < np * rb; l += 64)
            _mm_prefetch(wk + l / rb * w_next + FL_PREFETCH_BYTES + l % rb, _MM_HINT_T0);
        __m512 wv[2 * NV];
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++)
            wv[v] = weight(dt, wk + v / NV * w_next, v % NV, sg + v / NV * w_next);
FL_UNROLL
        for (size_t i = 0; i < m; i++) {
            const __m512 ai = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
            for (size_t v = 0; v < np * NV; v++)
                acc[i][v] = vfma(dt, ai, wv[v], acc[i][v]);
        }
    }
}

/* `dt`, `m` and the x strides are compile-time constants at every call site below, so
 * the loops over rows and vectors unroll completely and x addresses fold into the loads. */
INLINE void tile(const fl_dtype dt, const size_t m, const size_t np, size_t kc,
                 const char *a, const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w,
                 ptrdiff_t w_next, size_t group, char *y, size_t ldy, size_t n, int first,
                 const char *scale, const char *bias)
{
    const size_t size = dt == FL_F64 ? 8 : 4;
    const size_t full = n * size / VBYTES, tail = n * size % VBYTES; /* vectors, bytes */
    const ptrdiff_t rs = a_rs * (ptrdiff_t)size, cs = a_cs * (ptrdiff_t)size;
    ldy *= size;
    __m512 acc[MR][2 * NV];  /* np = 2 only for m = 1 */
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            const char *yv = y + i * ldy + v * VBYTES;
            acc[i][v] = first                ? _mm512_setzero_ps()
                        : v < full           ? vload(yv)
                        : v == full && tail  ? vload_head(dt, yv, tail)
                                             : _mm512_setzero_ps();
        }
    if (dt == FL_I4)  /* groups of k rows, each led by its NR scales */
        for (size_t k0 = 0; k0 < kc; k0 += group, w += NV * VBYTES + group * row_bytes(dt))
            steps(dt, m, np, kc - k0 < group ? kc - k0 : group, a + (ptrdiff_t)k0 * cs, rs,
                  cs, w + NV * VBYTES, w_next, w, acc);
    else
        steps(dt, m, np, kc, a, rs, cs, w, w_next, w, acc);  /* sg unused */
    if (dt != FL_F64 && scale)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            const __m512 sv = vload(scale + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm512_mul_ps(acc[i][v], sv);
        }
    if (bias)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            const __m512 bv = vload(bias + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vadd(dt, acc[i][v], bv);
        }
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            char *yv = y + i * ldy + v * VBYTES;
            if (v < full)
                vstore(yv, acc[i][v]);
            else if (v == full && tail)
                vstore_head(dt, yv, tail, acc[i][v]);
        }
}

/* kc k rows of a packed panel widened into dst (kc x NR floats): the values tile()
 * computes with, for the float32 kernel to reuse across many rows (kernel.h). */
INLINE void widen(const fl_dtype dt, size_t kc, const char *w, size_t group, char *dst)
{
    const size_t rb = row_bytes(dt);
    const size_t run = dt == FL_I4 ? group : kc, lead = dt == FL_I4 ? NV * VBYTES : 0;
    for (size_t k0 = 0; k0 < kc; k0 += run) {
        const char *sg = w, *wr = w + lead;
        const size_t k1 = kc - k0 < run ? kc - k0 : run;
        for (size_t k = 0; k < k1; k++, dst += NV * VBYTES) {
            const char *wk = wr + k * rb;
FL_UNROLL
            for (size_t l = 0; l < rb; l += 64)
                _mm_prefetch(wk + FL_PREFETCH_BYTES + l, _MM_HINT_T0);
FL_UNROLL
            for (size_t v = 0; v < NV; v++)
                vstore(dst + v * VBYTES, weight(dt, wk, v, sg));
        }
        w = wr + run * rb;
    }
}

/* One instance per tile height the driver asks for (kernel.h: MR, then powers of two
 * below it); the x strides are constants in each of the two calls of ukernel, so each
 * x layout gets its own instances. */
INLINE void rows(const fl_dtype dt, size_t m, size_t kc, const char *a, const ptrdiff_t a_rs,
                 const ptrdiff_t a_cs, const char *w, size_t group, char *y, size_t ldy,
                 size_t n, int first, const char *scale, const char *bias)
{
    switch (m) {
    case MR: tile(dt, MR, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    case 4: tile(dt, 4, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    case 2: tile(dt, 2, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    default: tile(dt, 1, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    }
}
_Static_assert(MR > 4 && MR < 8, "one case per tile height above");

INLINE void ukernel(const fl_dtype dt, size_t kc, const void *a, ptrdiff_t a_rs,
                    ptrdiff_t a_cs, const void *w, ptrdiff_t w_next, size_t group, void *y,
                    size_t ldy, size_t m, size_t n, int first, const float *scale,
                    const void *bias)
{
    if (n > NV * VBYTES / (dt == FL_F64 ? 8 : 4))  /* one row of x in place, two panels */
        tile(dt, 1, 2, kc, a, 0, 1, w, w_next, group, y, ldy, n, first, (const char *)scale,
             bias);
    else if (a_cs == 1)  /* x in place */
        rows(dt, m, kc, a, a_rs, 1, w, group, y, ldy, n, first, (const char *)scale, bias);
    else                 /* packed x: a_rs == 1, a_cs == MR */
        rows(dt, m, kc, a, 1, MR, w, group, y, ldy, n, first, (const char *)scale, bias);
}

/* The entry points, one per weight format. */
#define ARGS size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs, const void *w, \
             ptrdiff_t w_next, size_t group, void *y, size_t ldy, size_t m, size_t n, \
             int first, const float *scale, const void *bias
#define PASS kc, a, a_rs, a_cs, w, w_next, group, y, ldy, m, n, first, scale, bias
static AVX512 void avx512_f32(ARGS) { ukernel(FL_F32, PASS); }
static AVX512 void avx512_f64(ARGS) { ukernel(FL_F64, PASS); }
static AVX512 void avx512_bf16(ARGS) { ukernel(FL_BF16, PASS); }
static AVX512 void avx512_f16(ARGS) { ukernel(FL_F16, PASS); }
static AVX512 void avx512_i8(ARGS) { ukernel(FL_I8, PASS); }
#if FL_INT4_TILES
static AVX512 void avx512_i4(ARGS) { ukernel(FL_I4, PASS); }
#else
#define avx512_i4 NULL
#endif
#undef ARGS
#undef PASS
static AVX512 void avx512_widen_bf16(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_BF16, kc, w, group, (char *)dst);
}
static AVX512 void avx512_widen_f16(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_F16, kc, w, group, (char *)dst);
}
static AVX512 void avx512_widen_i8(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I8, kc, w, group, (char *)dst);
}
static AVX512 void avx512_widen_i4(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I4, kc, w, group, (char *)dst);
}

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* The activations (activation.h) in AVX-512 (one zmm per 16 floats). */
static AVX512 void activate(const fl_epilogue *ep, fl_dtype dt, void *y, size_t ldy, size_t m,
                            size_t n)
{
    fl_activate_body(ep, dt, y, ldy, m, n);
}

/* The row-wise steps (rowops.h) in the same vectors. */
static AVX512 void row(const fl_step *st, fl_dtype dt, size_t n, const char *x, char *y)
{
    fl_row_body(st, dt, n, x, y);
}

#define F32_BLOCKS MR, NV * 16, FL_AVX512_F32_KC, FL_AVX512_F32_MC, FL_AVX512_F32_NC
const fl_isa fl_isa_avx512 = {
    "avx512", cpu_has_avx512, activate, row,
    {[FL_F32] = {avx512_f32, NULL, F32_BLOCKS, 1},
     [FL_F64] = {avx512_f64, NULL, MR, NV * 8, FL_AVX512_F64_KC, FL_AVX512_F64_MC,
                  FL_AVX512_F64_NC, 1},
     [FL_BF16] = {avx512_bf16, avx512_widen_bf16, F32_BLOCKS, 1},
     [FL_F16] = {avx512_f16, avx512_widen_f16, F32_BLOCKS, 1},
     [FL_I8] = {avx512_i8, avx512_widen_i8, F32_BLOCKS, 1},
     [FL_I4] = {avx512_i4, avx512_widen_i4, F32_BLOCKS, 1}},
};
#undef F32_BLOCKS
#endif
