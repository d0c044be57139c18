"""A user's script: CI type-checks it with mypy (the config in pyproject.toml), and
tests/test_api.py runs it. assert_type fails the type check where a hint is missing (the
value would be Any) or says something else than a user expects."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

import fastlinear as fl

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:
    def assert_type(value, _type):  # at run time, as typing's: the value unchanged
        return value


def mlp(rng: int) -> fl.Sequential:
    return fl.Sequential(fl.Linear(16, 32, rng=rng), fl.GELU(approximate="tanh"),
                         fl.LayerNorm(32), fl.Sequential(fl.Linear(32, 4, rng=rng + 1)),
                         fl.Softmax(dim=-1))


def main() -> None:
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)

    layer = fl.Linear(16, 32, bias=True, dtype=np.float32, rng=np.random.default_rng(1),
                      backend="native")
    y = assert_type(layer(x), np.ndarray)
    assert_type(layer.forward(x.tolist(), out=np.empty_like(y)), np.ndarray)
    assert_type(layer.weight, np.ndarray)
    assert_type(layer.bias, "np.ndarray | None")
    layer.weight = layer.weight * 0.5          # any array-like in
    layer.bias = None
    assert_type(layer.in_features + layer.out_features, int)
    assert_type(layer.dtype, np.dtype)
    assert layer.resolved_backend in ("native", "blas")
    q = assert_type(fl.Linear(64, 8).quantize("int4", group_size=32), fl.Linear)
    assert_type(q.group_size, "int | None")
    assert_type(q.weight_dtype, str)
    q8 = fl.Linear(64, 8, weight_dtype="int8", activations="int8")
    assert_type(q8.activations, Literal["float32", "float64", "int8"])
    assert_type(q.quantize("int8", activations="int8")(np.ones(64)), np.ndarray)

    model = mlp(rng=2)
    probs = assert_type(model(x), np.ndarray)
    model(x, out=np.empty_like(probs))
    first = model[0]                           # any module: narrow it to use it
    if isinstance(first, fl.Linear):
        assert_type(first.weight, np.ndarray)
    assert_type(model[1:], fl.Sequential)
    assert_type(model.quantize("int8"), fl.Sequential)
    assert_type(model.quantize("int4", 64, activations="int8"), fl.Sequential)
    assert_type(len(model), int)
    for m in (fl.ReLU(), fl.SiLU(), fl.LeakyReLU(0.1), fl.Tanh(), fl.Sigmoid(),
              fl.Identity(), fl.Dropout(0.1), fl.Flatten(), fl.LogSoftmax(),
              fl.BatchNorm1d(16)):
        assert_type(m(x), np.ndarray)
    norm = fl.LayerNorm(16, eps=1e-6, dtype=np.float64)
    assert_type(norm.weight, "np.ndarray | None")
    norm.weight = np.full(16, 2.0)

    assert_type(fl.functional.linear(x, np.ones((3, 16)), [1.0, 2.0, 3.0]), np.ndarray)

    state = assert_type(model.state_dict(), "dict[str, np.ndarray]")
    mlp(rng=7).load_state_dict(state)
    layer.load_state_dict(layer.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        fl.save(model, path)
        fl.save(state, os.path.join(folder, "state.npz"))
        assert_type(fl.load(path), "dict[str, np.ndarray]")
        same = fl.load_model(path)             # any module: narrow it to use it
        assert isinstance(same, fl.Sequential) and np.array_equal(same(x), probs)
    reader: Callable[..., fl.Sequential] = fl.load_onnx
    assert callable(reader)

    with fl.threads(1):
        assert_type(fl.get_num_threads(), int)
    fl.set_num_threads(2)
    fl.set_num_threads(None)
    assert_type(fl.show_config(mode="dicts"), "dict[str, Any]")
    assert_type(fl.show_config(), None)


if __name__ == "__main__":
    main()
