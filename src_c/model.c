/* The model runner (fastlinear.h, fl_model_forward): a chain of steps run by one team of
 * threads, a block of rows at a time, the rows between steps in two per-call buffers.
 * Each row's values are computed by the same operations whatever the block, the team or
 * the thread that takes it: Linear steps by the GEMM driver's tiles, the other steps one
 * row at a time, by one thread (the ISA's activate and row: activation.h, rowops.h). */
#include <stdlib.h>
#include <string.h>
#include "blocking.h"
#include "driver.h"

enum { FL_BUFFER_SKEW = 17 * 64 };  /* the buffers' offset modulo 4 KiB: whole lines */

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

typedef struct {
    const fl_step *steps;
    size_t nsteps;
    fl_dtype dtype;
    size_t width_in, m;
    const char *x;
    size_t ldx;
    char *y;
    size_t ldy;
    char *buf[2];        /* the rows between steps: FL_MODEL_ROWS x widest values each */
    size_t widest;
    char *scratch;       /* the GEMM's per-thread scratch, scratch_bytes each */
    size_t scratch_bytes;
    char *shared;        /* the GEMM's scratch for the team (FL_I8Q's quantized rows) */
    fl_blocks *bl;       /* each LINEAR step's block sizes, read once for the call */
} fl_model_call;

/* Thread t's share of one step over `rows` rows: its band of the GEMM's parts, or its
 * band of rows for the row-wise steps. */
static void run_step(const fl_model_call *c, const fl_step *st, size_t width, size_t rows,
                     const char *in, size_t ldin, char *out, size_t ldout, size_t t,
                     size_t team)
{
    const fl_dtype dt = c->dtype;
    const size_t size = fl_value_size(dt);
    if (st->kind == FL_STEP_LINEAR) {
        const fl_plan pl = fl_plan_gemm(st->linear, rows, team, c->bl[st - c->steps]);
        fl_gemm_share(st->linear, st->bias, &pl, &st->ep, rows, in, ldin, out, ldout,
                      c->scratch ? c->scratch + t * c->scratch_bytes : NULL, c->shared, t,
                      team);
        return;
    }
    const size_t r0 = rows * t / team, r1 = rows * (t + 1) / team;
    for (size_t i = r0; i < r1; i++) {
        const char *xr = in + i * ldin * size;
        char *yr = out + i * ldout * size;
        if (st->kind == FL_STEP_ACT) {
            memcpy(yr, xr, width * size);
            fl_current_isa()->activate(&st->ep, dt, yr, 0, 1, width);
        } else {
            fl_current_isa()->row(st, dt, width, xr, yr);
        }
    }
}

static void run_team(const fl_model_call *c, size_t t, size_t team)
{
    const size_t size = fl_value_size(c->dtype);
    for (size_t r0 = 0; r0 < c->m; r0 += FL_MODEL_ROWS) {
        const size_t rows = min_sz(FL_MODEL_ROWS, c->m - r0);
        const char *in = c->x + r0 * c->ldx * size;
        size_t ldin = c->ldx, width = c->width_in;
        for (size_t s = 0; s < c->nsteps; s++) {
            const int last = s + 1 == c->nsteps;
            char *out = last ? c->y + r0 * c->ldy * size : c->buf[s % 2];
            const size_t ldout = last ? c->ldy : c->widest;
            run_step(c, &c->steps[s], width, rows, in, ldin, out, ldout, t, team);
            /* the next step reads every row of `out`; the next block writes the
             * buffers this step read; after the last step of the last block, the end
             * of the parallel region waits (alone: no team to wait for, and a call
             * without a team of its own may run inside a caller's parallel region) */
            if (team > 1 && !(last && r0 + rows == c->m)) {
#pragma omp barrier
            }
            in = out;
            ldin = ldout;
            width = c->steps[s].width;
        }
    }
}

int fl_model_forward(const fl_step *steps, size_t nsteps, fl_dtype dtype, size_t width_in,
                     size_t m, const void *x, size_t ldx, void *y, size_t ldy, int nthreads)
{
    const size_t size = fl_value_size(dtype), rows = min_sz(FL_MODEL_ROWS, m);
    if (nsteps == 0) {  /* the identity */
        for (size_t i = 0; i < m; i++)
            memcpy((char *)y + i * ldy * size, (const char *)x + i * ldx * size,
                   width_in * size);
        return FL_OK;
    }
    if (m == 0)
        return FL_OK;
    fl_model_call c = {steps, nsteps, dtype, width_in, m, x, ldx, y, ldy, {NULL, NULL}, 0,
                       NULL, 0, NULL, NULL};
    c.bl = calloc(nsteps, sizeof *c.bl);
    if (!c.bl)
        return FL_ENOMEM;
    double madds = 0;
    for (size_t s = 0; s < nsteps; s++) {
        const fl_step *st = &steps[s];
        madds += st->kind == FL_STEP_LINEAR
                 ? (double)st->linear->n * (double)st->linear->k
                 : (double)st->width * FL_ROW_STEP_MADDS;
        if (s + 1 < nsteps && st->width > c.widest)
            c.widest = st->width;
    }
    const size_t threads = fl_threads_begin(madds * (double)m, nthreads);
    size_t shared_bytes = 0;
    for (size_t s = 0; s < nsteps; s++)
        if (steps[s].kind == FL_STEP_LINEAR) {
            const fl_packed *p = steps[s].linear;
            c.bl[s] = fl_blocks_in_force(p->isa, p->dtype, nthreads);
            const fl_plan pl = fl_plan_gemm(p, rows, threads, c.bl[s]);
            c.scratch_bytes = pl.buf_bytes > c.scratch_bytes ? pl.buf_bytes : c.scratch_bytes;
            shared_bytes = pl.shared_bytes > shared_bytes ? pl.shared_bytes : shared_bytes;
        }
    /* Each buffer rounded up to whole 4 KiB pages, then FL_BUFFER_SKEW more: a row's
     * value in one buffer and in the other then never share their address modulo 4 KiB,
     * which would make the loads of a step wait on its stores (4K aliasing). */
    const size_t page = 4096, values = rows * c.widest * size;
    const size_t buf_bytes = nsteps > 1 ? (values + page - 1) / page * page + FL_BUFFER_SKEW
                                        : 0;
    char *mem = NULL;
    const size_t total = 2 * buf_bytes + shared_bytes + threads * c.scratch_bytes;
    if (total > 0) {
        mem = fl_aligned_alloc(1, total);
        if (!mem) {
            fl_threads_end();
            free(c.bl);
            return FL_ENOMEM;
        }
        c.buf[0] = mem;
        c.buf[1] = mem + buf_bytes;
        c.shared = shared_bytes ? mem + 2 * buf_bytes : NULL;
        c.scratch = c.scratch_bytes ? mem + 2 * buf_bytes + shared_bytes : NULL;
    }
    if (threads == 1) {
        run_team(&c, 0, 1);
    } else {
        fl_team_starting();
#pragma omp parallel num_threads((int)threads)
        run_team(&c, (size_t)fl_thread_id(), (size_t)fl_team_size());
    }
    free(mem);
    free(c.bl);
    fl_threads_end();
    return FL_OK;
}
