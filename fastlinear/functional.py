"""Stateless forward: fastlinear.functional.linear(x, weight, bias)."""
import numpy as np

from . import _blas, _config, _core, _formats
from ._validate import as_rows, as_weight, check_out, kernel_ready, parameter

__all__ = ["linear"]


def linear(x, weight, bias=None, *, out=None, backend="auto"):
    """y = x @ weight.T + bias, like torch.nn.functional.linear.

    x: (*, K); weight: (N, K); bias: (N,) or None; returns (*, N), or writes `out`
    (C-contiguous, that shape and dtype) and returns it. The computation runs in the
    weight's dtype when it is float32 or float64, else in float64; x and bias are cast
    to it. The native backend packs the weight on every call: for repeated calls with
    the same weight, fastlinear.Linear packs it once.
    """
    backend = _config.resolve_backend(backend)
    w = as_weight(weight)
    dtype = w.dtype if w.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    n, k = w.shape
    if bias is not None:
        bias = parameter(bias, (n,), dtype, "bias")
    x2, batch = as_rows(x, dtype, k, fortran_ok=backend == "blas")
    if backend == "native":
        packed = _core.PackedWeights(n, k, _formats.FORMAT[dtype.name], 0, bias is not None)
        packed.set_rows(0, np.require(w, dtype, ["C", "A"]), None)
        if bias is not None:
            packed.set_bias(bias)
        return forward(x2, batch, None, None, packed, out)
    return forward(x2, batch, kernel_ready(w, dtype, fortran_ok=True), bias, None, out)


def forward(x2, batch, weight, bias, packed, out):
    """Shared by Linear and linear(): x2 (M, K) from as_rows; with `packed` the native
    kernel runs (weight and bias unused), without it BLAS does on `weight` and `bias`.
    Returns (*batch, N)."""
    m = x2.shape[0]
    n, dtype = ((packed.out_features, packed.dtype) if packed is not None
                else (weight.shape[0], weight.dtype))
    shape = (*batch, n)
    if out is None:
        result = np.empty(shape, dtype=dtype)
    else:
        result = check_out(out, shape, dtype)
    y = result.reshape(m, n)
    # The kernels may not read an input while writing y: compute aside, then copy.
    overlap = out is not None and any(a is not None and np.may_share_memory(y, a)
                                      for a in (x2, weight, bias))
    target = np.empty_like(y) if overlap else y
    if packed is not None:
        _core.forward(packed, x2, target)
    else:
        run_blas(x2, weight, bias, target)
    if overlap:
        y[...] = target
    return result


def run_blas(x2, weight, bias, y):
    """y = x2 @ weight.T + bias through BLAS."""
    if y.size == 0:
        return
    if bias is not None:
        y[...] = bias
    if x2.shape[1] == 0:  # an empty sum: BLAS would want dummy operands
        if bias is None:
            y.fill(0)
        return
    _blas.gemm(_blas_operand(x2), _blas_operand(weight), y, bias is not None)


def _blas_operand(a):
    """`a` itself when BLAS can read it (row- or column-major), else an aligned copy."""
    if _blas.blas_layout(a) is not None:
        return a
    a = np.array(a, order="C")  # aligned too, unlike ascontiguousarray
    if _blas.blas_layout(a) is None:
        raise ValueError(f"an operand of shape {a.shape} exceeds the 32-bit sizes of the "
                         "BLAS backend; use backend='native'")
    return a
