"""The order of every output's sum (src_c/fastlinear.h, "Numerics"): FMA chains over
summation blocks of FL_SUM_BLOCK = 128 values of k, each from zero, their partial sums
added in ascending k; the same bits on every path with FMA; float32 as accurate as BLAS."""
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core

S = 128
# The paths that round each multiply-add once (the portable one multiplies, then adds).
FMA_PATHS = [isa for isa in _core.supported_isas() if isa != "ref"]
FORMATS = [("float32", None), ("float64", None), ("bfloat16", None), ("float16", None),
           ("int8", None), ("int4", 32), ("int4", 128)]


@pytest.mark.parametrize("dtype, big", [(np.float32, 2.0 ** 24), (np.float64, 2.0 ** 53)])
def test_each_block_starts_from_zero_and_the_blocks_add_in_order(isa, dtype, big):
    """One large term, then ones: inside a block each one is lost against the large term
    (big + 1 is a tie, rounded to even), a block of ones alone sums exactly, and the
    partial sums meet once: y = big + 128 for K = 2S. One chain over all of k would give
    big, blocks of 64 big + 192, the exact sum big + 255."""
    layer = fl.Linear(2 * S, 1, bias=False, dtype=dtype, backend="native")
    w = np.ones((1, 2 * S))
    w[0, 0] = big
    layer.weight = w
    for rows in (1, 7):  # x in place, and a taller tile
        y = layer(np.ones((rows, 2 * S), dtype))
        np.testing.assert_array_equal(y, np.full((rows, 1), big + S, dtype))


@pytest.mark.skipif(len(FMA_PATHS) < 2, reason="this CPU runs one FMA path")
@pytest.mark.parametrize("fmt, group", FORMATS)
def test_every_fma_path_gives_the_same_bits(fmt, group, threads):
    before = _core.isa_name()
    dtype = np.float64 if fmt == "float64" else np.float32
    results = {}
    try:
        for isa in FMA_PATHS:
            _core.set_isa(isa)
            out = []
            for k in (1000, 1100):  # across a k block, not a whole number of blocks
                rng = np.random.default_rng(k)
                layer = fl.Linear(k, 70, rng=rng, dtype=dtype)
                if fmt not in ("float32", "float64"):
                    layer = layer.quantize(fmt, group)
                x = rng.standard_normal((130, k)).astype(dtype)
                for t in (1, 2):
                    fl.set_num_threads(t)
                    out += [layer(x[:m]) for m in (1, 2, 3, 5, 7, 13, 130)]
            results[isa] = out
    finally:
        _core.set_isa(before)
    first, *others = FMA_PATHS
    for isa in others:
        for a, b in zip(results[first], results[isa]):
            assert a.tobytes() == b.tobytes(), f"{fmt}: {first} and {isa} differ"


@pytest.mark.parametrize("k", [4096, 16384])
def test_float32_is_as_accurate_as_blas(isa, k):
    """max|y - y64| / max|y64| within twice the estimate u sqrt(S/2 + K/2S) of blocked
    sums (5.3e-7 and 6.7e-7 here; numpy's OpenBLAS: 4.7e-7); one chain over all of k
    gives 2.0e-6 and 4.9e-6."""
    layer = fl.Linear(k, 64, rng=0, backend="native")
    x = np.random.default_rng(1).standard_normal((64, k)).astype(np.float32)
    w = np.asarray(layer.weight, np.float64)
    y64 = x.astype(np.float64) @ w.T + layer.bias
    error = np.abs(layer(x) - y64).max() / np.abs(y64).max()
    estimate = 2.0 ** -24 * np.sqrt(S / 2 + k / (2 * S))
    assert error <= 2 * estimate, (error, estimate)
