/* AVX2 + FMA micro-kernels (kernel.h contract) for x86-64 CPUs without AVX-512 (Haswell
 * and later, Zen 1-3, Intel's client CPUs, and CPUs or VMs that hide AVX-512): what this
 * ISA does its own way; the tile, the entry points and the ISA table are kernels/tile.h's.
 * One FMA per k and element.
 *
 * The tile is MR rows x NV ymm (NR = 32 floats, 16 doubles); doubles are the same ymm
 * reinterpreted, compressed weights are widened exactly to float32 in registers (bfloat16
 * by a shift, float16 by F16C, int8 and int4 by an integer conversion, int4 then times
 * its group's scale, which is exact). Per k step it keeps MR*NV accumulators, the MR
 * broadcast x values and one weight vector live: 12 + 3 + 1 = 16 ymm, all there are; a
 * weight is widened in the register it is used from. Edge columns: masked stores are
 * microcoded on AMD, so only the one partial vector goes through a mask. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>
#include "../kernel.h"
#include "../blocking.h"

#define FL_ISA_ID avx2
#define FL_TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) FL_TARGET
typedef __m256 vec;
typedef __m256i ivec;

/* 3 rows x 4 ymm, not the classic 6 x 2: a single row (M = 1, weights streamed from
 * memory) then has only 2 FMA chains, which at 4 cycles of FMA latency cap the stream
 * near 88 GB/s on 2 Zen 4 cores; 3 x 4 gives it 4 chains (8 at M = 2) and 12 for M >= 3,
 * with 7 loads per 12 FMAs. A widened weight takes the register that a float one saves
 * as an FMA memory operand, so 3 rows of compressed weights need all 16 ymm: GCC
 * allocates them, clang 14 spills an accumulator (tests/test_disassembly.py); its builds
 * run them 2 rows per tile, at the cost of widening the weights once more per 3 rows. */
enum { MR = 3, NV = 4, VBYTES = 32, TWO_PANELS = 1 };
#ifdef __clang__
enum { WIDENED_ROWS = 2 };
#else
enum { WIDENED_ROWS = MR };
#endif
_Static_assert(MR * NV + MR + 1 <= 16, "accumulators, broadcasts and a weight vector in 16 ymm");

/* Measured with FASTLINEAR_ISA=avx2 on a 2-core AMD EPYC (Zen 5, KVM) whose 256-bit FMA
 * peak is 271 GFLOP/s float32 (fastlinear's probe, --isa avx2), 2 threads: 32x768x3072 250,
 * 128x768x3072 246, 512x1024x1024 250, 2048^3 248 GFLOP/s (91-92%); 6 x 16 tiles with GCC's
 * accumulators spilled ran 108-124. KC 128/256/512 for float32: within noise at 2048^3
 * (240/248/249) and 128x768x3072 (252/246/242); 256 keeps the 32 KiB weight slice in L1 (48
 * KiB on Zen 5; on 32 KiB L1s it streams from L2, which 7 loads per 12 FMAs allow).
 * float64: KC 128 gave 117 GFLOP/s at 2048^3 against 107 at 256, of a 136 peak. MC: 144 KiB
 * (72 KiB) of packed x in L2; NC: 4 MiB (2 MiB) of weights in L3. int4 widens each weight
 * vector with five instructions (load and extend, two shifts, convert, scale) for every
 * 3-row tile that reads it: from I4_WIDEN_ROWS rows on, widening each block once into a
 * buffer for the float32 kernel pays. Measured (2 threads, Zen 5, us, in registers ->
 * widened): 16x768x3072 533 -> 395, 32x768x3072 999 -> 702, 16x4096x4096 3740 -> 2905;
 * 8x768x3072 268 -> 257, 8x4096x4096 1868 -> 1922. The other formats (one or two
 * instructions) were as fast or faster in registers at every M up to FL_DIRECT_X_MAX_BYTES
 * of x. KC = 128 since then: on a 2-core Zen 4 (KVM, L1d 32 KiB) the 16 KiB weight slice in
 * L1 beats 256 and 512 at every compute-bound shape (KC 128/256/512, GFLOP/s of a 236 peak,
 * interleaved in one process): 32x768x3072 193/179/175, 128x768x3072 174/168/165,
 * 512x1024x1024 188/172/170, 2048^3 184/173/168 (on Zen 5 they were within noise). */
enum {
    F32_KC = 128, F32_MC = 144, F32_NC = 4096,
    F64_KC = 128, F64_MC = 72, F64_NC = 2048,
    I4_WIDEN_ROWS = 12,
};

INLINE vec vzero(void) { return _mm256_setzero_ps(); }

INLINE vec vload(const char *p) { return _mm256_loadu_ps((const float *)p); }

INLINE void vstore(char *p, vec v) { _mm256_storeu_ps((float *)p, v); }

/* The first `bytes` (< VBYTES, a multiple of 4) of a vector, as a mask of 32-bit lanes;
 * its top bits serve as a mask of 64-bit lanes too. Loaded anew at each use (an opaque
 * count) from a window on a table: no vector of its making can be hoisted out of the
 * loop over summation blocks, where it would take a 17th ymm (a constant of lane
 * numbers to compare with did, and the 3-row tile then read each weight vector 3 times:
 * 8x768x3072 20% slower). */
static const int32_t head_lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1};
INLINE __m256i head_mask(size_t bytes)
{
    __asm__ volatile("" : "+r"(bytes));
    return _mm256_loadu_si256((const __m256i *)(head_lanes + 8 - bytes / 4));
}

/* The first `bytes` (< VBYTES) of a vector at p; the rest zero, not read. */
INLINE vec vload_head(fl_dtype dt, const char *p, size_t bytes)
{
    (void)dt;
    return _mm256_maskload_ps((const float *)p, head_mask(bytes));
}

/* Stores the first `bytes` (< VBYTES) of v at p, nothing past them. */
INLINE void vstore_head(fl_dtype dt, char *p, size_t bytes, vec v)
{
    (void)dt;
    _mm256_maskstore_ps((float *)p, head_mask(bytes), v);
}

INLINE vec vbroadcast(fl_dtype dt, const char *p)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_broadcast_sd((const double *)p))
                        : _mm256_broadcast_ss((const float *)p);
}

/* a * b + c, one rounding. */
INLINE vec vfma(fl_dtype dt, vec a, vec b, vec c)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_fmadd_pd(_mm256_castps_pd(a),
                                                           _mm256_castps_pd(b),
                                                           _mm256_castps_pd(c)))
                        : _mm256_fmadd_ps(a, b, c);
}

INLINE vec vadd(fl_dtype dt, vec a, vec b)
{
    return dt == FL_F64 ? _mm256_castpd_ps(_mm256_add_pd(_mm256_castps_pd(a),
                                                         _mm256_castps_pd(b)))
                        : _mm256_add_ps(a, b);
}

/* v, in a register here: without this GCC carries float64 accumulators out of the k
 * loop in their float32 guise and spills them (tests/test_disassembly.py). */
INLINE vec vreg(fl_dtype dt, vec v)
{
    if (dt == FL_F64)
        __asm__("" : "+x"(v));
    return v;
}

INLINE vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }

INLINE vec weight(fl_dtype dt, const char *wk, size_t v, const char *sg, int tight)
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

INLINE size_t row_bytes(fl_dtype dt);  /* tile.h */
INLINE size_t tile_row_bytes(fl_dtype dt, size_t nv);

/* The MR broadcasts of a k step first, then one weight vector at a time, each used by
 * every row as soon as it is loaded (or widened): one register for the weights. */
INLINE void steps(const fl_dtype dt, const size_t m, const size_t nv, size_t kr,
                  const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                  ptrdiff_t w_next, size_t ahead, const char *sg, vec acc[MR][2 * NV])
{
    const size_t rb = row_bytes(dt);
    for (size_t k = 0; k < kr; k++) {
        const char *ak = a + (ptrdiff_t)k * cs, *wk = w + k * rb;
        /* int4: the group's scales read from L1 at each use (avx512.c says why). */
        if (dt == FL_I4)
            __asm__("" : "+r"(sg) : "r"(k));
        if (ahead)  /* a constant in each k loop (tile.h's steps_at) */
FL_UNROLL
            for (size_t l = 0; l < tile_row_bytes(dt, nv); l += 64)
                _mm_prefetch(wk + l / rb * w_next + ahead + l % rb, _MM_HINT_T0);
        vec ai[MR];
FL_UNROLL
        for (size_t i = 0; i < m; i++)
            ai[i] = vbroadcast(dt, ak + (ptrdiff_t)i * rs);
FL_UNROLL
        for (size_t v = 0; v < nv; v++) {
            const vec wv = weight(dt, wk + v / NV * w_next, v % NV, sg + v / NV * w_next,
                                  m == MR);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vfma(dt, ai[i], wv, acc[i][v]);
        }
    }
}

/* Integer activations (qtile.h): vpmaddwd multiplies 2 int16 pairs of x and of the
 * weights (sign-extended from bytes on load) into int32, vpaddd adds them to the sums;
 * no vpmaddubsw, which saturates. 4 rows x 2 ymm (16 columns): 8 sums, 2 weight vectors,
 * a broadcast and vpmaddwd's product take 12 ymm; 3 x 4 would need 18 (AVX2 has no
 * multiply-add of integers, so the product takes a register of its own). */
enum { QMR = 4, QNV = 2, QK = 2, QX = 2, QSHIFT = 0 };
_Static_assert(QMR * QNV + QNV + 2 <= 16, "sums, weight vectors, broadcast, product");

INLINE ivec izero(void) { return _mm256_setzero_si256(); }

INLINE ivec qbroadcast(const char *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

INLINE ivec qweight(const char *wk, size_t v)
{
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wk + v * VBYTES / 2)));
}

/* int4: 16 bytes a step, vector 0 in their low nibbles and 1 in their high ones,
 * sign-extended to int16 by shifts. */
INLINE ivec qweight4(const char *wk, size_t v)
{
    const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wk));
    return v == 0 ? _mm256_srai_epi16(_mm256_slli_epi16(w16, 12), 12)
                  : _mm256_srai_epi16(w16, 4);
}

INLINE ivec qdot(ivec acc, ivec xb, ivec wv)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(xb, wv));
}

INLINE vec qfloat(ivec acc, const char *wsum)
{
    (void)wsum;
    return _mm256_cvtepi32_ps(acc);
}

INLINE uint32_t qamax(size_t k, const float *x)
{
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    __m256i m = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= k; i += 8)
        m = _mm256_max_epu32(m, _mm256_and_si256(
            _mm256_loadu_si256((const __m256i *)(x + i)), magnitude));
    if (i < k)
        m = _mm256_max_epu32(m, _mm256_and_si256(
            _mm256_castps_si256(vload_head(FL_F32, (const char *)(x + i), (k - i) * 4)),
            magnitude));
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(h);
}

INLINE void qround(size_t k, const float *x, float u, float r, char *q)
{
    const __m256 uv = _mm256_set1_ps(u), rv = _mm256_set1_ps(r);
    for (size_t i = 0; i < k; i += 8) {
        __m256 f = k - i >= 8 ? _mm256_loadu_ps(x + i)
                              : vload_head(FL_F32, (const char *)(x + i), (k - i) * 4);
        if (u != 1.0f)
            f = _mm256_mul_ps(f, uv);
        /* rounded by the instruction's own mode, not the caller's, then converted exactly */
        const __m256i v = _mm256_cvttps_epi32(_mm256_round_ps(
            _mm256_mul_ps(f, rv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm_storeu_si128((__m128i *)(q + 2 * i),
                         _mm_packs_epi32(_mm256_castsi256_si128(v),
                                         _mm256_extracti128_si256(v, 1)));
    }
}

static int cpu_has(void)
{
    unsigned a, b, c, d;  /* F16C (float16 weights) from CPUID: clang has no builtin name */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
           && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

#include "tile.h"
#endif
