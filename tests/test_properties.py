"""Property tests over shapes, strides, dtypes and backends against the float64 reference."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlinear as fl
from fastlinear import _core

from conftest import assert_close

dims = st.integers(min_value=1, max_value=70)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(0, 90), k=dims, n=dims, dtype=st.sampled_from([np.float32, np.float64]),
       bias=st.booleans(), backend=st.sampled_from(["native", "blas", "auto"]),
       fortran=st.booleans(), step=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_matches_reference(m, k, n, dtype, bias, backend, fortran, step, seed):
    rng = np.random.default_rng(seed)
    layer = fl.Linear(k, n, bias, dtype=dtype, rng=rng, backend=backend)
    base = rng.standard_normal((m, k * step)).astype(dtype)
    x = base[:, ::step]
    if fortran:
        x = np.asfortranarray(x)
    y = layer(x)
    assert y.shape == (m, n)
    assert_close(y, x, layer.weight, layer.bias)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(2, 150), k=st.integers(1, 600), n=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_native_rows_are_batch_invariant(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    layer = fl.Linear(k, n, dtype=dtype, rng=rng, backend="native")
    x = rng.standard_normal((m, k)).astype(dtype)
    full = layer(x)
    i = int(rng.integers(0, m))
    np.testing.assert_array_equal(layer(x[i]), full[i])
    j = int(rng.integers(i, m))
    np.testing.assert_array_equal(layer(x[i:j + 1]), full[i:j + 1])


@settings(max_examples=80, deadline=None)
@pytest.mark.filterwarnings("ignore:set_num_threads")  # more threads than CPUs, on purpose
@given(m=st.integers(1, 120), k=st.integers(1, 700), n=st.integers(1, 140),
       dtype=st.sampled_from([np.float32, np.float64]),
       isa=st.sampled_from(_core.supported_isas()), threads=st.integers(1, 4),
       step=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
def test_native_on_every_isa_and_thread_count(m, k, n, dtype, isa, threads, step, seed):
    before = _core.isa_name()
    try:
        _core.set_isa(isa)
        fl.set_num_threads(threads)
        rng = np.random.default_rng(seed)
        layer = fl.Linear(k, n, dtype=dtype, rng=rng, backend="native")
        x = rng.standard_normal((m, k * step)).astype(dtype)[:, ::step]
        y = layer(x)
        assert_close(y, x, layer.weight, layer.bias)
        fl.set_num_threads(1)
        np.testing.assert_array_equal(layer(x[-1]), y[-1])
    finally:
        _core.set_isa(before)
        fl.set_num_threads(None)  # follow OpenMP's setting again
