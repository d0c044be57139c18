"""Conformance with torch.nn.Linear (skipped when torch is not installed)."""
import numpy as np
import pytest

import fastlinear as fl

from conftest import BACKENDS, assert_close

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("torch_dtype, np_dtype", [(torch.float32, np.float32),
                                                   (torch.float64, np.float64)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 100, 50), (140, 100, 50), (7, 513, 33), (70, 64, 1)])
def test_from_torch_matches_torch(torch_dtype, np_dtype, bias, backend, shape):
    m, k, n = shape
    torch.manual_seed(m * k + n)
    module = torch.nn.Linear(k, n, bias=bias, dtype=torch_dtype)
    layer = fl.Linear.from_torch(module, backend=backend)
    assert layer.dtype == np_dtype
    dtype = "" if np_dtype == np.float32 else f", dtype='{np.dtype(np_dtype).name}'"
    # torch's, + the dtype where not the default, + the backend
    assert repr(layer) == f"{repr(module)[:-1]}{dtype}, backend={backend!r})"
    x = torch.randn(m, k, dtype=torch_dtype)
    with torch.no_grad():
        expected = module(x).numpy()
    y = layer(x.numpy())
    w = module.weight.detach().numpy()
    b = module.bias.detach().numpy() if bias else None
    assert_close(y, x.numpy(), w, b)
    # Both within the bound of the exact result, so within twice it of each other.
    np.testing.assert_allclose(y, expected, rtol=0, atol=4 * (k + 2) * np.finfo(np_dtype).eps
                               * float(np.abs(x.numpy()).max() * np.abs(w).sum(1).max() + 1))
    assert layer(x).shape == (m, n)  # tensors are accepted as input too


def test_torch_initialisation_range():
    module = torch.nn.Linear(300, 200)
    layer = fl.Linear(300, 200, rng=0)
    for ours, theirs in ((layer.weight, module.weight), (layer.bias, module.bias)):
        theirs = theirs.detach().numpy()
        assert abs(np.abs(ours).max() - np.abs(theirs).max()) < 0.01 / np.sqrt(300)


def test_state_dict_both_ways():
    module = torch.nn.Linear(20, 10)
    layer = fl.Linear(20, 10, rng=3)
    layer.load_state_dict(module.state_dict())  # torch tensors in
    np.testing.assert_array_equal(layer.weight, module.weight.detach().numpy())
    other = torch.nn.Linear(20, 10)
    other.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = torch.randn(4, 20)
    with torch.no_grad():
        np.testing.assert_array_equal(other(x).numpy(), module(x).numpy())


def test_from_torch_half_precision_and_non_linear():
    module = torch.nn.Linear(8, 4).to(torch.bfloat16)
    layer = fl.Linear.from_torch(module)
    assert layer.dtype == np.float32
    np.testing.assert_array_equal(layer.weight, module.weight.float().detach().numpy())
    assert fl.Linear.from_torch(module, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        fl.Linear.from_torch(torch.nn.ReLU())
