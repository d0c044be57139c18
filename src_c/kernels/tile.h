/* What every ISA's micro-kernels share, written once: the tile (kernel.h's contract: the
 * accumulators' start, the scale, the bias, the edge columns), the widening of a block of
 * weights, the tile heights, the entry points of every weight format and the ISA's table.
 * An include-template, as activation.h and rowops.h: each kernels/<isa>.c defines what
 * differs and includes this file last, so that these always_inline functions are
 * instantiated under its own target attribute, in its own registers.
 *
 * An ISA file defines, before including it:
 *   FL_ISA_ID               the ISA's name as a bare word (avx2): its table is fl_isa_<ID>,
 *                           its entry points <ID>_f32 ... (tests/test_disassembly.py reads
 *                           them by name)
 *   FL_TARGET               the target attribute of its functions (may be empty)
 *   vec                     its vector type, VBYTES bytes, float lanes (doubles are the
 *                           same bits reinterpreted)
 *   MR, NV                  the tile: MR rows x NV vectors (NR = NV * lanes)
 *   WIDENED_ROWS            rows per tile of compressed weights, MR unless registers say less
 *   TWO_PANELS              1: single rows run over two panels (kernel.h's w_next)
 *   F32_KC, F32_MC, F32_NC, F64_KC, F64_MC, F64_NC, I4_WIDEN_ROWS
 *                           its block sizes (kernel.h's fl_kernel), with their reasons
 *   vzero vload vstore vload_head vstore_head vbroadcast vfma vadd vmul vreg
 *                           its vector primitives (vmul on float lanes; vreg: the value
 *                           as it is, in a register at that point)
 *   weight(dt, wk, v, sg, tight)
 *                           vector v of the weights W(k, .) in the k row at wk, widened
 *                           exactly to float32 (sg: the scales of its int4 group; tight:
 *                           the tile has no register to spare)
 *   steps(dt, m, nv, kr, a, rs, cs, w, w_next, ahead, sg, acc)
 *                           k rows [0, kr) of x and the weights accumulated into acc: its
 *                           loop order, prefetches (of the weights `ahead` bytes on, none
 *                           for 0: a constant 0 in one of steps_at's two loops) and
 *                           register plan
 *   cpu_has()               1 when this CPU runs the ISA
 * and what the integer kernels need (qtile.h's list).
 */
#ifndef FL_TILE_H
#define FL_TILE_H

#include "../formats.h"
#define FL_VBYTES VBYTES  /* activations and row steps in the same registers */
#include "../activation.h"
#include "../rowops.h"

#define FL_CAT_(a, b) a##_##b
#define FL_CAT(a, b) FL_CAT_(a, b)
#define FL_STR_(a) #a
#define FL_STR(a) FL_STR_(a)
#define FL_ISA_FN(name) FL_CAT(FL_ISA_ID, name)  /* avx2_f32 */

_Static_assert(MR >= 2 && MR < 8 && WIDENED_ROWS >= 1 && (int)WIDENED_ROWS <= (int)MR,
               "the tile heights below: MR, then powers of two under it");
_Static_assert(NV % 2 == 0, "int4 rows: the high nibbles fill the second half of the vectors");
_Static_assert(F32_KC % FL_SUM_BLOCK == 0 && F64_KC % FL_SUM_BLOCK == 0
               && FL_SUM_BLOCK % FL_I4_MAX_GROUP == 0,
               "k blocks made of summation blocks, summation blocks of int4 groups");

/* Bytes of one k row of a packed panel (int4: of its nibbles): NR weights. */
INLINE size_t row_bytes(fl_dtype dt)
{
    return NV * VBYTES / fl_value_size(dt) * fl_formats[dt].bits / 8;
}

/* Bytes of a packed k row that a tile of nv vectors reads (kernel.h's w_next apart for
 * two panels): all of it, or for NV / 2 vectors its first half, but all of int4's, whose
 * low nibbles are that half. */
INLINE size_t tile_row_bytes(fl_dtype dt, size_t nv)
{
    const size_t rb = row_bytes(dt);
    return nv > NV ? 2 * rb : nv == NV || dt == FL_I4 ? rb : rb / 2;
}

/* Asks for the `bytes` of a k row of weights FL_PREFETCH_BYTES ahead of p (blocking.h). */
INLINE void prefetch_row(const char *p, size_t bytes)
{
FL_UNROLL
    for (size_t l = 0; l < bytes; l += 64)
        __builtin_prefetch(p + FL_PREFETCH_BYTES + l, 0, 3);
}

/* The tile's accumulators plus its values in y: the running total of the partial sums
 * before them, added in ascending k. Edge columns: full vectors load plainly, the one
 * partial vector through vload_head, vectors wholly past n not at all. */
INLINE void add_y(const fl_dtype dt, const size_t m, const size_t nv, const char *y,
                  size_t ldy, size_t full, size_t tail, vec acc[MR][2 * NV])
{
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < nv; v++) {
            const char *yv = y + i * ldy + v * VBYTES;
            if (v < full)
                acc[i][v] = vadd(dt, acc[i][v], vload(yv));
            else if (v == full && tail)
                acc[i][v] = vadd(dt, acc[i][v], vload_head(dt, yv, tail));
        }
}

INLINE void store_y(const fl_dtype dt, const size_t m, const size_t nv, char *y, size_t ldy,
                    size_t full, size_t tail, vec acc[MR][2 * NV])
{
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < nv; v++) {
            char *yv = y + i * ldy + v * VBYTES;
            if (v < full)
                vstore(yv, acc[i][v]);
            else if (v == full && tail)
                vstore_head(dt, yv, tail, acc[i][v]);
        }
}

/* steps() with its prefetch distance fixed in each of two k loops: `ahead` bytes on, or
 * for 0 (weights in cache, untuned) no prefetch at all, where asking for the row being
 * read cost AVX2's single rows 5% (Zen 4, 1x768x3072). Two loops, not a
 * branch in one: clang moved the k loops out of shape around one
 * (tests/test_disassembly.py). */
INLINE void steps_at(const fl_dtype dt, const size_t m, const size_t nv, size_t kr,
                     const char *a, const ptrdiff_t rs, const ptrdiff_t cs, const char *w,
                     ptrdiff_t w_next, size_t ahead, const char *sg, vec acc[MR][2 * NV])
{
    if (ahead)
        steps(dt, m, nv, kr, a, rs, cs, w, w_next, ahead, sg, acc);
    else
        steps(dt, m, nv, kr, a, rs, cs, w, w_next, 0, sg, acc);
}

/* kc values of k in summation blocks (fastlinear.h), each its FMA chain from zero, the
 * partial sum p, then y = first block of K ? p : y + p; the scale and the bias after the
 * last; over m rows and the first nv vectors of the panel's columns (NV; 2 NV over two
 * panels, for one row; NV / 2 for a panel that fills no more: its other columns would
 * only add zeros). One call for all the blocks: a call per block cost 1-4% (AVX-512,
 * Zen 4: 1x768x3072, 32x768x3072). `dt`, `m`, `nv` and the x strides are compile-time constants at
 * every call site below, so the loops over rows and vectors unroll completely, the
 * accumulators live in registers and x addresses fold into the loads. */
INLINE void tile(const fl_dtype dt, const size_t m, const size_t nv, size_t kc,
                 const char *a, const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w,
                 ptrdiff_t w_next, size_t ahead, size_t group, char *y, size_t ldy, size_t n, int first,
                 const char *scale, const char *bias)
{
    const size_t size = fl_value_size(dt);
    const size_t full = n * size / VBYTES, tail = n * size % VBYTES; /* vectors, bytes */
    const ptrdiff_t rs = a_rs * (ptrdiff_t)size, cs = a_cs * (ptrdiff_t)size;
    ldy *= size;
    vec acc[MR][2 * NV];  /* nv = 2 NV only for m = 1 */
    if (!first)  /* y's running totals on their way from L2 while the block computes */
        for (size_t i = 0; i < m; i++)
            for (size_t l = 0; l < n * size; l += 64)
                __builtin_prefetch(y + i * ldy + l, 1, 3);
    for (size_t k0 = 0;; k0 += FL_SUM_BLOCK, a += FL_SUM_BLOCK * cs) {
        const size_t ks = kc - k0 < FL_SUM_BLOCK ? kc - k0 : FL_SUM_BLOCK;
FL_UNROLL
        for (size_t i = 0; i < m; i++)
FL_UNROLL
            for (size_t v = 0; v < nv; v++)
                acc[i][v] = vzero();
        if (fl_formats[dt].scale == FL_SCALE_GROUP)  /* groups of k rows, each led by its NR scales */
            for (size_t g = 0; g < ks; g += group, w += NV * VBYTES + group * row_bytes(dt))
                steps_at(dt, m, nv, ks - g < group ? ks - g : group, a + (ptrdiff_t)g * cs,
                         rs, cs, w + NV * VBYTES, w_next, ahead, w, acc);
        else {
            steps_at(dt, m, nv, ks, a, rs, cs, w, w_next, ahead, w, acc);  /* sg unused */
            w += ks * row_bytes(dt);
        }
FL_UNROLL
        for (size_t i = 0; i < m; i++)
FL_UNROLL
            for (size_t v = 0; v < nv; v++)
                acc[i][v] = vreg(dt, acc[i][v]);
        if (!first || k0)
            add_y(dt, m, nv, y, ldy, full, tail, acc);
        if (k0 + ks == kc)  /* kc may be 0: one pass, y = bias */
            break;
        store_y(dt, m, nv, y, ldy, full, tail, acc);
    }
    if (fl_formats[dt].values == FL_F32 && scale)  /* int8's, also on widened weights */
FL_UNROLL
        for (size_t v = 0; v < nv; v++) {
            const vec sv = vload(scale + v * VBYTES);
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vmul(acc[i][v], sv);
        }
    if (bias)  /* read as y is: n values */
FL_UNROLL
        for (size_t v = 0; v < nv; v++) {
            const char *bp = bias + v * VBYTES;
            const vec bv = v < full ? vload(bp) : v == full && tail ? vload_head(dt, bp, tail)
                                                                  : vzero();
FL_UNROLL
            for (size_t i = 0; i < m; i++)
                acc[i][v] = vadd(dt, acc[i][v], bv);
        }
    store_y(dt, m, nv, y, ldy, full, tail, acc);
}

/* kc k rows of a packed panel widened into dst (kc x NR floats): the values tile()
 * computes with, for the float32 kernel to reuse across many rows (kernel.h). */
INLINE void widen(const fl_dtype dt, size_t kc, const char *w, size_t group, char *dst)
{
    const int grouped = fl_formats[dt].scale == FL_SCALE_GROUP;
    const size_t rb = row_bytes(dt);
    const size_t run = grouped ? group : kc, lead = grouped ? NV * VBYTES : 0;
    for (size_t k0 = 0; k0 < kc; k0 += run) {
        const char *sg = w, *wr = w + lead;
        const size_t k1 = kc - k0 < run ? kc - k0 : run;
        for (size_t k = 0; k < k1; k++, dst += NV * VBYTES) {
            const char *wk = wr + k * rb;
            prefetch_row(wk, rb);
FL_UNROLL
            for (size_t v = 0; v < NV; v++)
                vstore(dst + v * VBYTES, weight(dt, wk, v, sg, 0));
        }
        w = wr + run * rb;
    }
}

/* One instance per tile height the driver asks for (kernel.h: MR, then powers of two
 * below it). Compressed weights run in tiles of at most WIDENED_ROWS rows (the same bits:
 * rows are independent). */
INLINE void rows(const fl_dtype dt, const size_t nv, size_t m, size_t kc, const char *a,
                 const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w, size_t ahead,
                 size_t group, char *y, size_t ldy, size_t n, int first, const char *scale,
                 const char *bias)
{
    if (m == MR && fl_formats[dt].widens && (int)WIDENED_ROWS < (int)MR) {
        const size_t h = WIDENED_ROWS, size = fl_value_size(dt);
        tile(dt, WIDENED_ROWS, nv, kc, a, a_rs, a_cs, w, 0, ahead, group, y, ldy, n, first,
             scale, bias);
        tile(dt, MR - WIDENED_ROWS, nv, kc, a + (ptrdiff_t)(h * size) * a_rs, a_rs, a_cs, w,
             0, ahead, group, y + h * ldy * size, ldy, n, first, scale, bias);
    } else if (m == MR) {
        tile(dt, MR, nv, kc, a, a_rs, a_cs, w, 0, ahead, group, y, ldy, n, first, scale, bias);
    } else if (MR > 4 && m == 4) {
        tile(dt, 4, nv, kc, a, a_rs, a_cs, w, 0, ahead, group, y, ldy, n, first, scale, bias);
    } else if (m == 2) {
        tile(dt, 2, nv, kc, a, a_rs, a_cs, w, 0, ahead, group, y, ldy, n, first, scale, bias);
    } else {
        tile(dt, 1, nv, kc, a, a_rs, a_cs, w, 0, ahead, group, y, ldy, n, first, scale, bias);
    }
}

/* The two layouts of x get their own instances: its strides are constants in each. */
INLINE void rows_of_x(const fl_dtype dt, const size_t nv, size_t m, size_t kc, const char *a,
                      const ptrdiff_t a_rs, const ptrdiff_t a_cs, const char *w, size_t ahead,
                      size_t group, char *y, size_t ldy, size_t n, int first,
                      const char *scale, const char *bias)
{
    if (a_cs == 1)  /* x in place */
        rows(dt, nv, m, kc, a, a_rs, 1, w, ahead, group, y, ldy, n, first, scale, bias);
    else            /* packed x: a_rs == 1, a_cs == MR */
        rows(dt, nv, m, kc, a, 1, MR, w, ahead, group, y, ldy, n, first, scale, bias);
}

/* So do panels filled no further than their first half (a narrow layer's only panel, as
 * a classifier's 10 outputs; the last of a wider one): tiles of NV / 2 vectors compute
 * and read half the columns, the same operations on each of theirs. */
INLINE void ukernel(const fl_dtype dt, size_t kc, const void *a, ptrdiff_t a_rs,
                    ptrdiff_t a_cs, const void *w, ptrdiff_t w_next, size_t ahead, size_t group, void *y,
                    size_t ldy, size_t m, size_t n, int first, const float *scale,
                    const void *bias)
{
    const size_t nr = NV * VBYTES / fl_value_size(dt);
    if (TWO_PANELS && n > nr)  /* one row in place, two panels */
        tile(dt, 1, 2 * NV, kc, a, 0, 1, w, w_next, ahead, group, y, ldy, n, first,
             (const char *)scale, bias);
    else if (2 * n <= nr)
        rows_of_x(dt, NV / 2, m, kc, a, a_rs, a_cs, w, ahead, group, y, ldy, n, first,
                  (const char *)scale, bias);
    else
        rows_of_x(dt, NV, m, kc, a, a_rs, a_cs, w, ahead, group, y, ldy, n, first,
                  (const char *)scale, bias);
}

/* The entry points, one per weight format. */
#define FL_UKERNEL_ARGS size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs, \
    const void *w, ptrdiff_t w_next, size_t ahead, size_t group, void *y, size_t ldy, size_t m, size_t n, \
    int first, const float *scale, const void *bias
#define FL_UKERNEL_PASS kc, a, a_rs, a_cs, w, w_next, ahead, group, y, ldy, m, n, first, scale, bias
static FL_TARGET void FL_ISA_FN(f32)(FL_UKERNEL_ARGS) { ukernel(FL_F32, FL_UKERNEL_PASS); }
static FL_TARGET void FL_ISA_FN(f64)(FL_UKERNEL_ARGS) { ukernel(FL_F64, FL_UKERNEL_PASS); }
static FL_TARGET void FL_ISA_FN(bf16)(FL_UKERNEL_ARGS) { ukernel(FL_BF16, FL_UKERNEL_PASS); }
static FL_TARGET void FL_ISA_FN(f16)(FL_UKERNEL_ARGS) { ukernel(FL_F16, FL_UKERNEL_PASS); }
static FL_TARGET void FL_ISA_FN(i8)(FL_UKERNEL_ARGS) { ukernel(FL_I8, FL_UKERNEL_PASS); }
#if FL_INT4_TILES
static FL_TARGET void FL_ISA_FN(i4)(FL_UKERNEL_ARGS) { ukernel(FL_I4, FL_UKERNEL_PASS); }
#endif
#undef FL_UKERNEL_ARGS
#undef FL_UKERNEL_PASS

static FL_TARGET void FL_ISA_FN(widen_bf16)(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_BF16, kc, w, group, (char *)dst);
}
static FL_TARGET void FL_ISA_FN(widen_f16)(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_F16, kc, w, group, (char *)dst);
}
static FL_TARGET void FL_ISA_FN(widen_i8)(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I8, kc, w, group, (char *)dst);
}
static FL_TARGET void FL_ISA_FN(widen_i4)(size_t kc, const void *w, size_t group, float *dst)
{
    widen(FL_I4, kc, w, group, (char *)dst);
}

/* The activations (activation.h) and the row-wise steps (rowops.h) in this ISA's vectors. */
static FL_TARGET void activate(const fl_epilogue *ep, fl_dtype dt, void *y, size_t ldy,
                               size_t m, size_t n)
{
    fl_activate_body(ep, dt, y, ldy, m, n);
}

static FL_TARGET void row(const fl_step *st, fl_dtype dt, size_t n, const char *x, char *y)
{
    fl_row_body(st, dt, n, x, y);
}

#include "qtile.h"

#define FL_F32_BLOCKS MR, NV * VBYTES / 4, F32_KC, F32_MC, F32_NC, TWO_PANELS
const fl_isa FL_CAT(fl_isa, FL_ISA_ID) = {
    FL_STR(FL_ISA_ID), cpu_has, activate, row,
    {[FL_F32] = {FL_ISA_FN(f32), NULL, FL_F32_BLOCKS},
     [FL_F64] = {FL_ISA_FN(f64), NULL, MR, NV * VBYTES / 8, F64_KC, F64_MC, F64_NC,
                 TWO_PANELS},
     [FL_BF16] = {FL_ISA_FN(bf16), FL_ISA_FN(widen_bf16), FL_F32_BLOCKS},
     [FL_F16] = {FL_ISA_FN(f16), FL_ISA_FN(widen_f16), FL_F32_BLOCKS},
     [FL_I8] = {FL_ISA_FN(i8), FL_ISA_FN(widen_i8), FL_F32_BLOCKS},
#if FL_INT4_TILES
     [FL_I4] = {FL_ISA_FN(i4), FL_ISA_FN(widen_i4), FL_F32_BLOCKS, I4_WIDEN_ROWS},
#else
     [FL_I4] = {NULL, FL_ISA_FN(widen_i4), FL_F32_BLOCKS, I4_WIDEN_ROWS},
#endif
     [FL_I8Q] = {NULL, NULL, QMR, QNR, F32_KC, F32_MC, F32_NC, 0, 0, FL_ISA_FN(i8q),
                 FL_ISA_FN(quantize), QK, QX, QSHIFT},
     [FL_I4Q] = {NULL, NULL, QMR4, QNR, F32_KC, F32_MC, F32_NC, 0, 0, FL_ISA_FN(i4q),
                 FL_ISA_FN(quantize), QK, QX, QSHIFT}},
};
#undef FL_F32_BLOCKS

#endif
