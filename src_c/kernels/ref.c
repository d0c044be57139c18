/* Portable C micro-kernels: the reference every other ISA is tested against, and the
 * path for CPUs without a hand-written kernel. Built with -ffp-contract=off, so each
 * step is a multiply then an add (two roundings) on every compiler and CPU; the
 * compiler vectorises the NR loop. */
#include "../kernel.h"
#include "../blocking.h"

/* `m` is a compile-time constant at every call site below, so the row loops unroll and
 * the accumulators live in registers. */
static inline __attribute__((always_inline)) void
tile_f32(const size_t m, size_t kc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
         const float *w, float *y, size_t ldy, size_t n, int first, const float *bias)
{
    enum { NR = FL_REF_F32_NR };
    float acc[FL_REF_F32_MR][NR];
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < NR; j++)
            acc[i][j] = (first || j >= n) ? 0.0f : y[i * ldy + j];
    for (size_t k = 0; k < kc; k++) {
        const float *wk = w + k * NR;
        for (size_t i = 0; i < m; i++) {
            const float ai = a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs];
            for (size_t j = 0; j < NR; j++)
                acc[i][j] += ai * wk[j];
        }
    }
    if (bias)
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < NR; j++)
                acc[i][j] += bias[j];
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            y[i * ldy + j] = acc[i][j];
}

_Static_assert(FL_REF_F32_MR == 4 && FL_REF_F64_MR == 4, "one switch case per m below");

static void ukernel_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                        const void *w, void *y, size_t ldy, size_t m, size_t n,
                        int first, const void *bias)
{
    switch (m) {
    case 1: tile_f32(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile_f32(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 3: tile_f32(3, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile_f32(FL_REF_F32_MR, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}

static inline __attribute__((always_inline)) void
tile_f64(const size_t m, size_t kc, const double *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
         const double *w, double *y, size_t ldy, size_t n, int first, const double *bias)
{
    enum { NR = FL_REF_F64_NR };
    double acc[FL_REF_F64_MR][NR];
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < NR; j++)
            acc[i][j] = (first || j >= n) ? 0.0 : y[i * ldy + j];
    for (size_t k = 0; k < kc; k++) {
        const double *wk = w + k * NR;
        for (size_t i = 0; i < m; i++) {
            const double ai = a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs];
            for (size_t j = 0; j < NR; j++)
                acc[i][j] += ai * wk[j];
        }
    }
    if (bias)
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < NR; j++)
                acc[i][j] += bias[j];
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            y[i * ldy + j] = acc[i][j];
}

static void ukernel_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                        const void *w, void *y, size_t ldy, size_t m, size_t n,
                        int first, const void *bias)
{
    switch (m) {
    case 1: tile_f64(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile_f64(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 3: tile_f64(3, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile_f64(FL_REF_F64_MR, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}

static int cpu_has_ref(void) { return 1; }

const fl_isa fl_isa_ref = {
    "ref", cpu_has_ref,
    {{ukernel_f32, FL_REF_F32_MR, FL_REF_F32_NR, FL_REF_F32_KC, FL_REF_F32_MC,
      FL_REF_F32_NC, FL_PACK_X_MIN_M},
     {ukernel_f64, FL_REF_F64_MR, FL_REF_F64_NR, FL_REF_F64_KC, FL_REF_F64_MC,
      FL_REF_F64_NC, FL_PACK_X_MIN_M}},
};
