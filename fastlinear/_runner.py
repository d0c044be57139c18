"""The last Python step of every forward pass: the result allocated (or the caller's
`out` checked), one call into the native kernel (fastlinear._core) or BLAS
(fastlinear._blas, imported on first use: it loads scipy, most of a cold import's
time), the result shaped like the input's leading dimensions. Linear,
functional.linear, the row-wise modules and Sequential call down into it; it calls
nothing above it. Inputs come checked and converted (fastlinear._validate.as_rows)."""
import numpy as np

from . import _core, _extensions
from ._validate import as_array, as_rows, check_out


def native(packed, bias, x2, batch, out):
    """x2 @ W.T + bias for x2 (M, K), packed weights and their bias (None, or (N,) of
    their activations' type): a new (*batch, N) array, or `out` filled."""
    return _into(out, batch, x2.shape[0], packed.out_features, packed.dtype, (x2, bias),
                 lambda y: _core.gemm(packed, bias, x2, y))


def native_plain(weight, bias, x2, batch, out):
    """The same for a one-off product with plain weights (N, K), C-contiguous, of x2's
    dtype: packed a block at a time as the kernel reaches it."""
    return _into(out, batch, x2.shape[0], weight.shape[0], weight.dtype, (x2, weight, bias),
                 lambda y: _core.gemm_plain(weight, bias, x2, y))


def blas(weight, bias, x2, batch, out):
    """x2 @ weight.T + bias through BLAS (weight (N, K), bias (N,) or None, both of x2's
    dtype): a new (*batch, N) array, or `out` filled."""
    return _into(out, batch, x2.shape[0], weight.shape[0], weight.dtype,
                 (x2, weight, bias), lambda y: _blas_gemm(x2, weight, bias, y))


def _into(out, batch, m, n, dtype, inputs, compute):
    """compute(y) writes the (m, n) result; y is `out` (checked) or a new array, reshaped
    to (*batch, n) on return."""
    shape = (*batch, n)
    result = np.empty(shape, dtype=dtype) if out is None else check_out(out, shape, dtype)
    y = result.reshape(m, n)
    # The kernels may not read an input while writing y: compute aside, then copy.
    overlap = out is not None and any(a is not None and np.may_share_memory(y, a)
                                      for a in inputs)
    target = np.empty_like(y) if overlap else y
    compute(target)
    if overlap:
        y[...] = target
    return result


_blas = None  # fastlinear._blas once a BLAS call ran


def _blas_module():
    global _blas
    if _blas is None:
        _blas = _extensions.load("_blas")
    return _blas


def _blas_gemm(x2, weight, bias, y):
    """y = x2 @ weight.T + bias through BLAS."""
    if y.size == 0:
        return
    if bias is not None:
        y[...] = bias
    if x2.shape[1] == 0:  # an empty sum: BLAS would want dummy operands
        if bias is None:
            y.fill(0)
        return
    _blas_module().gemm(_blas_operand(x2), _blas_operand(weight), y, bias is not None)


def _blas_operand(a):
    """`a` itself when BLAS can read it (row- or column-major), else an aligned copy."""
    blas = _blas_module()
    if blas.blas_layout(a) is not None:
        return a
    a = np.array(a, order="C")  # aligned too, unlike ascontiguousarray
    if blas.blas_layout(a) is None:
        raise ValueError(f"an operand of shape {a.shape} exceeds the 32-bit sizes of the "
                         "BLAS backend; use backend='native'")
    return a


def data_dtype(arr):
    """The type row-wise modules compute in: float64 for float64 input, else float32."""
    return np.dtype(np.float64 if arr.dtype == np.float64 else np.float32)


def model(compiled, x, out=None):
    """A _core.Model over x (*, compiled.in_features): a new (*, out_features) array,
    or `out` filled."""
    x2, batch = as_rows(x, compiled.dtype, compiled.in_features)
    return _into(out, batch, x2.shape[0], compiled.out_features, compiled.dtype, (x2,),
                 lambda y: compiled.forward(x2, y))


def fill(out, y):
    """`out`, checked as for a result like y, holding y: for the paths that compute
    their result aside (modules run one by one, a model cut in pieces)."""
    check_out(out, y.shape, y.dtype)
    out[...] = y
    return out


def module(m, x, dtype=None):
    """A row-wise module on its own over x (*, width): the same native code, and so the
    same bits, as inside a Sequential."""
    arr = as_array(x, "input")
    if arr.ndim == 0:
        return module(m, arr.reshape(1), dtype).reshape(())
    dtype = data_dtype(arr) if dtype is None else dtype
    width = arr.shape[-1]
    return model(_core.Model(m._steps(width, dtype), dtype, width), arr)
