/* Portable micro-kernels: the reference every other ISA is tested against, and the path
 * for CPUs without a hand-written kernel. GCC/Clang vector types of 16 bytes map onto
 * SSE2, NEON or plain scalars; built with -ffp-contract=off, every step is a multiply
 * then an add (two roundings) on every compiler and CPU. */
#include <string.h>
#include "../kernel.h"
#include "../blocking.h"
#define FL_VBYTES 16  /* activations: one SSE register (x86-64 baseline) per vector */
#include "../activation.h"
#include "../rowops.h"

typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x2 __attribute__((vector_size(16)));
/* The same vectors, for loads and stores through float/double memory. */
typedef float f32x4_mem __attribute__((vector_size(16), may_alias, aligned(4)));
typedef double f64x2_mem __attribute__((vector_size(16), may_alias, aligned(8)));

enum {
    MR32 = FL_REF_F32_MR, NV32 = FL_REF_F32_NR / 4,  /* vectors per row of the tile */
    MR64 = FL_REF_F64_MR, NV64 = FL_REF_F64_NR / 2,
};
_Static_assert(FL_REF_F32_NR % 4 == 0 && FL_REF_F64_NR % 2 == 0, "whole vectors per row");
_Static_assert(MR32 == 4 && MR64 == 4, "one switch case per tile height below");

/* `m` is a compile-time constant at every call site, so the row loops unroll and the
 * accumulators stay in registers. Edge tiles go through a full tile in memory: the
 * arithmetic of a column never depends on n. */
static inline __attribute__((always_inline)) void
tile_f32(const size_t m, size_t kc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
         const float *w, float *y, size_t ldy, size_t n, int first, const float *scale,
         const float *bias)
{
    float edge[MR32][NV32 * 4] = {{0}};
    f32x4 acc[MR32][NV32];
    for (size_t i = 0; i < m; i++) {
        if (!first)
            memcpy(edge[i], y + i * ldy, n * sizeof(float));
        for (size_t v = 0; v < NV32; v++)
            acc[i][v] = *(const f32x4_mem *)&edge[i][v * 4];
    }
    for (size_t k = 0; k < kc; k++) {
        const f32x4_mem *wk = (const f32x4_mem *)(w + k * NV32 * 4);
        for (size_t i = 0; i < m; i++) {
            const float ai = a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs];
            for (size_t v = 0; v < NV32; v++)
                acc[i][v] += ai * wk[v];
        }
    }
    if (scale) {  /* int8's scales, on the float32 kernel run over widened weights */
        const f32x4_mem *sv = (const f32x4_mem *)scale;
        for (size_t i = 0; i < m; i++)
            for (size_t v = 0; v < NV32; v++)
                acc[i][v] *= sv[v];
    }
    if (bias) {
        const f32x4_mem *bv = (const f32x4_mem *)bias;
        for (size_t i = 0; i < m; i++)
            for (size_t v = 0; v < NV32; v++)
                acc[i][v] += bv[v];
    }
    for (size_t i = 0; i < m; i++) {
        for (size_t v = 0; v < NV32; v++)
            *(f32x4_mem *)&edge[i][v * 4] = acc[i][v];
        memcpy(y + i * ldy, edge[i], n * sizeof(float));
    }
}

static void ukernel_f32(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                        const void *w, ptrdiff_t w_next, size_t group, void *y, size_t ldy,
                        size_t m, size_t n, int first, const float *scale,
                        const void *bias)
{
    (void)w_next, (void)group;  /* one panel at a time; compressed weights widened */
    switch (m) {  /* the tile heights of kernel.h */
    case MR32: tile_f32(MR32, kc, a, a_rs, a_cs, w, y, ldy, n, first, scale, bias); break;
    case 2: tile_f32(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, scale, bias); break;
    default: tile_f32(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, scale, bias); break;
    }
}

static inline __attribute__((always_inline)) void
tile_f64(const size_t m, size_t kc, const double *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
         const double *w, double *y, size_t ldy, size_t n, int first, const double *bias)
{
    double edge[MR64][NV64 * 2] = {{0}};
    f64x2 acc[MR64][NV64];
    for (size_t i = 0; i < m; i++) {
        if (!first)
            memcpy(edge[i], y + i * ldy, n * sizeof(double));
        for (size_t v = 0; v < NV64; v++)
            acc[i][v] = *(const f64x2_mem *)&edge[i][v * 2];
    }
    for (size_t k = 0; k < kc; k++) {
        const f64x2_mem *wk = (const f64x2_mem *)(w + k * NV64 * 2);
        for (size_t i = 0; i < m; i++) {
            const double ai = a[(ptrdiff_t)i * a_rs + (ptrdiff_t)k * a_cs];
            for (size_t v = 0; v < NV64; v++)
                acc[i][v] += ai * wk[v];
        }
    }
    if (bias) {
        const f64x2_mem *bv = (const f64x2_mem *)bias;
        for (size_t i = 0; i < m; i++)
            for (size_t v = 0; v < NV64; v++)
                acc[i][v] += bv[v];
    }
    for (size_t i = 0; i < m; i++) {
        for (size_t v = 0; v < NV64; v++)
            *(f64x2_mem *)&edge[i][v * 2] = acc[i][v];
        memcpy(y + i * ldy, edge[i], n * sizeof(double));
    }
}

static void ukernel_f64(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                        const void *w, ptrdiff_t w_next, size_t group, void *y, size_t ldy,
                        size_t m, size_t n, int first, const float *scale,
                        const void *bias)
{
    (void)w_next, (void)group, (void)scale;  /* no compressed float64 weights */
    switch (m) {  /* the tile heights of kernel.h */
    case MR64: tile_f64(MR64, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    case 2: tile_f64(2, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    default: tile_f64(1, kc, a, a_rs, a_cs, w, y, ldy, n, first, bias); break;
    }
}

static int cpu_has_ref(void) { return 1; }

/* Compressed formats have no kernel here: the driver widens their weights with
 * fl_expand() and runs the float32 one. */
/* The activations (activation.h) in baseline vectors (four SSE registers per 16 floats on x86-64). */
static void activate(const fl_epilogue *ep, fl_dtype dt, void *y, size_t ldy, size_t m,
                     size_t n)
{
    fl_activate_body(ep, dt, y, ldy, m, n);
}

/* The row-wise steps (rowops.h) in the same vectors. */
static void row(const fl_step *st, fl_dtype dt, size_t n, const char *x, char *y)
{
    fl_row_body(st, dt, n, x, y);
}

#define F32_BLOCKS FL_REF_F32_MR, FL_REF_F32_NR, FL_REF_F32_KC, FL_REF_F32_MC, FL_REF_F32_NC
const fl_isa fl_isa_ref = {
    "ref", cpu_has_ref, activate, row,
    {[FL_F32] = {ukernel_f32, NULL, F32_BLOCKS, 0},
     [FL_F64] = {ukernel_f64, NULL, FL_REF_F64_MR, FL_REF_F64_NR, FL_REF_F64_KC, FL_REF_F64_MC,
                 FL_REF_F64_NC, 0},
     [FL_BF16] = {NULL, NULL, F32_BLOCKS, 0},
     [FL_F16] = {NULL, NULL, F32_BLOCKS, 0},
     [FL_I8] = {NULL, NULL, F32_BLOCKS, 0},
     [FL_I4] = {NULL, NULL, F32_BLOCKS, 0}},
};
#undef F32_BLOCKS
