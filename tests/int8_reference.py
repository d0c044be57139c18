"""The integer activations' arithmetic (src_c/fastlinear.h, docs/formats.md "Integer
activations") in numpy, bit for bit: what every ISA path must give for a Linear with
weight_dtype "int8" or "int4" and activations="int8". Vectorised, with the float32
operations of the header in its order:

    a = max_k |x[i, k]|            not finite: s = NaN, q = 0 (the row's outputs NaN)
                                   0: s = 0, q = 0
    u = 2**64 if a < 2**-64 else 1
    s = a / 127;  r = 127 / (a * u);  q[k] = round_half_even((x[i, k] * u) * r)
  int8 weights (one scale per row):
    acc = sum_k q[k] * w[j, k]     exact (int64 here; the kernel's int32 cannot overflow)
    y = float32(acc) * (s * s_w[j]);  y = y + b[j]   (each step rounded, never fused)
  int4 weights (one scale per group of k): each group of x quantized alone as above
  (its own a, u, s_g, r), then
    y = 0; for each group g, ascending: acc_g = its exact sum,
           y = y + float32(acc_g) * (s_g * s_w[j, g]);
    y = y + b[j]
"""
import numpy as np

from fastlinear import _formats

F32 = np.float32
TINY = F32(2.0 ** -64)  # below it a row is scaled up by 2**64 before 127 / a
UP = F32(2.0 ** 64)


def quantize_rows(x):
    """(q, s): each row of x (float32, (M, K)) as int64 values in [-127, 127] and its
    float32 scale, as the kernel quantizes it."""
    x = np.asarray(x, F32)
    m, k = x.shape
    a = np.abs(x).max(axis=1) if k else np.zeros(m, F32)
    finite = np.isfinite(a)
    live = finite & (a > 0)
    u = np.where(a < TINY, UP, F32(1)).astype(F32)
    with np.errstate(all="ignore"):  # the rows masked below: NaN, Inf, zero
        s = np.where(finite, a / F32(127), F32(np.nan)).astype(F32)
        r = (F32(127) / (a * u)).astype(F32)
        q = np.rint((x * u[:, None]) * r[:, None])
    q = np.where(live[:, None], q, 0).astype(np.int64)
    assert np.abs(q).max(initial=0) <= 127
    return q, s


def linear(x, qw, sw, b=None):
    """The layer's output before any epilogue: x float32 (M, K), qw int8 (N, K) (the
    stored weights, -128 allowed), sw float32 (N,) their scales, b float32 (N,) or None."""
    q, s = quantize_rows(x)
    acc = q @ np.asarray(qw, np.int64).T
    assert np.abs(acc).max(initial=0) < 2**31  # the kernel's int32 sums are exact
    with np.errstate(invalid="ignore", over="ignore"):  # NaN rows: 0 * NaN; huge rows
        y = acc.astype(F32) * (s[:, None] * np.asarray(sw, F32)[None, :])
        if b is not None:
            y = y + np.asarray(b, F32)
    return y.astype(F32)


def linear_int4(x, qw, sw, group, b=None):
    """The same for int4 weights: qw their values (N, K) in [-8, 7] (not the packed
    bytes), sw float32 (N, groups), `group` values of k per scale."""
    x = np.asarray(x, F32)
    qw = np.asarray(qw, np.int64)
    sw = np.asarray(sw, F32)
    k = x.shape[1]
    y = np.zeros((x.shape[0], qw.shape[0]), F32)
    with np.errstate(invalid="ignore", over="ignore"):
        for g, k0 in enumerate(range(0, k, group)):
            q, s = quantize_rows(x[:, k0:k0 + group])  # each group of x alone
            acc = q @ qw[:, k0:k0 + group].T
            assert np.abs(acc).max(initial=0) <= 127 * 8 * group
            y = y + acc.astype(F32) * (s[:, None] * sw[None, :, g])
        if b is not None:
            y = y + np.asarray(b, F32)
    return y.astype(F32)


def of_layer(layer, x):
    """linear() or linear_int4() with a fastlinear Linear's stored weights, scales and
    bias."""
    sd = layer.state_dict()
    x = np.asarray(x, F32)
    if layer.weight_dtype == "int4":
        values = _formats.unpack_int4(sd["weight"], layer.in_features)
        return linear_int4(x, values, sd["weight_scale"], layer.group_size, sd.get("bias"))
    return linear(x, sd["weight"], sd["weight_scale"], sd.get("bias"))
