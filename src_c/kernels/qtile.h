/* What every ISA's integer kernels share (integer activations, FL_I8Q: fastlinear.h
 * states the arithmetic, kernel.h the contracts of fl_quantizer and fl_qkernel): the
 * quantization of a row, the tile, its heights and the entry points. Included by
 * tile.h, so instantiated under each ISA file's target attribute.
 *
 * An ISA file defines, besides tile.h's list:
 *   ivec                    its vector of int32 lanes (VBYTES bytes)
 *   QMR, QNV                the tile: QMR rows x QNV vectors of int32 sums (NR = QNV *
 *                           VBYTES / 4 columns)
 *   QK, QX, QSHIFT          k values per step, bytes per quantized value, the shift added
 *                           to each (kernel.h)
 *   izero()                 a vector of zeros
 *   qbroadcast(p)           the QK quantized values at p (QK * QX = 4 bytes) in each lane
 *   qweight(wk, v)          vector v of the step's weights at wk, ready for qdot
 *   qweight4(wk, v)         the same from int4 weights (kernel.h's layout of FL_I4Q)
 *   qdot(acc, xb, wv)       acc plus, per lane, the sum of the QK products of xb and wv
 *   qfloat(acc, wsum)       float32(acc - wsum) per lane (wsum: the panel's sums, read
 *                           where QSHIFT is not 0)
 *   qamax(k, x)             the largest bits of |x[0 .. k)| as an integer: the float's
 *                           bits order the magnitudes, NaN and Inf above all finite
 *   qround(k, x, u, r, q)   q[k] = round_half_even((x[k] * u) * r) + QSHIFT in QX bytes
 *                           for k below ceil(k / 16) * 16, x read only below k (zeros
 *                           past it); u == 1 skips its multiply (the same bits)
 */
#ifndef FL_QTILE_H
#define FL_QTILE_H

#include <string.h>

enum { QNR = QNV * VBYTES / 4 };  /* columns of a panel */
/* Rows of an int4 tile: 2 (a second set of sums, the group's, takes the registers of
 * more rows); clang 14 keeps the float totals of 2-row AVX-512 tiles in memory
 * (tests/test_disassembly.py), so its builds run 1-row tiles there. */
#if defined(__clang__)
enum { QMR4 = VBYTES == 64 ? 1 : 2 };
#else
enum { QMR4 = 2 };
#endif
_Static_assert(QK * QX == 4, "qbroadcast reads one 32-bit value");
_Static_assert(QX == 1 || QSHIFT == 0, "the zero value fills bytes (quantize_row)");
_Static_assert(QMR >= 4, "the tile heights: QMR, then 4, 2, 1");

/* k values of x quantized as one (fastlinear.h): their QX-byte values, padded with
 * zeros to kq (a multiple of 16, at least k), into q; their scale into *scale. */
INLINE void quantize_run(size_t k, size_t kq, const float *x, char *q, float *scale)
{
    const uint32_t bits = qamax(k, x);
    size_t done = 0;
    if (bits == 0 || bits >= 0x7f800000u) {  /* zeros; or a NaN or an Inf */
        *scale = bits == 0 ? 0.0f : __builtin_nanf("");
    } else {
        float a;
        memcpy(&a, &bits, sizeof a);
        const float u = a < 0x1p-64f ? 0x1p64f : 1.0f;
        *scale = a / 127.0f;
        qround(k, x, u, 127.0f / (a * u), q);
        done = (k + 15) / 16 * 16;
    }
    memset(q + done * QX, QSHIFT, (kq - done) * QX);
}

/* Bytes of one step of a panel (kernel.h): QK values of NR columns, int8 or int4. */
INLINE size_t qstep_bytes(int int4) { return int4 ? QNR * QK / 2 : QNR * QK; }

/* The integer sums of m rows (a compile-time constant) over `steps` steps of QK values
 * of k, from zero: each step's weights (`int4`: packed nibbles, half the bytes), then a
 * broadcast per row, each sum its own qdot chain. */
INLINE void qsum(const size_t m, const int int4, size_t steps, const char *a, size_t lda,
                 const char *w, ivec acc[][QNV])
{
    const size_t step = qstep_bytes(int4);
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < QNV; v++)
            acc[i][v] = izero();
    for (size_t s = 0; s < steps; s++) {
        const char *wk = w + s * step;
FL_UNROLL
        for (size_t l = 0; l < step; l += 64)
            __builtin_prefetch(wk + FL_QPREFETCH_BYTES + l, 0, 3);
        ivec wv[QNV];
FL_UNROLL
        for (size_t v = 0; v < QNV; v++)
            wv[v] = int4 ? qweight4(wk, v) : qweight(wk, v);
FL_UNROLL
        for (size_t i = 0; i < m; i++) {
            const ivec xb = qbroadcast(a + i * lda + s * 4);
FL_UNROLL
            for (size_t v = 0; v < QNV; v++)
                acc[i][v] = qdot(acc[i][v], xb, wv[v]);
        }
    }
}

/* m rows (a compile-time constant) of the tile: the integer sums over every k, then the
 * float steps of each output, in fastlinear.h's order. */
INLINE void qtile(const size_t m, size_t k, const char *a, size_t lda, const float *xs,
                  const char *w, const char *wsum, const char *ws, const char *bias,
                  char *y, size_t ldy, size_t n)
{
    const size_t full = n * 4 / VBYTES, tail = n * 4 % VBYTES;
    ivec acc[QMR][QNV];
    qsum(m, 0, (k + QK - 1) / QK, a, lda, w, acc);
FL_UNROLL
    for (size_t i = 0; i < m; i++) {
        const vec sx = vbroadcast(FL_F32, (const char *)(xs + i));
        char *yi = y + i * ldy * 4;
FL_UNROLL
        for (size_t v = 0; v < QNV; v++) {
            if (v > full || (v == full && !tail))  /* wholly past n */
                break;
            vec yv = vmul(qfloat(acc[i][v], wsum + v * VBYTES),
                          vmul(sx, vload(ws + v * VBYTES)));
            if (bias)
                yv = vadd(FL_F32, yv, v < full ? vload(bias + v * VBYTES)
                                               : vload_head(FL_F32, bias + v * VBYTES, tail));
            if (v < full)
                vstore(yi + v * VBYTES, yv);
            else
                vstore_head(FL_F32, yi + v * VBYTES, tail, yv);
        }
    }
}

/* int4 weights: m (at most QMR4) rows of the tile, group by group, each group's integer
 * sums added to the float totals after its last step (fastlinear.h's order). */
INLINE void qtile4(const size_t m, size_t k, const char *a, size_t lda, const float *xs,
                   const char *w, size_t group, const char *bias, char *y, size_t ldy,
                   size_t n)
{
    const size_t full = n * 4 / VBYTES, tail = n * 4 % VBYTES;
    const size_t gsteps = group / QK, gbytes = 2 * QNR * 4 + gsteps * qstep_bytes(1);
    vec total[QMR4][QNV];
FL_UNROLL
    for (size_t i = 0; i < m; i++)
FL_UNROLL
        for (size_t v = 0; v < QNV; v++)
            total[i][v] = vzero();
    for (size_t g = 0; g * group < k; g++) {
        const char *sg = w + g * gbytes, *sums = sg + QNR * 4, *wg = sums + QNR * 4;
        const char *ag = a + g * gsteps * 4;
        const size_t groups = (k + group - 1) / group;  /* the rows' scales: per group */
        ivec acc[QMR4][QNV];
        qsum(m, 1, gsteps, ag, lda, wg, acc);
FL_UNROLL
        for (size_t i = 0; i < m; i++) {
            const vec sx = vbroadcast(FL_F32, (const char *)(xs + i * groups + g));
FL_UNROLL
            for (size_t v = 0; v < QNV; v++)
                total[i][v] = vadd(FL_F32, total[i][v],
                                   vmul(qfloat(acc[i][v], sums + v * VBYTES),
                                        vmul(sx, vload(sg + v * VBYTES))));
        }
    }
FL_UNROLL
    for (size_t i = 0; i < m; i++) {
        char *yi = y + i * ldy * 4;
FL_UNROLL
        for (size_t v = 0; v < QNV; v++) {
            if (v < full)
                vstore(yi + v * VBYTES, bias ? vadd(FL_F32, total[i][v],
                                                    vload(bias + v * VBYTES))
                                             : total[i][v]);
            else if (v == full && tail)
                vstore_head(FL_F32, yi + v * VBYTES, tail,
                            bias ? vadd(FL_F32, total[i][v],
                                        vload_head(FL_F32, bias + v * VBYTES, tail))
                                 : total[i][v]);
        }
    }
}

/* The entry points: m rows as tiles of QMR rows, then powers of two below it (int4
 * weights: of QMR4 rows, then one). */
static FL_TARGET void FL_ISA_FN(i4q)(size_t k, const void *a, size_t lda, const float *xs,
                                     const void *w, const int32_t *wsum, const float *ws,
                                     size_t group, const float *bias, float *y, size_t ldy,
                                     size_t m, size_t n)
{
    (void)wsum, (void)ws;  /* in the panel, per group */
    const char *ar = a;
    const size_t groups = (k + group - 1) / group;  /* scales per row of x */
    for (; m >= QMR4; m -= QMR4, ar += QMR4 * lda, xs += QMR4 * groups, y += QMR4 * ldy)
        qtile4(QMR4, k, ar, lda, xs, w, group, (const char *)bias, (char *)y, ldy, n);
    if (m)
        qtile4(1, k, ar, lda, xs, w, group, (const char *)bias, (char *)y, ldy, n);
}

static FL_TARGET void FL_ISA_FN(i8q)(size_t k, const void *a, size_t lda, const float *xs,
                                     const void *w, const int32_t *wsum, const float *ws,
                                     size_t group, const float *bias, float *y, size_t ldy,
                                     size_t m, size_t n)
{
    (void)group;
    const char *ar = a;
    while (m > 0) {
        const size_t h = m == QMR ? QMR : QMR > 4 && m >= 4 ? 4 : m >= 2 ? 2 : 1;
        const char *wc = w, *sc = (const char *)wsum, *wsc = (const char *)ws;
        const char *bc = (const char *)bias;
        if (h == QMR)
            qtile(QMR, k, ar, lda, xs, wc, sc, wsc, bc, (char *)y, ldy, n);
        else if (h == 4)
            qtile(4, k, ar, lda, xs, wc, sc, wsc, bc, (char *)y, ldy, n);
        else if (h == 2)
            qtile(2, k, ar, lda, xs, wc, sc, wsc, bc, (char *)y, ldy, n);
        else
            qtile(1, k, ar, lda, xs, wc, sc, wsc, bc, (char *)y, ldy, n);
        ar += h * lda;
        xs += h;
        y += h * ldy;
        m -= h;
    }
}

/* A row of x: as one, or (group > 0, a multiple of 16) each group alone. */
static FL_TARGET void FL_ISA_FN(quantize)(size_t k, size_t kq, size_t group, const float *x,
                                          void *q, float *scale)
{
    if (!group) {
        quantize_run(k, kq, x, q, scale);
        return;
    }
    for (size_t k0 = 0; k0 < kq; k0 += group, scale++)
        quantize_run(k0 < k ? (k - k0 < group ? k - k0 : group) : 0, group, x + k0,
                     (char *)q + k0 * QX, scale);
}

#endif
