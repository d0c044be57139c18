"""PyTorch and file interop: to_torch, .npz and .safetensors, Sequential from torch."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastlinear as fl

from conftest import assert_close, random_layer


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("bias", [True, False])
def test_save_and_load_round_trip(tmp_path, suffix, bias):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    layer = fl.Linear(30, 20, bias, dtype=np.float64, rng=1)
    path = tmp_path / f"layer{suffix}"
    fl.save(layer, path)
    state = fl.load(path)
    assert set(state) == set(layer.state_dict())
    other = fl.Linear(30, 20, bias, dtype=np.float64, rng=2)
    other.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((5, 30))
    np.testing.assert_array_equal(other(x), layer(x))


def test_unknown_file_type(tmp_path):
    with pytest.raises(ValueError, match="expected a .npz or .safetensors name"):
        fl.save(fl.Linear(2, 2), tmp_path / "layer.pt")
    with pytest.raises(ValueError, match="unknown file type"):
        fl.load(tmp_path / "layer.bin")


def _torch_sequential(torch, dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
        torch.nn.GELU(), torch.nn.Linear(64, 32), torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8, bias=False),
    ).to(dtype)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["native", "blas"])
def test_sequential_from_torch_matches_torch(dtype_name, backend):
    torch = pytest.importorskip("torch")
    model = _torch_sequential(torch, getattr(torch, dtype_name))
    ours = fl.Sequential.from_torch(model, backend=backend)
    assert len(ours) == len(model)
    x = torch.randn(37, 48, dtype=getattr(torch, dtype_name))
    with torch.no_grad():
        expected = model(x).numpy()
    y = ours(x.numpy())
    assert y.dtype == np.dtype(dtype_name) and y.shape == (37, 8)
    eps = np.finfo(y.dtype).eps
    np.testing.assert_allclose(y, expected, rtol=2000 * eps, atol=2000 * eps)


def test_sequential_rejects_unknown_modules():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(
        torch.nn.Dropout(0.1), torch.nn.PReLU())).eval()
    with pytest.raises(TypeError, match=r"cannot convert module '1.1' \(PReLU\)"):
        fl.Sequential.from_torch(model)


def test_to_torch_and_back():
    torch = pytest.importorskip("torch")
    for dtype in (np.float32, np.float64):
        layer = random_layer(12, 7, dtype)
        module = layer.to_torch()
        assert module.weight.dtype == (torch.float32 if dtype == np.float32 else torch.float64)
        np.testing.assert_array_equal(module.weight.detach().numpy(), layer.weight)
        x = np.random.default_rng(0).standard_normal((3, 12)).astype(dtype)
        with torch.no_grad():
            y = module(torch.from_numpy(x)).numpy()
        assert_close(y, x, layer.weight, layer.bias)
        back = fl.Linear.from_torch(module, backend="native")
        np.testing.assert_array_equal(back(x), layer(x))
    assert fl.Linear(3, 2, bias=False).to_torch().bias is None


def test_torch_safetensors_file_runs_without_torch(tmp_path):
    """A model saved by torch (safetensors) runs in a process where torch cannot load."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file
    model = _torch_sequential(torch, torch.float32)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    x = np.random.default_rng(1).standard_normal((4, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model(torch.from_numpy(x)).numpy())
    code = f"""
import sys; sys.modules["torch"] = None   # any import of torch now fails
import numpy as np, fastlinear as fl
model = fl.Sequential(fl.Linear(48, 64), fl.ReLU(), fl.Linear(64, 64), fl.GELU(),
                      fl.Linear(64, 32), fl.GELU("tanh"), fl.Linear(32, 16), fl.Tanh(),
                      fl.Linear(16, 8, bias=False))
model.load_state_dict(fl.load({str(tmp_path / "model.safetensors")!r}))
y = model(np.load({str(tmp_path / "x.npy")!r}))
np.testing.assert_allclose(y, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-4, atol=1e-5)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fl.__file__))}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_sequential_takes_only_fastlinear_modules():
    x = np.random.default_rng(0).standard_normal((5, 3))
    model = fl.Sequential(fl.Linear(3, 4, rng=0), fl.ReLU(), fl.GELU(), fl.GELU("tanh"),
                          fl.Tanh(), fl.Linear(4, 2, rng=1))
    assert model(x).shape == (5, 2)
    fl.Sequential(fl.Linear(3, 4), model)  # nested: fine
    for bad, kind in ((np.tanh, "numpy.ufunc"), (lambda y: y, "function"), (3, "int")):
        with pytest.raises(TypeError, match=rf"fastlinear modules \(Linear, ReLU, .*, "
                                            rf"Sequential\); module 1 is {re.escape(kind)}$"):
            fl.Sequential(fl.Linear(3, 4), bad)


def test_sequential_rejects_torch_modules_and_points_to_from_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"module 1 is torch\.nn\.modules\.activation\.ReLU"
                                        r"; fl\.Sequential\.from_torch\("):
        fl.Sequential(fl.Linear(3, 4), torch.nn.ReLU())
    with pytest.raises(TypeError, match=r"module 0 is torch.*from_torch"):
        fl.Sequential(torch.nn.Linear(3, 4))


def test_sequential_state_dict_keys():
    model = fl.Sequential(fl.Linear(3, 4), fl.ReLU(), fl.Linear(4, 2, bias=False))
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight"}
    with pytest.raises(KeyError, match=r"missing keys \['2.weight'\]"):
        model.load_state_dict({"0.weight": np.ones((4, 3)), "0.bias": np.ones(4)})
    with pytest.raises(ValueError, match="approximate must be"):
        fl.GELU("fast")
