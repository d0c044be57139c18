/* AVX2 + FMA micro-kernels (kernel.h contract) for x86-64 CPUs without AVX-512 (Haswell
 * and later, Zen 1-3, and CPUs or VMs that hide AVX-512). One FMA per k and element.
 *
 * One tile body serves every weight format: vectors are held as __m256 and reinterpreted
 * (free) for double arithmetic, and compressed weights are widened exactly to float32 in
 * registers (bfloat16 by a shift, float16 by F16C, int8 and int4 by an integer
 * conversion, int4 then times its group's scale, which is exact). The tile is MR rows x
 * NV ymm (NR = NV * lanes). Per k step it keeps MR*NV accumulators, the MR broadcast x
 * values and one weight vector live: 12 + 3 + 1 = 16 ymm, all there are; a weight is
 * widened in the register it is used from. The row and vector loops are unrolled
 * (FL_UNROLL, kernel.h) so that the accumulators can live in registers;
 * tests/test_disassembly.py checks that they do. Edge columns are handled outside the k
 * loop: full vectors load and store plainly (masked stores are microcoded on AMD), the
 * one partial vector with a mask, vectors wholly past n not at all. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#include "../kernel.h"
#include "../blocking.h"
#define FL_VBYTES 32  /* activations: one ymm per vector */
#include "../activation.h"
#include "../rowops.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) AVX2

enum { MR = FL_AVX2_MR, NV = FL_AVX2_NV, VBYTES = 32 };
_Static_assert(MR * NV + MR + 1 <= 16, "accumulators, broadcasts and a weight vector in 16 ymm");
_Static_assert(NV % 2 == 0, "int4 rows: the high nibbles fill the second half of the vectors");

INLINE __m256 vload(const char *p) { return _mm256_loadu_ps((const float *)p); }

INLINE void vstore(char *p, __m256 v) { _mm256_storeu_ps((float *)p, v); }

INLINE __m256 vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_broadcast_sd((const double *)p))
                        : _mm256_broadcast_ss((const float *)p);
}

/* a * b + c, one rounding. */
INLINE __m256 vfma(fl_dtype dt, __m256 a, __m256 b, __m256 c)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_fmadd_pd(_mm256_castps_pd(a),
                                                           _mm256_castps_pd(b),
                                                           _mm256_castps_pd(c)))
                        : _mm256_fmadd_ps(a, b, c);
}

INLINE __m256 vadd(fl_dtype dt, __m256 a, __m256 b)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_add_pd(_mm256_castps_pd(a),
                                                         _mm256_castps_pd(b)))
                        : _mm256_add_ps(a, b);
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
 * sg: the scales of the row's int4 group; tight: no ymm to spare (see int4). */
INLINE __m256 weight(fl_dtype dt, const char *wk, size_t v, const char *sg, int tight)
{
    const __m128i *half = (const __m128i *)(wk + v * VBYTES / 2);
    const __m128i *quarter = (const __m128i *)(wk + v * VBYTES / 4);
    switch (dt) {
    case FL_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(half)), 16));
    case FL_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128(half));
    case FL_I8:
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(quarter)));
    case FL_I4: {
        /* Vectors v and v + NV/2 share bytes: low nibbles, then high ones. Shifting the
         * nibble to the top and back sign-extends it. In a tight tile the bytes are
         * loaded anew for each (an opaque pointer): kept from v to v + NV/2, they would
         * take a 17th ymm. */
        const char *wb = wk + v % (NV / 2) * (VBYTES / 4);
        if (tight)
            __asm__("" : "+r"(wb) : "r"(v));
        const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)wb));
        const __m256i q = _mm256_srai_epi32(
            _mm256_slli_epi32(bytes, v < NV / 2 ? 28 : 24), 28);
        return _mm256_mul_ps(_mm256_cvtepi32_ps(q), vload(sg + v * VBYTES));
    }
    default:
        return vload(wk + v * VBYTES);
    }
}

/* The first `bytes` (< VBYTES, a multiple of 4) of a vector, as a mask of 32-bit lanes;
 * its top bits serve as a mask of 64-bit lanes too. */
INLINE __m256i head_mask(size_t bytes)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(bytes / 4)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* k rows [0, kr) of x (at a, strides rs and cs in bytes) and of the weights (at w,
 * row_bytes apart; sg: the scales of their int4 group) accumulated into acc. */
INLINE void steps(const fl_dtype dt, const size_t m, const size_t np, size_t kr,
                  const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                  ptrdiff_t w_next, const char *sg, __m256 acc[MR][2 * NV])
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
        __m256 ai[MR];
FL_UNROLL
        for (size_t i = 0; i < m; i++)
            ai[i] = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            const __m256 wv = weight(dt, wk + v / NV * w_next, v % NV, sg + v / NV * w_next,
                                    m == MR);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vfma(dt, ai[i], wv, acc[i][v]);
        }
    }
}

/* `dt`, `m` and the x strides are compile-time constants at every call site below, so
 * the loops over rows and vectors unroll completely. */
INLINE void tile(const fl_dtype dt, const size_t m, const size_t np, size_t kc,
                 const char *a, const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w,
                 ptrdiff_t w_next, size_t group, char *y, size_t ldy, size_t n, int first,
                 const char *scale, const char *bias)
{
    const size_t size = dt == FL_F64 ? 8 : 4;
    const size_t full = n * size / VBYTES, tail = n * size % VBYTES; /* vectors, bytes */
    const ptrdiff_t rs = a_rs * (ptrdiff_t)size, cs = a_cs * (ptrdiff_t)size;
    ldy *= size;
    __m256 acc[MR][2 * NV];  /* np = 2 only for m = 1 */
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            char *yv = y + i * ldy + v * VBYTES;
            acc[i][v] = first                 ? _mm256_setzero_ps()
                        : v < full            ? vload(yv)
                        : v == full && tail   ? _mm256_maskload_ps((const float *)yv,
                                                                   head_mask(tail))
                                              : _mm256_setzero_ps();
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
            const __m256 sv = vload(scale + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = _mm256_mul_ps(acc[i][v], sv);
        }
    if (bias)
FL_UNROLL
        for (size_t v = 0; v < np * NV; v++) {
            const __m256 bv = vload(bias + v * VBYTES);
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
                _mm256_maskstore_ps((float *)yv, head_mask(tail), acc[i][v]);
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
                vstore(dst + v * VBYTES, weight(dt, wk, v, sg, 0));
        }
        w = wr + run * rb;
    }
}

/* Rows per tile of compressed weights. A widened weight takes the register that a float
 * one saves as an FMA memory operand, so 3 rows need all 16 ymm: GCC allocates them,
 * clang 14 spills an accumulator (tests/test_disassembly.py); 2 rows per tile leave it
 * room, at the cost of widening the weights once more per 3 rows. */
#ifdef __clang__
enum { WIDENED_ROWS = 2 };
#else
enum { WIDENED_ROWS = MR };
#endif

/* One instance per tile height the driver asks for (kernel.h: MR, then powers of two
 * below it); the x strides are constants in each of the two calls of ukernel, so each
 * x layout gets its own instances. */
INLINE void rows(const fl_dtype dt, size_t m, size_t kc, const char *a, const ptrdiff_t a_rs,
                 const ptrdiff_t a_cs, const char *w, size_t group, char *y, size_t ldy,
                 size_t n, int first, const char *scale, const char *bias)
{
    const int widened = dt != FL_F32 && dt != FL_F64;
    if (m == MR && widened && (size_t)WIDENED_ROWS < MR) {  /* two tiles, same bits */
        const size_t h = WIDENED_ROWS;
        tile(dt, h, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias);
        tile(dt, MR - h, 1, kc, a + (ptrdiff_t)h * a_rs * 4, a_rs, a_cs, w, 0, group,
             y + h * ldy * 4, ldy, n, first, scale, bias);
        return;
    }
    switch (m) {
    case MR: tile(dt, MR, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    case 2: tile(dt, 2, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    default: tile(dt, 1, 1, kc, a, a_rs, a_cs, w, 0, group, y, ldy, n, first, scale, bias); break;
    }
}
_Static_assert(MR == 3, "one case per tile height above");

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
static AVX2 void avx2_f32(ARGS) { ukernel(FL_F32, PASS); }
static AVX2 void avx2_f64(ARGS) { ukernel(FL_F64, PASS); }
static AVX2 void avx2_bf16(ARGS) { ukernel(FL_BF16, PASS); }
static AVX2 void avx2_f16(ARGS) { ukernel(FL_F16, PASS); }
static AVX2 void avx2_i8(ARGS) { ukernel(FL_I8, PASS); }
#if FL_INT4_TILES
static AVX2 void avx2_i4(ARGS) { ukernel(FL_I4, PASS); }
#else
#define avx2_i4 NULL
#endif
#undef ARGS
#undef PASS
static AVX2 void avx2_widen_bf16(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_BF16, kc, w, group, (char *)dst);
}
static AVX2 void avx2_widen_f16(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_F16, kc, w, group, (char *)dst);
}
static AVX2 void avx2_widen_i8(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I8, kc, w, group, (char *)dst);
}
static AVX2 void avx2_widen_i4(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I4, kc, w, group, (char *)dst);
}

static int cpu_has_avx2(void)
{
    unsigned a, b, c, d;  /* F16C (float16 weights) from CPUID: clang has no builtin name */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
           && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

/* The activations (activation.h) in AVX2 (two ymm per 16 floats). */
static AVX2 void activate(const fl_epilogue *ep, fl_dtype dt, void *y, size_t ldy, size_t m,
                          size_t n)
{
    fl_activate_body(ep, dt, y, ldy, m, n);
}

/* The row-wise steps (rowops.h) in the same vectors. */
static AVX2 void row(const fl_step *st, fl_dtype dt, size_t n, const char *x, char *y)
{
    fl_row_body(st, dt, n, x, y);
}

#define F32_BLOCKS MR, NV * 8, FL_AVX2_F32_KC, FL_AVX2_F32_MC, FL_AVX2_F32_NC
const fl_isa fl_isa_avx2 = {
    "avx2", cpu_has_avx2, activate, row,
    {[FL_F32] = {avx2_f32, NULL, F32_BLOCKS, 1},
     [FL_F64] = {avx2_f64, NULL, MR, NV * 4, FL_AVX2_F64_KC, FL_AVX2_F64_MC,
                  FL_AVX2_F64_NC, 1},
     [FL_BF16] = {avx2_bf16, avx2_widen_bf16, F32_BLOCKS, 1},
     [FL_F16] = {avx2_f16, avx2_widen_f16, F32_BLOCKS, 1},
     [FL_I8] = {avx2_i8, avx2_widen_i8, F32_BLOCKS, 1},
     [FL_I4] = {avx2_i4, avx2_widen_i4, F32_BLOCKS, 1, FL_AVX2_I4_WIDEN_ROWS}},
};
#undef F32_BLOCKS
#endif
