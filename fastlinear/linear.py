"""fastlinear.Linear: torch.nn.Linear's forward pass, without torch."""
import numpy as np

from . import _config, _core
from .functional import forward
from ._validate import (as_rows, as_weight, check_keys, layer_dtype, parameter,
                        positive_int)

__all__ = ["Linear"]


class _Params:
    """Weight, bias and their packed copy, swapped as one object so that a forward pass
    running in another thread never mixes old and new weights."""
    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight, bias, pack):
        self.weight, self.bias = weight, bias
        self.packed = _core.PackedWeights(weight, bias) if pack else None

    def native(self):
        if self.packed is None:  # a race here packs twice, harmlessly
            self.packed = _core.PackedWeights(self.weight, self.bias)
        return self.packed


class Linear:
    """y = x @ weight.T + bias for inputs of shape (*, in_features).

    Parameters follow torch.nn.Linear and are initialised like it: weight and bias
    uniform in [-1/sqrt(in_features), 1/sqrt(in_features)], drawn from `rng` (None, an
    int seed or a numpy.random.Generator, as numpy.random.default_rng takes).

    backend: "native" (our kernel: bitwise reproducible across batch sizes and thread
    counts), "blas" (scipy's sgemm/dgemm) or "auto" (native where it has a tuned
    micro-kernel for this CPU, else BLAS; see fastlinear.show_config()).

    `weight` and `bias` are read-only arrays; assign new arrays to replace them (they
    are copied, cast to the layer's dtype and packed once).
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32,
                 rng=None, backend="auto"):
        self._in = positive_int(in_features, "in_features")
        self._out = positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self._dtype = layer_dtype(dtype)
        self._backend = _config.check_backend(backend)
        self._draw(rng, bool(bias))

    # -- parameters ---------------------------------------------------------------
    def reset_parameters(self, rng=None):
        """Draws weight and bias anew, uniform in +-1/sqrt(in_features) (torch's init)."""
        self._draw(rng, self._has_bias)

    def _draw(self, rng, with_bias):
        gen = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(self._in)
        weight = gen.uniform(-bound, bound, (self._out, self._in))
        bias = gen.uniform(-bound, bound, self._out) if with_bias else None
        self._set(weight, bias)

    def _set(self, weight, bias):
        weight = parameter(weight, (self._out, self._in), self._dtype, "weight")
        if bias is not None:
            bias = parameter(bias, (self._out,), self._dtype, "bias")
        pack = _config.resolve_backend(self._backend) == "native"
        self._params = _Params(weight, bias, pack)

    @property
    def _has_bias(self):
        return self._params.bias is not None

    def _state_keys(self):
        """The keys of state_dict(), in torch's order."""
        return ("weight", "bias") if self._has_bias else ("weight",)

    @staticmethod
    def _view(arr):
        # A view of the read-only private array: its WRITEABLE flag cannot be set back.
        return None if arr is None else arr.view()

    @property
    def weight(self):
        """(out_features, in_features), read-only."""
        return self._view(self._params.weight)

    @weight.setter
    def weight(self, value):
        self._set(value, self._params.bias)

    @property
    def bias(self):
        """(out_features,) read-only, or None."""
        return self._view(self._params.bias)

    @bias.setter
    def bias(self, value):
        self._set(self._params.weight, value)

    @property
    def in_features(self):
        return self._in

    @property
    def out_features(self):
        return self._out

    @property
    def dtype(self):
        return self._dtype

    @property
    def backend(self):
        """As given: "auto", "native" or "blas"."""
        return self._backend

    @property
    def resolved_backend(self):
        """The backend a call runs now: "native" or "blas" ("auto" resolved for this
        CPU's native kernel, see fastlinear.show_config())."""
        return _config.resolve_backend(self._backend)

    # -- forward ------------------------------------------------------------------
    def forward(self, x, out=None):
        """x of shape (*, in_features), any layout and real dtype (cast to the layer's);
        returns (*, out_features), or fills `out` (C-contiguous, that shape and the
        layer's dtype) and returns it."""
        params = self._params
        if params.packed is not None:
            y = params.packed.forward_fast(x, out)  # the common case, without Python steps
            if y is not None:
                return y
        native = _config.resolve_backend(self._backend) == "native"
        x2, batch = as_rows(x, self._dtype, self._in, fortran_ok=not native)
        packed = params.native() if native else None
        return forward(x2, batch, params.weight, params.bias, packed, out)

    __call__ = forward

    # -- interop ------------------------------------------------------------------
    def state_dict(self):
        """{'weight': ..., 'bias': ...} as writable copies (no 'bias' without one)."""
        d = {"weight": self._params.weight.copy()}
        if self._params.bias is not None:
            d["bias"] = self._params.bias.copy()
        return d

    def load_state_dict(self, state_dict):
        """Loads 'weight' (and 'bias' when the layer has one) from numpy arrays or torch
        tensors; unknown or missing keys raise KeyError."""
        check_keys(state_dict, self._state_keys())
        self._set(state_dict["weight"], state_dict.get("bias"))

    def to_torch(self):
        """A torch.nn.Linear (float32 or float64, like this layer) with these weights."""
        try:
            import torch
        except ImportError:
            raise ImportError("to_torch needs PyTorch: pip install torch") from None
        dtype = torch.float64 if self._dtype == np.float64 else torch.float32
        module = torch.nn.Linear(self._in, self._out, bias=self._has_bias, dtype=dtype)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.state_dict().items()})
        return module

    @classmethod
    def from_torch(cls, module, *, dtype=None, backend="auto"):
        """A Linear with the weights of a torch.nn.Linear. dtype: the module's when it
        is float32 or float64, else float32, unless given."""
        if not all(hasattr(module, a) for a in ("in_features", "out_features", "weight")):
            raise TypeError(f"expected a torch.nn.Linear, got {type(module).__name__}")
        if dtype is None:
            dtype = np.float64 if str(module.weight.dtype) == "torch.float64" else np.float32
        return cls._from_parameters(module.weight, module.bias, dtype, backend)

    @classmethod
    def _from_parameters(cls, weight, bias, dtype, backend):
        """A layer shaped by `weight` (out_features, in_features), holding copies."""
        weight = as_weight(weight)
        layer = cls.__new__(cls)
        layer._out = positive_int(weight.shape[0], "out_features")
        layer._in = positive_int(weight.shape[1], "in_features")
        layer._dtype = layer_dtype(dtype)
        layer._backend = _config.check_backend(backend)
        layer._set(weight, bias)
        return layer

    def __reduce__(self):
        # Weights only, not the packed copy: it is rebuilt on load for the CPU there.
        return (Linear._from_parameters, (self._params.weight, self._params.bias,
                                          self._dtype.name, self._backend))

    def __repr__(self):
        backend = repr(self._backend)
        if self._backend == "auto":
            backend += f" ({self.resolved_backend})"
        return (f"Linear(in_features={self._in}, out_features={self._out}, "
                f"bias={self._has_bias}, backend={backend})")
