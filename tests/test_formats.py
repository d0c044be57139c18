"""Compressed weights (bfloat16, float16, int8, int4): each layer against the exact
sequence of operations the header states, rebuilt from the float32 kernel and elementwise
float32 steps, bit for bit, on every ISA path and tile edge; batch and thread invariance;
quantization; the stored form and its round trips; bad inputs."""
import os
import pickle
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _formats
from conftest import assert_close, packed_from

FORMATS = ["bfloat16", "float16", "int8", "int4"]
# (K, N): tile edges in N for both x86 NRs (32, 64), K across int4 groups and k blocks
SHAPES = [(1, 1), (7, 33), (33, 65), (100, 50), (300, 130), (1100, 70)]


def layer_of(fmt, k, n, bias=True, group_size=None, seed=0):
    return fl.Linear(k, n, bias, weight_dtype=fmt, group_size=group_size, rng=seed)


def exact(layer, x):
    """The header's sequence of operations for `layer`, from a float32 native layer:
    bfloat16, float16 and int4 are the float32 chain over layer.weight (then + b); int8
    is the float32 chain over q, times the row's scale, then + b (elementwise float32)."""
    k, n = layer.in_features, layer.out_features
    ref = fl.Linear(k, n, layer.bias is not None, rng=0, backend="native")
    if layer.weight_dtype != "int8":
        ref.weight = layer.weight
        ref.bias = layer.bias
        return ref(x)
    state = layer.state_dict()
    ref = fl.Linear(k, n, False, backend="native")
    ref.weight = state["weight"].astype(np.float32)
    y = ref(x) * state["weight_scale"]
    return y + layer.bias if layer.bias is not None else y


def rows(m, k, seed=1):
    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_layer_is_its_exact_sequence(isa, fmt, k, n):
    layer = layer_of(fmt, k, n)
    for m in (1, 2, 3, 4, 5, 6, 7, 13, packed_from(np.float32, k) + 5):
        x = rows(m, k, seed=m)
        y = layer(x)
        np.testing.assert_array_equal(y, exact(layer, x), err_msg=f"{fmt} {m}x{k}x{n}")
        # and close to the float64 product of the float values it holds
        w = layer.weight if fmt != "int8" else layer.weight.astype(np.float64)
        assert_close(y, x, np.asarray(w, np.float32), layer.bias)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_groups_and_no_bias(isa, fmt, group_size):
    if fmt != "int4":
        group_size = None
    layer = layer_of(fmt, 300, 70, bias=False, group_size=group_size)
    x = rows(9, 300)
    np.testing.assert_array_equal(layer(x), exact(layer, x))


@pytest.mark.filterwarnings("ignore:set_num_threads:RuntimeWarning")  # 3 threads, 2 CPUs
@pytest.mark.parametrize("fmt", FORMATS)
def test_row_alone_equals_row_in_any_batch_and_thread_count(isa, fmt, threads):
    k, n = 520, 200
    layer = layer_of(fmt, k, n)
    x = rows(packed_from(np.float32, k) + 9, k)
    fl.set_num_threads(1)
    alone = np.stack([layer(row) for row in x])
    for t in (1, 2, 3):
        fl.set_num_threads(t)
        for m in (2, 5, 8, len(x)):
            np.testing.assert_array_equal(layer(x[:m]), alone[:m], err_msg=f"{t} threads, M={m}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_isa_holds_the_same_stored_form(fmt):
    """Packing is per ISA, the stored form is not: state_dict() and weight agree."""
    from fastlinear import _core
    before = _core.isa_name()
    states = []
    try:
        for isa in _core.supported_isas():
            _core.set_isa(isa)
            states.append(layer_of(fmt, 100, 70).state_dict())
    finally:
        _core.set_isa(before)
    for state in states[1:]:
        for key in state:
            assert state[key].tobytes() == states[0][key].tobytes()


# -- quantization ---------------------------------------------------------------------

def test_rounding_of_each_format():
    w = np.random.default_rng(3).standard_normal((40, 200)).astype(np.float32)
    w[3] = 0.0                      # a row of zeros
    w[5] *= 1e-7                    # a row of tiny weights
    w[7, :32] = 0.0                 # an int4 block of zeros
    w[9, 32:64] = 1e-30             # a block of tiny ones
    base = fl.Linear._from_parameters(w, None, np.float32, "auto")
    for fmt, rel in (("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
        layer = base.quantize(fmt)
        expect = w.astype(_formats.FORMAT[fmt].stored).astype(np.float32)
        np.testing.assert_array_equal(layer.weight, expect)
        assert np.all(np.abs(layer.weight - w) <= rel * np.abs(w) + 2.0**-24)
    int8 = base.quantize("int8")
    q, s = int8.state_dict()["weight"], int8.state_dict()["weight_scale"]
    assert q.dtype == np.int8 and np.abs(q).max() <= 127 and np.all(s > 0)
    np.testing.assert_array_equal(s, np.where(np.abs(w).max(1) > 0,
                                              np.abs(w).max(1) / np.float32(127), 1))
    assert np.all(np.abs(q * s[:, None].astype(np.float64) - w) <= s[:, None] / 2 * 1.0001)
    assert np.all(q[3] == 0) and np.abs(q[5]).max() == 127
    int4 = base.quantize("int4")
    s4 = int4.state_dict()["weight_scale"]
    assert s4.shape == (40, 7) and np.all(s4 != 0) and not (s4.view(np.uint32) & 7).any()
    err = np.abs(int4.weight.astype(np.float64) - w)
    step = np.repeat(np.abs(s4), 32, axis=1)[:, :200]
    assert np.all(err <= step * 1.0001)  # half a step, or one where +8 clips to 7
    blocks = int4.weight.reshape(40, -1)
    assert np.all(blocks[7, :32] == 0) and np.any(blocks[9, 32:64] != 0)
    x = rows(5, 200)
    for layer in (int8, int4, base.quantize("bfloat16")):  # zero and tiny rows run too
        y = layer(x)
        assert np.isfinite(y).all() and np.all(y[:, 3] == 0)
        np.testing.assert_array_equal(y, exact(layer, x))


def test_int4_uses_minus_eight_for_the_largest_magnitude():
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = [0.5, -0.25, 1.0, 0.125]
    layer = fl.Linear._from_parameters(w, None, np.float32, "auto", "int4")
    q = _formats.unpack_int4(layer.state_dict()["weight"], 32)
    assert q[0, 2] == -8 and layer.state_dict()["weight_scale"][0, 0] == -0.125
    np.testing.assert_array_equal(layer.weight, w)


def test_quantization_is_deterministic_and_leaves_the_original():
    base = fl.Linear(130, 40, rng=4)
    before = base.state_dict()
    a, b = base.quantize("int4", group_size=64), base.quantize("int4", group_size=64)
    for key, value in a.state_dict().items():
        assert value.tobytes() == b.state_dict()[key].tobytes()
    for key, value in base.state_dict().items():
        assert value.tobytes() == before[key].tobytes()
    assert base.weight_dtype == "float32" and a.group_size == 64 and a.weight_dtype == "int4"


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_or_inf_weights_are_refused(fmt):
    w = np.ones((3, 40), np.float32)
    for bad in (np.nan, np.inf):
        w[1, 7] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            fl.Linear._from_parameters(w, None, np.float32, "auto", fmt)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_half_weights_given_as_such_are_checked_too(fmt):
    w = np.ones((3, 8), _formats.FORMAT[fmt].stored)
    w[2, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fl.Linear._from_parameters(w, None, np.float32, "auto", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_any_weight_layout_gives_the_same_layer(fmt):
    w = np.random.default_rng(2).standard_normal((20, 33)).astype(np.float32)
    half = w.astype(_formats.FORMAT[fmt].stored) if fmt in ("bfloat16", "float16") else w
    raw = np.zeros(half.nbytes + 1, np.uint8)[1:].view(half.dtype).reshape(half.shape)
    raw[...] = half  # misaligned
    expect = fl.Linear._from_parameters(half, None, np.float32, "auto", fmt).state_dict()
    for layout in (raw, np.asfortranarray(half), half[::-1][::-1], half.T.copy().T):
        got = fl.Linear._from_parameters(layout, None, np.float32, "auto", fmt).state_dict()
        assert got["weight"].tobytes() == expect["weight"].tobytes()


def test_float16_range_is_checked():
    with pytest.raises(ValueError, match="range of float16"):
        fl.Linear._from_parameters(np.full((2, 3), 1e5, np.float32), None, np.float32,
                                   "auto", "float16")


def test_bad_configurations():
    with pytest.raises(ValueError, match="float64"):
        fl.Linear(8, 4, dtype=np.float64, weight_dtype="int8")
    with pytest.raises(ValueError, match="weight_dtype"):
        fl.Linear(8, 4, weight_dtype="int3")
    with pytest.raises(ValueError, match="group_size"):
        fl.Linear(8, 4, weight_dtype="int4", group_size=16)
    with pytest.raises(ValueError, match="group_size"):
        fl.Linear(8, 4, weight_dtype="int8", group_size=32)
    with pytest.raises(ValueError, match="BLAS"):
        fl.Linear(8, 4, weight_dtype="bfloat16", backend="blas")
    assert fl.Linear(8, 4, weight_dtype="int4").resolved_backend == "native"


# -- the stored form and its round trips ------------------------------------------------

STORED_KEYS = {"bfloat16": {"weight": ml_dtypes.bfloat16}, "float16": {"weight": np.float16},
               "int8": {"weight": np.int8, "weight_scale": np.float32},
               "int4": {"weight": np.uint8, "weight_scale": np.float32}}


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_is_the_stored_form(fmt):
    layer = layer_of(fmt, 33, 10)
    state = layer.state_dict()
    assert set(state) == {*STORED_KEYS[fmt], "bias"}
    for key, dtype in STORED_KEYS[fmt].items():
        assert state[key].dtype == np.dtype(dtype)
    assert state["weight"].shape == ((10, 17) if fmt == "int4" else (10, 33))
    other = layer_of(fmt, 33, 10, seed=9)
    other.load_state_dict(state)
    x = rows(5, 33)
    np.testing.assert_array_equal(other(x), layer(x))
    assert pickle.loads(pickle.dumps(layer)).state_dict()["weight"].tobytes() == \
        state["weight"].tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_files_round_trip_every_format(tmp_path, fmt, suffix):
    layer = layer_of(fmt, 70, 20)
    path = tmp_path / f"layer{suffix}"
    fl.save(layer, path)
    loaded = fl.load(path)
    for key, value in layer.state_dict().items():
        assert loaded[key].dtype == value.dtype and loaded[key].tobytes() == value.tobytes()
    fresh = fl.Linear(70, 20, weight_dtype=fmt)
    fresh.load_state_dict(loaded)
    x = rows(4, 70)
    np.testing.assert_array_equal(fresh(x), layer(x))


def test_malformed_stored_weights_are_refused():
    layer = layer_of("int4", 70, 20)
    good = layer.state_dict()
    cases = [
        ({"weight_scale": good["weight_scale"][:, :2]}, "shape"),
        ({"weight_scale": good["weight_scale"].astype(np.float64)}, "float32"),
        ({"weight": good["weight"].astype(np.int8)}, "uint8"),
        ({"weight": good["weight"][:, :-1]}, "shape"),
        ({"weight_scale": np.zeros_like(good["weight_scale"])}, "nonzero"),
        ({"weight_scale": good["weight_scale"] + np.float32(1e-7)}, "significant bits"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            layer.load_state_dict({**good, **change})
    with pytest.raises(KeyError):
        layer.load_state_dict({"weight": good["weight"], "bias": good["bias"]})
    int8 = layer_of("int8", 70, 20)
    with pytest.raises(ValueError, match="int8"):
        int8.load_state_dict({**int8.state_dict(), "weight": np.zeros((20, 70), np.float32)})


def test_assigning_float_weights_converts_them():
    layer = layer_of("int8", 16, 4)
    w = np.random.default_rng(0).standard_normal((4, 16))
    layer.weight = w
    expect = fl.Linear._from_parameters(w, None, np.float32, "auto", "int8")
    np.testing.assert_array_equal(layer.weight, expect.weight)
    layer.bias = np.arange(4)
    np.testing.assert_array_equal(layer.bias, np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(layer.weight, expect.weight)


def test_float32_layer_keeps_one_copy():
    blas = fl.Linear(64, 32, rng=0, backend="blas")
    assert blas._params.packed is None and blas._params.plain is not None
    layer = fl.Linear(64, 32, rng=0, backend="native")
    assert layer._params.plain is None and layer._params.packed is not None
    assert not layer.weight.flags.writeable
    with pytest.raises(ValueError):
        layer.weight.flags.writeable = True


# -- torch ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_half_torch_layer_stays_half(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Linear(100, 40).to(getattr(torch, kind))
    layer = fl.Linear.from_torch(module)
    assert layer.weight_dtype == kind
    bits = module.weight.detach().view(torch.int16).numpy()
    assert layer.state_dict()["weight"].view(np.int16).tobytes() == bits.tobytes()
    x = rows(6, 100)
    expect = x.astype(np.float64) @ module.weight.detach().double().numpy().T
    expect += module.bias.detach().double().numpy()
    np.testing.assert_allclose(layer(x), expect, rtol=0, atol=1e-4 * np.abs(expect).max())
    seq = fl.Sequential.from_torch(torch.nn.Sequential(module, torch.nn.ReLU()),
                                   weight_dtype="int8")
    assert seq[0].weight_dtype == "int8"


def test_half_torch_layer_never_makes_a_float32_copy():
    torch = pytest.importorskip("torch")
    import tracemalloc
    module = torch.nn.Linear(2048, 1024, dtype=torch.bfloat16)
    tracemalloc.start()
    layer = fl.Linear.from_torch(module)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert layer.weight_dtype == "bfloat16"
    assert peak < 2048 * 1024 * 4 / 2, f"{peak} bytes of numpy temporaries"


def test_bf16_safetensors_file_from_torch_loads_as_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    module = torch.nn.Linear(48, 16, dtype=torch.bfloat16)
    path = tmp_path / "model.safetensors"
    st.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    state = fl.load(path)
    assert state["weight"].dtype == ml_dtypes.bfloat16
    layer = fl.Linear(48, 16, weight_dtype="bfloat16")
    layer.load_state_dict(state)
    assert layer.state_dict()["weight"].tobytes() == state["weight"].tobytes()


# -- memory ---------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, fastlinear as fl
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    x = np.ones(64, np.float32)             # imports and first-use costs out of the way
    fl.Linear(64, 64)(x)                    # (the BLAS backend loads on its first call)
    fl.Linear(64, 64, weight_dtype=sys.argv[1])(x)
    before = rss()
    layer = fl.Linear(4096, 4096, weight_dtype=sys.argv[1])
    y = layer(np.ones(4096, np.float32))
    print((rss() - before) / 2**20)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's allocator holds freed memory (quarantine)")
@pytest.mark.parametrize("fmt,limit_mib", [("int4", 12), ("int8", 20), ("bfloat16", 36),
                                           ("float32", 70)])
def test_resident_memory_of_a_large_layer(tmp_path, fmt, limit_mib):
    # the fastlinear imported here (installed, or built in place), from another folder
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fl.__file__))}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, fmt], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    grew = float(out.stdout.split()[-1])
    assert grew <= limit_mib, f"a 4096x4096 {fmt} layer added {grew:.1f} MiB of RSS"
