/* AVX-512F micro-kernels (kernel.h contract): what this ISA does its own way; the tile,
 * the entry points and the ISA table are kernels/tile.h's. One FMA per k and element.
 *
 * The tile is MR rows x NV zmm (NR = 64 floats, 32 doubles); doubles are the same zmm
 * reinterpreted, compressed weights are widened exactly to float32 in registers. Per k
 * step it keeps MR*NV accumulators, the NV weight vectors and one broadcast x value live:
 * 24 + 4 + 1 of the 32 zmm, which leaves three for widening weights. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>
#include "../kernel.h"
#include "../blocking.h"

/* kernels/avx512_vnni.c includes this file with FL_VNNI set: the same kernels plus the
 * integer one on vpdpbusd, as the ISA avx512_vnni. AVX-512BW (every AVX-512 CPU but the
 * Xeon Phi) gives the integer kernels their 512-bit byte and word instructions. */
#ifdef FL_VNNI
#define FL_ISA_ID avx512_vnni
#define FL_TARGET __attribute__((target("avx512f,avx512bw,fma,avx512vnni")))
#else
#define FL_ISA_ID avx512
#define FL_TARGET __attribute__((target("avx512f,avx512bw,fma")))
#endif
#define INLINE static inline __attribute__((always_inline)) FL_TARGET
typedef __m512 vec;
typedef __m512i ivec;

/* 6 rows x 4 zmm. Four zmm per row, not two: a single row (M = 1, weights streamed at
 * memory speed) then still has 4 independent FMA chains to cover the FMA latency, and
 * the tile needs only 10 loads per 24 FMAs. */
enum { MR = 6, NV = 4, VBYTES = 64, WIDENED_ROWS = MR, TWO_PANELS = 1 };
_Static_assert(MR * NV + NV + 1 <= 32, "accumulators, weight vectors and a broadcast in 32 zmm");

/* KC is far past an L1-sized choice, on measurement: the tile's few loads per FMA are
 * fed from L2 (1-2 MiB per core) with room to spare, so the KC x NR weight slice
 * (128 KiB) streams from L2, and a long KC makes the per-block costs (reloading y,
 * packing x) vanish. Zen 4, 2 threads, 2048^3: 14 x 32 tiles gave 171 GFLOP/s at
 * KC = 128 and 214 at 1024; 6 x 64 tiles give 204 at KC = 256 and 215 at 512, and
 * 1 x 768 x 3072 runs at 180 GB/s instead of 110-170 (of ~190 from L3). MC keeps the
 * MC x KC block of packed x (288 KiB) in L2 beside the weight slice; NC a 16 MiB weight
 * slab in L3. Compressed formats share float32's blocks (they run on its kernel for
 * large batches) and widen in registers at every M up to FL_DIRECT_X_MAX_BYTES of x
 * (I4_WIDEN_ROWS 0: an int4 weight costs one table lookup here). */
enum {
    F32_KC = 512, F32_MC = 144, F32_NC = 8192,
    F64_KC = 512, F64_MC = 72, F64_NC = 4096,
    I4_WIDEN_ROWS = 0,
};

INLINE vec vzero(void) { return _mm512_setzero_ps(); }

INLINE vec vload(const char *p) { return _mm512_loadu_ps((const float *)p); }

INLINE void vstore(char *p, vec v) { _mm512_storeu_ps((float *)p, v); }

/* The first `bytes` (< VBYTES) of a vector at p; the rest zero, not read. */
INLINE vec vload_head(fl_dtype dt, const char *p, size_t bytes)
{
    return dt == FL_F64
        ? _mm512_castpd_ps(_mm512_maskz_loadu_pd((__mmask8)((1u << bytes / 8) - 1),
                                                 (const double *)p))
        : _mm512_maskz_loadu_ps((__mmask16)((1u << bytes / 4) - 1), (const float *)p);
}

/* Stores the first `bytes` (< VBYTES) of v at p, nothing past them. */
INLINE void vstore_head(fl_dtype dt, char *p, size_t bytes, vec v)
{
    if (dt == FL_F64)
        _mm512_mask_storeu_pd((double *)p, (__mmask8)((1u << bytes / 8) - 1),
                              _mm512_castps_pd(v));
    else
        _mm512_mask_storeu_ps((float *)p, (__mmask16)((1u << bytes / 4) - 1), v);
}

INLINE vec vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_set1_pd(*(const double *)p))
                        : _mm512_set1_ps(*(const float *)p);
}

/* a * b + c, one rounding. */
INLINE vec vfma(fl_dtype dt, vec a, vec b, vec c)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_fmadd_pd(_mm512_castps_pd(a),
                                                           _mm512_castps_pd(b),
                                                           _mm512_castps_pd(c)))
                        : _mm512_fmadd_ps(a, b, c);
}

INLINE vec vadd(fl_dtype dt, vec a, vec b)
{
    return dt == FL_F64 ? _mm512_castpd_ps(_mm512_add_pd(_mm512_castps_pd(a),
                                                         _mm512_castps_pd(b)))
                        : _mm512_add_ps(a, b);
}

/* v, in a register here: without this GCC carries float64 accumulators out of the k
 * loop in their float32 guise and spills them (tests/test_disassembly.py). */
INLINE vec vreg(fl_dtype dt, vec v)
{
    if (dt == FL_F64)
        __asm__("" : "+v"(v));
    return v;
}

INLINE vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }

INLINE vec weight(fl_dtype dt, const char *wk, size_t v, const char *sg, int tight)
{
    (void)tight;  /* three zmm to spare */
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

INLINE size_t row_bytes(fl_dtype dt);  /* tile.h */
INLINE size_t tile_row_bytes(fl_dtype dt, size_t nv);

/* The NV (2 NV over two panels) weight vectors of a k step first, then one broadcast
 * per row: the weights take NV registers, the broadcasts one. */
INLINE void steps(const fl_dtype dt, const size_t m, const size_t nv, size_t kr,
                  const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                  ptrdiff_t w_next, size_t ahead, const char *sg, vec acc[MR][2 * NV])
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
        if (ahead)  /* a constant in each k loop (tile.h's steps_at) */
FL_UNROLL
            for (size_t l = 0; l < tile_row_bytes(dt, nv); l += 64)
                _mm_prefetch(wk + l / rb * w_next + ahead + l % rb, _MM_HINT_T0);
        vec wv[2 * NV];
FL_UNROLL
        for (size_t v = 0; v < nv; v++)
            wv[v] = weight(dt, wk + v / NV * w_next, v % NV, sg + v / NV * w_next, 0);
FL_UNROLL
        for (size_t i = 0; i < m; i++) {
            const vec ai = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
            for (size_t v = 0; v < nv; v++)
                acc[i][v] = vfma(dt, ai, wv[v], acc[i][v]);
        }
    }
}

/* Integer activations (qtile.h): 6 rows x 4 zmm of int32 sums (64 columns), as the
 * float tile: 24 sums, 4 weight vectors and a broadcast (and the product of vpmaddwd)
 * in 32 zmm. With VNNI, one vpdpbusd multiplies 4 unsigned bytes of x (q + 128) by 4
 * signed bytes of weights and adds them to the sum, 64 products per instruction;
 * without, vpmaddwd multiplies 2 int16 pairs (weights sign-extended on load) and vpaddd
 * adds them, 32 per two instructions. */
#ifdef FL_VNNI
enum { QMR = 6, QNV = 4, QK = 4, QX = 1, QSHIFT = 128 };
#else
enum { QMR = 6, QNV = 4, QK = 2, QX = 2, QSHIFT = 0 };
#endif
_Static_assert(QMR * QNV + QNV + 2 <= 32, "sums, weight vectors, broadcast, product");

INLINE ivec izero(void) { return _mm512_setzero_si512(); }

INLINE ivec qbroadcast(const char *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

#ifdef FL_VNNI
INLINE ivec qweight(const char *wk, size_t v) { return _mm512_loadu_si512(wk + v * VBYTES); }

/* int4: 128 bytes a step, vectors 0, 1 in their low nibbles and 2, 3 in their high ones;
 * a nibble picks its signed byte from a table (vpshufb, per 16-byte lane). */
INLINE ivec qweight4(const char *wk, size_t v)
{
    const __m512i bytes = _mm512_loadu_si512(wk + v % 2 * VBYTES);
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i nibbles = v < 2 ? _mm512_and_si512(bytes, low)
                                  : _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low);
    const __m512i values = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
    return _mm512_shuffle_epi8(values, nibbles);
}

/* Wraps modulo 2^32 (fastlinear.h says why that is exact); never vpdpbusds. */
INLINE ivec qdot(ivec acc, ivec xb, ivec wv) { return _mm512_dpbusd_epi32(acc, xb, wv); }

INLINE vec qfloat(ivec acc, const char *wsum)
{
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(wsum)));
}
#else
INLINE ivec qweight(const char *wk, size_t v)
{
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(wk + v * VBYTES / 2)));
}

/* int4: 64 bytes a step, vectors 0, 1 in their low nibbles and 2, 3 in their high ones,
 * sign-extended to int16 by shifts. */
INLINE ivec qweight4(const char *wk, size_t v)
{
    const __m512i w16 = _mm512_cvtepi8_epi16(
        _mm256_loadu_si256((const __m256i *)(wk + v % 2 * VBYTES / 2)));
    return v < 2 ? _mm512_srai_epi16(_mm512_slli_epi16(w16, 12), 12)
                 : _mm512_srai_epi16(w16, 4);
}

INLINE ivec qdot(ivec acc, ivec xb, ivec wv)
{
    return _mm512_add_epi32(acc, _mm512_madd_epi16(xb, wv));
}

INLINE vec qfloat(ivec acc, const char *wsum)
{
    (void)wsum;
    return _mm512_cvtepi32_ps(acc);
}
#endif

INLINE uint32_t qamax(size_t k, const float *x)
{
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
    __m512i m = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 16 <= k; i += 16)
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512(x + i), magnitude));
    if (i < k)
        m = _mm512_max_epu32(m, _mm512_and_si512(
            _mm512_maskz_loadu_epi32((__mmask16)((1u << (k - i)) - 1), x + i), magnitude));
    return _mm512_reduce_max_epu32(m);
}

INLINE void qround(size_t k, const float *x, float u, float r, char *q)
{
    const __m512 uv = _mm512_set1_ps(u), rv = _mm512_set1_ps(r);
    for (size_t i = 0; i < k; i += 16) {
        const __mmask16 in = k - i >= 16 ? 0xffff : (__mmask16)((1u << (k - i)) - 1);
        __m512 f = _mm512_maskz_loadu_ps(in, x + i);
        if (u != 1.0f)
            f = _mm512_mul_ps(f, uv);
        __m512i v = _mm512_cvt_roundps_epi32(_mm512_mul_ps(f, rv),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_add_epi32(v, _mm512_set1_epi32(QSHIFT));
        if (QX == 1)
            _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(v));
        else
            _mm256_storeu_si256((__m256i *)(q + 2 * i), _mm512_cvtepi32_epi16(v));
    }
}

static int cpu_has(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("fma")
#ifdef FL_VNNI
           && __builtin_cpu_supports("avx512vnni")
#endif
        ;
}

#include "tile.h"
#endif
