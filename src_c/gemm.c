/* The blocked loop nest and its threads: y = x @ W.T + b over packed weights.
 * BLIS loop names: jc (NC columns) > pc (KC of k) > ic (MC rows) > jr (NR) > ir (MR). */
#include <stdlib.h>
#include "kernel.h"
#include "blocking.h"
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const fl_packed *p;
    size_t m;
    const char *x;
    size_t ldx;
    char *y;
    size_t ldy;
} fl_job;

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* Rows [r0, r1) x weight panels [q0, q1) of y. With `xbuf`, each MC x KC block of x is
 * packed there first; without, the micro-kernel reads x in place. */
static void run_rect(const fl_job *jb, size_t r0, size_t r1, size_t q0, size_t q1,
                     void *xbuf)
{
    const fl_packed *p = jb->p;
    const fl_kernel *kr = p->kern;
    const size_t size = fl_dtype_size(p->dtype), mr = kr->mr, nr = kr->nr, k = p->k;
    const size_t nc_panels = kr->nc / nr;
    const char *w = p->w, *bias = p->bias;

    for (size_t jc = q0; jc < q1; jc += nc_panels) {
        const size_t jc_end = min_sz(jc + nc_panels, q1);
        size_t pc = 0;
        do {  /* at least once: K = 0 still writes the bias */
            const size_t kc = min_sz(kr->kc, k - pc);
            const int first = pc == 0, last = pc + kc == k;
            for (size_t ic = r0; ic < r1; ic += kr->mc) {
                const size_t mc = min_sz(kr->mc, r1 - ic);
                const char *xblock = jb->x + (ic * jb->ldx + pc) * size;
                if (xbuf)
                    fl_pack_x(p->dtype, mr, mc, kc, xblock, jb->ldx, xbuf);
                for (size_t q = jc; q < jc_end; q++) {
                    const char *wq = w + (q * k + pc) * nr * size;
                    const char *bq = (last && bias) ? bias + q * nr * size : NULL;
                    const size_t n = min_sz(nr, p->n - q * nr);
                    char *yq = jb->y + (ic * jb->ldy + q * nr) * size;
                    for (size_t ir = 0; ir < mc; ir += mr) {
                        const size_t m = min_sz(mr, mc - ir);
                        if (xbuf)
                            kr->run(kc, (char *)xbuf + ir * kc * size, 1, (ptrdiff_t)mr, wq,
                                    yq + ir * jb->ldy * size, jb->ldy, m, n, first, bq);
                        else
                            kr->run(kc, xblock + ir * jb->ldx * size, (ptrdiff_t)jb->ldx, 1,
                                    wq, yq + ir * jb->ldy * size, jb->ldy, m, n, first, bq);
                    }
                }
            }
            pc += kc;
        } while (pc < k);
    }
}

static int team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int fl_forward(const fl_packed *p, size_t m, const void *x, size_t ldx, void *y,
               size_t ldy, int nthreads)
{
    const fl_kernel *kr = p->kern;
    if (m == 0 || p->n == 0)
        return FL_OK;
    const fl_job jb = {p, m, x, ldx, y, ldy};
    const size_t row_tiles = (m + kr->mr - 1) / kr->mr;
    const int pack_x = m >= kr->pack_x_min_m;
    /* Many rows: each thread takes a band of rows and packs its own blocks of x.
     * Few rows: each thread takes a band of weight panels, so the weights are streamed
     * once in total. Never a split of k. */
    const size_t parts = pack_x ? row_tiles : p->panels;
    size_t threads = nthreads > 1 ? (size_t)nthreads : 1;
    if ((double)m * (double)p->n * (double)p->k < FL_PARALLEL_MIN_MADDS)
        threads = 1;
    threads = min_sz(threads, parts);
#ifndef _OPENMP
    threads = 1;
#endif

    char *xbuf = NULL;
    /* One MC x KC block, its last micro-panel rounded up to MR rows. */
    const size_t xbuf_rows = (min_sz(kr->mc, m) + kr->mr - 1) / kr->mr * kr->mr;
    const size_t xbuf_len = xbuf_rows * min_sz(kr->kc, p->k ? p->k : 1);
    if (pack_x) {
        xbuf = fl_aligned_alloc(threads * xbuf_len, fl_dtype_size(p->dtype));
        if (!xbuf)
            return FL_ENOMEM;
    }

#pragma omp parallel num_threads((int)threads) if (threads > 1)
    {
        /* The team may be smaller than asked for (nesting, OMP_THREAD_LIMIT). */
        const size_t t = (size_t)thread_id(), team = (size_t)team_size();
        const size_t lo = parts * t / team, hi = parts * (t + 1) / team;
        if (lo < hi) {
            if (pack_x)
                run_rect(&jb, lo * kr->mr, min_sz(hi * kr->mr, m), 0, p->panels,
                         xbuf + t * xbuf_len * fl_dtype_size(p->dtype));
            else
                run_rect(&jb, 0, m, lo, hi, NULL);
        }
    }
    free(xbuf);
    return FL_OK;
}
