"""Shared fixtures: every native ISA path this CPU has, a float64 reference and the
error bound it is held to."""
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core

DTYPES = [np.float32, np.float64]
BACKENDS = ["native", "blas"]


@pytest.fixture(params=_core.supported_isas())
def isa(request):
    """Runs the test once per micro-kernel ISA this CPU supports; layers made inside
    the test pack their weights for it."""
    before = _core.isa_name()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


@pytest.fixture
def threads():
    """Lets a test set the thread count, then goes back to following OpenMP's."""
    yield
    fl.set_num_threads(None)


def reference(x, w, b):
    """x @ w.T + b in float64 from the values the kernel saw (already cast)."""
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y + b.astype(np.float64) if b is not None else y


def assert_close(y, x, w, b):
    """|y - exact| <= 2 (K + 2) eps (|x| |w|^T + |b|): the worst-case rounding of a K-term
    sum of products plus a bias, whatever the summation order, with a factor 2 for
    separate multiply and add."""
    assert y.dtype == w.dtype
    k = x.shape[-1]
    eps = np.finfo(w.dtype).eps
    bound = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    if b is not None:
        bound = bound + np.abs(b.astype(np.float64))
    tol = 2 * (k + 2) * eps * bound + np.finfo(w.dtype).tiny
    err = np.abs(y.astype(np.float64) - reference(x, w, b))
    assert np.all(err <= tol), f"max error {err.max()} > tolerance {tol[err > tol].min()}"


def packed_from(dtype, k):
    """The fewest rows of width k for which the native kernel packs x."""
    return _core.blocking(dtype)["direct_x_max_bytes"] // (k * np.dtype(dtype).itemsize) + 1


def random_layer(k, n, dtype, bias=True, backend="native", seed=0):
    return fl.Linear(k, n, bias, dtype=dtype, rng=seed, backend=backend)


def randomize_batchnorm(*modules):
    """Running statistics and affine parameters of torch BatchNorm1d modules drawn from
    torch's generator, so that a BatchNorm is not the identity it starts as."""
    import torch
    with torch.no_grad():
        for bn in modules:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_()
            bn.bias.normal_()
