"""Results against a float64 numpy reference: dtypes x bias x backends x ISAs x shapes
that hit every remainder of the register tile and every block boundary, x layouts."""
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core

from conftest import BACKENDS, DTYPES, assert_close, packed_from, random_layer


def _layer_case(m, k, n, dtype, bias, backend, seed=0):
    layer = random_layer(k, n, dtype, bias, backend, seed)
    x = np.random.default_rng(seed + 1).standard_normal((m, k)).astype(dtype)
    return layer, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_tile_remainder(isa, dtype, bias, backend):
    b = _core.blocking(dtype)
    top = 2 * max(b["mr"], b["nr"]) + 1
    for m in range(1, top + 1):
        for n in range(1, top + 1):
            layer, x = _layer_case(m, 7, n, dtype, bias, backend, seed=m * 1000 + n)
            assert_close(layer(x), x, layer.weight, layer.bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_k_across_block_boundaries(isa, dtype, backend):
    kc = _core.blocking(dtype)["kc"]
    for k in (1, 2, kc - 1, kc, kc + 1, 2 * kc + 3):
        layer, x = _layer_case(5, k, 11, dtype, True, backend, seed=k)
        assert_close(layer(x), x, layer.weight, layer.bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_m_across_packing_and_row_blocks(isa, dtype):
    b = _core.blocking(dtype)
    k = b["kc"] + 5
    p = packed_from(dtype, k)
    for m in (p - 1, p, b["mc"] + 1, 2 * b["mc"] + b["mr"] + 1):
        layer, x = _layer_case(m, k, 2 * b["nr"] + 3, dtype, True, "native", seed=m)
        assert_close(layer(x), x, layer.weight, layer.bias)


def test_n_across_column_blocks(isa):
    nc = _core.blocking(np.float64)["nc"]
    layer, x = _layer_case(3, 2, nc + 5, np.float64, True, "native")
    assert_close(layer(x), x, layer.weight, layer.bias)


def test_seed_example():
    layer = fl.Linear(100, 50)
    y = layer(np.random.randn(140, 100))
    assert y.shape == (140, 50) and y.dtype == np.float32


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_seed_example_values(backend):
    layer = fl.Linear(100, 50, rng=1, backend=backend)
    x = np.random.default_rng(2).standard_normal((140, 100))
    assert_close(layer(x), x.astype(np.float32), layer.weight, layer.bias)


def _layouts(x):
    """The same (m, k) values in many memory layouts."""
    m, k = x.shape
    wide = np.zeros((2 * m, 3 * k), x.dtype)
    wide[::2, ::3] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    raw = np.zeros(x.nbytes + 1, np.uint8)
    unaligned = raw[1:].view(x.dtype).reshape(m, k)
    unaligned[...] = x
    return {
        "C": np.ascontiguousarray(x),
        "F": np.asfortranarray(x),
        "strided": wide[::2, ::3],
        "reversed": x[::-1][::-1].copy()[::-1][::-1],
        "negative": np.ascontiguousarray(x[::-1])[::-1],
        "transposed": np.ascontiguousarray(x.T).T,
        "readonly": readonly,
        "unaligned": unaligned,
        "float16": x.astype(np.float16),
        "byteswapped": x.astype(x.dtype.newbyteorder()),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_layouts(isa, dtype, backend):
    layer, x = _layer_case(13, 37, 19, dtype, True, backend)
    x = x.astype(np.float16).astype(dtype)  # exact in every layout's dtype
    expected = layer(x)
    for name, xl in _layouts(x).items():
        before = xl.copy()
        y = layer(xl)
        np.testing.assert_array_equal(xl, before, err_msg=f"{name}: input changed")
        if backend == "native":  # same values, same operations: identical bits
            np.testing.assert_array_equal(y, expected, err_msg=name)
        assert_close(y, x, layer.weight, layer.bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_rows(backend):
    layer = random_layer(16, 5, np.float32, backend=backend)
    row = np.arange(16, dtype=np.float32)
    x = np.broadcast_to(row, (9, 16))  # row stride 0
    y = layer(x)
    assert_close(y, x, layer.weight, layer.bias)
    assert np.all(y == y[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_rows(isa, dtype, backend):
    """Sliding windows: row i starts one element after row i - 1 (row stride 1)."""
    layer = random_layer(9, 70, dtype, backend=backend)
    base = np.arange(40, dtype=dtype) / 7
    size = base.itemsize
    for m in (2, 7, 30):
        x = np.lib.stride_tricks.as_strided(base, (m, 9), (size, size), writeable=False)
        assert_close(layer(x), x, layer.weight, layer.bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_layouts(dtype, backend):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((23, 31)).astype(dtype)
    b = rng.standard_normal(23).astype(dtype)
    x = rng.standard_normal((6, 31)).astype(dtype)
    for name, wl in _layouts(w).items():
        if wl.dtype != dtype:
            continue
        for rows in (x, x[:1], x[2]):  # one row takes BLAS's matrix-vector path
            y = fl.functional.linear(rows, wl, b, backend=backend)
            assert_close(y, rows, w, b)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_batch_shapes(backend):
    layer = random_layer(8, 3, np.float64, backend=backend)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 8))
    y = layer(x)
    assert y.shape == (2, 4, 5, 3)
    assert_close(y.reshape(-1, 3), x.reshape(-1, 8), layer.weight, layer.bias)
    assert layer(x[0, 0, 0]).shape == (3,)                 # 1-D in, 1-D out
    assert layer(np.empty((0, 8))).shape == (0, 3)         # empty batch
    assert layer(np.empty((2, 0, 8))).shape == (2, 0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_prefilled_with_nan(dtype, backend):
    layer, x = _layer_case(70, 600, 21, dtype, True, backend)
    out = np.full((70, 21), np.nan, dtype)
    y = layer(x, out=out)
    assert y is out
    assert_close(out, x, layer.weight, layer.bias)
    out_nobias = np.full((70, 21), np.nan, dtype)
    layer.bias = None
    layer(x, out=out_nobias)
    assert_close(out_nobias, x, layer.weight, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_overlapping_input(backend):
    layer = random_layer(12, 12, np.float64, backend=backend)
    x = np.random.default_rng(0).standard_normal((5, 12))
    expected = layer(x)
    layer(x, out=x)
    np.testing.assert_allclose(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_stay_in_their_row(backend):
    layer = random_layer(9, 4, np.float32, backend=backend)
    x = np.ones((4, 9), np.float32)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    y = layer(x)
    assert np.all(np.isnan(y[1]))
    assert not np.any(np.isnan(y[[0, 3]]))
    expected = x[2:3] @ layer.weight.T + layer.bias  # numpy's +-inf (or nan) per column
    np.testing.assert_array_equal(np.isnan(y[2]), np.isnan(expected[0]))
    np.testing.assert_array_equal(np.isinf(y[2]), np.isinf(expected[0]))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_functional_matches_layer(backend):
    layer = random_layer(33, 17, np.float32, backend=backend)
    x = np.random.default_rng(0).standard_normal((10, 33)).astype(np.float32)
    y = fl.functional.linear(x, layer.weight, layer.bias, backend=backend)
    np.testing.assert_array_equal(y, layer(x))
    out = np.empty((10, 17), np.float32)
    assert fl.functional.linear(x, layer.weight, out=out, backend=backend) is out
    assert_close(out, x, layer.weight, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_zero_in_features(backend):
    x = np.ones((3, 0))
    w = np.ones((4, 0))
    b = np.arange(4.0)
    np.testing.assert_array_equal(fl.functional.linear(x, w, b, backend=backend),
                                  np.tile(b, (3, 1)))
    out = np.full((3, 4), np.nan)
    fl.functional.linear(x, w, out=out, backend=backend)
    np.testing.assert_array_equal(out, 0)


def test_backends_agree():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 300)).astype(np.float32)
    native = random_layer(300, 40, np.float32, backend="native")
    blas = random_layer(300, 40, np.float32, backend="blas")
    assert_close(native(x), x, native.weight, native.bias)
    assert_close(blas(x), x, blas.weight, blas.bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_weight_spoils_its_column_only(isa, backend):
    layer = random_layer(20, 70, np.float32, backend=backend)
    w = layer.weight.copy()
    w[3, 5] = np.nan
    w[66, 0] = np.inf
    layer.weight = w
    x = np.random.default_rng(0).standard_normal((9, 20)).astype(np.float32)
    y = layer(x)
    expected = x.astype(np.float64) @ w.astype(np.float64).T + layer.bias
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    assert np.all(np.isnan(y[:, 3])) and not np.any(np.isnan(np.delete(y, [3, 66], axis=1)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_off_linear_has_the_bits_of_a_layer(isa, dtype, threads):
    """functional.linear packs each panel of W as the call reaches it (a few rows, where
    x is read in place) or all of W first (many rows): the bits of a Linear holding W,
    at tile and panel edges, with and without a bias, one and two threads."""
    rng = np.random.default_rng(3)
    for m, k, n in ((1, 300, 70), (5, 1100, 33), (2, 7, 130), (300, 260, 70), (3, 0, 5)):
        layer = fl.Linear(max(k, 1), n, dtype=dtype, backend="native") if k else None
        w = rng.standard_normal((n, k)).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        x = rng.standard_normal((m, k)).astype(dtype)
        for bias in (b, None):
            for t in (1, 2):
                fl.set_num_threads(t)
                y = fl.functional.linear(x, w, bias, backend="native")
                if layer is None:  # K = 0: the bias alone
                    np.testing.assert_array_equal(y, np.broadcast_to(
                        bias if bias is not None else 0, (m, n)))
                    continue
                layer.weight, layer.bias = w, bias
                np.testing.assert_array_equal(y, layer(x), err_msg=f"{m}x{k}x{n}")
