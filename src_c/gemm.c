/* The blocked loop nest and how its work is cut among threads: y = x @ W.T + b over
 * packed weights (the threads themselves: threads.c).
 * BLIS loop names: jc (NC columns) > pc (KC of k) > ic (MC rows) > jr (NR) > ir (MR). */
#include <stdlib.h>
#include "blocking.h"
#include "driver.h"

typedef struct {
    const fl_packed *p;     /* the weights, or (plain) only their shape and kernel */
    fl_blocks bl;           /* the call's block sizes */
    int plain;              /* W as the caller holds it, at w (rows ldw values apart) */
    const char *w;
    size_t ldw;
    const char *bias;       /* NULL, or N values */
    const fl_epilogue *ep;  /* NULL, or applied to each tile after its last k block */
    size_t m;
    const char *x;
    size_t ldx;
    char *y;
    size_t ldy;
    size_t ahead;           /* the kernels' prefetch distance for packed weights */
    int streamed;           /* whether they come from memory (fl_plan) */
    const char *q;          /* FL_I8Q: x quantized, rows ldq bytes apart, ... */
    size_t ldq;
    const float *xs;        /* ... and their scales, nxs per row */
    size_t nxs;
} fl_job;

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* The weights the tiles of panel q read for k rows [pc, pc + kc), and the kernel that
 * reads them: the packed panel itself, or, given `wbuf`, its values widened there once
 * (fl_expand) for the float32 kernel, the same bits (kernel.h). */
typedef struct {
    fl_ukernel *run;
    const char *w;
    size_t ahead;      /* the kernel's prefetch distance (0 for a buffer in cache) */
} fl_weights;

static fl_weights weights(const fl_job *jb, size_t q, size_t pc, size_t kc, float *wbuf)
{
    const fl_packed *p = jb->p;
    if (jb->plain) {
        /* The whole panel packed into wbuf when the call reaches it (pc = 0 comes first),
         * reading its NR rows of W front to back: the same layout, so the same bits, as
         * weights packed once. */
        const size_t nr = p->kern->nr, size = fl_value_size(p->dtype);
        if (pc == 0)
            fl_pack_block(p->dtype, nr, min_sz(nr, p->n - q * nr), p->k,
                          jb->w + q * nr * jb->ldw * size, jb->ldw, wbuf);
        return (fl_weights){p->kern->run, (const char *)wbuf + pc * nr * size, 0};
    }
    if (wbuf) {
        fl_expand(p, q, pc, kc, wbuf);
        return (fl_weights){p->isa->k[FL_F32].run, (const char *)wbuf, 0};
    }
    return (fl_weights){p->kern->run,
                        (const char *)p->w + q * p->panel_bytes + fl_panel_offset(p, pc),
                        jb->ahead};
}

/* ep on the m x n tile of y whose first column is j0: the scale and shift (the AFFINE
 * row step, in place: the same operations as a BatchNorm1d step of its own), then the
 * activation. */
static void epilogue(const fl_packed *p, const fl_epilogue *ep, char *y, size_t ldy,
                     size_t m, size_t j0, size_t n)
{
    const fl_dtype dt = fl_formats[p->dtype].values;
    const size_t size = fl_value_size(dt);
    if (ep->scale) {
        fl_step affine = {FL_STEP_AFFINE};
        affine.a = (const char *)ep->scale + j0 * size;
        affine.b = (const char *)ep->shift + j0 * size;
        for (size_t i = 0; i < m; i++)
            p->isa->row(&affine, dt, n, y + i * ldy * size, y + i * ldy * size);
    }
    if (ep->act != FL_ACT_NONE)
        p->isa->activate(ep, dt, y, ldy, m, n);
}

/* Rows [row, row + m) (m <= MR) of weight panels q .. q + np - 1 (np = 2 only for one
 * row, with kernels of two_panels) for k in [pc, pc + kc), one kernel call (its
 * summation blocks inside), the scale and bias with the last k block. Rows are
 * independent, so fewer than MR rows run as tiles whose heights are powers of two (the
 * heights kernels instantiate, kernel.h) with the same bits. */
static void run_tile(const fl_job *jb, fl_weights wt, size_t q, size_t np, size_t pc,
                     size_t kc, const char *a, ptrdiff_t a_rs, ptrdiff_t a_cs, size_t row,
                     size_t m)
{
    const fl_packed *p = jb->p;
    const size_t size = fl_value_size(p->dtype), nr = p->kern->nr;
    const int last = pc + kc == p->k;
    const size_t n = min_sz(np * nr, p->n - q * nr);
    const char *bq = last && jb->bias ? jb->bias + q * nr * size : NULL;
    const float *sq = last && p->scale ? p->scale + q * nr : NULL;
    while (m > 0) {
        size_t h = 1;
        if (m == p->kern->mr)
            h = m;
        else
            while (2 * h <= m)
                h *= 2;
        char *yt = jb->y + (row * jb->ldy + q * nr) * size;
        wt.run(kc, a, a_rs, a_cs, wt.w, (ptrdiff_t)p->panel_bytes, wt.ahead, p->group, yt,
               jb->ldy, h, n, pc == 0, sq, bq);
        if (last && jb->ep)  /* the epilogue, while the tile is in L1 */
            epilogue(p, jb->ep, yt, jb->ldy, h, q * nr, n);
        a += (ptrdiff_t)h * a_rs * (ptrdiff_t)size;
        row += h;
        m -= h;
    }
}

/* Rows of the next tile of x read in place, `left` rows to go: MR, but where the
 * weights come from cache, the last MR + 2 (or MR + 3) rows go as two tiles of
 * (MR + 2) / 2 (then 1) where the kernels have that height (a power of two below MR):
 * AVX-512's 6 + 2 becomes 4 + 4, as the 2-row tile needs a weight load per two FMAs.
 * Weights streamed from memory keep MR first: the tiles after the first read the block
 * from cache while the memory waits, so the shorter they are the better. Measured
 * (avx512, Zen 4, 2 threads, us, 6 + 2 -> 4 + 4): 8x768x3072 198 -> 177, 9x768x3072
 * 241 -> 220, 15x768x3072 372 -> 351; 8x4096x4096, streamed: 1817 -> 1930. */
static size_t tile_rows(size_t mr, size_t left, int streamed)
{
    const size_t half = (mr + 2) / 2;
    if (!streamed && mr % 2 == 0 && half < mr && (half & (half - 1)) == 0
        && (left == mr + 2 || left == mr + 3))
        return half;
    return min_sz(mr, left);
}

/* x read in place, rows [r0, r1) x weight panels [q0, q1): each panel is streamed once,
 * front to back (its k blocks lie one after another), for all the rows; a single row
 * takes two panels at a time where the kernel can (twice the independent sums to hide
 * the FMA latency: that bounds one row of compressed weights, read from cache). `wbuf`:
 * NULL, or room for one widened KC x NR block where the format's kernel is missing, or
 * for a whole panel of a plain W (fl_forward_plain). */
static void run_direct(const fl_job *jb, size_t r0, size_t r1, size_t q0, size_t q1,
                       float *wbuf)
{
    const fl_kernel *kr = jb->p->kern;
    const size_t size = fl_value_size(jb->p->dtype), k = jb->p->k;
    const size_t step = r1 - r0 == 1 && kr->two_panels && !wbuf ? 2 : 1;
    /* A single row takes all of k in one block: blocks are there for the tiles after the
     * first to find the weights in cache, and each costs a round of calls (1x768x3072 on
     * AVX2's 128-row blocks: 54 -> 51 us, Zen 4). A widening buffer holds one block. */
    const size_t kb = r1 - r0 == 1 && (!wbuf || jb->plain) ? k : jb->bl.kc;
    for (size_t q = q0; q < q1; q += step) {
        const size_t np = min_sz(step, q1 - q);
        size_t pc = 0;
        do {  /* at least once: K = 0 still writes the bias */
            const size_t kc = min_sz(kb, k - pc);
            const fl_weights wt = weights(jb, q, pc, kc, wbuf);
            for (size_t ir = r0, h; ir < r1; ir += h) {
                h = tile_rows(kr->mr, r1 - ir, jb->streamed);
                run_tile(jb, wt, q, np, pc, kc, jb->x + (ir * jb->ldx + pc) * size,
                         (ptrdiff_t)jb->ldx, 1, ir, h);
            }
            pc += kc;
        } while (pc < k);
    }
}

/* Many rows, rows [r0, r1) x weight panels [q0, q1): each MC x KC block of x is packed
 * into `xbuf` and reused across the KC x NC slab of weights; compressed weights are
 * widened into `wbuf` once per row block (not per tile). */
static void run_packed(const fl_job *jb, size_t r0, size_t r1, size_t q0, size_t q1,
                       void *xbuf, float *wbuf)
{
    const fl_packed *p = jb->p;
    const fl_kernel *kr = p->kern;
    const size_t size = fl_value_size(p->dtype), mr = kr->mr, k = p->k;
    const size_t nc_panels = jb->bl.nc / kr->nr;
    for (size_t jc = q0; jc < q1; jc += nc_panels) {
        const size_t jc_end = min_sz(jc + nc_panels, q1);
        size_t pc = 0;
        do {
            const size_t kc = min_sz(jb->bl.kc, k - pc);
            for (size_t ic = r0; ic < r1; ic += jb->bl.mc) {
                const size_t mc = min_sz(jb->bl.mc, r1 - ic);
                fl_pack_x(p->dtype, mr, mc, kc, jb->x + (ic * jb->ldx + pc) * size, jb->ldx,
                          xbuf);
                for (size_t q = jc; q < jc_end; q++) {
                    const fl_weights wt = weights(jb, q, pc, kc, wbuf);
                    for (size_t ir = 0; ir < mc; ir += mr)
                        run_tile(jb, wt, q, 1, pc, kc, (char *)xbuf + ir * kc * size, 1,
                                 (ptrdiff_t)mr, ic + ir, min_sz(mr, mc - ir));
                }
            }
            pc += kc;
        } while (pc < k);
    }
}

/* Integer activations, rows [r0, r1) x weight panels [q0, q1): each tile sums all of k
 * in registers (kernel.h's fl_qkernel), a block of rows at a time, so that the block's
 * quantized rows stay in L2 while the panels stream past. */
static void run_int(const fl_job *jb, size_t r0, size_t r1, size_t q0, size_t q1)
{
    const fl_packed *p = jb->p;
    const fl_kernel *kr = p->kern;
    const size_t mr = kr->mr, nr = kr->nr;
    size_t block = FL_DIRECT_X_MAX_BYTES / jb->ldq / mr * mr;
    block = block ? block : mr;
    for (size_t ib = r0; ib < r1; ib += block) {
        const size_t ie = min_sz(ib + block, r1);
        for (size_t q = q0; q < q1; q++) {
            const size_t n = min_sz(nr, p->n - q * nr);
            const char *w = (const char *)p->w + q * p->panel_bytes;
            const float *bias = jb->bias ? (const float *)jb->bias + q * nr : NULL;
            for (size_t ir = ib; ir < ie; ir += mr) {
                const size_t h = min_sz(mr, ie - ir);
                float *yt = (float *)jb->y + ir * jb->ldy + q * nr;
                kr->qrun(p->k, jb->q + ir * jb->ldq, jb->ldq, jb->xs + ir * jb->nxs, w,
                         p->wsum ? p->wsum + q * nr : NULL, p->scale ? p->scale + q * nr : NULL,
                         p->group, bias, yt, jb->ldy, h, n);
                if (jb->ep)
                    epilogue(p, jb->ep, (char *)yt, jb->ldy, h, q * nr, n);
            }
        }
    }
}

static void run_share(const fl_job *jb, const fl_plan *pl, char *scratch, size_t t,
                      size_t team)
{
    const size_t lo = pl->parts * t / team, hi = pl->parts * (t + 1) / team;
    const size_t mr = jb->p->kern->mr;
    if (lo >= hi)
        return;
    const size_t r0 = pl->split_rows ? lo * mr : 0;
    const size_t r1 = pl->split_rows ? min_sz(hi * mr, jb->m) : jb->m;
    float *wbuf = pl->widen ? (float *)(scratch + pl->xbuf_bytes) : NULL;
    if (jb->q && pl->split_rows)
        run_int(jb, r0, r1, 0, jb->p->panels);
    else if (jb->q)
        run_int(jb, 0, jb->m, lo, hi);
    else if (pl->pack_x && pl->split_rows)
        run_packed(jb, r0, r1, 0, jb->p->panels, scratch, wbuf);
    else if (pl->pack_x)
        run_packed(jb, 0, jb->m, lo, hi, scratch, wbuf);
    else if (pl->split_rows)
        run_direct(jb, r0, r1, 0, jb->p->panels, wbuf);
    else
        run_direct(jb, 0, jb->m, lo, hi, wbuf);
}

void fl_gemm_share(const fl_packed *p, const void *b, const fl_plan *pl,
                   const fl_epilogue *ep, size_t m, const void *x, size_t ldx, void *y,
                   size_t ldy, void *scratch, void *shared, size_t t, size_t team)
{
    if (m == 0 || p->n == 0)
        return;
    const int any = ep && (ep->act != FL_ACT_NONE || ep->scale);
    fl_job jb = {p, pl->bl, 0, NULL, 0, b, any ? ep : NULL, m, x, ldx, y, ldy, pl->ahead,
                 pl->streamed, NULL, 0, NULL, pl->nxs};
    if (fl_formats[p->dtype].quantizes_x) {
        /* each row quantized once, by one thread of the team, before any tile reads it */
        jb.q = shared;
        jb.ldq = pl->ldq;
        jb.xs = (const float *)((char *)shared + m * pl->ldq);
        for (size_t i = m * t / team; i < m * (t + 1) / team; i++)
            p->kern->quantize(p->k, pl->kq, p->group, (const float *)x + i * ldx,
                              (char *)shared + i * pl->ldq, (float *)jb.xs + i * pl->nxs);
        /* not alone: a call without a team of its own may run inside a caller's
         * parallel region, whose other threads would never come */
        if (team > 1) {
#pragma omp barrier
        }
    }
    run_share(&jb, pl, scratch, t, team);
}

fl_plan fl_plan_gemm(const fl_packed *p, size_t m, size_t team, fl_blocks bl)
{
    const fl_kernel *kr = p->kern;
    const size_t size = fl_value_size(p->dtype);
    fl_plan pl = {0};
    pl.bl = bl;
    /* Weights streamed from memory need a software prefetch (blocking.h). Those that
     * stay in cache between calls are read fastest without one on Zen 4 (it took
     * 1x768x3072, 9 MiB, from 52 to 80 us; the MLP of docs/performance.md at batch 1
     * from 23-26 to 32-35 us): a single row never asks; tiles of several rows, which
     * compute longer per byte, ask bl.ahead ahead (0 unless fastlinear.tune found a
     * distance that pays on this machine). */
    pl.streamed = (double)p->panels * (double)p->panel_bytes > (double)fl_cache_bytes() / 2;
    pl.ahead = pl.streamed ? FL_PREFETCH_BYTES : m > 1 ? bl.ahead : 0;
    pl.pack_x = (double)m * (double)p->k * (double)size > FL_DIRECT_X_MAX_BYTES
                || (kr->widen_rows && m >= kr->widen_rows);
    /* Compressed weights are widened into a buffer where their kernel is missing, and
     * for packed x, where MC rows reuse each widened block; for fewer rows, widening in
     * registers as the tiles read the weights measured faster, but for costly widenings
     * (widen_rows, kernels/<isa>.c). */
    pl.widen = fl_formats[p->dtype].widens && (pl.pack_x || !kr->run);
    if (fl_formats[p->dtype].quantizes_x) {
        /* x quantized into the team's buffer, which the tiles read in place: the rows
         * padded to whole groups of int4 weights (or 16 values), whole cache lines apart */
        const size_t unit = p->group ? p->group : 16;
        pl.pack_x = 0;
        pl.kq = (p->k + unit - 1) / unit * unit;
        pl.ldq = (pl.kq * kr->qx + 63) / 64 * 64 + (p->k == 0) * 64;
        pl.nxs = p->group ? pl.kq / p->group : 1;  /* int4: a scale per group of x */
        pl.shared_bytes = m * pl.ldq + (m * pl.nxs * sizeof(float) + 63) / 64 * 64;
    }
    /* Each thread takes a band of weight panels, so the weights are streamed (and
     * widened) once in total, unless there are too few panels to go round; except that
     * float weights with packed x split the rows, each thread packing its own blocks of
     * x (the weights come from L3 for both). Never a split of k. */
    pl.split_rows = (pl.pack_x && !pl.widen) || p->panels < team;
    pl.parts = pl.split_rows ? (m + kr->mr - 1) / kr->mr : p->panels;
    if (pl.pack_x || pl.widen) {
        /* Per thread: one MC x KC block of x, its last micro-panel rounded up to MR
         * rows, then one KC x NR block of weights, each rounded up to whole cache lines
         * so that threads never share one. */
        const size_t rows = (min_sz(pl.bl.mc, m) + kr->mr - 1) / kr->mr * kr->mr;
        const size_t kc = min_sz(pl.bl.kc, p->k);
        pl.xbuf_bytes = pl.pack_x ? (rows * kc * size + 63) / 64 * 64 : 0;
        const size_t wbuf_bytes = (kc * kr->nr * sizeof(float) + 63) / 64 * 64;
        pl.buf_bytes = pl.xbuf_bytes + (pl.widen ? wbuf_bytes : 0);
    }
    return pl;
}

int fl_forward(const fl_packed *p, const void *b, size_t m, const void *x, size_t ldx,
               void *y, size_t ldy, int nthreads)
{
    if (m == 0 || p->n == 0)
        return FL_OK;
    size_t threads = fl_threads_begin((double)m * (double)p->n * (double)p->k, nthreads);
    const fl_plan pl = fl_plan_gemm(p, m, threads,
                                    fl_blocks_in_force(p->isa, p->dtype, nthreads));
    threads = min_sz(threads, pl.parts);
    /* the team's shared scratch, then each thread's */
    char *buf = NULL, *mine = NULL;
    if (pl.buf_bytes + pl.shared_bytes) {
        if (!(buf = fl_aligned_alloc(1, pl.shared_bytes + threads * pl.buf_bytes))) {
            fl_threads_end();
            return FL_ENOMEM;
        }
        mine = pl.buf_bytes ? buf + pl.shared_bytes : NULL;
    }
    if (threads == 1) {  /* no team to start: a few hundred ns matter to tiny calls */
        fl_gemm_share(p, b, &pl, NULL, m, x, ldx, y, ldy, mine, buf, 0, 1);
    } else {
        fl_team_starting();
#pragma omp parallel num_threads((int)threads)
        {
            /* The team may be smaller than asked for (nesting, OMP_THREAD_LIMIT). */
            const size_t t = (size_t)fl_thread_id();
            char *scratch = mine ? mine + t * pl.buf_bytes : NULL;
            fl_gemm_share(p, b, &pl, NULL, m, x, ldx, y, ldy, scratch, buf, t,
                          (size_t)fl_team_size());
        }
    }
    free(buf);
    fl_threads_end();
    return FL_OK;
}

int fl_forward_plain(fl_dtype dtype, size_t n, size_t k, const void *w, size_t ldw,
                     const void *b, size_t m, const void *x, size_t ldx, void *y,
                     size_t ldy, int nthreads)
{
    if (m == 0 || n == 0)
        return FL_OK;
    const size_t size = fl_value_size(dtype);
    if ((double)m * (double)k * (double)size > FL_DIRECT_X_MAX_BYTES) {
        /* x would be packed a block at a time, each block reading all the weights: pack
         * them once first, which costs less than the product */
        fl_packed *p = fl_alloc(dtype, n, k, 0);
        if (!p)
            return FL_ENOMEM;
        const size_t nr = p->kern->nr;
        for (size_t q = 0; q < p->panels; q++)  /* the panel layout: K x NR values */
            fl_pack_block(dtype, nr, min_sz(nr, n - q * nr), k,
                          (const char *)w + q * nr * ldw * size, ldw,
                          (char *)p->w + q * p->panel_bytes);
        const int rc = fl_forward(p, b, m, x, ldx, y, ldy, nthreads);
        fl_free(p);
        return rc;
    }
    const fl_isa *isa = fl_current_isa();
    const fl_kernel *kr = &isa->k[dtype];
    const fl_packed shape = {isa, kr, dtype, n, k, 0, (n + kr->nr - 1) / kr->nr, 0, NULL,
                             NULL};
    const fl_job jb = {&shape, fl_blocks_in_force(isa, dtype, nthreads), 1, w, ldw, b,
                       NULL, m, x, ldx, y, ldy, 0, 0, NULL, 0, NULL, 0};
    size_t threads = fl_threads_begin((double)m * (double)n * (double)k, nthreads);
    threads = min_sz(threads, shape.panels);
    /* per thread: one panel of weights, K x NR values, whole cache lines */
    const size_t bytes = (k * kr->nr * size + 63) / 64 * 64;
    char *buf = fl_aligned_alloc(threads, bytes ? bytes : 64);
    if (!buf) {
        fl_threads_end();
        return FL_ENOMEM;
    }
    if (threads == 1) {
        run_direct(&jb, 0, m, 0, shape.panels, (float *)buf);
    } else {
        fl_team_starting();
#pragma omp parallel num_threads((int)threads)
        {
            const size_t t = (size_t)fl_thread_id(), team = (size_t)fl_team_size();
            run_direct(&jb, 0, m, shape.panels * t / team, shape.panels * (t + 1) / team,
                       (float *)(buf + t * bytes));
        }
    }
    free(buf);
    fl_threads_end();
    return FL_OK;
}
