/* The row-wise steps of fastlinear.h's models (AFFINE, LAYERNORM, SOFTMAX, LOGSOFTMAX)
 * on one row, one body for every ISA like activation.h (include that first, with the
 * ISA's FL_VBYTES): each kernel file instantiates fl_row_body() as its fl_isa.row.
 *
 * LayerNorm, softmax and log-softmax compute in float64 and round once: mean and
 * variance (biased, as torch's, two passes); exp(x - max) of activation.h on the float64
 * difference, so float32 rows lose nothing to a rounded x - max. Every sum runs over 8
 * fixed lanes (lane = index mod 8, ascending) whatever the vector width, then a fixed
 * tree: the same bits on every ISA. AFFINE is x * a + b in the values' type. */
#ifndef FL_ROWOPS_H
#define FL_ROWOPS_H

#include "activation.h"

enum { FL_VD_LANES = FL_VBYTES / 8, FL_ACCS = 8 / FL_VD_LANES };
typedef float fl_vfh __attribute__((vector_size(FL_VBYTES / 2)));  /* FL_VD_LANES floats */

/* Values [j, j + FL_VD_LANES) of a row as float64, 0 past n (whole vectors copied at a
 * constant size, which compiles to plain loads). */
FL_AINLINE fl_vd fl_row_load(fl_dtype dt, const char *row, size_t j, size_t n)
{
    const size_t count = n - j < FL_VD_LANES ? n - j : FL_VD_LANES;
    if (dt == FL_F64) {
        fl_vd v = {0};
        if (count == FL_VD_LANES)
            memcpy(&v, row + j * 8, sizeof v);
        else
            memcpy(&v, row + j * 8, count * 8);
        return v;
    }
    fl_vfh f = {0};
    if (count == FL_VD_LANES)
        memcpy(&f, row + j * 4, sizeof f);
    else
        memcpy(&f, row + j * 4, count * 4);
    return __builtin_convertvector(f, fl_vd);
}

/* Stores the values of v that lie before n, rounded once to float32 for float32 rows. */
FL_AINLINE void fl_row_store(fl_dtype dt, char *row, size_t j, size_t n, fl_vd v)
{
    const size_t count = n - j < FL_VD_LANES ? n - j : FL_VD_LANES;
    if (dt == FL_F64) {
        if (count == FL_VD_LANES)
            memcpy(row + j * 8, &v, sizeof v);
        else
            memcpy(row + j * 8, &v, count * 8);
        return;
    }
    const fl_vfh f = __builtin_convertvector(v, fl_vfh);
    if (count == FL_VD_LANES)
        memcpy(row + j * 4, &f, sizeof f);
    else
        memcpy(row + j * 4, &f, count * 4);
}

/* v with the lanes at or past n zeroed (v holds values [j, j + FL_VD_LANES)). */
FL_AINLINE fl_vd fl_row_head(fl_vd v, size_t j, size_t n)
{
    fl_vl lane;
    for (int i = 0; i < FL_VD_LANES; i++)
        lane[i] = i;
    return (fl_vd)((fl_vl)v & (lane < (int64_t)(n - j)));
}

/* The 8 lanes' sums (acc[a][i] is lane a * FL_VD_LANES + i), added in a fixed tree. */
FL_AINLINE double fl_lanes_sum(const fl_vd acc[FL_ACCS])
{
    double s[8];
    for (int l = 0; l < 8; l++)
        s[l] = acc[l / FL_VD_LANES][l % FL_VD_LANES];
    return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

/* log(s) for s >= 1 (a softmax's sum), NaN and inf kept: s = 2^e f, f in [sqrt(1/2),
 * sqrt(2)), log f = 2 atanh(z), z = (f - 1)/(f + 1), |z| <= 0.172, by its series to
 * z^21. */
FL_AINLINE double fl_log_sum(double s)
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
    return (double)e * 0.69314718036912381649
           + ((double)e * 1.9082149292705877000e-10 + 2.0 * z * q);
}

FL_AINLINE void fl_row_layernorm(fl_dtype dt, size_t n, const char *x, char *y,
                                 const char *a, const char *b, double eps)
{
    fl_vd acc[FL_ACCS] = {{0}};
    for (size_t j = 0; j < n; j += FL_VD_LANES)
        acc[j / FL_VD_LANES % FL_ACCS] += fl_row_load(dt, x, j, n);
    const double mean = fl_lanes_sum(acc) / (double)n;
    fl_vd sq[FL_ACCS] = {{0}};
    for (size_t j = 0; j < n; j += FL_VD_LANES) {
        const fl_vd d = fl_row_load(dt, x, j, n) - mean;
        sq[j / FL_VD_LANES % FL_ACCS] += fl_row_head(d * d, j, n);
    }
    const double rstd = 1.0 / __builtin_sqrt(fl_lanes_sum(sq) / (double)n + eps);
    for (size_t j = 0; j < n; j += FL_VD_LANES) {
        fl_vd r = (fl_row_load(dt, x, j, n) - mean) * rstd;
        if (a)
            r = r * fl_row_load(dt, a, j, n) + fl_row_load(dt, b, j, n);
        fl_row_store(dt, y, j, n, r);
    }
}

/* softmax or log-softmax: the largest value first (NaN leaves it, then spreads through
 * the sum), the sum of exp(x - max), then each value again. */
FL_AINLINE void fl_row_softmax(fl_dtype dt, size_t n, const char *x, char *y, int log)
{
    double top = -__builtin_inf();
    for (size_t j = 0; j < n; j++) {
        const double v = dt == FL_F64 ? ((const double *)x)[j] : ((const float *)x)[j];
        top = v > top ? v : top;
    }
    fl_vd acc[FL_ACCS] = {{0}};
    for (size_t j = 0; j < n; j += FL_VD_LANES)
        acc[j / FL_VD_LANES % FL_ACCS] += fl_row_head(
            vd_exp(fl_row_load(dt, x, j, n) - top), j, n);
    const double sum = fl_lanes_sum(acc), lse = log ? fl_log_sum(sum) : 0.0;
    for (size_t j = 0; j < n; j += FL_VD_LANES) {
        const fl_vd d = fl_row_load(dt, x, j, n) - top;
        fl_row_store(dt, y, j, n, log ? d - lse : vd_exp(d) / sum);
    }
}

/* One row of a row-wise step: n values of x into y (they may not overlap, but for
 * AFFINE, which may run in place: each value is read before it is written). */
FL_AINLINE void fl_row_body(const fl_step *st, fl_dtype dt, size_t n, const char *x,
                            char *y)
{
    switch (st->kind) {
    case FL_STEP_AFFINE:
        if (dt == FL_F64) {
            const double *xd = (const double *)x, *ad = st->a, *bd = st->b;
            for (size_t j = 0; j < n; j++)
                ((double *)y)[j] = xd[j] * ad[j] + bd[j];
        } else {
            const float *xf = (const float *)x, *af = st->a, *bf = st->b;
            for (size_t j = 0; j < n; j++)
                ((float *)y)[j] = xf[j] * af[j] + bf[j];
        }
        break;
    case FL_STEP_LAYERNORM:
        fl_row_layernorm(dt, n, x, y, st->a, st->b, st->eps);
        break;
    case FL_STEP_SOFTMAX: fl_row_softmax(dt, n, x, y, 0); break;
    case FL_STEP_LOGSOFTMAX: fl_row_softmax(dt, n, x, y, 1); break;
    default: break;
    }
}

#endif
