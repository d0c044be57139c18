/* What the model runner (model.c) takes from the GEMM driver (gemm.c): one Linear's
 * work cut among a team of threads, and the team's size. Not part of the public API. */
#ifndef FL_DRIVER_H
#define FL_DRIVER_H

#include "kernel.h"
#include "threads.h"

/* How one product of m rows is cut among `team` threads: each takes a share of `parts`,
 * which are row micro-panels (split_rows) or weight panels. */
typedef struct {
    fl_blocks bl;       /* the block sizes of the whole call */
    int pack_x, split_rows, widen;
    size_t parts;
    size_t xbuf_bytes;  /* per thread: a block of packed x (pack_x) ... */
    size_t buf_bytes;   /* ... then one widened KC x NR block of weights (widen): the
                           scratch each thread needs, 0 for none */
    int streamed;       /* the weights come from memory, not from cache */
    size_t ahead;       /* the kernels' prefetch distance (kernel.h) */
    size_t kq, ldq;     /* FL_I8Q, FL_I4Q: values and bytes of a quantized row of x, ... */
    size_t nxs;         /* ... its scales (FL_I4Q: one per group), ... */
    size_t shared_bytes;  /* ... the rows and their scales: the scratch the team
                             shares, 0 for none */
} fl_plan;

/* bl: the call's block sizes (fl_blocks_in_force, read once per call). */
fl_plan fl_plan_gemm(const fl_packed *p, size_t m, size_t team, fl_blocks bl);

/* Thread t's share (t < team) of y = ep(x @ W.T + b) under plan pl; scratch: pl's
 * buf_bytes for this thread, shared: pl's shared_bytes for the team, both 64-byte
 * aligned. b (N values) and ep may be NULL. Every thread of the team must call it: for
 * FL_I8Q the team quantizes x into `shared`, then waits at a barrier. */
void fl_gemm_share(const fl_packed *p, const void *b, const fl_plan *pl,
                   const fl_epilogue *ep, size_t m, const void *x, size_t ldx, void *y,
                   size_t ldy, void *scratch, void *shared, size_t t, size_t team);

#endif
