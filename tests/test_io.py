""".npz and .safetensors files (fastlinear.io): round trips of every dtype, bit for bit;
malformed files; interop with the safetensors package and torch."""
import json
import time

import ml_dtypes
import numpy as np
import pytest

import fastlinear as fl
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
