/* Portable micro-kernels (kernel.h contract): the reference every other ISA is tested
 * against, and the path for CPUs without a hand-written kernel. The tile, the entry
 * points and the ISA table are kernels/tile.h's; this file gives its primitives in
 * GCC/clang vectors of 16 bytes, which map onto SSE2, NEON or plain scalars. Built with
 * -ffp-contract=off, the compiler fuses nothing on its own: vfma below says where a
 * multiply-add rounds once. */
#include <stdint.h>
#include <string.h>
#include "../kernel.h"
#include "../blocking.h"

#define FL_ISA_ID ref
#define FL_TARGET
#define INLINE static inline __attribute__((always_inline))
typedef float vec __attribute__((vector_size(16)));
typedef double vecd __attribute__((vector_size(16)));
typedef int32_t veci __attribute__((vector_size(16)));
typedef uint32_t vecu __attribute__((vector_size(16)));

/* 16 SSE registers of 4 floats or 2 doubles at baseline x86-64: 4 rows x 2 vectors
 * (8 x 4 floats, 4 x 4 doubles) are 8 accumulators, 2 weight vectors and a broadcast. */
enum { MR = 4, NV = 2, VBYTES = 16, WIDENED_ROWS = MR, TWO_PANELS = 0 };

/* KC: 16 KiB of float32 weights + 8 KiB of x in L1 (16 + 16 KiB for float64); MC: 256 KiB
 * of x in L2; NC: 8 MiB of weights in L3. */
enum {
    F32_KC = 512, F32_MC = 128, F32_NC = 4096,
    F64_KC = 512, F64_MC = 64, F64_NC = 2048,
    I4_WIDEN_ROWS = 0,
};

INLINE vec vzero(void) { return (vec){0}; }

INLINE vec vload(const char *p)
{
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void vstore(char *p, vec v) { memcpy(p, &v, sizeof v); }

INLINE vec vload_head(fl_dtype dt, const char *p, size_t bytes)
{
    (void)dt;
    vec v = {0};
    memcpy(&v, p, bytes);
    return v;
}

INLINE void vstore_head(fl_dtype dt, char *p, size_t bytes, vec v)
{
    (void)dt;
    memcpy(p, &v, bytes);
}

INLINE vec vbroadcast(fl_dtype dt, const char *p)
{
    if (dt == FL_F64) {
        double d;
        memcpy(&d, p, sizeof d);
        return (vec)(vecd){d, d};
    }
    float f;
    memcpy(&f, p, sizeof f);
    return (vec){f, f, f, f};
}

/* a * b + c: one rounding where the target has a fused multiply-add in hardware (ARM,
 * x86 built with -mfma: then the same bits as the AVX2 and AVX-512 paths), else a
 * multiply, then an add (baseline x86-64). */
INLINE vec vfma(fl_dtype dt, vec a, vec b, vec c)
{
#if defined(__FP_FAST_FMA) && defined(__FP_FAST_FMAF)
    if (dt == FL_F64) {
        const vecd x = (vecd)a, y = (vecd)b, z = (vecd)c;
        return (vec)(vecd){__builtin_fma(x[0], y[0], z[0]), __builtin_fma(x[1], y[1], z[1])};
    }
    return (vec){__builtin_fmaf(a[0], b[0], c[0]), __builtin_fmaf(a[1], b[1], c[1]),
                 __builtin_fmaf(a[2], b[2], c[2]), __builtin_fmaf(a[3], b[3], c[3])};
#else
    return dt == FL_F64 ? (vec)((vecd)a * (vecd)b + (vecd)c) : a * b + c;
#endif
}

INLINE vec vadd(fl_dtype dt, vec a, vec b)
{
    return dt == FL_F64 ? (vec)((vecd)a + (vecd)b) : a + b;
}

INLINE vec vmul(vec a, vec b) { return a * b; }

INLINE vec vreg(fl_dtype dt, vec v)
{
    (void)dt;
    return v;
}

/* Four consecutive stored values of `bytes` bytes each at p, zero-extended to 32 bits. */
INLINE vecu load4(const char *p, size_t bytes)
{
    if (bytes == 2) {
        uint16_t h[4];
        memcpy(h, p, sizeof h);
        return (vecu){h[0], h[1], h[2], h[3]};
    }
    uint8_t b[4];
    memcpy(b, p, sizeof b);
    return (vecu){b[0], b[1], b[2], b[3]};
}

/* float16 bits -> float32, exactly: normal numbers re-biased, subnormals scaled (an
 * integer below 2^10 times a power of two is exact), Inf and NaN kept. */
INLINE vec f16_values(vecu h)
{
    const vecu sign = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
    const vecu zero = (vecu)(e == 0u), inf = (vecu)(e == 31u);  /* all ones where so */
    const vecu exponent = (inf & 0x7f800000u) | (~inf & (e + 112u) << 23);
    const vecu normal = sign | exponent | m << 13;
    const vecu tiny = (vecu)(__builtin_convertvector(m, vec) * 0x1p-24f) | sign;
    return (vec)((zero & tiny) | (~zero & normal));
}

INLINE vec weight(fl_dtype dt, const char *wk, size_t v, const char *sg, int tight)
{
    (void)tight;
    switch (dt) {
    case FL_BF16:
        return (vec)(load4(wk + v * 8, 2) << 16);
    case FL_F16:
        return f16_values(load4(wk + v * 8, 2));
    case FL_I8:
        return __builtin_convertvector((veci)(load4(wk + v * 4, 1) << 24) >> 24, vec);
    case FL_I4: {  /* low nibbles of the row's NV / 2 * 4 bytes, then the high ones */
        const veci q = (veci)(load4(wk + v % (NV / 2) * 4, 1) << (v < NV / 2 ? 28 : 24)) >> 28;
        return __builtin_convertvector(q, vec) * vload(sg + v * VBYTES);
    }
    default:
        return vload(wk + v * VBYTES);
    }
}

INLINE size_t row_bytes(fl_dtype dt);  /* tile.h */

INLINE void steps(const fl_dtype dt, const size_t m, const size_t nv, size_t kr,
                  const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                  ptrdiff_t w_next, size_t ahead, const char *sg, vec acc[MR][2 * NV])
{
    const size_t rb = row_bytes(dt);
    (void)ahead;  /* no prefetch */
    for (size_t k = 0; k < kr; k++) {
        const char *ak = a + (ptrdiff_t)k * cs, *wk = w + k * rb;
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

/* Integer activations (qtile.h): 4 rows x 2 vectors of int32 sums (8 columns), one k
 * at a time, x's values as int32. The sums cannot overflow: K <= FL_I8Q_MAX_K. */
typedef veci ivec;
enum { QMR = 4, QNV = 2, QK = 1, QX = 4, QSHIFT = 0 };

INLINE ivec izero(void) { return (ivec){0}; }

INLINE ivec qbroadcast(const char *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return (ivec){v, v, v, v};
}

INLINE ivec qweight(const char *wk, size_t v) { return (veci)(load4(wk + v * 4, 1) << 24) >> 24; }

/* int4: 4 bytes a step, vector 0 in their low nibbles and 1 in their high ones. */
INLINE ivec qweight4(const char *wk, size_t v)
{
    return (veci)(load4(wk, 1) << (v == 0 ? 28 : 24)) >> 28;
}

INLINE ivec qdot(ivec acc, ivec xb, ivec wv) { return acc + xb * wv; }

INLINE vec qfloat(ivec acc, const char *wsum)
{
    (void)wsum;
    return __builtin_convertvector(acc, vec);
}

INLINE uint32_t qamax(size_t k, const float *x)
{
    uint32_t m = 0;
    for (size_t i = 0; i < k; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        b &= 0x7fffffffu;
        m = b > m ? b : m;
    }
    return m;
}

/* Rounded half to even in the default rounding mode (nearbyintf follows the caller's;
 * fastlinear never changes it). */
INLINE void qround(size_t k, const float *x, float u, float r, char *q)
{
    int32_t *d = (int32_t *)(void *)q;
    size_t i = 0;
    for (; i < k; i++) {
        float f = x[i];
        if (u != 1.0f)
            f = f * u;
        d[i] = (int32_t)__builtin_nearbyintf(f * r);
    }
    for (; i % 16; i++)
        d[i] = 0;
}

static int cpu_has(void) { return 1; }

#include "tile.h"
