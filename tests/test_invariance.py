"""The reproducibility promise of the native backend, bit for bit: a row's result does
not depend on the batch it is in, its position there, or the thread count."""
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core

from conftest import DTYPES, packed_from, random_layer


def _big_case(dtype):
    """Enough rows to pack x and enough work for several threads, K over two blocks."""
    b = _core.blocking(dtype)
    m, k, n = 2 * b["mc"] + b["mr"] + 3, 2 * b["kc"] + 7, 3 * b["nr"] + 5
    layer = random_layer(k, n, dtype, seed=7)
    x = np.random.default_rng(8).standard_normal((m, k)).astype(dtype)
    return layer, x


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_alone_equals_row_in_batch(isa, dtype):
    layer, x = _big_case(dtype)
    full = layer(x)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(layer(x[i]), full[i])
        np.testing.assert_array_equal(layer(x[i:i + 1])[0], full[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_batch_size_and_offset(isa, dtype):
    layer, x = _big_case(dtype)
    full = layer(x)
    rng = np.random.default_rng(0)
    b = _core.blocking(dtype)
    p = packed_from(dtype, x.shape[1])
    # mr + 2 and mr + 3 rows: tiles of (mr + 2) / 2 rows where the kernel has them
    for m in (2, 3, 5, b["mr"] + 1, b["mr"] + 2, b["mr"] + 3, p - 1, p, p + 1, b["mc"] + 1,
              x.shape[0] - 1):
        start = int(rng.integers(0, x.shape[0] - m + 1))
        np.testing.assert_array_equal(layer(x[start:start + m]), full[start:start + m])


def _narrow_case(dtype):
    """x small enough to read in place, one weight panel: threads split the rows."""
    b = _core.blocking(dtype)
    k = 256
    m = min(packed_from(dtype, k) - 1, 40 * b["mr"] + 3)
    layer = random_layer(k, b["nr"], dtype, seed=9)
    x = np.random.default_rng(10).standard_normal((m, k)).astype(dtype)
    assert m * k * b["nr"] >= 2**17  # enough work for a team
    return layer, x


@pytest.mark.parametrize("case", [_big_case, _narrow_case])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:set_num_threads")  # more threads than CPUs, on purpose
def test_thread_count_does_not_change_bits(isa, dtype, case, threads):
    layer, x = case(dtype)
    fl.set_num_threads(1)
    one = layer(x)
    few = layer(x[:3])
    for n in (2, 3, 4):
        fl.set_num_threads(n)
        np.testing.assert_array_equal(layer(x), one)
        np.testing.assert_array_equal(layer(x[:3]), few)
        np.testing.assert_array_equal(few, one[:3])


def test_functional_native_equals_layer(isa):
    layer, x = _big_case(np.float32)
    y = fl.functional.linear(x, layer.weight, layer.bias, backend="native")
    np.testing.assert_array_equal(y, layer(x))
