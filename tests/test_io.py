""".npz and .safetensors files (fastlinear.io): round trips of every dtype, bit for bit;
malformed files; interop with the safetensors package and torch; whole models saved with
their structure and loaded back (fl.load_model), hostile structures; the errors of state
dicts that do not fit a layer or a model."""
import json
import re
import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _structure
from fastlinear import io as flio

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(d) for d in ("f8", "f4", "f2", BF16, "i8", "i4", "i2", "i1",
                                "u8", "u4", "u2", "u1", "?")]
SUFFIXES = [".npz", ".safetensors"]
BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def random_array(dtype, shape, seed=0):
    """Random bit patterns (NaNs with payloads, infinities, subnormals) of the dtype."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    if dtype == bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def bits(array):
    return np.ascontiguousarray(array).view(BITS[array.dtype.itemsize])


def saved_and_loaded(state, path):
    """fl.load of what fl.save wrote for `state` at `path`."""
    fl.save(state, path)
    return fl.load(path)


def assert_same(loaded, expected):
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
    np.testing.assert_array_equal(bits(loaded), bits(expected))


def nan_payloads():
    """Quiet and signalling NaNs with payloads, both signs, for each float dtype."""
    return {
        "f64": np.array([0x7FF8000000000001, 0xFFF0000000000002, 0x7FF4000000000000],
                        dtype=np.uint64).view(np.float64),
        "f32": np.array([0x7FC00001, 0xFFA00000, 0x7F800001], dtype=np.uint32)
        .view(np.float32),
        "f16": np.array([0x7E01, 0xFC01, 0x7D00], dtype=np.uint16).view(np.float16),
        "bf16": np.array([0x7FC1, 0xFF81, 0x7F80 | 0x21], dtype=np.uint16).view(BF16),
    }


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 5)], ids=str)
def test_round_trip_bit_exact(tmp_path, suffix, dtype, shape):
    state = {"x": random_array(dtype, shape), "y.z": random_array(dtype, (4,), seed=1)}
    path = tmp_path / f"state{suffix}"
    loaded = saved_and_loaded(state, path)
    assert list(loaded) == list(state)
    for name in state:
        assert_same(loaded[name], state[name])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nan_payloads_and_mixed_dtypes(tmp_path, suffix):
    state = nan_payloads()
    state.update({str(d): random_array(d, (3, 2), seed=i) for i, d in enumerate(DTYPES)})
    path = tmp_path / f"mixed{suffix}"
    loaded = saved_and_loaded(state, path)
    assert set(loaded) == set(state)
    for name in state:
        assert_same(loaded[name], state[name])
    assert all(a.flags.writeable for a in loaded.values())


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_layouts_and_byte_order(tmp_path, suffix):
    base = random_array(np.float32, (6, 8))
    state = {"strided": base[::2, ::-3], "fortran": np.asfortranarray(base),
             "transposed": random_array(BF16, (4, 6)).T,
             "big_endian": base.astype(">f4"), "big_int": np.arange(5, dtype=">i8")}
    path = tmp_path / f"layouts{suffix}"
    loaded = saved_and_loaded(state, path)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype.newbyteorder("<")
        np.testing.assert_array_equal(bits(loaded[name]),
                                      bits(value.astype(loaded[name].dtype)))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_module_with_state_dict_and_awkward_keys(tmp_path, suffix):
    class Module:
        def state_dict(self):
            return {"file": np.ones(2), "allow_pickle": np.zeros(3, np.int8), "": np.eye(2),
                    "a/b.npy": np.arange(3, dtype=np.uint16), "é": np.array(True)}
    path = tmp_path / f"module{suffix}"
    fl.save(Module(), path)
    loaded = fl.load(path)
    for name, value in Module().state_dict().items():
        assert_same(loaded[name], value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bad_keys_and_values(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    with pytest.raises(TypeError, match="keys must be str"):
        fl.save({1: np.ones(2)}, path)
    with pytest.raises(TypeError, match="complex128 is not one of"):
        fl.save({"c": np.ones(2, complex)}, path)
    with pytest.raises(TypeError, match="object"):
        fl.save({"o": np.array([None])}, path)
    reserved = "__fastlinear_bfloat16__" if suffix == ".npz" else "__metadata__"
    with pytest.raises(ValueError, match="is reserved"):
        fl.save({reserved: np.ones(2)}, path)
    assert not path.exists()  # nothing was written


def test_npz_scheme_loads_with_plain_numpy(tmp_path):
    state = {"w": np.array([1.5, -2.0, np.inf], dtype=BF16), "b": np.ones(2, np.float16)}
    path = tmp_path / "s.npz"
    fl.save(state, path)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["__fastlinear_bfloat16__", "b", "w"]
        assert f["w"].dtype == np.uint16
        np.testing.assert_array_equal(f["w"], bits(state["w"]))
        assert f["__fastlinear_bfloat16__"].tolist() == ["w"]
    assert set(fl.load(path)) == {"w", "b"}


def test_npz_without_bfloat16_has_no_reserved_entry(tmp_path):
    fl.save({"w": np.ones(3)}, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        assert f.files == ["w"]


@pytest.mark.parametrize("listing, message", [
    (np.array(["missing"]), "lists 'missing', which is not a uint16 array"),
    (np.array(["w"]), "lists 'w', which is not a uint16 array"),
    (np.array([[" w"]]), "must be a 1-d str array"),
    (np.array([1, 2]), "must be a 1-d str array"),
])
def test_npz_bad_reserved_entry(tmp_path, listing, message):
    path = tmp_path / "bad.npz"
    np.savez(path, w=np.ones(2, np.float32), __fastlinear_bfloat16__=listing)
    with pytest.raises(ValueError, match=message) as info:
        fl.load(path)
    assert "bad.npz" in str(info.value)


def test_npz_malformed_files(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="bad.npz.*not a valid .npz file"):
        fl.load(path)
    np.save(tmp_path / "x.npy", np.ones(3))
    path.write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(ValueError, match="single .npy array"):
        fl.load(path)
    np.savez(path, o=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="bad.npz.*not a valid .npz file"):
        fl.load(path)
    fl.save({"w": np.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ValueError, match="bad.npz.*not a valid .npz file"):
        fl.load(path)


# ---- malformed .safetensors files ------------------------------------------------------

def write_safetensors(path, header, data=b"", length=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + text + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = [
    # (header, data, message)
    (b"{}", b"", None),  # valid: an empty state dict
    (b"not json", b"", "not valid UTF-8 JSON"),
    (b"\xff\xfe{}", b"", "not valid UTF-8 JSON"),
    (b"[1, 2]", b"", "not a JSON object"),
    (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": 1}', b"",
     "duplicate key 'a'"),
    ({"__metadata__": {"format": 1}}, b"", "__metadata__ is not an object of strings"),
    ({"__metadata__": ["x"]}, b"", "__metadata__ is not an object of strings"),
    ({"w": [1, 2]}, b"", "expected exactly the keys"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"", "expected exactly the keys"),
    ({"w": entry(dtype="F8_E4M3")}, bytes(8), "unknown dtype 'F8_E4M3'"),
    ({"w": entry(dtype="f32")}, bytes(8), "unknown dtype 'f32'"),
    ({"w": entry(shape=(-2,))}, bytes(8), r"shape \[-2\] is not a list of non-negative"),
    ({"w": entry(shape=(2.0,))}, bytes(8), "shape .* is not a list of non-negative"),
    ({"w": entry(shape=(True, 2))}, bytes(8), "shape .* is not a list of non-negative"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, bytes(8),
     "shape '2' is not a list"),
    ({"w": entry(offsets=(8, 0))}, bytes(8), "end before they begin"),
    ({"w": entry(offsets=(-8, 0))}, bytes(8), "negative or end before they begin"),
    ({"w": entry(offsets=(0, 8.0))}, bytes(8), "is not a pair of integers"),
    ({"w": entry(offsets=(0, 8, 16))}, bytes(16), "is not a pair of integers"),
    ({"w": entry(offsets=(0, 16))}, bytes(8), "reach past the 8-byte data buffer"),
    ({"w": entry(offsets=(2**70, 2**70 + 8))}, bytes(8), "reach past"),
    ({"w": entry(shape=(3,))}, bytes(8),
     r"8 bytes at \[0, 8\], but shape \[3\] of F32 needs 12"),
    ({"w": entry(shape=(2**40, 2**40), offsets=(0, 8))}, bytes(8),
     r"needs 4835703278458516698824704"),
    ({"w": entry(shape=[2**62] * 8, dtype="F64")}, bytes(8), "needs"),
    ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, bytes(12),
     "'a' and 'b' overlap"),
    ({"a": entry(shape=(4,), offsets=(0, 16)), "b": entry(offsets=(8, 16)),
      "c": entry(offsets=(16, 24))}, bytes(24), "'a' and 'b' overlap"),
]


@pytest.mark.parametrize("header, data, message", MALFORMED)
def test_malformed_safetensors(tmp_path, header, data, message):
    path = write_safetensors(tmp_path / "bad.safetensors", header, data)
    if message is None:
        assert fl.load(path) == {}
        return
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as info:
        fl.load(path)
    assert time.perf_counter() - start < 1.0  # no huge allocation or read
    assert "bad.safetensors" in str(info.value) and "malformed" in str(info.value)


def test_safetensors_header_length(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="bad.safetensors.*too short"):
        fl.load(path)
    write_safetensors(path, b"{}", length=2**63)
    with pytest.raises(ValueError, match="header length 9223372036854775808 exceeds the 2"):
        fl.load(path)
    write_safetensors(path, b"{}", length=3)
    with pytest.raises(ValueError, match="header length 3 exceeds the 2 bytes"):
        fl.load(path)
    with open(path, "r+b") as f:  # a sparse 150 MB file: the 100 MB limit applies
        f.write((120 * 2**20).to_bytes(8, "little"))
        f.truncate(150 * 2**20)
    with pytest.raises(ValueError, match="exceeds the 104857600-byte limit"):
        fl.load(path)


def test_safetensors_truncated(tmp_path):
    path = tmp_path / "cut.safetensors"
    fl.save({"a": np.ones(10), "b": np.ones(100, np.float32)}, path)
    whole = path.read_bytes()
    for cut in (1, 200, len(whole) - 80):
        path.write_bytes(whole[:len(whole) - cut])
        with pytest.raises(ValueError, match="cut.safetensors.*malformed"):
            fl.load(path)


def test_safetensors_layout(tmp_path):
    """The header as the format describes it: aligned, offsets in order, no metadata."""
    path = tmp_path / "s.safetensors"
    fl.save({"w": np.ones((2, 3), np.float16), "b": np.zeros((), np.int64)}, path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header == {"w": entry("F16", (2, 3), (0, 12)), "b": entry("I64", (), (12, 20))}
    assert len(raw) == 8 + n + 20


def test_safetensors_metadata_and_holes_are_accepted(tmp_path):
    header = {"__metadata__": {"format": "pt"}, "w": entry(offsets=(8, 16))}
    path = write_safetensors(tmp_path / "m.safetensors", header,
                             np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(fl.load(path)["w"], [2, 3])


# ---- interop with safetensors and torch ------------------------------------------------

TORCH_DTYPES = ["bfloat16", "float16", "float32", "int8"]


def test_file_from_safetensors_torch_loads_here(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    gen = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(5, 7, generator=gen).mul(30).to(getattr(torch, name))
               for name in TORCH_DTYPES}
    tensors["scalar"] = torch.tensor(1.25, dtype=torch.bfloat16)
    tensors["empty"] = torch.zeros(0, 3, dtype=torch.float16)
    path = tmp_path / "torch.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "pt"})
    loaded = fl.load(path)
    expected_dtypes = {"bfloat16": BF16, "float16": np.float16, "float32": np.float32,
                       "int8": np.int8, "scalar": BF16, "empty": np.float16}
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == expected_dtypes[name], name
        assert loaded[name].shape == tuple(tensor.shape)
        same_width = {2: torch.int16, 1: torch.int8, 4: torch.int32}[tensor.element_size()]
        np.testing.assert_array_equal(bits(loaded[name]).astype(np.int64),
                                      tensor.view(same_width).numpy().astype(np.int64)
                                      & (256 ** tensor.element_size() - 1))


def test_file_written_here_loads_with_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    state = {str(d): random_array(d, (3, 4), seed=i) for i, d in enumerate(DTYPES)}
    state.update(nan_payloads())
    state["empty"] = np.zeros((0, 2), np.float32)
    state["scalar"] = np.array(7, np.int16)
    path = tmp_path / "ours.safetensors"
    fl.save(state, path)
    loaded = st.load_file(str(path))
    assert set(loaded) == set(state)
    for name, array in state.items():
        tensor = loaded[name]
        if array.dtype == BF16:
            assert tensor.dtype == torch.bfloat16
            np.testing.assert_array_equal(tensor.view(torch.int16).numpy(),
                                          array.view(np.int16))
        else:
            assert tensor.numpy().dtype == array.dtype
            assert_same(tensor.numpy(), array)


def test_save_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, generator=gen, requires_grad=True)
    state = {"bf16": torch.randn(4, 6, generator=gen).to(torch.bfloat16).t(),  # strided
             "f16": torch.randn(3, generator=gen).half(), "w": w, "i8": torch.arange(-3, 3,
             dtype=torch.int8), "mask": torch.tensor([True, False])}
    for suffix in SUFFIXES:
        path = tmp_path / f"torch{suffix}"
        loaded = saved_and_loaded(state, path)
        assert loaded["bf16"].dtype == BF16 and loaded["bf16"].shape == (6, 4)
        np.testing.assert_array_equal(
            bits(loaded["bf16"]).view(np.int16),
            state["bf16"].contiguous().view(torch.int16).numpy())
        assert_same(loaded["f16"], state["f16"].numpy())
        assert_same(loaded["w"], w.detach().numpy())
        assert_same(loaded["i8"], state["i8"].numpy())
        assert_same(loaded["mask"], state["mask"].numpy())


def test_linear_round_trip_through_torch_safetensors(tmp_path):
    """A Linear saved here loads into torch via safetensors.torch, and back."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    layer = fl.Linear(5, 3, dtype=np.float32, rng=0)
    fl.save(layer, tmp_path / "l.safetensors")
    module = torch.nn.Linear(5, 3)
    module.load_state_dict(st.load_file(str(tmp_path / "l.safetensors")))
    np.testing.assert_array_equal(module.weight.detach().numpy(), layer.weight)
    fl.save(module, tmp_path / "m.npz")  # a torch module: state_dict() of tensors
    assert_same(fl.load(tmp_path / "m.npz")["bias"], layer.bias)


def test_reserved_names_are_documented():
    assert flio._NPZ_BF16_KEY in flio.__doc__
    assert flio._NPZ_STRUCTURE_KEY in flio.__doc__
    assert f'"{flio._METADATA_KEY}"' in flio.__doc__


# ---- whole models: fl.save(model) and fl.load_model ------------------------------------

WEIGHT_FORMATS = [("float32", None), ("bfloat16", None), ("float16", None), ("int8", None),
                  ("int4", 32), ("int4", 64), ("int4", 128)]


def with_state(module, seed):
    """`module` with random values in its state dict (the same shapes and types)."""
    rng = np.random.default_rng(seed)
    state = {k: (rng.uniform(0.5, 2, v.shape) if k.endswith("var") else
                 np.array(7) if k.endswith("tracked") else rng.standard_normal(v.shape))
             for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    return module


def examples(dtype):
    """One module of each kind fastlinear saves, with settings other than the defaults,
    the widths chaining 6 -> 8 -> 5."""
    dt = np.dtype(dtype)
    return {
        "Linear": fl.Linear(6, 8, rng=1, dtype=dt),
        "ReLU": fl.ReLU(), "LeakyReLU": fl.LeakyReLU(0.25), "GELU": fl.GELU("tanh"),
        "SiLU": fl.SiLU(), "Sigmoid": fl.Sigmoid(), "Tanh": fl.Tanh(),
        "Identity": fl.Identity(), "Dropout": fl.Dropout(0.3),
        "LayerNorm": with_state(fl.LayerNorm(8, eps=1e-3, dtype=dt), 2),
        "BatchNorm1d": with_state(fl.BatchNorm1d(8, eps=1e-4, momentum=None, dtype=dt), 3),
        "Flatten": fl.Flatten(1, -1), "Softmax": fl.Softmax(dim=-1),
        "LogSoftmax": fl.LogSoftmax(dim=1),
    }


def assert_same_model(loaded, model, x):
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert_same(got[key], expected[key])
    np.testing.assert_array_equal(bits(loaded(x)), bits(model(x)))


def rows_of(width, seed=0):
    return np.random.default_rng(seed).standard_normal((5, width)).astype(np.float32)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("fmt, group", WEIGHT_FORMATS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_loads_as_saved_in_every_format(tmp_path, suffix, fmt, group, bias):
    layer = fl.Linear(70, 20, bias=bias, rng=0).quantize(fmt, group)
    path = tmp_path / f"layer{suffix}"
    fl.save(layer, path)
    loaded = fl.load_model(path)
    assert (loaded.weight_dtype, loaded.group_size) == (fmt, group or
                                                        (32 if fmt == "int4" else None))
    assert_same_model(loaded, layer, rows_of(70))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("backend", ["native", "blas"])
def test_float64_layer_and_backend_are_kept(tmp_path, suffix, backend):
    layer = fl.Linear(33, 7, dtype=np.float64, rng=2, backend=backend)
    fl.save(layer, tmp_path / f"l{suffix}")
    loaded = fl.load_model(tmp_path / f"l{suffix}")
    assert loaded.dtype == np.float64 and loaded.backend == backend
    assert_same_model(loaded, layer, rows_of(33).astype(np.float64))


def test_every_module_kind_is_saved():
    """Each module class a Sequential holds has a kind; a new class must join examples()
    (and, with parameters, _structure's table): the round trips below then cover it."""
    assert set(_structure.KINDS) == set(examples(np.float32))
    assert set(_structure.KINDS) == {c.__name__ for c in fl.sequential._MODULES}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_of_every_kind_loads_as_saved(tmp_path, suffix, dtype):
    m = examples(dtype)
    inner = [fl.Linear(8, 5, rng=4, dtype=dtype)]
    if dtype == np.float32:
        inner = [inner[0].quantize("int8"), fl.Linear(5, 5, rng=5).quantize("bfloat16")]
    model = fl.Sequential(
        m["Linear"], m["ReLU"], m["LeakyReLU"], m["GELU"], m["SiLU"], m["Sigmoid"],
        m["Tanh"], m["Identity"], m["Dropout"], m["LayerNorm"], m["BatchNorm1d"],
        fl.Sequential(*inner, fl.Sequential(m["Softmax"])), m["Flatten"],
        m["LogSoftmax"], fl.Sequential())
    path = tmp_path / f"model{suffix}"
    fl.save(model, path)
    loaded = fl.load_model(path)
    assert_same_model(loaded, model, rows_of(6).astype(dtype))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", list(_structure.KINDS))
def test_lone_module_loads_as_saved(tmp_path, suffix, kind):
    module = examples(np.float32)[kind]
    path = tmp_path / f"{kind}{suffix}"
    fl.save(module, path)
    loaded = fl.load_model(path)
    width = 6 if kind == "Linear" else 8
    assert_same_model(loaded, module, rows_of(width))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_other_settings_are_kept(tmp_path, suffix):
    model = fl.Sequential(
        fl.Linear(4, 6, bias=False, rng=0), fl.LayerNorm(6, elementwise_affine=False),
        with_state(fl.LayerNorm([6], bias=False), 1), with_state(
            fl.BatchNorm1d(6, affine=False, momentum=np.float32(0.5)), 2),
        fl.GELU(), fl.Dropout(1), fl.Softmax(dim=None), fl.Flatten(0, 1))
    path = tmp_path / f"m{suffix}"
    fl.save(model, path)
    loaded = fl.load_model(path)
    assert_same_model(loaded, model, rows_of(4))
    assert loaded[3].momentum == 0.5 and type(loaded[3].momentum) is float


def read_structure(path):
    """The structure's JSON as the file holds it, read without fastlinear."""
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            entry = f["__fastlinear__"]
        assert entry.ndim == 0 and entry.dtype.kind == "U"
        return json.loads(str(entry))
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert all(isinstance(v, str) for v in header["__metadata__"].values())
    return json.loads(header["__metadata__"]["fastlinear"])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_structure_in_the_file(tmp_path, suffix):
    model = fl.Sequential(fl.Linear(4, 3, rng=0).quantize("int4", 64), fl.LeakyReLU(0.5),
                          fl.Sequential(fl.Softmax(dim=-1)))
    path = tmp_path / f"m{suffix}"
    fl.save(model, path)
    linear = {"kind": "Linear", "settings": {
        "in_features": 4, "out_features": 3, "bias": True, "dtype": "float32",
        "weight_dtype": "int4", "group_size": 64, "backend": "auto"}}
    inner = {"kind": "Sequential", "modules": [{"kind": "Softmax", "settings": {"dim": -1}}]}
    assert read_structure(path) == {"version": 1, "model": {"kind": "Sequential", "modules": [
        linear, {"kind": "LeakyReLU", "settings": {"negative_slope": 0.5}}, inner]}}
    # fl.load gives the state dict alone, as before
    assert list(fl.load(path)) == list(model.state_dict())


def test_model_file_loads_with_safetensors_torch(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = fl.Sequential(fl.Linear(4, 3, rng=0), fl.ReLU())
    fl.save(model, tmp_path / "m.safetensors")
    loaded = st.load_file(str(tmp_path / "m.safetensors"))
    assert_same(loaded["0.weight"], model[0].weight)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_only_fastlinear_modules_save_a_structure(tmp_path, suffix):
    class MyReLU(fl.ReLU):
        pass

    path = tmp_path / f"s{suffix}"
    for obj in ({"weight": np.ones((2, 2))}, fl.Sequential(fl.Linear(2, 2), MyReLU())):
        fl.save(obj, path)
        with pytest.raises(ValueError, match="without a model structure.*"
                                             r"model\.load_state_dict\(fl\.load\(path\)\)"):
            fl.load_model(path)
    if suffix == ".npz":
        with pytest.raises(ValueError, match="'__fastlinear__' is reserved"):
            fl.save({"__fastlinear__": np.ones(1)}, tmp_path / "r.npz")


def test_settings_that_are_not_json_are_refused_when_saving(tmp_path):
    bn = fl.BatchNorm1d(3)
    bn.momentum = object()
    with pytest.raises(TypeError, match="cannot save the setting"):
        fl.save(fl.Sequential(bn), tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_torch_files_have_no_structure(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    st.save_file(module.state_dict(), str(tmp_path / "t.safetensors"),
                 metadata={"format": "pt"})
    fl.save(module, tmp_path / "t.npz")
    for name in ("t.safetensors", "t.npz"):
        with pytest.raises(ValueError, match=f"{name}.*without a model structure.*"
                                             "from_torch"):
            fl.load_model(tmp_path / name)


# ---- hostile structures ------------------------------------------------------------------

def linear_entry(**change):
    settings = {"in_features": 4, "out_features": 3, "bias": True, "dtype": "float32",
                "weight_dtype": "float32", "group_size": None, "backend": "auto"}
    return {"kind": "Linear", "settings": {**settings, **change}}


def linear_tensors(n=3, k=4):
    return {"weight": np.ones((n, k), np.float32), "bias": np.ones(n, np.float32)}


def seq(*entries):
    return {"kind": "Sequential", "modules": list(entries)}


def nested(depth):
    entry = seq()
    for _ in range(depth):
        entry = seq(entry)
    return entry


def write_model(path, structure, tensors):
    """A file holding `tensors` and `structure` (a JSON-able object, or text as it is)."""
    text = structure if isinstance(structure, str) else json.dumps(
        {"version": 1, "model": structure})
    if str(path).endswith(".npz"):
        np.savez(path, **tensors, __fastlinear__=np.array(text))
    else:
        flio._save_safetensors(tensors, path, text)
    return path


LN = {"normalized_shape": 2**40, "eps": 1e-5, "elementwise_affine": True, "bias": True,
      "dtype": "float32"}
BN = {"num_features": 2**40, "eps": 1e-5, "momentum": 0.1, "affine": True,
      "dtype": "float32"}
SMALL = {"weight": np.ones(3, np.float32), "bias": np.ones(3, np.float32)}
HOSTILE = [
    # (structure, tensors, exception, message)
    ("not json", {}, ValueError, "not valid JSON"),
    ("[" * 100000, {}, ValueError, "nested too deeply"),
    ('{"version": 1, "version": 1, "model": {}}', {}, ValueError, "duplicate key"),
    ("[1]", {}, ValueError, "not an object with a version"),
    ('{"model": {}}', {}, ValueError, "not an object with a version"),
    ('{"version": 1}', {}, ValueError, "exactly the keys version and model"),
    ('{"version": 1, "model": {"kind": "ReLU", "settings": {}}, "x": 0}', {}, ValueError,
     "exactly the keys version and model"),
    (nested(100), {}, ValueError, "nested more than 64 deep"),
    ({"kind": "Conv2d", "settings": {}}, {}, ValueError, "unknown kind 'Conv2d'"),
    ({"kind": "os.system", "settings": {"command": "true"}}, {}, ValueError,
     "unknown kind 'os.system'"),
    ({"kind": "_Activation", "settings": {}}, {}, ValueError, "unknown kind"),
    ({"kind": ["Linear"], "settings": {}}, {}, ValueError, "an object with a kind"),
    ([], {}, ValueError, "expected an object with a kind"),
    (seq(5), {}, ValueError, "module 0: expected an object with a kind"),
    ({"kind": "Sequential", "modules": {}}, {}, ValueError, "modules .a list."),
    ({"kind": "ReLU"}, {}, ValueError, r"kind and settings \(an object\)"),
    ({"kind": "ReLU", "settings": [], "x": 1}, {}, ValueError, "kind and settings"),
    ({"kind": "ReLU", "settings": {"inplace": True}}, {}, ValueError,
     r"expected the settings \[\], got \['inplace'\]"),
    ({"kind": "Linear", "settings": {"in_features": 4}}, {}, ValueError,
     "expected the settings .'in_features', 'out_features'"),
    (linear_entry(in_features="4"), linear_tensors(), ValueError,
     "in_features must be a positive integer, got '4'"),
    (linear_entry(out_features=-3), linear_tensors(), ValueError,
     "out_features must be a positive integer, got -3"),
    (linear_entry(bias="yes"), linear_tensors(), TypeError, "bias must be true or false"),
    (linear_entry(dtype="object"), linear_tensors(), ValueError,
     "dtype must be 'float32' or 'float64', got 'object'"),
    (linear_entry(dtype=["f4"]), linear_tensors(), ValueError, "dtype must be"),
    (linear_entry(weight_dtype=5), linear_tensors(), TypeError, "weight_dtype must be a"),
    (linear_entry(weight_dtype="int3"), linear_tensors(), ValueError,
     "weight_dtype must be one of"),
    (linear_entry(weight_dtype="int4", group_size=32.0), linear_tensors(), TypeError,
     "group_size must be an integer or null"),
    (linear_entry(weight_dtype="int4", group_size=16), linear_tensors(), ValueError,
     "group_size must be one of"),
    (linear_entry(backend="cuda"), linear_tensors(), ValueError, "unknown backend 'cuda'"),
    (linear_entry(backend=None), linear_tensors(), TypeError, "backend must be a string"),
    ({"kind": "GELU", "settings": {"approximate": 3}}, {}, ValueError, "approximate must"),
    ({"kind": "Flatten", "settings": {"start_dim": "1", "end_dim": -1}}, {}, TypeError,
     "start_dim must be an int"),
    ({"kind": "Dropout", "settings": {"p": [0.5]}}, {}, ValueError, "between 0 and 1"),
    ({"kind": "LeakyReLU", "settings": {"negative_slope": "0.1"}}, {}, TypeError,
     "negative_slope must be a number"),
    ({"kind": "Softmax", "settings": {"dim": {"a": 1}}}, {}, TypeError, "dim must be"),
    ({"kind": "LayerNorm", "settings": {**LN, "eps": "1e-5"}}, SMALL, TypeError,
     "eps must be a number"),
    ({"kind": "BatchNorm1d", "settings": {**BN, "momentum": [0.1]}}, SMALL, TypeError,
     "momentum must be a number"),
    ({"kind": "BatchNorm1d", "settings": {**BN, "affine": 1}}, SMALL, TypeError,
     "affine must be true or false"),
    # absurd sizes: refused against the tensors, before anything of that size exists
    (linear_entry(in_features=2**40), linear_tensors(), ValueError,
     r"weight must have shape \(3, 1099511627776\), got \(3, 4\)"),
    (seq(linear_entry(out_features=2**40)), {"0." + k: v for k, v in
                                              linear_tensors().items()}, ValueError,
     r"0.weight must have shape \(1099511627776, 4\), got \(3, 4\); 0.bias must have"),
    (linear_entry(weight_dtype="int4", in_features=2**40), {
        "weight": np.ones((3, 2), np.uint8), "weight_scale": np.ones((3, 1), np.float32),
        "bias": np.ones(3, np.float32)}, ValueError, r"weight must be uint8 of shape \(3, "
                                                      r"549755813888\)"),
    ({"kind": "LayerNorm", "settings": LN}, SMALL, ValueError,
     r"weight must have shape \(1099511627776,\), got \(3,\)"),
    ({"kind": "BatchNorm1d", "settings": BN}, {
        **SMALL, "running_mean": np.ones(3), "running_var": np.ones(3),
        "num_batches_tracked": np.array(0)}, ValueError,
     r"running_mean must have shape \(1099511627776,\)"),
    # the tensors do not fit the structure
    (linear_entry(), {"weight": np.ones((3, 4), np.float32)}, ValueError,
     r"missing keys \['bias'\]"),
    (linear_entry(), {**linear_tensors(), "extra": np.ones(1)}, ValueError,
     r"unexpected keys \['extra'\]"),
    (seq(linear_entry()), linear_tensors(), ValueError,
     r"missing keys \['0.bias', '0.weight'\], unexpected keys \['bias', 'weight'\]"),
    (seq(linear_entry(), {"kind": "ReLU", "settings": {}}), {
        **{"0." + k: v for k, v in linear_tensors().items()}, "1.weight": np.ones(2)},
     ValueError, r"unexpected keys \['1.weight'\]"),
    (linear_entry(weight_dtype="int8"), {
        "weight": np.ones((3, 4), np.float32), "weight_scale": np.ones(3, np.float32),
        "bias": np.ones(3, np.float32)}, ValueError,
     r"weight must be int8 of shape \(3, 4\), got float32"),
    (linear_entry(), {"weight": np.ones((3, 4), bool), "bias": np.ones(3, np.float32)},
     None, None),  # any real array converts to a float format, as load_state_dict does
    # settings that only the built model refuses
    (seq(linear_entry(), linear_entry(dtype="float64", weight_dtype="float64",
                                             in_features=3)), {
        "0.weight": np.ones((3, 4)), "0.bias": np.ones(3), "1.weight": np.ones((3, 3)),
        "1.bias": np.ones(3)}, ValueError, "must share one dtype"),
    (linear_entry(weight_dtype="int4", backend="blas"), {
        "weight": np.ones((3, 2), np.uint8), "weight_scale": np.ones((3, 1), np.float32),
        "bias": np.ones(3, np.float32)}, ValueError, "BLAS backend runs float weights"),
    ({"kind": "LayerNorm", "settings": {**LN, "normalized_shape": 3, "eps": -1}}, SMALL,
     ValueError, "eps must be a number >= 0"),
    ({"kind": "BatchNorm1d", "settings": {**BN, "num_features": 3}}, {
        **SMALL, "running_mean": np.ones(3), "running_var": -np.ones(3),
        "num_batches_tracked": np.array(0)}, ValueError, "running_var has negative values"),
    (linear_entry(weight_dtype="bfloat16"), {
        "weight": np.full((3, 4), np.nan, np.float32), "bias": np.ones(3, np.float32)},
     ValueError, "NaN or Inf values, which bfloat16 weights cannot hold"),
]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("structure, tensors, exc, message", HOSTILE)
def test_hostile_structures(tmp_path, suffix, structure, tensors, exc, message):
    path = write_model(tmp_path / f"bad{suffix}", structure, tensors)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        if exc is None:
            fl.load_model(path)
        else:
            with pytest.raises(exc, match=message) as info:
                fl.load_model(path)
            assert str(path) in str(info.value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 16 << 20  # nothing large allocated (numpy reports to tracemalloc)


def test_layernorm_without_parameters_allocates_nothing_for_its_width(tmp_path):
    path = write_model(tmp_path / "ln.npz", {"kind": "LayerNorm", "settings": {
        **LN, "elementwise_affine": False}}, {})
    ln = fl.load_model(path)  # nothing vouches for the width: the input is checked
    assert ln.normalized_shape == (2**40,)
    with pytest.raises(ValueError, match="over 1099511627776 values got rows of 3"):
        ln(np.ones((2, 3)))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("version, message", [
    (3, "version 3, from a newer fastlinear; this one .* reads version 2: upgrade"),
    (10**30, "from a newer fastlinear"),
    (0, "unknown structure version 0"), ("1", "unknown structure version '1'"),
    (True, "unknown structure version True"), (1.0, "unknown structure version 1.0"),
    (None, "unknown structure version None"),
])
def test_structure_versions(tmp_path, suffix, version, message):
    text = json.dumps({"version": version, "model": {"kind": "ReLU", "settings": {}}})
    path = write_model(tmp_path / f"v{suffix}", text, {})
    with pytest.raises(ValueError, match=message):
        fl.load_model(path)
    for readable in ("1", "2"):  # version 2 added Linear's activations only
        write_model(path, text.replace(json.dumps(version), readable, 1), {})
        assert isinstance(fl.load_model(path), fl.ReLU)


def test_malformed_npz_structure_entry(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, __fastlinear__=np.array(["{}"]))
    with pytest.raises(ValueError, match="bad.npz.*__fastlinear__ must be a 0-d str array"):
        fl.load_model(path)
    np.savez(path, __fastlinear__=np.array(b'{"version": 1}'))
    with pytest.raises(ValueError, match="must be a 0-d str array"):
        fl.load_model(path)


def test_malformed_files_stay_malformed_for_load_model(tmp_path):
    path = write_safetensors(tmp_path / "bad.safetensors", {"w": entry(offsets=(0, 16))},
                             bytes(8))
    with pytest.raises(ValueError, match="bad.safetensors': malformed safetensors file"):
        fl.load_model(path)
    with pytest.raises(ValueError, match="expected a .npz or .safetensors name"):
        fl.load_model(tmp_path / "m.pt")


# ---- state dicts that do not fit: errors that say what to do -----------------------------

@pytest.mark.parametrize("fmt, group", [("int8", None), ("int4", 32), ("int4", 128)])
def test_a_scaled_state_dict_names_its_format(fmt, group):
    layer = fl.Linear(300, 20, rng=0)
    state = layer.quantize(fmt, group).state_dict()
    keywords = f"weight_dtype='{fmt}'" + (f", group_size={group}" if group else "")
    with pytest.raises(KeyError, match=re.escape(
            f"state_dict holds {fmt} weights (weight {state['weight'].dtype} of shape "
            f"{state['weight'].shape}, weight_scale of shape {state['weight_scale'].shape}"
            f") but this layer stores float32 weights: build it as "
            f"fl.Linear(300, 20, {keywords}) to load them")):
        layer.load_state_dict(state)
    fl.Linear(300, 20, weight_dtype=fmt, group_size=group).load_state_dict(state)


def test_a_float_state_dict_in_a_scaled_layer_says_quantize():
    float_state = fl.Linear(100, 50, bias=False, rng=0).state_dict()
    with pytest.raises(KeyError, match=re.escape(
            "holds float32 weights (weight float32 of shape (50, 100)) but this layer "
            "stores int4 weights (group_size=64): load them into fl.Linear(100, 50, "
            "bias=False), then call .quantize('int4', group_size=64) on it")):
        fl.Linear(100, 50, bias=False, weight_dtype="int4", group_size=64).load_state_dict(
            float_state)


def test_scaled_formats_mixed_up():
    layer = fl.Linear(100, 50, rng=0)
    int4 = layer.quantize("int4")
    with pytest.raises(ValueError, match=re.escape(
            "holds int8 weights (weight int8 of shape (50, 100), weight_scale of shape "
            "(50,)) but this layer stores int4 weights (group_size=32): build it as "
            "fl.Linear(100, 50, weight_dtype='int8')")):
        int4.load_state_dict(layer.quantize("int8").state_dict())
    with pytest.raises(ValueError, match=re.escape(
            "build it as fl.Linear(100, 50, weight_dtype='int4', group_size=64)")):
        int4.load_state_dict(layer.quantize("int4", 64).state_dict())
    with pytest.raises(KeyError, match=re.escape(
            "stores float64 weights: build it as fl.Linear(100, 50, weight_dtype='int4', "
            "group_size=32)")):
        fl.Linear(100, 50, dtype=np.float64).load_state_dict(int4.state_dict())
    state = int4.state_dict()
    state["weight_scale"] = state["weight_scale"][:, :3]  # fits no group size
    with pytest.raises(KeyError, match="the group_size they were saved with"):
        layer.load_state_dict(state)
    # float formats convert among themselves, as before: no error
    layer.load_state_dict(layer.quantize("bfloat16").state_dict())


def test_sequential_errors_name_the_key():
    model = fl.Sequential(fl.Linear(16, 33), fl.ReLU(),
                          fl.Sequential(fl.Linear(33, 8), fl.LayerNorm(8)))
    good = model.state_dict()
    before = {k: v.copy() for k, v in good.items()}
    cases = [
        ({"0.weight": np.ones((32, 16))}, ValueError,
         r"^0\.weight must have shape \(33, 16\), got \(32, 16\)$"),
        ({"2.1.bias": np.ones(7)}, ValueError, r"^2\.1\.bias must have shape \(8,\)"),
        ({"2.0.weight": np.full((8, 33), "a")}, TypeError,
         r"^2\.0\.weight must be a real numeric array"),
        ({"2.0.bias": np.ones(8, complex)}, TypeError, r"^2\.0\.bias must be real"),
        ({"1.weight": np.ones(3)}, KeyError, r"unexpected keys \['1.weight'\]"),
        ({"0.weight_scale": np.ones(33, np.float32)}, KeyError,
         r"unexpected keys \['0.weight_scale'\]"),
    ]
    for change, exc, message in cases:
        with pytest.raises(exc, match=message):
            model.load_state_dict({**good, **change, "2.1.weight": np.zeros(8)})
        for key, value in model.state_dict().items():  # nothing loaded: checked first
            assert_same(value, before[key])
    quantized = fl.Sequential(fl.Linear(16, 33).quantize("int4"), fl.ReLU(),
                              fl.Sequential(fl.Linear(33, 8), fl.LayerNorm(8)))
    with pytest.raises(KeyError, match=re.escape(
            "holds int4 weights (0.weight uint8 of shape (33, 8), 0.weight_scale of shape "
            "(33, 1)) but module 0 (Linear) stores float32 weights: build it as "
            "fl.Linear(16, 33, weight_dtype='int4', group_size=32)")):
        model.load_state_dict(quantized.state_dict())
    nan = {**good, "2.0.weight": np.full((8, 33), np.nan)}
    bf16 = fl.Sequential(fl.Linear(16, 33), fl.ReLU(), fl.Sequential(
        fl.Linear(33, 8).quantize("bfloat16"), fl.LayerNorm(8)))
    with pytest.raises(ValueError, match=r"module 2\.0 \(Linear\): weight has NaN"):
        bf16.load_state_dict(nan)


def test_no_format_hint_for_a_layer_of_other_sizes():
    int4 = fl.Linear(100, 50, weight_dtype="int4")
    with pytest.raises(ValueError) as info:
        int4.load_state_dict(fl.Linear(200, 50, weight_dtype="int4").state_dict())
    assert str(info.value).startswith("weight must be uint8 of shape (50, 50), got uint8 "
                                      "of shape (50, 100); weight_scale must be")
