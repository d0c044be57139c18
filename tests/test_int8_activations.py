"""Integer activations (weight_dtype "int8" or "int4", activations="int8"): each row of x
quantized alone, exact integer sums, then a fixed float32 sequence (src_c/fastlinear.h).
Every ISA
path the CPU runs against the numpy reference (tests/int8_reference.py) bit for bit: tile
edges, the largest K with the extreme values, NaN/Inf, zero and tiny rows, the row
promise at 1-3 threads, whole models; then the API: errors, saving, pickling, the
importers, and the accuracy against float64 (and torch's quantize_dynamic)."""
import copy
import json
import pickle

import numpy as np
import pytest

import fastlinear as fl
import int8_reference as ref
from fastlinear import _core, _formats, _runner

MAX_K = _core.FL_I8Q_MAX_K
F32 = np.float32


def assert_same(y, expected):
    """The same shape, dtype and bits, NaN where NaN (a NaN's payload aside)."""
    assert y.shape == expected.shape and y.dtype == expected.dtype == F32
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(y), nan), "NaN in other places"
    a, b = np.where(nan, 0, y), np.where(nan, 0, expected)
    if a.tobytes() != b.tobytes():
        bad = np.argwhere(a.view(np.uint32) != b.view(np.uint32))[0]
        raise AssertionError(f"first difference at {tuple(bad)}: {a[tuple(bad)]!r} != "
                             f"{b[tuple(bad)]!r}")


def int8_layer(k, n, bias=True, seed=0, weight_dtype="int8", group_size=None):
    """A Linear with int8 activations and int8 (or int4) weights holding stored weights
    over the whole range (int8's -128 too, which quantization never writes but
    load_state_dict takes) and scales of both signs."""
    rng = np.random.default_rng(seed)
    layer = fl.Linear(k, n, bias, weight_dtype=weight_dtype, group_size=group_size,
                      activations="int8", rng=seed)  # weights drawn, then replaced
    if weight_dtype == "int8":
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
        scale_shape, step = (n,), 127
    else:
        w = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
        if k % 2:
            w[:, -1] &= 15  # the unused high nibble, as quantization leaves it
        scale_shape, step = (n, -(-k // layer.group_size)), 8
    scale = (rng.uniform(0.5, 2, scale_shape) * rng.choice([-1, 1], scale_shape)
             / step).astype(F32)
    scale = (scale.view(np.uint32) & ~np.uint32(7)).view(F32)  # int4: 21 significant bits
    state = {"weight": w, "weight_scale": scale}
    if bias:
        state["bias"] = rng.standard_normal(n).astype(F32)
    layer.load_state_dict(state)
    return layer


# (weight_dtype, group_size) of the formats with integer activations
FORMATS = [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)]


def inputs(m, k, seed=0):
    """Rows of N(0, 1) values, each row scaled by its own power of ten (1e-3 .. 1e3)."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3, 3, (m, 1))
    return (rng.standard_normal((m, k)) * scale).astype(F32)


# -- the arithmetic, on every path ---------------------------------------------------------
KS = [1, 2, 7, 31, 32, 33, 64, 127, 128, 129, 300, 1000]
KS_GROUPS = [1, 63, 64, 65, 129, 300]  # int4 with groups of 64 and 128: their edges
NS = [*range(1, 14), 32, 33, 131]
MS = [*range(1, 14), 130, 131]


def test_the_reference_is_the_header_loop():
    """The vectorised reference against the row-by-row statement of the numerics."""
    x = inputs(20, 300, seed=5)
    x[3] = 0
    x[4, 5], x[5, 7], x[8, 0] = np.nan, -np.inf, np.inf
    x[6] *= F32(1e-25)
    x[7] *= F32(1e-43)
    q, s = ref.quantize_rows(x)
    for i, row in enumerate(x):
        a = np.abs(row).max()
        if not np.isfinite(a):
            assert np.isnan(s[i]) and not q[i].any()
            continue
        if a == 0:
            assert s[i] == 0 and not q[i].any()
            continue
        u = F32(2.0**64) if a < F32(2.0**-64) else F32(1)
        assert s[i] == a / F32(127)
        assert np.array_equal(q[i], np.rint((row * u) * (F32(127) / (a * u))))
    assert np.abs(q).max() == 127


@pytest.mark.parametrize("weight_dtype, group_size", FORMATS)
def test_every_tile_edge_matches_the_reference(isa, weight_dtype, group_size):
    for k in KS if group_size in (None, 32) else KS_GROUPS:
        x = inputs(max(MS), k, seed=k)
        for n in NS:
            layer = int8_layer(k, n, bias=n % 2 == 1, seed=k * 1000 + n,
                               weight_dtype=weight_dtype, group_size=group_size)
            expected = ref.of_layer(layer, x)
            assert_same(layer(x), expected)
            if n in (5, 13, 131):
                for m in MS:
                    assert_same(layer(x[:m]), expected[:m])


def test_every_path_gives_the_same_bits():
    """The digest of one set of layers on every ISA this CPU runs, against each other
    (the reference test above holds each to the numpy sequence)."""
    x = inputs(40, 700, seed=9)
    results = {}
    before = _core.isa_name()
    try:
        for isa in _core.supported_isas():
            _core.set_isa(isa)
            results[isa] = b"".join(
                int8_layer(700, n, seed=n, weight_dtype=f, group_size=g)(x).tobytes()
                for n in (1, 16, 33, 100) for f, g in FORMATS)
    finally:
        _core.set_isa(before)
    first, *others = results
    for isa in others:
        assert results[isa] == results[first], f"{isa} differs from {first}"


def test_extreme_values_at_the_largest_k(isa):
    """x = +-127 everywhere (each row's scale exactly 1, q = x) against weights -128 and
    127 at K = FL_I8Q_MAX_K: the sums reach +-127 * 128 * K, the most an int32 holds
    here, and must come out exact on every path (the VNNI kernel's shifted sums pass
    the int32 range and wrap back)."""
    k, rng = MAX_K, np.random.default_rng(1)
    w = np.empty((5, k), np.int8)
    w[0], w[1] = -128, 127
    w[2, 0::2], w[2, 1::2] = -128, 127
    w[3] = rng.choice(np.array([-128, 127], np.int8), k)
    w[4] = rng.integers(-128, 128, k)
    x = np.empty((4, k), F32)
    x[0], x[1] = 127, -127
    x[2, 0::2], x[2, 1::2] = 127, -127
    x[3] = rng.choice(np.array([-127, 127], F32), k)
    layer = fl.Linear(k, 5, bias=False, weight_dtype="int8", activations="int8")
    layer.load_state_dict({"weight": w, "weight_scale": np.ones(5, F32)})
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    assert acc[0, 0] == -127 * 128 * k and acc[1, 0] == 127 * 128 * k
    assert np.abs(acc).max() < 2**31
    y = layer(x)
    assert np.array_equal(y, acc.astype(F32))  # s = 127 / 127 = 1: float32(acc) itself
    assert_same(y, ref.of_layer(layer, x))
    # any magnitude: every value at the row's largest magnitude quantizes to +-127
    small = x * F32(3e-7)
    assert np.array_equal(ref.quantize_rows(small)[0], x.astype(np.int64))
    assert_same(layer(small), ref.of_layer(layer, small))


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_extreme_values_beyond_the_int8_limit(isa, group_size):
    """int4 weights sum each group alone: no limit on K. +-127 against -8 and 7."""
    k, rng = MAX_K + 1000, np.random.default_rng(2)
    values = np.empty((3, k), np.int8)
    values[0], values[1] = -8, 7
    values[2] = rng.choice(np.array([-8, 7], np.int8), k)
    nibbles = np.zeros((3, k + k % 2), np.uint8)
    nibbles[:, :k] = values & 15
    layer = fl.Linear(k, 3, weight_dtype="int4", group_size=group_size, activations="int8")
    groups = -(-k // group_size)
    layer.load_state_dict({"weight": nibbles[:, 0::2] | (nibbles[:, 1::2] << 4),
                           "weight_scale": np.ones((3, groups), F32),
                           "bias": np.zeros(3, F32)})
    x = np.empty((3, k), F32)
    x[0], x[1] = 127, -127
    x[2] = rng.choice(np.array([-127, 127], F32), k)
    y = layer(x)
    assert_same(y, ref.of_layer(layer, x))
    assert y[0, 0] == -127 * 8 * k and y[1, 1] == -127 * 7 * k  # exact: below 2**24


@pytest.mark.parametrize("weight_dtype, group_size", FORMATS[:2])
def test_nan_or_inf_in_a_row_spoils_that_row_only(isa, weight_dtype, group_size):
    for k in (5, 300, 1000):
        layer = int8_layer(k, 37, seed=k, weight_dtype=weight_dtype, group_size=group_size)
        x = inputs(9, k, seed=k)
        x[1, k // 2] = np.nan
        x[3, 0] = np.inf
        x[4, k - 1] = -np.inf       # the last value: a tail of the row
        x[6, :] = np.nan
        x[7, ::2] = np.inf
        y = layer(x)
        bad = [1, 3, 4, 6, 7]
        assert np.isnan(y[bad]).all()
        good = [0, 2, 5, 8]
        assert not np.isnan(y[good]).any()
        assert_same(y, ref.of_layer(layer, x))
        for i in good:  # the other rows as if alone
            assert_same(y[i], layer(x[i]))


@pytest.mark.parametrize("weight_dtype, group_size", FORMATS[:2])
def test_zero_and_tiny_rows(isa, weight_dtype, group_size):
    k = 200
    layer = int8_layer(k, 19, seed=3, weight_dtype=weight_dtype, group_size=group_size)
    tiny = F32(2.0**-64)
    x = inputs(12, k, seed=4)
    x[0] = 0
    x[1] = -0.0
    x[2] *= tiny / np.abs(x[2]).max()                  # largest exactly 2**-64: u = 1
    x[3] *= np.nextafter(tiny, F32(0)) / np.abs(x[3]).max()  # just below: u = 2**64
    x[4] = 0
    x[4, 17] = np.finfo(F32).smallest_subnormal        # one subnormal
    x[5] *= F32(1e-40) / np.abs(x[5]).max()            # all subnormal
    x[6] = 0
    x[6, 3], x[6, 150] = F32(1e-30), F32(-1e-44)
    x[7] = np.finfo(F32).max * np.sign(x[7])           # the largest magnitudes
    x[8, 0] = np.finfo(F32).max                        # one huge value, the rest rounds to 0
    x[9, 10] = -np.finfo(F32).max
    y = layer(x)
    assert_same(y, ref.of_layer(layer, x))
    b = layer.bias
    assert np.array_equal(y[0], b) and np.array_equal(y[1], b)  # zero rows: the bias
    # (row 7 may overflow: int4's groups then add infinities of both signs)
    assert not np.isnan(np.delete(y, 7, axis=0)).any()
    no_bias = int8_layer(k, 19, bias=False, seed=3, weight_dtype=weight_dtype,
                         group_size=group_size)
    assert_same(no_bias(x), ref.of_layer(no_bias, x))
    assert not no_bias(x[:2]).any()


def test_no_inputs():
    """K = 0 (a Linear needs in_features >= 1, so at the bridge): every output the bias,
    or zero."""
    for n in (1, 13):
        for name, group, kernel, scale in (("int8", 0, np.int8, (n,)),
                                           ("int4", 32, np.uint8, (n, 0))):
            packed = _core.PackedWeights(n, 0, _formats.FORMAT[name], group, "int8")
            packed.set_rows(0, np.zeros((n, 0), kernel), np.full(scale, 0.5, F32))
            x = np.zeros((3, 0), F32)
            b = np.arange(n, dtype=F32) - 2
            for bias in (b, None):
                y = _runner.native(packed, bias, x, (3,), None)
                expected = np.broadcast_to(b if bias is not None else F32(0), (3, n))
                assert_same(y, np.array(expected))
            assert_same(y, ref.linear(x, np.zeros((n, 0), np.int8), np.full(n, 0.5, F32)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 3 threads on a 2-CPU machine
@pytest.mark.parametrize("weight_dtype, group_size", FORMATS[:2])
def test_a_row_alone_equals_the_row_in_any_batch(isa, weight_dtype, group_size):
    k = 300
    layer = int8_layer(k, 45, seed=7, weight_dtype=weight_dtype, group_size=group_size)
    m = 1 + _core.blocking("float32")["direct_x_max_bytes"] // (k * 4) + 5  # x packed too
    x = inputs(m, k, seed=8)
    with fl.threads(1):
        alone = np.stack([layer(row) for row in x])
    assert_same(alone, ref.of_layer(layer, x))
    for threads in (1, 2, 3):
        with fl.threads(threads):
            for rows in (*MS, 140, m):
                assert_same(layer(x[:rows]), alone[:rows])
            assert_same(layer(x[7:138]), alone[7:138])
            assert_same(layer(x[::-1]), alone[::-1])


# -- whole models ------------------------------------------------------------------------
def _model_parts():
    return [int8_layer(64, 48, seed=1), fl.ReLU(),
            int8_layer(48, 40, seed=2, weight_dtype="int4", group_size=32), fl.GELU(),
            int8_layer(40, 33, seed=3), fl.SiLU(), fl.LayerNorm(33),
            int8_layer(33, 10, bias=False, seed=4), fl.Tanh(),
            fl.Linear(10, 6, rng=5, backend="native"), fl.Softmax(dim=-1)]


def test_sequential_runs_natively_and_equals_the_layers_chained(isa):
    parts = _model_parts()
    model = fl.Sequential(*parts)
    program = model._program()
    assert program is not None and len(program) == 1 and program[0].plain is not None
    x = inputs(37, 64, seed=2) * F32(1e-2)
    y = model(x)
    chained = x
    for part in parts:
        chained = part(chained)
    assert_same(y, chained)
    for i in (0, 13, 36):  # the row promise holds through the model
        assert_same(model(x[i]), y[i])
    # the first layer's ReLU against the reference
    first = fl.Sequential(parts[0], fl.ReLU())
    assert_same(first(x), np.maximum(ref.of_layer(parts[0], x), F32(0)))


def test_sequential_quantize():
    base = fl.Sequential(fl.Linear(30, 20, rng=0), fl.ReLU(),
                         fl.Sequential(fl.Linear(20, 7, rng=1)))
    model = base.quantize("int8", activations="int8")
    assert [m.activations for m in (model[0], model[2][0])] == ["int8", "int8"]
    x = inputs(5, 30)
    hidden = np.maximum(base[0].quantize("int8", activations="int8")(x), 0)
    assert_same(model(x), base[2][0].quantize("int8", activations="int8")(hidden))
    assert base[0].activations == "float32"
    assert model.quantize("int8")[0].activations == "float32"  # the default: float
    with pytest.raises(ValueError, match=r"module 0 \(Linear.*int8 activations need int8 "
                                         r"or int4 weights .*, got bfloat16"):
        base.quantize("bfloat16", activations="int8")
    model4 = base.quantize("int4", 64, activations="int8")
    assert model4[2][0].activations == "int8" and model4[2][0].group_size == 64


# -- the API -----------------------------------------------------------------------------
def test_the_layer_says_its_activations():
    x = inputs(4, 50)
    float_layer = fl.Linear(50, 20, rng=0)
    assert float_layer.activations == "float32"
    assert fl.Linear(5, 2, dtype=np.float64).activations == "float64"
    assert fl.Linear(5, 2, dtype=np.float64, activations="float64").activations == "float64"
    assert fl.Linear(5, 2, weight_dtype="int8", activations="float32").activations == \
        "float32"
    assert "activations" not in repr(float_layer)
    layer = float_layer.quantize("int8", activations="int8")
    assert layer.activations == "int8"
    assert repr(layer) == ("Linear(in_features=50, out_features=20, bias=True, "
                           "weight_dtype='int8', activations='int8', backend='auto' "
                           "(native))")
    with pytest.raises(AttributeError):
        layer.activations = "float32"  # type: ignore[misc]
    assert fl.Linear(5, 2, weight_dtype="int8", activations=np.int8).activations == "int8"
    # the same weights as float32 activations would use; only x is quantized
    weights_only = float_layer.quantize("int8")
    assert np.array_equal(layer.state_dict()["weight"], weights_only.state_dict()["weight"])
    assert np.array_equal(layer.weight, weights_only.weight)
    assert_same(layer(x), ref.of_layer(layer, x))
    assert not np.array_equal(layer(x), weights_only(x))
    # a new weight or bias keeps the mode
    layer.weight = float_layer.weight * 2
    layer.bias = np.ones(20)
    assert layer.activations == "int8"
    assert_same(layer(x), ref.of_layer(layer, x))


NEED = "int8 activations need int8 or int4 weights (weight_dtype='int8' or 'int4'), got"
BAD = [
    (dict(), f"{NEED} float32 weights"),
    (dict(weight_dtype="bfloat16"), f"{NEED} bfloat16 weights"),
    (dict(weight_dtype="float16"), f"{NEED} float16 weights"),
    (dict(dtype=np.float64), "int8 activations run in float32 layers"),
    (dict(weight_dtype="int8", backend="blas"),
     "int8 activations run on the native kernel only: backend 'blas'"),
    (dict(weight_dtype="int4", backend="blas"),
     "int8 activations run on the native kernel only: backend 'blas'"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError) as info:
        fl.Linear(8, 4, activations="int8", **kwargs)
    assert message in str(info.value)


def test_bad_settings_elsewhere():
    with pytest.raises(ValueError, match=f"int8 activations with int8 weights take at most "
                                         f"{MAX_K} inputs, got in_features={MAX_K + 1}: the "
                                         r"integer sums are exact in int32 only"):
        fl.Linear(MAX_K + 1, 1, weight_dtype="int8", activations="int8")
    fl.Linear(MAX_K, 1, weight_dtype="int8", activations="int8")  # the largest: fine
    fl.Linear(MAX_K + 1, 1, weight_dtype="int4", activations="int8")  # int4: per group
    for value in ("int4", "float64", "uint8", "", 5, None.__class__):
        with pytest.raises(ValueError, match="activations must be None, 'float32'"):
            fl.Linear(8, 4, weight_dtype="int8", activations=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activations must be None, 'float64'"):
        fl.Linear(8, 4, dtype=np.float64, activations="float32")
    layer = fl.Linear(8, 4)
    with pytest.raises(ValueError, match="need int8 or int4 weights.*got float16"):
        layer.quantize("float16", activations="int8")
    with pytest.raises(ValueError, match="need int8 or int4 weights.*got float32"):
        layer.quantize("float32", activations="int8")


# -- saving, loading, pickling -----------------------------------------------------------
def _read_structure(path):
    with np.load(path) as f:
        return json.loads(str(f["__fastlinear__"]))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_model_keep_the_mode(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model = fl.Sequential(int8_layer(20, 12, seed=1), fl.ReLU(),
                          int8_layer(12, 7, seed=2, weight_dtype="int4", group_size=64),
                          fl.Linear(7, 3, rng=2))
    path = tmp_path / f"m{suffix}"
    fl.save(model, path)
    same = fl.load_model(path)
    assert [same[i].activations for i in (0, 2, 3)] == ["int8", "int8", "float32"]
    assert same[2].group_size == 64
    x = inputs(6, 20)
    assert_same(same(x), model(x))
    assert list(fl.load(path)) == ["0.weight", "0.weight_scale", "0.bias", "2.weight",
                                   "2.weight_scale", "2.bias", "3.weight",
                                   "3.bias"]  # the state dict's keys as ever
    lone = tmp_path / f"l{suffix}"
    fl.save(model[0], lone)
    assert fl.load_model(lone).activations == "int8"


def test_the_saved_structure_records_the_mode(tmp_path):
    fl.save(fl.Sequential(int8_layer(4, 3), fl.Linear(3, 2)), tmp_path / "a.npz")
    structure = _read_structure(tmp_path / "a.npz")
    assert structure["version"] == 2
    settings = [m["settings"]["activations"] for m in structure["model"]["modules"]]
    assert settings == ["int8", "float32"]
    # without int8 activations: version 1, as older fastlinear reads it
    fl.save(fl.Sequential(fl.Linear(4, 3).quantize("int8")), tmp_path / "b.npz")
    structure = _read_structure(tmp_path / "b.npz")
    assert structure["version"] == 1
    assert "activations" not in structure["model"]["modules"][0]["settings"]
    assert fl.load_model(tmp_path / "b.npz")[0].activations == "float32"


def _rewrite(path, structure, tmp_path, name):
    with np.load(path) as f:
        arrays = {key: f[key] for key in f.files if key != "__fastlinear__"}
    out = tmp_path / name
    np.savez(out, __fastlinear__=np.array(json.dumps(structure)), **arrays)
    return out


def test_structure_settings_are_checked(tmp_path):
    fl.save(int8_layer(6, 3), tmp_path / "m.npz")
    structure = _read_structure(tmp_path / "m.npz")
    cases = [("int4", ValueError, "activations must be None, 'float32'"),
             (8, TypeError, "activations must be a string, got 8"),
             ("int8", ValueError, None)]
    for value, exc, message in cases:
        structure["model"]["settings"]["activations"] = value
        path = _rewrite(tmp_path / "m.npz", structure, tmp_path, "bad.npz")
        if message is None:
            assert fl.load_model(path).activations == "int8"
            continue
        with pytest.raises(exc, match=rf"the model \(Linear\): {message}"):
            fl.load_model(path)
    # version 2 needs the setting; version 1 refuses it
    del structure["model"]["settings"]["activations"]
    with pytest.raises(ValueError, match="expected the settings"):
        fl.load_model(_rewrite(tmp_path / "m.npz", structure, tmp_path, "v2.npz"))
    structure["version"] = 1
    assert fl.load_model(_rewrite(tmp_path / "m.npz", structure, tmp_path,
                                  "v1.npz")).activations == "float32"
    structure["model"]["settings"]["activations"] = "int8"
    with pytest.raises(ValueError, match="expected the settings"):
        fl.load_model(_rewrite(tmp_path / "m.npz", structure, tmp_path, "v1b.npz"))
    # float64 weights with int8 activations: the layer's own error
    structure = {"version": 2, "model": {"kind": "Linear", "settings": {
        "in_features": 6, "out_features": 3, "bias": False, "dtype": "float64",
        "weight_dtype": "float64", "group_size": None, "backend": "auto",
        "activations": "int8"}}}
    with pytest.raises(ValueError, match="int8 activations run in float32 layers"):
        fl.load_model(_rewrite(tmp_path / "m.npz", structure, tmp_path, "f64.npz"))


def test_pickle_copy_and_state_dict_keep_the_mode():
    layer = int8_layer(30, 9, seed=2)
    x = inputs(4, 30)
    y = layer(x)
    for other in (pickle.loads(pickle.dumps(layer)), copy.copy(layer), copy.deepcopy(layer)):
        assert other.activations == "int8"
        assert_same(other(x), y)
    model = fl.Sequential(layer, fl.ReLU())
    assert pickle.loads(pickle.dumps(model))[0].activations == "int8"
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias"}
    other = fl.Linear(30, 9, weight_dtype="int8", activations="int8", rng=5)
    other.load_state_dict(layer.state_dict())
    assert other.activations == "int8"
    assert_same(other(x), y)
    # a pickle from before the mode existed (_from_state without it): float activations
    func, args = layer.__reduce__()
    old = func(*args[:-1])
    assert old.activations == "float32" and old.weight_dtype == "int8"


def test_state_dict_hint_names_the_mode():
    layer = fl.Linear(100, 50, weight_dtype="int8", activations="int8")
    with pytest.raises(KeyError, match=r"load them into fl.Linear\(100, 50\), then call "
                                       r"\.quantize\('int8'\)"):
        layer.load_state_dict(fl.Linear(100, 50).state_dict())
    floats = fl.Linear(100, 50)
    with pytest.raises(KeyError, match=r"build it as fl.Linear\(100, 50, weight_dtype='int8'\)"):
        floats.load_state_dict(layer.state_dict())


# -- the importers -----------------------------------------------------------------------
def test_from_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Linear(40, 16)
    layer = fl.Linear.from_torch(module, weight_dtype="int8", activations="int8")
    assert layer.activations == "int8"
    x = inputs(3, 40)
    assert_same(layer(x), fl.Linear.from_torch(module).quantize("int8", activations="int8")(x))
    with pytest.raises(ValueError, match="int8 activations need int8 or int4 weights"):
        fl.Linear.from_torch(module, activations="int8")
    seq = torch.nn.Sequential(module, torch.nn.ReLU(), torch.nn.Sequential(
        torch.nn.Linear(16, 4)))
    model = fl.Sequential.from_torch(seq, weight_dtype="int8", activations="int8")
    assert [model[0].activations, model[2][0].activations] == ["int8", "int8"]
    expected = fl.Sequential.from_torch(seq).quantize("int8", activations="int8")
    assert_same(model(x), expected(x))
    with pytest.raises(ValueError, match=r"module '0' \(Linear\): int8 activations need "
                                         r"int8 or int4 weights"):
        fl.Sequential.from_torch(seq, activations="int8")


def test_load_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 24)).astype(F32), rng.standard_normal(16).astype(F32)
    w2 = rng.standard_normal((5, 16)).astype(F32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    ours = fl.load_onnx(path, weight_dtype="int8", activations="int8")
    assert [m.activations for m in ours.modules if isinstance(m, fl.Linear)] == ["int8"] * 2
    x = inputs(7, 24)
    expected = fl.load_onnx(path).quantize("int8", activations="int8")
    assert_same(ours(x), expected(x))
    with pytest.raises(ValueError, match="int8 activations need int8 or int4 weights"):
        fl.load_onnx(path, activations="int8")
    with pytest.raises(ValueError, match="int8 activations run on the native kernel"):
        fl.load_onnx(path, weight_dtype="int8", activations="int8", backend="blas")


# -- accuracy ----------------------------------------------------------------------------
def _torch_like_weights(k, n, seed):
    """torch.nn.Linear's initialisation (uniform in +-1/sqrt(k)), from torch where it is
    installed, else the same distribution from numpy; and its module (or None)."""
    try:
        import torch
    except ImportError:
        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(k)
        return (rng.uniform(-bound, bound, (n, k)).astype(F32),
                rng.uniform(-bound, bound, n).astype(F32), None)
    torch.manual_seed(seed)
    module = torch.nn.Linear(k, n)
    return (module.weight.detach().numpy().copy(), module.bias.detach().numpy().copy(),
            module)


@pytest.mark.parametrize("weight_dtype", ["int8", "int4"])
@pytest.mark.parametrize("m, k, n", [(64, 768, 256), (16, 100, 50), (8, 4096, 64)])
def test_accuracy_against_float64(m, k, n, weight_dtype):
    """Each error within its worst case, and max|y - y64| / max|y64| within the expected
    size of the rounding of x to 127 steps (int8 weights: and of w), on N(0, 1) inputs
    with torch's initialisation; int8: no larger than torch's quantize_dynamic."""
    w, b, module = _torch_like_weights(k, n, seed=k)
    x = np.random.default_rng(n).standard_normal((m, k)).astype(F32)
    base = fl.Linear(k, n)
    base.load_state_dict({"weight": w, "bias": b})
    layer = base.quantize(weight_dtype, activations="int8")
    y = layer(x).astype(np.float64)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y64 = x64 @ w64.T + b
    err = np.abs(y - y64)
    relative = err.max() / np.abs(y64).max()
    # Worst case, per output: |x - s q| <= s/2 (s = max|x| / 127, up to a few float32
    # roundings of 127 / a: 0.501), so x's rounding costs at most 0.501 s sum|w|; each
    # weight is off by at most dw (int8: s_w / 2, 0.501 s_w; int4: a whole step s_w of
    # its group, where a value near +8 s_w clips to 7), against |s q| <= |x| + s / 2;
    # then a few float32 roundings per group (float32(acc), s * s_w, the product, the
    # sums, the bias).
    s = np.abs(x64).max(axis=1, keepdims=True) / 127
    scale = layer.state_dict()["weight_scale"].astype(np.float64)
    if weight_dtype == "int8":
        dw, groups = np.broadcast_to(0.501 * np.abs(scale)[:, None], w.shape), 1
    else:
        dw = 1.001 * np.repeat(np.abs(scale), layer.group_size, axis=1)[:, :k]
        groups = scale.shape[1]
    bound = 0.501 * s * np.abs(w64).sum(axis=1) + (np.abs(x64) + s / 2) @ dw.T
    bound += 4 * (groups + 1) * np.finfo(F32).eps * (np.abs(x64) @ np.abs(w64).T
                                                     + np.abs(b))
    assert np.all(err <= bound)
    # Expected size: each rounding about uniform, of variance step^2 / 12; over K terms
    # x's rounding against y has a spread of sqrt(a^2 / 12) / 127 (a = max|x| of a row,
    # x of variance 1), int8 weights add 1 / 4 under the root (uniform weights in +-c,
    # step c / 127 against variance c^2 / 3); the largest error over the outputs against
    # the largest output is about the same ratio; twice that for the spread of maxima.
    a = np.abs(x).max()
    x_part = 2 * np.sqrt(a**2 / 12) / 127
    if weight_dtype == "int8":
        assert relative <= 2 * np.sqrt(a**2 / 12 + 1 / 4) / 127, relative
    else:  # int4's own rounding (8 steps) dominates: float activations' error, plus x's
        y_float = base.quantize("int4")(x).astype(np.float64)
        assert relative <= np.abs(y_float - y64).max() / np.abs(y64).max() + x_part
    if module is not None and weight_dtype == "int8":
        import warnings

        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(module), {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            theirs = quantized(torch.from_numpy(x)).double().numpy()
        assert relative <= np.abs(theirs - y64).max() / np.abs(y64).max()


def test_show_config_names_the_vnni_path():
    info = fl.show_config("dicts")
    assert info["supported_isas"] == _core.supported_isas()
    if "avx512_vnni" in _core.supported_isas():
        assert info["native_isa"] in _core.supported_isas()
