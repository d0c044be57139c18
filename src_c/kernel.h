/* Internal contract between the GEMM driver (gemm.c), packing (pack.c) and the
 * per-ISA micro-kernels (kernels/<isa>.c). Not part of the public API.
 *
 * Micro-kernel: computes one m x n tile of y (1 <= n <= NR; m is MR, or a power of two
 * below it: the driver cuts the rows of an edge tile into such tiles, which gives the
 * same bits since rows are independent) over kc values of k (a k block: at most KC, or
 * all of K for a single row), in summation blocks (fastlinear.h) of FL_SUM_BLOCK values,
 * the last one maybe shorter:
 *
 *     for each summation block B, in ascending k:
 *       p[i][j] = 0
 *       for k in B (ascending):        p[i][j] += a[i*a_rs + k*a_cs] * W(k, j)
 *       acc[i][j] = first and B is the call's first ? p[i][j] : y[i*ldy + j] + p[i][j]
 *       after B the last:
 *         if scale != NULL:            acc[i][j] *= scale[j]
 *         if bias != NULL:             acc[i][j] += bias[j]
 *       y[i*ldy + j] = acc[i][j]       for i < m, j < n only
 *
 * The driver calls it k block by k block in ascending k, `first` for the first block of
 * K, the scale and the bias with the last.
 *   a      rows of x: either x itself (a_rs = ldx, any value, a_cs = 1) or a packed
 *          micro-panel (a_rs = 1, a_cs = MR > 1); kernels may tell the two apart by a_cs.
 *          Only rows i < m are read.
 *   w      kc rows of k of one packed weight panel (fl_panel_offset gives where a k
 *          block starts, which starts a summation block), W(k, j) the float value of its
 *          weight (fastlinear.h), in the panel layout of the weights' format:
 *            float32, float64, bfloat16, float16, int8: NR values per k, contiguous;
 *            int4: groups of `group` k rows, each NR float32 scales, then `group` rows
 *            of NR/2 bytes; in a row, byte b holds column b in its low nibble and column
 *            b + NR/2 in its high one, both as two's complement. The rows past K of the
 *            last group are zero; a summation block starts a group (S is a multiple of
 *            them).
 *          Panels start 64-byte aligned; values past column n are zero. All NR columns
 *          may be read.
 *   w_next with a kernel of two_panels, and m = 1, x in place: n may reach 2 NR, columns
 *          NR and up coming from the next panel, w_next bytes after w (its bias and
 *          scales follow the first's): twice the independent sums for a single row.
 *   ahead  0, or how many bytes past each k row of w the kernel asks for the weights it
 *          will read later (a software prefetch: for weights streamed from memory).
 *   group  int4 only: k rows per scale group (32, 64 or 128).
 *   scale  NULL, or (int8, on the last block only) NR float32 scales (zero past n).
 *   bias   NULL, or n values added once, after the last block (none past n is read).
 *   y      only rows i < m and columns j < n are touched; when `first` is set it is not
 *          read before written (it may hold NaN). kc may be 0 (then y = bias, or 0).
 * The multiply-add of one element always rounds the same way inside one kernel: whether a
 * column lies in a full or an edge tile, whatever m is. A kernel for a compressed format
 * widens each weight exactly to W(k, j) in registers; the float32 kernel run on the same
 * block widened by fl_expand() computes the same bits.
 */
#ifndef FL_KERNEL_H
#define FL_KERNEL_H

#include <stddef.h>
#include <stdint.h>
#include "fastlinear.h"
#include "formats.h"

typedef void fl_ukernel(size_t kc, const void *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                        const void *w, ptrdiff_t w_next, size_t ahead, size_t group, void *y,
                        size_t ldy, size_t m, size_t n, int first, const float *scale,
                        const void *bias);

/* Widens kc k rows of one packed panel of a compressed format (w and group as the
 * micro-kernel gets them) into dst: kc x NR float32 values W(k, j), 64-byte aligned. */
typedef void fl_widener(size_t kc, const void *w, size_t group, float *dst);

/* Integer activations (FL_I8Q, fastlinear.h): the ISA's own form of a quantized row of
 * x, and its integer micro-kernel.
 *
 * Quantizer: the k values of x into q, the row quantized as fastlinear.h says (group 0:
 * as one; FL_I4Q: each group of `group` values alone), each value q[k] + qshift stored
 * in qx bytes (int8 + 128 as uint8 for vpdpbusd, int16 for vpmaddwd, ...), its scale
 * (each group's) into scale[]; then zero values (+ qshift) up to kq (a multiple of 16 at least k).
 *
 * Integer micro-kernel: an m x n tile (m <= MR, n <= NR) over all k values at once, as
 * fastlinear.h says:
 *     FL_I8Q  acc = sum over k of q(i, k) * w[j, k] (int32, exact);
 *             y[i*ldy + j] = float(acc) * (xs[i] * ws[j]), then + bias[j] if bias
 *     FL_I4Q  the same per group of `group` k, float(acc_g) * (xs[i G + g] * s[j, g])
 *             added in ascending g to a total from 0 (G groups), then + bias[j]
 *   a     the quantized rows, lda bytes apart (a row: k values, padded as above);
 *   w     the panel: FL_I8Q: ceil(k / qk) steps, each NR columns of qk int8 values
 *         (column j's values for k = qk s .. qk s + qk - 1 together), zero past k and n;
 *         FL_I4Q: per group, NR float32 scales, NR wsum (below), then group / qk steps
 *         as FL_I8Q's of int4 values: value v of a step (column v / qk) in the low nibble
 *         of byte v, or, for the second half of the step's values, in the high nibble of
 *         byte v - NR qk / 2;
 *   wsum  FL_I8Q: NR values, qshift * sum_k w[j, k] modulo 2^32 (FL_I4Q: per group, in
 *         the panel), subtracted from the sums of shifted x;  ws  FL_I8Q: NR float32
 *         scales (zero past n);  bias NULL or n values.
 * Only rows i < m and columns j < n of y are written; y is never read. */
typedef void fl_quantizer(size_t k, size_t kq, size_t group, const float *x, void *q,
                          float *scale);
typedef void fl_qkernel(size_t k, const void *a, size_t lda, const float *xs,
                        const void *w, const int32_t *wsum, const float *ws, size_t group,
                        const float *bias, float *y, size_t ldy, size_t m, size_t n);

/* One micro-kernel with the block sizes that suit it (reasons in kernels/<isa>.c). */
typedef struct {
    fl_ukernel *run;    /* NULL: the driver widens each block with fl_expand() and runs
                           the float32 kernel (int4 in clang builds, FL_INT4_TILES) */
    fl_widener *widen;  /* compressed formats: what fl_expand() runs; NULL for floats */
    size_t mr, nr;      /* register tile */
    size_t kc;          /* k block: a KC x NR weight slice stays in L1 */
    size_t mc;          /* row block: an MC x KC block of packed x stays in L2 */
    size_t nc;          /* column block: a KC x NC weight slab stays in L3 */
    int two_panels;     /* run takes single rows over two panels (w_next above) */
    size_t widen_rows;  /* compressed formats: from this many rows on, x is packed and each
                           weight block widened once into a buffer; 0: only where x is
                           too large to read in place (FL_DIRECT_X_MAX_BYTES) */
    /* FL_I8Q, FL_I4Q only (run NULL): */
    fl_qkernel *qrun;
    fl_quantizer *quantize;
    size_t qk, qx, qshift;  /* k values per step, bytes per quantized value, its shift */
} fl_kernel;

/* Applies ep to an m x n block of y (row stride ldy elements) in place: the ISA's
 * instance of activation.h's fl_activate_body (the same bits on every ISA). */
typedef void fl_activator(const fl_epilogue *ep, fl_dtype dtype, void *y, size_t ldy,
                          size_t m, size_t n);

/* One row of a model's row-wise step st (AFFINE, LAYERNORM, SOFTMAX, LOGSOFTMAX): n
 * values of x into y (apart, but for AFFINE, which may run in place): the ISA's
 * instance of rowops.h's fl_row_body. */
typedef void fl_row_step(const fl_step *st, fl_dtype dtype, size_t n, const char *x,
                         char *y);

typedef struct {
    const char *name;
    int (*cpu_has)(void);   /* 1 when this CPU can run it */
    fl_activator *activate;
    fl_row_step *row;
    fl_kernel k[FL_NDTYPES]; /* indexed by fl_dtype; compressed formats share float32's
                                blocking, as they run on its kernel for large batches */
} fl_isa;

struct fl_packed {
    const fl_isa *isa;
    const fl_kernel *kern;  /* isa->k[dtype] */
    fl_dtype dtype;
    size_t n, k;
    size_t group;       /* int4: k rows per scale group; else 0 */
    size_t panels;      /* ceil(n / nr) */
    size_t panel_bytes; /* one panel of w, a multiple of 64 */
    void *w;            /* panels * panel_bytes, 64-byte aligned */
    float *scale;       /* int8: panels * nr scales; else NULL */
    int32_t *wsum;      /* FL_I8Q: panels * nr sums (fl_qkernel's wsum); else NULL */
};

/* Byte offset of k row `pc` (a multiple of KC) in a panel of p. */
size_t fl_panel_offset(const fl_packed *p, size_t pc);
/* Widens rows [pc, pc + kc) of weight panel `q` to float32 values W(k, j): dst gets
 * kc x NR floats, 64-byte aligned (the kernel's widener). */
void fl_expand(const fl_packed *p, size_t q, size_t pc, size_t kc, float *dst);

/* For the kernels' tile bodies: unrolls a loop of a constant trip count (at most 8)
 * completely, so that arrays indexed by its counter (the accumulators) can live in
 * registers. GCC needs telling; clang does it unasked, and its pragma would unroll the
 * loop before inlining makes the trip count constant (by a runtime factor, with the
 * accumulators left in memory). */
#ifdef __clang__
#define FL_UNROLL
#else
#define FL_UNROLL _Pragma("GCC unroll 8")
#endif

/* Whether the kernels have int4 tiles. clang 14 keeps their accumulators in memory
 * however they are written (tests/test_disassembly.py), so its builds run int4 weights
 * through the widened buffer and the float32 kernel at every M, a slower path for one
 * row (the weights' widening and the FMAs no longer overlap). */
#ifdef __clang__
#define FL_INT4_TILES 0
#else
#define FL_INT4_TILES 1
#endif

/* The block sizes a call of `threads` threads (as its caller asked) uses: fl_kernel's
 * kc, mc, nc unless fl_set_blocking() chose others for the ISA, the weights' value type
 * and that count, or for any count; and how far ahead its tiles of several rows prefetch
 * weights that come from cache (0 unless set so). Read once per call, into its plan. */
typedef struct { size_t kc, mc, nc, ahead; } fl_blocks;
fl_blocks fl_blocks_in_force(const fl_isa *isa, fl_dtype dtype, int threads);
/* fl_set_cache_bytes()'s value (dispatch.c). */
size_t fl_cache_bytes(void);

/* Kernels, one file per ISA (kernels/tile.h says what each defines). */
extern const fl_isa fl_isa_ref;
#if defined(__x86_64__) || defined(__i386__)
extern const fl_isa fl_isa_avx2;
extern const fl_isa fl_isa_avx512;
extern const fl_isa fl_isa_avx512_vnni;
#endif

/* The ISA fl_alloc() uses now (dispatch.c). */
const fl_isa *fl_current_isa(void);

/* 64-byte aligned, uninitialised; NULL on overflow or exhaustion; release with free(). */
void *fl_aligned_alloc(size_t count, size_t size);

/* Packs a kc x nr block of float32 or float64 weights for the kernel: columns c < cols
 * from rows of W (kc contiguous values each, ldw values apart: c's at w + c * ldw), the
 * rest zero; dst[k * nr + c] as in a packed panel. */
void fl_pack_block(fl_dtype dtype, size_t nr, size_t cols, size_t kc, const void *w,
                   size_t ldw, void *dst);

/* Packs rows [0, m) x columns [0, kc) of x (row stride ldx) into micro-panels of MR rows:
 * element (i, k) goes to dst[(i / mr) * kc * mr + k * mr + i % mr]. */
void fl_pack_x(fl_dtype dtype, size_t mr, size_t m, size_t kc, const void *x, size_t ldx,
               void *dst);

#endif
