"""Runs a chain of native steps (fastlinear._core.Model: a Linear with its activation,
an activation, LayerNorm, softmax ...) over the rows of an array of any leading shape.
Modules describe themselves as steps with `_steps(width, dtype)`."""
import numpy as np

from . import _core
from ._validate import as_array, as_rows


def data_dtype(arr):
    """The type row-wise modules compute in: float64 for float64 input, else float32."""
    return np.dtype(np.float64 if arr.dtype == np.float64 else np.float32)


def run(model, x):
    """model over x (*, model.in_features): a new (*, model.out_features) array."""
    x2, batch = as_rows(x, model.dtype, model.in_features)
    y = np.empty((x2.shape[0], model.out_features), model.dtype)
    model.forward(x2, y)
    return y.reshape(*batch, model.out_features)


def apply(module, x, dtype=None):
    """A row-wise module on its own over x (*, width): the same native code, and so
    the same bits, as inside a Sequential."""
    arr = as_array(x, "input")
    if arr.ndim == 0:
        return apply(module, arr.reshape(1), dtype).reshape(())
    dtype = data_dtype(arr) if dtype is None else dtype
    width = arr.shape[-1]
    return run(_core.Model(module._steps(width, dtype), dtype, width), arr)
