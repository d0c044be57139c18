/* The model runner (fastlinear.h, fl_model_forward): a chain of steps run by one team of
 * threads, a block of rows at a time, the rows between steps in two per-call buffers.
 * Each row's values are computed by the same operations whatever the block, the team or
 * the thread that takes it: Linear steps by the GEMM driver's tiles, the other steps one
 * row at a time, by one thread. */
#include <stdlib.h>
#include <string.h>
#include "activation.h"
#include "blocking.h"
#include "driver.h"

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* Row sums in float64 over 8 fixed lanes (lane = index mod 8), then a fixed tree: the
 * same operations for a row wherever it lies. */
typedef double lanes8 __attribute__((vector_size(64)));
typedef int64_t lanes8_i __attribute__((vector_size(64)));

/* Values [j, j + 8) of a row as float64, 0 past n. */
static lanes8 load8(fl_dtype dt, const char *row, size_t j, size_t n)
{
    lanes8 v = {0};
    const size_t count = min_sz(8, n - j);
    if (dt == FL_F64) {
        memcpy(&v, row + j * 8, count * 8);
    } else {
        float f[8] = {0};
        memcpy(f, row + j * 4, count * 4);
        for (size_t i = 0; i < 8; i++)
            v[i] = f[i];
    }
    return v;
}

static double sum8(const lanes8 *v)
{
    return (((*v)[0] + (*v)[4]) + ((*v)[2] + (*v)[6]))
           + (((*v)[1] + (*v)[5]) + ((*v)[3] + (*v)[7]));
}

static double value(fl_dtype dt, const char *row, size_t j)
{
    if (dt == FL_F64)
        return ((const double *)row)[j];
    return ((const float *)row)[j];
}

static void store(fl_dtype dt, char *row, size_t j, double v)
{
    if (dt == FL_F64)
        ((double *)row)[j] = v;
    else
        ((float *)row)[j] = (float)v;
}

/* log(s) for s >= 1 (a softmax's sum), NaN and inf kept: s = 2^e f, f in [sqrt(1/2),
 * sqrt(2)), log f = 2 atanh(z), z = (f - 1)/(f + 1), |z| <= 0.172, by its series to z^21. */
static double log_sum(double s)
{
    if (!(s < __builtin_inf()))
        return s;
    uint64_t bits;
    memcpy(&bits, &s, 8);
    int64_t e = (int64_t)(bits >> 52) - 1023;
    bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double f;
    memcpy(&f, &bits, 8);
    if (f > 1.4142135623730951) {
        f *= 0.5;
        e += 1;
    }
    const double z = (f - 1.0) / (f + 1.0), z2 = z * z;
    double q = 1.0 / 21;
    for (int k = 19; k >= 1; k -= 2)
        q = q * z2 + 1.0 / k;
    /* ln2 in two parts: e times the first is exact */
    return (double)e * 0.69314718036912381649 + ((double)e * 1.9082149292705877000e-10
                                                 + 2.0 * z * q);
}

static void row_affine(fl_dtype dt, size_t n, const char *x, char *y, const char *a,
                       const char *b)
{
    if (dt == FL_F64) {
        for (size_t j = 0; j < n; j++)
            ((double *)y)[j] = ((const double *)x)[j] * ((const double *)a)[j]
                               + ((const double *)b)[j];
    } else {
        for (size_t j = 0; j < n; j++)
            ((float *)y)[j] = ((const float *)x)[j] * ((const float *)a)[j]
                              + ((const float *)b)[j];
    }
}

/* Mean and variance (biased, as torch) in float64, two passes; the result rounded once. */
static void row_layernorm(fl_dtype dt, size_t n, const char *x, char *y, const char *a,
                          const char *b, double eps)
{
    lanes8 s = {0};
    for (size_t j = 0; j < n; j += 8)
        s += load8(dt, x, j, n);
    const double mean = sum8(&s) / (double)n;
    const lanes8_i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    lanes8 v = {0};
    for (size_t j = 0; j < n; j += 8) {
        const lanes8 d = load8(dt, x, j, n) - mean;
        v += (lanes8)((lanes8_i)(d * d) & (lane < (int64_t)(n - j)));
    }
    const double rstd = 1.0 / __builtin_sqrt(sum8(&v) / (double)n + eps);
    for (size_t j = 0; j < n; j++) {
        double r = (value(dt, x, j) - mean) * rstd;
        if (a)
            r = r * value(dt, a, j) + value(dt, b, j);
        store(dt, y, j, r);
    }
}

/* softmax or log-softmax of one row, in float64 throughout (exp of activation.h on
 * the float64 differences, so float32 rows lose nothing to a rounded x - max), rounded
 * once: the largest value first (NaN leaves it, then spreads through the sum), the sum
 * of exp(x - max) over fixed lanes, then each value again. */
static void row_softmax(fl_dtype dt, size_t n, const char *x, char *y, int log)
{
    enum { LANES = FL_VBYTES / 8 };
    double top = -__builtin_inf();
    for (size_t j = 0; j < n; j++) {
        const double v = value(dt, x, j);
        top = v > top ? v : top;
    }
    lanes8 s = {0};
    for (size_t j = 0; j < n; j += LANES) {
        const size_t count = min_sz(LANES, n - j);
        fl_vd v = {0};
        for (size_t i = 0; i < count; i++)
            v[i] = value(dt, x, j + i);
        v = vd_exp(v - top);
        for (size_t i = 0; i < count; i++)
            s[(j + i) % 8] += v[i];
    }
    const double sum = sum8(&s), lse = log ? log_sum(sum) : 0.0;
    for (size_t j = 0; j < n; j += LANES) {
        const size_t count = min_sz(LANES, n - j);
        fl_vd v = {0};
        for (size_t i = 0; i < count; i++)
            v[i] = value(dt, x, j + i);
        v = log ? (v - top) - lse : vd_exp(v - top) / sum;
        for (size_t i = 0; i < count; i++)
            store(dt, y, j + i, v[i]);
    }
}

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
} fl_model_call;

/* Thread t's share of one step over `rows` rows: its band of the GEMM's parts, or its
 * band of rows for the row-wise steps. */
static void run_step(const fl_model_call *c, const fl_step *st, size_t width, size_t rows,
                     const char *in, size_t ldin, char *out, size_t ldout, size_t t,
                     size_t team)
{
    const fl_dtype dt = c->dtype;
    const size_t size = dt == FL_F64 ? 8 : 4;
    if (st->kind == FL_STEP_LINEAR) {
        const fl_plan pl = fl_plan_gemm(st->linear, rows, team);
        fl_gemm_share(st->linear, &pl, &st->ep, rows, in, ldin, out, ldout,
                      c->scratch ? c->scratch + t * c->scratch_bytes : NULL, t, team);
        return;
    }
    const size_t r0 = rows * t / team, r1 = rows * (t + 1) / team;
    for (size_t i = r0; i < r1; i++) {
        const char *xr = in + i * ldin * size;
        char *yr = out + i * ldout * size;
        switch (st->kind) {
        case FL_STEP_ACT:
            memcpy(yr, xr, width * size);
            fl_current_isa()->activate(&st->ep, dt, yr, 0, 1, width);
            break;
        case FL_STEP_AFFINE: row_affine(dt, width, xr, yr, st->a, st->b); break;
        case FL_STEP_LAYERNORM: row_layernorm(dt, width, xr, yr, st->a, st->b, st->eps); break;
        case FL_STEP_SOFTMAX: row_softmax(dt, width, xr, yr, 0); break;
        default: row_softmax(dt, width, xr, yr, 1); break;
        }
    }
}

static void run_team(const fl_model_call *c, size_t t, size_t team)
{
    const size_t size = c->dtype == FL_F64 ? 8 : 4;
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
             * buffers this step read */
#pragma omp barrier
            in = out;
            ldin = ldout;
            width = c->steps[s].width;
        }
    }
}

int fl_model_forward(const fl_step *steps, size_t nsteps, fl_dtype dtype, size_t width_in,
                     size_t m, const void *x, size_t ldx, void *y, size_t ldy, int nthreads)
{
    const size_t size = dtype == FL_F64 ? 8 : 4, rows = min_sz(FL_MODEL_ROWS, m);
    if (nsteps == 0) {  /* the identity */
        for (size_t i = 0; i < m; i++)
            memcpy((char *)y + i * ldy * size, (const char *)x + i * ldx * size,
                   width_in * size);
        return FL_OK;
    }
    if (m == 0)
        return FL_OK;
    fl_model_call c = {steps, nsteps, dtype, width_in, m, x, ldx, y, ldy, {NULL, NULL}, 0,
                       NULL, 0};
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
    for (size_t s = 0; s < nsteps; s++)
        if (steps[s].kind == FL_STEP_LINEAR) {
            const size_t need = fl_plan_gemm(steps[s].linear, rows, threads).buf_bytes;
            c.scratch_bytes = need > c.scratch_bytes ? need : c.scratch_bytes;
        }
    const size_t buf_bytes = (rows * c.widest * size + 63) / 64 * 64;
    char *mem = NULL;
    if (2 * buf_bytes + threads * c.scratch_bytes > 0) {
        mem = fl_aligned_alloc(1, 2 * buf_bytes + threads * c.scratch_bytes);
        if (!mem) {
            fl_threads_end();
            return FL_ENOMEM;
        }
        c.buf[0] = mem;
        c.buf[1] = mem + buf_bytes;
        c.scratch = c.scratch_bytes ? mem + 2 * buf_bytes : NULL;
    }
    if (threads == 1) {
        run_team(&c, 0, 1);
    } else {
        fl_team_starting();
#pragma omp parallel num_threads((int)threads)
        run_team(&c, (size_t)fl_thread_id(), (size_t)fl_team_size());
    }
    free(mem);
    fl_threads_end();
    return FL_OK;
}
