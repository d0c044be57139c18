"""The other modules of an MLP, like torch.nn's, for inference: Identity, Dropout (the
identity at inference), Flatten, LayerNorm and Softmax/LogSoftmax over the last
dimension, and BatchNorm1d in eval mode (its running statistics). The row-wise ones run
native code (src_c/model.c) alone or inside a Sequential."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import _core, _optional, _runner, _steps
from ._validate import as_array, check_state, layer_dtype, parameter, positive_int

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike, DTypeLike

__all__ = ["Identity", "Dropout", "Flatten", "LayerNorm", "Softmax", "LogSoftmax",
           "BatchNorm1d"]


class Identity:
    """Returns its input (as an array)."""
    # For the converters, as fastlinear.activations._Activation states.
    torch_names: tuple[str, ...] = ("Identity",)
    torch_args: tuple[str, ...] = ()
    onnx_ops: tuple[str, ...] = ("Identity",)

    def __init__(self, *args: object, **kwargs: object) -> None:  # as torch's: ignored
        pass

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return as_array(x, "input")

    forward = __call__

    def _steps(self, width, dtype):
        return []

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def to_torch(self) -> torch.nn.Module:
        """The torch.nn module this one stands for (torch is imported here)."""
        return _optional.torch_module(self)

    def __repr__(self) -> str:
        return "Identity()"


class Dropout(Identity):
    """The identity: dropout acts only in training, and fastlinear runs inference."""
    torch_names, torch_args, onnx_ops = ("Dropout",), ("p",), ("Dropout",)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p!r}")
        self.p, self.inplace = float(p), bool(inplace)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p}, inplace={self.inplace})"


class Flatten:
    """Merges dimensions start_dim .. end_dim into one, like torch.nn.Flatten."""
    torch_names, torch_args, onnx_ops = ("Flatten",), ("start_dim", "end_dim"), ("Flatten",)

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = start_dim, end_dim

    def shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape this module turns `shape` into."""
        nd = max(len(shape), 1)
        s, e = self.start_dim, self.end_dim
        s, e = s + nd if s < 0 else s, e + nd if e < 0 else e
        if not (0 <= s < nd and 0 <= e < nd and s <= e):
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) "
                             f"does not fit an input of shape {tuple(shape)}")
        if not shape:
            return (1,)
        return (*shape[:s], math.prod(shape[s:e + 1]), *shape[e + 1:])

    def __call__(self, x: ArrayLike) -> np.ndarray:
        arr = as_array(x, "input")
        return arr.reshape(self.shape(arr.shape))

    forward = __call__

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def to_torch(self) -> torch.nn.Module:
        """The torch.nn module this one stands for (torch is imported here)."""
        return _optional.torch_module(self)

    def __repr__(self) -> str:
        return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"


def _eps(eps):
    """A normalization's eps as a float, ValueError unless it is a number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


def _dtype_arg(dtype):
    """The dtype argument as a repr shows it: only when it is not the default."""
    return "" if dtype == np.float32 else f", dtype={dtype.name!r}"


def _last_dim(dim, name):
    if dim not in (-1, None) and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"{name}: dim must be an int, got {dim!r}")
    return dim


class _RowSoftmax:
    torch_args = ("dim",)
    _kind: int | None = None  # its fl_step_kind code

    def __init__(self, dim: int | None = -1) -> None:
        self.dim = _last_dim(dim, type(self).__name__)

    def check(self, ndim: int) -> None:
        """ValueError unless this module's dim is the last of an ndim-D input (dim=None
        means it for 1-D and 2-D input only: torch's legacy rule takes dim 0 of 3-D
        input and dim 1 of 4-D)."""
        nd = max(ndim, 1)
        if self.dim in (-1, nd - 1) or (self.dim is None and nd <= 2):
            return
        raise ValueError(f"{self!r} on a {ndim}-D input: fastlinear computes over the last "
                         f"dimension only")

    def __call__(self, x: ArrayLike) -> np.ndarray:
        arr = as_array(x, "input")
        self.check(arr.ndim)
        return _runner.module(self, arr)

    forward = __call__

    def _steps(self, width, dtype):
        return [_steps.Step(self._kind)]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def to_torch(self) -> torch.nn.Module:
        """The torch.nn module this one stands for (torch is imported here)."""
        return _optional.torch_module(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class Softmax(_RowSoftmax):
    """exp(x - max) / sum(exp(x - max)) over the last dimension (sums in float64)."""
    torch_names, onnx_ops = ("Softmax",), ("Softmax",)
    _kind = _core.FL_STEP_SOFTMAX


class LogSoftmax(_RowSoftmax):
    """(x - max) - log(sum(exp(x - max))) over the last dimension (in float64)."""
    torch_names, onnx_ops = ("LogSoftmax",), ("LogSoftmax",)
    _kind = _core.FL_STEP_LOGSOFTMAX


class _Params:
    """Parameters swapped as one object (see fastlinear.linear._Params)."""
    __slots__ = ("arrays",)

    def __init__(self, arrays):
        self.arrays = arrays


class LayerNorm:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension, like
    torch.nn.LayerNorm with normalized_shape of one dimension (an int or a one-int
    sequence); mean and (biased) variance in float64, the result rounded once. Alone it
    computes in its dtype (float32 unless given; inputs are cast); inside a Sequential,
    in the model's. weight and bias are read-only arrays; assign new ones to replace
    them."""
    # Converted with their parameters: the converters build them, so no torch_args.
    torch_names, onnx_ops = ("LayerNorm",), ("LayerNormalization",)

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *,
                 dtype: DTypeLike = np.float32) -> None:
        if isinstance(normalized_shape, (int, np.integer)):
            shape = (normalized_shape,)
        elif isinstance(normalized_shape, (tuple, list)):
            shape = tuple(normalized_shape)
        else:
            raise TypeError(f"normalized_shape must be an int or a sequence of one int, "
                            f"got {normalized_shape!r}")
        if len(shape) != 1:
            raise ValueError(f"LayerNorm over {len(shape)} dimensions {shape}: fastlinear "
                             f"normalizes over the last dimension only")
        self._n = positive_int(shape[0], "normalized_shape")
        self.eps = _eps(eps)
        self._dtype = layer_dtype(dtype)
        self.elementwise_affine, self._with_bias = bool(elementwise_affine), bool(bias)
        if self.elementwise_affine:
            self._set(np.ones(self._n), np.zeros(self._n))
        else:  # nothing of size n: a saved model's n has no tensor to vouch for it then
            self._set(None, None)

    def _set(self, weight, bias):
        if not self.elementwise_affine:
            self._params = _Params(())
            return
        w = parameter(weight, (self._n,), self._dtype, "weight")
        b = parameter(bias if self._with_bias else np.zeros(self._n), (self._n,),
                      self._dtype, "bias")
        self._params = _Params((w, b))

    @property
    def normalized_shape(self) -> tuple[int]:
        return (self._n,)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def weight(self) -> np.ndarray | None:
        """(normalized_shape,) read-only; None without elementwise_affine."""
        return self._param(0)

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        self._assign(value, self._param(1), "weight")

    @property
    def bias(self) -> np.ndarray | None:
        return self._param(1) if self._with_bias else None

    @bias.setter
    def bias(self, value: ArrayLike) -> None:
        self._assign(self._param(0), value, "bias")

    def _assign(self, weight, bias, name):
        if name not in self._state_keys():
            raise AttributeError(f"this LayerNorm has no {name} (elementwise_affine="
                                 f"{self.elementwise_affine}, bias={self._with_bias})")
        self._set(weight, bias)

    def _param(self, i):
        if not self.elementwise_affine:
            return None
        return self._params.arrays[i].view()

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self._apply(x, self._dtype)

    forward = __call__

    def _apply(self, x, dtype):
        """Over x in `dtype`: its own (alone), a model's (in a Sequential)."""
        return _runner.module(self, x, dtype)

    def _steps(self, width, dtype):
        if width != self._n:
            raise ValueError(f"LayerNorm over {self._n} values got rows of {width}")
        a, b = self._params.arrays or (None, None)
        if a is not None and a.dtype != dtype:
            a, b = a.astype(dtype), b.astype(dtype)
        return [_steps.Step(_core.FL_STEP_LAYERNORM, a=a, b=b, eps=self.eps)]

    def _state_keys(self):
        if not self.elementwise_affine:
            return ()
        return ("weight", "bias") if self._with_bias else ("weight",)

    def _state_shapes(self):
        return {k: ((self._n,), None) for k in self._state_keys()}

    def _checked_state(self, state_dict, prefix=""):
        # Errors name each key as prefix + key (see fastlinear.linear.Linear).
        return check_state(state_dict, self._state_shapes(), prefix)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).copy() for k in self._state_keys()}

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        state = self._checked_state(state_dict)
        if self.elementwise_affine:
            self._set(state["weight"], state.get("bias", np.zeros(self._n)))

    def to_torch(self) -> torch.nn.LayerNorm:
        """A torch.nn.LayerNorm with these parameters, in this module's dtype."""
        torch = _optional.torch("to_torch")
        module = torch.nn.LayerNorm(self._n, self.eps, self.elementwise_affine,
                                    bias=self._with_bias, dtype=getattr(torch, self._dtype.name))
        with torch.no_grad():
            for name in self._state_keys():
                getattr(module, name).copy_(torch.from_numpy(getattr(self, name).copy()))
        return module.eval()

    def __repr__(self) -> str:
        extra = "" if self._with_bias or not self.elementwise_affine else ", bias=False"
        extra += _dtype_arg(self._dtype)
        return (f"LayerNorm(({self._n},), eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}{extra})")


class BatchNorm1d:
    """torch.nn.BatchNorm1d in eval mode: (x - running_mean) / sqrt(running_var + eps)
    * weight + bias over the features of (N, C) or (N, C, L) input, computed as one
    multiply and one add per value (the factors formed in float64 once)."""

    torch_names, onnx_ops = ("BatchNorm1d",), ("BatchNormalization",)
    _KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 dtype: DTypeLike = np.float32) -> None:
        self._n = positive_int(num_features, "num_features")
        eps = _eps(eps)
        if not track_running_stats:
            raise ValueError("BatchNorm1d without running statistics normalizes with the "
                             "batch's own, which inference does not do; fastlinear needs "
                             "track_running_stats=True")
        self.eps, self.momentum, self.affine = eps, momentum, bool(affine)
        self._dtype = layer_dtype(dtype)
        n = self._n
        self._load(np.ones(n), np.zeros(n), np.zeros(n), np.ones(n), 0)

    def _load(self, weight, bias, mean, var, batches):
        # Rounded to the module's dtype, as torch holds them and state_dict() gives
        # them back (so a saved model computes the same bits), kept in float64 for
        # the factors.
        arrays = [parameter(v, (self._n,), self._dtype, name).astype(np.float64)
                  for v, name in ((weight, "weight"), (bias, "bias"),
                                  (mean, "running_mean"), (var, "running_var"))]
        if (arrays[3] < 0).any():
            raise ValueError("running_var has negative values")
        self._params = _Params((*arrays, int(np.asarray(batches))))

    @property
    def num_features(self) -> int:
        return self._n

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) in float64: y = x * scale + shift."""
        w, b, mean, var, _ = self._params.arrays
        if not self.affine:
            w, b = np.ones_like(w), np.zeros_like(b)
        scale = w / np.sqrt(var + self.eps)
        return scale, b - mean * scale

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self._apply(x, self._dtype)

    forward = __call__

    def _apply(self, x, dtype):
        """Over x in `dtype`: its own (alone), a model's (in a Sequential)."""
        arr = as_array(x, "input")
        if arr.ndim not in (2, 3) or arr.shape[1] != self._n:
            raise ValueError(f"BatchNorm1d({self._n}) takes (N, {self._n}) or "
                             f"(N, {self._n}, L) input, got shape {arr.shape}")
        if arr.ndim == 3:  # features along dim 1: move them last and back
            y = _runner.module(self, np.moveaxis(arr, 1, 2), dtype)
            return np.moveaxis(y, 2, 1)
        return _runner.module(self, arr, dtype)

    def _steps(self, width, dtype):
        if width != self._n:
            raise ValueError(f"BatchNorm1d({self._n}) got rows of {width} features")
        scale, shift = self.factors()
        return [_steps.Step(_core.FL_STEP_AFFINE, a=scale.astype(dtype),
                            b=shift.astype(dtype))]

    def _state_keys(self):
        return self._KEYS if self.affine else self._KEYS[2:]

    def state_dict(self) -> dict[str, np.ndarray]:
        w, b, mean, var, batches = self._params.arrays
        values = dict(zip(self._KEYS, (w, b, mean, var)))
        out = {k: values[k].astype(self._dtype) for k in self._state_keys()[:-1]}
        out["num_batches_tracked"] = np.array(batches, np.int64)
        return out

    def _state_shapes(self):
        *vectors, batches = self._state_keys()
        return {**{k: ((self._n,), None) for k in vectors}, batches: ((), None)}

    def _checked_state(self, state_dict, prefix=""):
        return check_state(state_dict, self._state_shapes(), prefix)

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        state = self._checked_state(state_dict)
        n = self._n
        self._load(state.get("weight", np.ones(n)), state.get("bias", np.zeros(n)),
                   state["running_mean"], state["running_var"],
                   state["num_batches_tracked"])

    def to_torch(self) -> torch.nn.BatchNorm1d:
        """A torch.nn.BatchNorm1d in eval mode with these statistics and parameters, in
        this module's dtype."""
        torch = _optional.torch("to_torch")
        module = torch.nn.BatchNorm1d(self._n, self.eps, self.momentum, self.affine,
                                      dtype=getattr(torch, self._dtype.name))
        w, b, mean, var, batches = self._params.arrays
        with torch.no_grad():
            for name, value in (("weight", w), ("bias", b), ("running_mean", mean),
                                ("running_var", var)):
                if getattr(module, name) is not None:
                    getattr(module, name).copy_(torch.from_numpy(value.copy()))
            module.num_batches_tracked.fill_(batches)
        return module.eval()

    def __repr__(self) -> str:
        return (f"BatchNorm1d({self._n}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats=True"
                f"{_dtype_arg(self._dtype)})")
