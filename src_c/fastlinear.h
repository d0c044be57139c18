/* fastlinear C kernel: the one public contract.
 *
 * Operation:  y[i, j] = sum_k x[i, k] * W[j, k]  (+ b[j])      0 <= i < M, 0 <= j < N
 * i.e. y = x @ W.T + b, the forward pass of torch.nn.Linear.
 *
 * Types: float32 (FL_F32) or float64 (FL_F64); x, W, b and y share one type.
 *
 * Layouts (all strides in elements, not bytes):
 *   W  is read once by fl_pack() with arbitrary strides (rs_w, cs_w) and copied into
 *      64-byte aligned panels of NR output columns, K rows each, zero-padded past N.
 *   x  is M x K, unit stride along k, row stride ldx >= 0 (0 broadcasts one row).
 *   y  is M x N, unit stride along j, row stride ldy >= N; it is only written, never
 *      read before written (it may hold NaN garbage on entry).
 *   x and y must not overlap.
 *
 * Numerics: every y[i, j] is one multiply-add chain over k in ascending order, started
 * from zero, followed by one addition of b[j]. The chain never splits (no partial sums,
 * no split of K across threads), so a row's result does not depend on M, on the row's
 * position in the batch or on the thread count. Different ISAs may round differently
 * (FMA vs separate multiply and add); one ISA always rounds the same way.
 *
 * Threads: fl_forward() may run an OpenMP team of up to `nthreads`; scratch memory is
 * per call, so concurrent calls from different threads on one fl_packed are safe.
 * Sizes are size_t throughout: M*K, K*N and M*N may exceed 2^31.
 */
#ifndef FASTLINEAR_H
#define FASTLINEAR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FL_F32 = 0, FL_F64 = 1 } fl_dtype;

enum { FL_OK = 0, FL_ENOMEM = 1 };

typedef struct fl_packed fl_packed;

/* Packs W (N x K, strides rs_w/cs_w) and the optional bias b (stride bs) for the kernel
 * chosen by fl_isa_name(). Returns NULL when memory cannot be allocated. */
fl_packed *fl_pack(fl_dtype dtype, size_t n, size_t k, const void *w, ptrdiff_t rs_w,
                   ptrdiff_t cs_w, const void *b, ptrdiff_t bs);
void fl_free(fl_packed *p);

/* y = x @ W.T + b for M rows. Returns FL_OK or FL_ENOMEM (y untouched then). */
int fl_forward(const fl_packed *p, size_t m, const void *x, size_t ldx, void *y,
               size_t ldy, int nthreads);

/* Name of the micro-kernel ISA that fl_pack() uses now: the best one this CPU supports,
 * picked on first use. Weights already packed keep the kernel they were packed for. */
const char *fl_isa_name(void);
/* Makes fl_pack() use the named ISA ("ref", ...). Returns 0, or -1 for an unknown name,
 * -2 for an ISA this CPU (or this build) lacks. Not thread-safe: call it at start-up. */
int fl_set_isa(const char *name);
/* Name of the i-th ISA this CPU and build support, best last; NULL past the end. */
const char *fl_supported_isa(int i);
/* The block sizes fl_pack() would use now for `dtype` (for tests and diagnostics). */
typedef struct { size_t mr, nr, kc, mc, nc, direct_x_max_bytes; } fl_blocking;
void fl_get_blocking(fl_dtype dtype, fl_blocking *out);
/* 1 when built with OpenMP, else 0. */
int fl_openmp_enabled(void);
/* Thread count OpenMP would use by default (OMP_NUM_THREADS, affinity); 1 without OpenMP. */
int fl_default_threads(void);

#ifdef __cplusplus
}
#endif
#endif
