/* The activations of fastlinear.h's fl_act, one body for every ISA: each kernel file
 * instantiates fl_activate_body() under its own target and vector width (FL_VBYTES,
 * kernels/<isa>.c), so the same source runs on SSE, AVX2 or AVX-512 registers.
 *
 * Bits: only IEEE operations that round one way everywhere (add, subtract, multiply,
 * divide, compare, select, integer bit work), no FMA and -ffp-contract=off, no libm. So
 * every ISA, compiler and machine computes the same bits, and an element's result
 * depends on its value alone (not on its neighbours, the batch or the threads).
 *
 * Methods (float64 the same, with more terms):
 *   exp(y)     y = n ln2 + r, |r| <= ln2/2 (ln2 in two parts, n ln2_hi exact); expm1(r)
 *              by its Taylor series to r^7 (r^13), then 2^n in two factors, so that
 *              results in the subnormal range round once and overflow gives inf.
 *   sigmoid    1 / (1 + exp(-x)), as exp(x) / (1 + exp(x)) for x < 0 (no overflow);
 *              silu x sigmoid(x)
 *   tanh       sign(x) e / (e + 2), e = expm1(2|x|) (2^n p + (2^n - 1)): accurate near 0.
 *   gelu_tanh  torch's 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed
 *              as x / (1 + exp(-2u)), the same function without cancellation.
 *   gelu (erf) x Phi(x), Phi(x) = erfc(-x/sqrt2)/2, with erfc(a) = exp(-a^2) erfcx(a)
 *              for a = |x|/sqrt2 and 1 - that for x > 0. a^2 = x^2/2 is carried exactly
 *              as s + e (Dekker's product), so exp(-a^2) loses nothing to rounding even
 *              where it is tiny; erfcx(a) (1 + a/K) is a polynomial in
 *              t = (a - K)/(a + K), K = 3, fitted here (Chebyshev interpolation at 13
 *              and 25 points; its error 6e-10 and 2e-17 over a in [0, inf)).
 * Accuracy against float64/float128 references: docs/models.md ("Activations"),
 * tests/test_models.py.
 */
#ifndef FL_ACTIVATION_H
#define FL_ACTIVATION_H

#include <stdint.h>
#include <string.h>
#include "fastlinear.h"

#define FL_AINLINE static inline __attribute__((always_inline))
/* The helpers take and return vectors; always inlined, they never go through the
 * calling convention GCC's -Wpsabi warns about. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* The vector width, bytes: each includer names its ISA's register (kernels/<isa>.c);
 * 16 (SSE2, the x86-64 baseline) unless it does. The width groups elements, nothing
 * more: every element gets the same operations whatever the width. One register per
 * vector (two 32-byte ones made GCC keep the AVX2 instance's values on the stack: ReLU
 * over a 3 x 32 tile took 50 ns, 5 in one). */
#ifndef FL_VBYTES
#define FL_VBYTES 16
#endif
typedef float fl_vf __attribute__((vector_size(FL_VBYTES)));
typedef int32_t fl_vi __attribute__((vector_size(FL_VBYTES)));
typedef double fl_vd __attribute__((vector_size(FL_VBYTES)));
typedef int64_t fl_vl __attribute__((vector_size(FL_VBYTES)));

FL_AINLINE fl_vf vf_set(float c) { return (fl_vf){0} + c; }
FL_AINLINE fl_vd vd_set(double c) { return (fl_vd){0} + c; }
/* m ? a : b, lane by lane (m: all ones or zero per lane, as comparisons give). */
FL_AINLINE fl_vf vf_sel(fl_vi m, fl_vf a, fl_vf b)
{
    return (fl_vf)((m & (fl_vi)a) | (~m & (fl_vi)b));
}
FL_AINLINE fl_vd vd_sel(fl_vl m, fl_vd a, fl_vd b)
{
    return (fl_vd)((m & (fl_vl)a) | (~m & (fl_vl)b));
}
/* Clamps to [lo, hi]; NaN stays NaN (the comparisons are false for it). */
FL_AINLINE fl_vf vf_clamp(fl_vf x, float lo, float hi)
{
    x = vf_sel(x > hi, vf_set(hi), x);
    return vf_sel(x < lo, vf_set(lo), x);
}
FL_AINLINE fl_vd vd_clamp(fl_vd x, double lo, double hi)
{
    x = vd_sel(x > hi, vd_set(hi), x);
    return vd_sel(x < lo, vd_set(lo), x);
}
FL_AINLINE fl_vf vf_abs(fl_vf x) { return (fl_vf)((fl_vi)x & 0x7fffffff); }
FL_AINLINE fl_vd vd_abs(fl_vd x) { return (fl_vd)((fl_vl)x & 0x7fffffffffffffffLL); }

/* Range reduction of exp(y), y clamped so that |n| stays small: y = n ln2 + r; returns
 * p = expm1(r) and n. */
FL_AINLINE fl_vf vf_expm1_reduced(fl_vf y, fl_vi *n)
{
    const float shift = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */
    const fl_vf t = y * 1.44269504088896341f + shift;
    const fl_vf nf = t - shift;
    *n = (fl_vi)t - 0x4B400000;       /* the integer in t's low mantissa bits */
    /* ln2 = 0.693359375 (9 bits: nf times it is exact) - 2.12194440e-4 */
    const fl_vf r = (y - nf * 0.693359375f) - nf * -2.12194440e-4f;
    fl_vf q = vf_set(1.0f / 5040);
    q = q * r + 1.0f / 720;
    q = q * r + 1.0f / 120;
    q = q * r + 1.0f / 24;
    q = q * r + 1.0f / 6;
    q = q * r + 0.5f;
    return r + r * r * q;
}

FL_AINLINE fl_vd vd_expm1_reduced(fl_vd y, fl_vl *n)
{
    const double shift = 6755399441055744.0;  /* 1.5 * 2^52 */
    const fl_vd t = y * 1.4426950408889634074 + shift;
    const fl_vd nf = t - shift;
    *n = (fl_vl)t - 0x4338000000000000LL;
    /* ln2 in 32 + 53 bits: nf times the first is exact for |n| < 2^11 */
    const fl_vd r = (y - nf * 0.69314718036912381649) - nf * 1.9082149292705877000e-10;
    /* Taylor coefficients 1/(j+2)!, j = 11 .. 0 */
    static const double c[] = {
        1.0 / 6227020800, 1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880,
        1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5};
    fl_vd q = vd_set(c[0]);
    for (size_t j = 1; j < sizeof c / sizeof c[0]; j++)
        q = q * r + c[j];
    return r + r * r * q;
}

/* 2^n for integers n in the normal range. */
FL_AINLINE fl_vf vf_pow2(fl_vi n) { return (fl_vf)((n + 127) << 23); }
FL_AINLINE fl_vd vd_pow2(fl_vl n) { return (fl_vd)((n + 1023) << 52); }

/* e^y for every y: inf past the largest float, subnormals and 0 below the smallest. */
FL_AINLINE fl_vf vf_exp(fl_vf y)
{
    fl_vi n;
    const fl_vf p = vf_expm1_reduced(vf_clamp(y, -104.0f, 88.8f), &n);
    const fl_vi n1 = n >> 1;
    return ((1.0f + p) * vf_pow2(n1)) * vf_pow2(n - n1);
}

FL_AINLINE fl_vd vd_exp(fl_vd y)
{
    fl_vl n;
    const fl_vd p = vd_expm1_reduced(vd_clamp(y, -746.0, 710.0), &n);
    const fl_vl n1 = n >> 1;
    return ((1.0 + p) * vd_pow2(n1)) * vd_pow2(n - n1);
}

FL_AINLINE fl_vf vf_tanh(fl_vf x)
{
    fl_vi n;
    /* tanh(9.02) rounds to 1 in float32 */
    const fl_vf a = vf_clamp(vf_abs(x), 0.0f, 9.02f);
    const fl_vf p = vf_expm1_reduced(a + a, &n);
    const fl_vf s = vf_pow2(n);
    const fl_vf e = s * p + (s - 1.0f);
    const fl_vf t = e / (e + 2.0f);
    return (fl_vf)((fl_vi)t | ((fl_vi)x & (int32_t)0x80000000));
}

FL_AINLINE fl_vd vd_tanh(fl_vd x)
{
    fl_vl n;
    const fl_vd a = vd_clamp(vd_abs(x), 0.0, 19.1);  /* tanh(19.1) rounds to 1 */
    const fl_vd p = vd_expm1_reduced(a + a, &n);
    const fl_vd s = vd_pow2(n);
    const fl_vd e = s * p + (s - 1.0);
    const fl_vd t = e / (e + 2.0);
    return (fl_vd)((fl_vl)t | ((fl_vl)x & (int64_t)0x8000000000000000ULL));
}

/* erfcx(a) (1 + a/3) as a polynomial in t = (a - 3)/(a + 3), lowest power first: the
 * Chebyshev interpolant, in powers of t (the sum of their magnitudes is 1.003, so
 * Horner's rule loses nothing to cancellation). */
static const float fl_erfcx_f32[] = {
    0.35800230236277990084f, -0.29446481496898102690f, 0.19674278388420998247f,
    -0.10348916494270047806f, 0.039842638264356658227f, -0.0089417798443993403661f,
    -0.00040455402868095230439f, 0.0010091183638758700719f, -0.00018130863110892868975f,
    -0.000088304821197166116442f, 0.000033297393110143477000f, 6.5436506398957960467e-6f,
    -3.5621071550119083135e-6f};
static const double fl_erfcx_f64[] = {
    0.35800230236277990084, -0.29446481772329448572, 0.19674278570136724064,
    -0.10348908730019453157, 0.039842587095765524849, -0.0089424115413472218476,
    -0.00040413887579366638203, 0.0010113539986468071470, -0.00018276989641738932803,
    -0.000092259271077795723149, 0.000035853822251279294628, 0.000010132682786548133390,
    -5.8234919925142109442e-6, -1.5830066026471314256e-6, 9.2171599720054924943e-7,
    3.3293415060780941913e-7, -1.3585628142274328619e-7, -7.7945786601450613710e-8,
    1.5218233457419049582e-8, 1.7056980515505437266e-8, -2.3845837151650604904e-10,
    -2.8963907655785433154e-9, -3.5983457595035916140e-10, 2.7008895413344189825e-10,
    6.0342718945458416209e-11};
#define FL_ERFCX_K 3

FL_AINLINE fl_vf vf_gelu(fl_vf x)
{
    /* Phi(-15) is below the least float: exp(-15^2/2) rounds to 0 there */
    const fl_vf a = vf_clamp(vf_abs(x), 0.0f, 15.0f);
    /* s + e = a * a exactly: Dekker's split of a into 12 + 12 bits */
    const fl_vf c = a * 4097.0f, ah = c - (c - a), al = a - ah;
    const fl_vf s = a * a, e = ((ah * ah - s) + ah * al * 2.0f) + al * al;
    const fl_vf u = a * 0.707106781186547524f, w = 1.0f / (u + FL_ERFCX_K);
    const fl_vf t = (u - FL_ERFCX_K) * w;
    const size_t terms = sizeof fl_erfcx_f32 / sizeof fl_erfcx_f32[0];
    fl_vf h = vf_set(fl_erfcx_f32[terms - 1]);
    for (size_t j = terms - 1; j > 0; j--)
        h = h * t + fl_erfcx_f32[j - 1];
    /* erfc(a) / 2 = exp(-(s + e)/2) erfcx(a) / 2 */
    const fl_vf half_erfc = vf_exp(s * -0.5f) * (1.0f - e * 0.5f) * h
                            * (w * (0.5f * FL_ERFCX_K));
    return x * vf_sel(x < 0.0f, half_erfc, 1.0f - half_erfc);
}

FL_AINLINE fl_vd vd_gelu(fl_vd x)
{
    const fl_vd a = vd_clamp(vd_abs(x), 0.0, 40.0);  /* Phi(-40): 0 in float64 */
    const fl_vd c = a * 134217729.0, ah = c - (c - a), al = a - ah;  /* 27 + 26 bits */
    const fl_vd s = a * a, e = ((ah * ah - s) + ah * al * 2.0) + al * al;
    const fl_vd u = a * 0.70710678118654752440, w = 1.0 / (u + FL_ERFCX_K);
    const fl_vd t = (u - FL_ERFCX_K) * w;
    const size_t terms = sizeof fl_erfcx_f64 / sizeof fl_erfcx_f64[0];
    fl_vd h = vd_set(fl_erfcx_f64[terms - 1]);
    for (size_t j = terms - 1; j > 0; j--)
        h = h * t + fl_erfcx_f64[j - 1];
    const fl_vd half_erfc = vd_exp(s * -0.5) * (1.0 - e * 0.5) * h
                            * (w * (0.5 * FL_ERFCX_K));
    return x * vd_sel(x < 0.0, half_erfc, 1.0 - half_erfc);
}

/* 1 / (1 + exp(-z)), as exp(z) / (1 + exp(z)) for z < 0: no intermediate overflows, so
 * results down to the subnormals keep their accuracy. */
FL_AINLINE fl_vf vf_sigmoid(fl_vf z)
{
    const fl_vf e = vf_exp(-vf_abs(z));
    return vf_sel(z < 0.0f, e, vf_set(1.0f)) / (1.0f + e);
}

FL_AINLINE fl_vd vd_sigmoid(fl_vd z)
{
    const fl_vd e = vd_exp(-vd_abs(z));
    return vd_sel(z < 0.0, e, vd_set(1.0)) / (1.0 + e);
}

/* One activation of a vector of floats; `act` is a constant where it is inlined. */
FL_AINLINE fl_vf vf_act(const fl_act act, float alpha, fl_vf x)
{
    switch (act) {
    case FL_ACT_RELU: return vf_sel(x < 0.0f, vf_set(0.0f), x);  /* NaN stays */
    case FL_ACT_LEAKY_RELU: return vf_sel(x > 0.0f, x, x * alpha);
    case FL_ACT_GELU: return vf_gelu(x);
    case FL_ACT_GELU_TANH: {
        const fl_vf u = (x + x * x * x * 0.044715f) * 0.797884560802865355f;
        return x * vf_sigmoid(u + u);
    }
    case FL_ACT_SILU: return x * vf_sigmoid(x);
    case FL_ACT_SIGMOID: return vf_sigmoid(x);
    case FL_ACT_TANH: return vf_tanh(x);
    default: return x;
    }
}

FL_AINLINE fl_vd vd_act(const fl_act act, double alpha, fl_vd x)
{
    switch (act) {
    case FL_ACT_RELU: return vd_sel(x < 0.0, vd_set(0.0), x);
    case FL_ACT_LEAKY_RELU: return vd_sel(x > 0.0, x, x * alpha);
    case FL_ACT_GELU: return vd_gelu(x);
    case FL_ACT_GELU_TANH: {
        const fl_vd u = (x + x * x * x * 0.044715) * 0.79788456080286535588;
        return x * vd_sigmoid(u + u);
    }
    case FL_ACT_SILU: return x * vd_sigmoid(x);
    case FL_ACT_SIGMOID: return vd_sigmoid(x);
    case FL_ACT_TANH: return vd_tanh(x);
    default: return x;
    }
}

/* The activation over an m x n block of y (row stride ldy elements), in place. Whole
 * vectors where they fit (plain unaligned loads and stores), the row's tail through a
 * zero-padded vector: each element is computed alike wherever it lies. */
typedef float fl_vf_mem __attribute__((vector_size(FL_VBYTES), aligned(4), may_alias));

FL_AINLINE fl_vf fl_act_vector(const fl_act act, const fl_dtype dt, double alpha, fl_vf v)
{
    if (dt == FL_F64)
        return (fl_vf)vd_act(act, alpha, (fl_vd)v);
    return vf_act(act, (float)alpha, v);
}

FL_AINLINE void fl_act_rows(const fl_act act, const fl_dtype dt, double alpha, char *y,
                            size_t ldy, size_t m, size_t n)
{
    const size_t size = dt == FL_F64 ? 8 : 4, lanes = FL_VBYTES / size;
    for (size_t i = 0; i < m; i++) {
        char *row = y + i * ldy * size;
        size_t j = 0;
        for (; j + lanes <= n; j += lanes) {
            fl_vf_mem *p = (fl_vf_mem *)(row + j * size);
            *p = fl_act_vector(act, dt, alpha, *p);
        }
        if (j < n) {
            fl_vf v = {0};
            memcpy(&v, row + j * size, (n - j) * size);
            v = fl_act_vector(act, dt, alpha, v);
            memcpy(row + j * size, &v, (n - j) * size);
        }
    }
}

/* What each ISA file instantiates as its fl_isa.activate: the switch picks a loop
 * specialised for one activation. */
FL_AINLINE void fl_activate_body(const fl_epilogue *ep, fl_dtype dt, void *y, size_t ldy,
                                 size_t m, size_t n)
{
    switch (ep->act) {
    case FL_ACT_RELU: fl_act_rows(FL_ACT_RELU, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_LEAKY_RELU:
        fl_act_rows(FL_ACT_LEAKY_RELU, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_GELU: fl_act_rows(FL_ACT_GELU, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_GELU_TANH:
        fl_act_rows(FL_ACT_GELU_TANH, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_SILU: fl_act_rows(FL_ACT_SILU, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_SIGMOID: fl_act_rows(FL_ACT_SIGMOID, dt, ep->alpha, y, ldy, m, n); break;
    case FL_ACT_TANH: fl_act_rows(FL_ACT_TANH, dt, ep->alpha, y, ldy, m, n); break;
    default: break;
    }
}

#endif
