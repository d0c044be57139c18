"""Stateless forward: fastlinear.functional.linear(x, weight, bias)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _config, _runner
from ._validate import as_rows, as_weight, kernel_ready, parameter

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._typing import Backend

__all__ = ["linear"]


def linear(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
           out: np.ndarray | None = None, backend: Backend = "auto") -> np.ndarray:
    """y = x @ weight.T + bias, like torch.nn.functional.linear.

    x: (*, K); weight: (N, K); bias: (N,) or None; returns (*, N), or writes `out`
    (C-contiguous, that shape and dtype) and returns it. The computation runs in the
    weight's dtype when it is float32 or float64, else in float64; x and bias are cast
    to it. The native backend packs the weight a block at a time as the call reaches it
    (reading it once), with the bits of a Linear holding it; for repeated calls with the
    same weight, fastlinear.Linear packs it once.
    """
    backend = _config.resolve_backend(backend)
    w = as_weight(weight)
    dtype = w.dtype if w.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    n, k = w.shape
    if bias is not None:
        bias = parameter(bias, (n,), dtype, "bias")
    x2, batch = as_rows(x, dtype, k, fortran_ok=backend == "blas")
    if backend == "native":
        return _runner.native_plain(np.require(w, dtype, ["C", "A"]), bias, x2, batch, out)
    return _runner.blas(kernel_ready(w, dtype, fortran_ok=True), bias, x2, batch, out)

