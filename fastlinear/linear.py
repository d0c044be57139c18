"""fastlinear.Linear: torch.nn.Linear's forward pass, without torch."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from . import _config, _core, _formats, _optional, _runner
from ._validate import (as_array, as_rows, as_weight, check_state, layer_dtype, parameter,
                        positive_int)

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike, DTypeLike

    from ._typing import Activations, Backend, Resolved, Seed

__all__ = ["Linear"]

INT8 = "int8"  # the integer activations' name (the layer's dtype name: float ones)


def check_activations(activations, dtype, fmt, backend, in_features=None):
    """The activations' name a layer of that dtype, weight format and backend runs with:
    None gives the layer's dtype name (float activations), "int8" quantizes each row of x
    (docs/formats.md, "Integer activations"), where the weights, the backend and
    `in_features` (None: not known yet) allow it; ValueError naming the problem else."""
    if activations is None:
        return dtype.name
    if not isinstance(activations, str):
        try:
            activations = np.dtype(activations).name
        except TypeError:
            raise ValueError(f"activations must be None, {dtype.name!r} or {INT8!r}, "
                             f"got {activations!r}") from None
    if activations == dtype.name:
        return activations
    if activations != INT8:
        raise ValueError(f"activations must be None, {dtype.name!r} (the layer's dtype: "
                         f"float activations) or {INT8!r}, got {activations!r}")
    if dtype != np.float32:
        raise ValueError(f"int8 activations run in float32 layers (x, the bias and y stay "
                         f"float32), got dtype {dtype.name}")
    if fmt.int8_code is None:
        takes = [f.name for f in _formats.FORMAT.values() if f.int8_code is not None]
        raise ValueError(f"int8 activations need {' or '.join(takes)} weights (weight_dtype="
                         f"{' or '.join(map(repr, takes))}), got {fmt.name} weights")
    if backend == "blas":
        raise ValueError("int8 activations run on the native kernel only: backend 'blas' "
                         "has float activations; use backend 'native' or 'auto'")
    # int8 weights sum all of k in int32 (int4 weights: each group, then floats)
    if fmt.int8_code == _core.FL_I8Q and in_features is not None and \
            in_features > _core.FL_I8Q_MAX_K:
        raise ValueError(f"int8 activations with int8 weights take at most "
                         f"{_core.FL_I8Q_MAX_K} inputs, got in_features={in_features}: the "
                         f"integer sums are exact in int32 only while 127 * 128 * "
                         f"in_features < 2**31; use int4 weights or float activations for "
                         f"this layer")
    return activations


class _Params:
    """The weights in one form, and the bias, swapped as one object so that a forward
    pass running in another thread never mixes old and new weights. The native backend
    keeps only the packed weights (`packed`), the BLAS backend only the plain float
    array (`plain`): one copy either way; the bias (a few values) is kept plain too."""
    __slots__ = ("packed", "plain", "bias")

    def __init__(self, packed, plain, bias):
        self.packed, self.plain, self.bias = packed, plain, bias


class Linear:
    """y = x @ weight.T + bias for inputs of shape (*, in_features).

    Parameters follow torch.nn.Linear and are initialised like it: weight and bias
    uniform in [-1/sqrt(in_features), 1/sqrt(in_features)], drawn from `rng` (None, an
    int seed or a numpy.random.Generator, as numpy.random.default_rng takes).

    weight_dtype: how the weights are stored: the layer's dtype (the default), or, for
    float32 layers, "bfloat16", "float16", "int8" (one scale per output row) or "int4"
    (one scale per `group_size` = 32, 64 or 128 values along k); the activations stay
    float32. fastlinear._formats states the rounding and the arithmetic.

    activations: None (the default: x in the layer's dtype, the float arithmetic above),
    or "int8" for int8 and int4 weights: each row of x quantized alone to int8 (its own
    scale), the products summed exactly in integers (int4: per group), then
    float32(sum) * (row scale * weight scale) + bias; the same bits on every ISA. int8
    weights take at most 132104 in_features (_core.FL_I8Q_MAX_K); float32 layers,
    native kernel only. docs/formats.md, "Integer activations", states the arithmetic.

    backend: "native" (our kernel: bitwise reproducible across batch sizes and thread
    counts), "blas" (scipy's sgemm/dgemm, float weights only) or "auto" (native where it
    has a tuned micro-kernel for this CPU or the weights are compressed, else BLAS; see
    fastlinear.show_config()).

    `weight` and `bias` are read-only arrays (`weight` rebuilt from the stored form on
    each access); assign new arrays to replace them (they are converted to the layer's
    dtype and weight_dtype and packed once).
    """
    # For the converters, as fastlinear.activations._Activation states (its parameters
    # come through from_torch, so no torch_args).
    torch_names, onnx_ops = ("Linear",), ("Gemm", "MatMul")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: DTypeLike = np.float32, weight_dtype: DTypeLike | None = None,
                 group_size: int | None = None, rng: Seed = None,
                 backend: Backend = "auto", activations: Activations | None = None) -> None:
        self._in = positive_int(in_features, "in_features")
        self._out = positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self._configure(dtype, weight_dtype, group_size, backend, activations)
        self._draw(rng, bool(bias))

    def _configure(self, dtype, weight_dtype, group_size, backend, activations=None):
        self._dtype = layer_dtype(dtype)
        self._format, self._group = _formats.check(weight_dtype, self._dtype, group_size)
        self._backend = _config.check_backend(backend)
        self._activations = check_activations(activations, self._dtype, self._format,
                                              self._backend, self._in)
        if self._backend == "blas" and self._format.compressed:
            raise ValueError(f"the BLAS backend runs float weights only; "
                             f"{self._format.name} weights need backend 'native' or 'auto'")

    # -- parameters ---------------------------------------------------------------
    def reset_parameters(self, rng: Seed = None) -> None:
        """Draws weight and bias anew, uniform in +-1/sqrt(in_features) (torch's init)."""
        self._draw(rng, self._has_bias)

    def _draw(self, rng, with_bias):
        gen = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(self._in)
        # Drawn a block of rows at a time as they are packed (the same numbers as one
        # draw of the whole matrix), then the bias: no float64 copy of a large layer.
        self._store(lambda j0, j1: gen.uniform(-bound, bound, (j1 - j0, self._in)),
                    (lambda: gen.uniform(-bound, bound, self._out)) if with_bias else None)

    def _set(self, weight, bias):
        """New float (or bfloat16/float16) weights, converted to the stored form."""
        weight = as_weight(weight)
        if weight.shape != (self._out, self._in):
            raise ValueError(f"weight must have shape {(self._out, self._in)}, "
                             f"got {weight.shape}")
        self._store(lambda j0, j1: weight[j0:j1], bias)

    def _store(self, rows, bias, scales=None):
        """Packs the weights in blocks of rows, in order: rows(j0, j1) gives rows
        [j0, j1) as floats, or, with `scales`, in the stored form (scales(j0, j1) their
        scales). bias: None, an array, or a function giving it (called after the rows)."""
        fmt, group = self._format, self._group

        def stored(j0, j1):
            w = rows(j0, j1)
            if scales is not None:  # a scaled format as stored (_formats.check_stored)
                return w, scales(j0, j1)
            return _formats.encode(w, fmt, group)

        def final_bias():
            b = bias() if callable(bias) else bias
            return None if b is None else parameter(b, (self._out,), self._dtype, "bias")

        if self.resolved_backend == "blas":  # float weights only
            plain = np.array(stored(0, self._out)[0], self._dtype, order="C")
            plain.flags.writeable = False
            self._params = _Params(None, plain, final_bias())
            return
        packed = _core.PackedWeights(self._out, self._in, fmt, group, self._activations)
        step = _formats.block_rows(self._in)
        for j0 in range(0, self._out, step):
            j1 = min(j0 + step, self._out)
            w, s = stored(j0, j1)
            packed.set_rows(j0, _formats.kernel_rows(w, fmt),
                            None if s is None else np.require(s, np.float32, ["C", "A"]))
        self._params = _Params(packed, None, final_bias())

    def _native(self):
        """(packed weights, bias) for the native kernel, from one set of parameters:
        the plain weights packed first if the backend changed."""
        params = self._params
        if params.packed is None:
            self._store(lambda j0, j1: params.plain[j0:j1], params.bias)
            params = self._params
        return params.packed, params.bias

    def _stored(self):
        """(weight, scale) in the stored form: new arrays."""
        params = self._params
        if params.packed is None:
            return params.plain.copy(), None
        w, scale = params.packed.unpack()
        return _formats.from_kernel(w, self._format), scale

    @property
    def _has_bias(self):
        return self._params.bias is not None

    def _state_keys(self):
        """The keys of state_dict(), in torch's order."""
        return tuple(self._state_shapes())

    def _state_shapes(self):
        return state_shapes(self._format, self._group, self._out, self._in, self._has_bias)

    @staticmethod
    def _view(arr):
        # A view of the read-only private array: its WRITEABLE flag cannot be set back.
        return None if arr is None else arr.view()

    @property
    def weight(self) -> np.ndarray:
        """(out_features, in_features): the float values the layer computes with
        (float32, or float64 for a float64 layer), read-only; rebuilt from the stored
        form on each access."""
        params = self._params
        if params.packed is None:
            return self._view(params.plain)
        w, scale = self._stored()
        values = _formats.decode(w, scale, self._format, self._group, self._in)
        values.flags.writeable = False
        return self._view(values)

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        self._set(value, self._params.bias)

    @property
    def bias(self) -> np.ndarray | None:
        """(out_features,) read-only, or None."""
        return self._view(self._params.bias)

    @bias.setter
    def bias(self, value: ArrayLike | None) -> None:
        # O(N): a new bias beside the same weights, swapped in with them as one object.
        params = self._params
        b = None if value is None else parameter(value, (self._out,), self._dtype, "bias")
        self._params = _Params(params.packed, params.plain, b)

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self._out

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def weight_dtype(self) -> str:
        """How the weights are stored: "float32", "float64", "bfloat16", "float16",
        "int8" or "int4"."""
        return self._format.name

    @property
    def group_size(self) -> int | None:
        """int4: values along k per scale; None for other formats."""
        return self._group or None

    @property
    def activations(self) -> Activations:
        """What x is multiplied as: the layer's dtype name ("float32", "float64"), or
        "int8" (each row quantized, integer sums: see the class docstring)."""
        return self._activations

    @property
    def backend(self) -> Backend:
        """As given: "auto", "native" or "blas"."""
        return self._backend

    @property
    def resolved_backend(self) -> Resolved:
        """The backend a call runs now: "native" or "blas" ("auto" resolved for this
        CPU's native kernel, see fastlinear.show_config(); compressed weights always
        run natively)."""
        if self._format.compressed:
            return "native"
        return _config.resolve_backend(self._backend)

    def quantize(self, weight_dtype: DTypeLike, group_size: int | None = None, *,
                 activations: Activations | None = None) -> Linear:
        """A new layer storing this one's weight values as `weight_dtype`, with
        `activations` (None: float ones, whatever this layer's; "int8" with int8 or int4
        weights: see the class docstring); the bias is kept. This layer is left as it
        is."""
        layer = Linear.__new__(Linear)
        layer._in, layer._out = self._in, self._out
        fmt = _formats.check(weight_dtype, self._dtype, group_size)[0]
        backend = "auto" if fmt.compressed else self._backend
        layer._configure(self._dtype, weight_dtype, group_size, backend, activations)
        layer._set(self.weight, self._params.bias)
        return layer

    # -- forward ------------------------------------------------------------------
    def forward(self, x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
        """x of shape (*, in_features), any layout and real dtype (cast to the layer's);
        returns (*, out_features), or fills `out` (C-contiguous, that shape and the
        layer's dtype) and returns it."""
        params = self._params
        if params.packed is not None:
            # the common case, without Python steps
            y = params.packed.forward_fast(x, params.bias, out)
            if y is not None:
                return y
        native = self.resolved_backend == "native"
        x2, batch = as_rows(x, self._dtype, self._in, fortran_ok=not native)
        if native:
            packed, bias = self._native()
            return _runner.native(packed, bias, x2, batch, out)
        if params.plain is None:  # packed for the native backend until now
            w = self._stored()[0]
            self._store(lambda j0, j1: w[j0:j1], params.bias)
            params = self._params
        return _runner.blas(params.plain, params.bias, x2, batch, out)

    __call__ = forward

    # -- interop ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The stored form, as new arrays: 'weight' in the weight_dtype's numpy type
        (float32, float64, ml_dtypes.bfloat16, float16, int8, or for int4 uint8 holding
        two values per byte, the even k in the low nibble: (out, ceil(in/2))),
        'weight_scale' for int8 ((out,) float32) and int4 ((out, ceil(in/group_size))
        float32), and 'bias' when the layer has one."""
        w, scale = self._stored()
        d = {"weight": w}
        if scale is not None:
            d["weight_scale"] = scale
        if self._params.bias is not None:
            d["bias"] = self._params.bias.copy()
        return d

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Loads the keys of state_dict() from numpy arrays or torch tensors; unknown or
        missing keys raise KeyError. Float formats take float weights (converted as when
        assigned); int8 and int4 take exactly their stored form. A state dict of another
        format gets an error naming it and the weight_dtype that takes it."""
        self._load(self._checked_state(state_dict))

    def _checked_state(self, state_dict, prefix=""):
        """state_dict's arrays, checked (_validate.check_state): errors name each key
        as prefix + key, which a Sequential sets to this layer's path."""
        return check_state(state_dict, self._state_shapes(), prefix,
                           lambda: self._format_hint(state_dict, prefix))

    def _format_hint(self, state, prefix):
        """What to do when `state` holds weights of another format than this layer's
        (one of them scaled: float weights convert to float formats), else None."""
        try:
            w = as_array(state["weight"], "weight")
            s = (as_array(state["weight_scale"], "weight_scale") if "weight_scale" in state
                 else None)
        except (KeyError, TypeError):
            return None
        found = _formats.identify(w, s, self._in)
        if found is None:
            return None
        fmt, group = found
        if (fmt is self._format and group in (self._group, None)) or not (
                fmt.scale or self._format.scale):
            return None  # this format, of other sizes; or floats, which convert
        mine = self._format.name + " weights" + (
            f" (group_size={self._group})" if self._group else "")
        what = f"{prefix}weight {w.dtype} of shape {w.shape}"
        what += f", {prefix}weight_scale of shape {s.shape}" if s is not None else ""
        where = f"module {prefix[:-1]} (Linear)" if prefix else "this layer"
        told = f"state_dict holds {fmt.name} weights ({what}) but {where} stores {mine}"

        def build(fmt, group):
            args = [str(self._in), str(self._out)]
            args += [] if "bias" in state else ["bias=False"]
            args += ["dtype=np.float64"] if fmt.activations == np.float64 else []
            args += [f"weight_dtype={fmt.name!r}"] if fmt.compressed else []
            args += [f"group_size={group}"] if group else []
            args += [f"activations={INT8!r}"] if (self._activations == INT8
                                                    and fmt.int8_code is not None) else []
            return f"fl.Linear({', '.join(args)})"

        if fmt.scale and group is None:
            return f"{told}: build it with weight_dtype={fmt.name!r} and the group_size " \
                   f"they were saved with ({prefix}weight_scale's shape fits none of " \
                   f"{_formats.GROUP_SIZES} for in_features={self._in})"
        if fmt.scale:
            return f"{told}: build it as {build(fmt, group)} to load them"
        again = f"quantize({self._format.name!r}" + (
            f", group_size={self._group})" if self._group else ")")
        return f"{told}: load them into {build(fmt, group)}, then call .{again} on it"

    def _load(self, state):
        bias = state.get("bias")
        if not self._format.scale:
            self._set(state["weight"], bias)
            return
        w, scale = _formats.check_stored(as_array(state["weight"], "weight"),
                                         as_array(state["weight_scale"], "weight_scale"),
                                         self._format, self._group, self._out, self._in)
        self._store(lambda j0, j1: w[j0:j1], bias, lambda j0, j1: scale[j0:j1])

    def to_torch(self) -> torch.nn.Linear:
        """A torch.nn.Linear with this layer's weight values: float32 or float64 like the
        layer, bfloat16 or float16 for those weights (exactly); int8 and int4 weights
        become their float32 values."""
        return self._torch_linear(self._format.values)

    def _torch_linear(self, dtype_name: str) -> torch.nn.Linear:
        """A torch.nn.Linear of that dtype with these weight values (exactly, where it
        holds them: a Sequential asks for float32, whatever the weights' format)."""
        torch = _optional.torch("to_torch")
        dtype = getattr(torch, dtype_name)
        module = torch.nn.Linear(self._in, self._out, bias=self._has_bias, dtype=dtype)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(np.array(self.weight)))
            if self._has_bias:
                module.bias.copy_(torch.from_numpy(self._params.bias.copy()))
        return module

    @classmethod
    def from_torch(cls, module: torch.nn.Linear, *, dtype: DTypeLike | None = None,
                   weight_dtype: DTypeLike | None = None, group_size: int | None = None,
                   backend: Backend = "auto",
                   activations: Activations | None = None) -> Linear:
        """A Linear with the weights of a torch.nn.Linear. dtype: float64 for a float64
        module, else float32, unless given. weight_dtype: the module's bfloat16 or
        float16 (kept as they are, without a float32 copy), else the layer's dtype,
        unless given (then converted as _formats states). activations: as the
        constructor takes them ("int8" with weight_dtype "int8" or "int4")."""
        if not all(hasattr(module, a) for a in ("in_features", "out_features", "weight")):
            raise TypeError(f"expected a torch.nn.Linear, got {type(module).__name__}")
        kind = str(module.weight.dtype).replace("torch.", "")
        if dtype is None:
            dtype = np.float64 if kind == "float64" else np.float32
        weight_dtype = _formats.keep_given(weight_dtype, kind, dtype)
        return cls._from_parameters(module.weight, module.bias, dtype, backend,
                                    weight_dtype, group_size, activations)

    @classmethod
    def _from_parameters(cls, weight, bias, dtype, backend, weight_dtype=None,
                         group_size=None, activations=None):
        """A layer shaped by `weight` (out_features, in_features)."""
        weight = as_weight(weight)
        layer = cls.__new__(cls)
        layer._out = positive_int(weight.shape[0], "out_features")
        layer._in = positive_int(weight.shape[1], "in_features")
        layer._configure(dtype, weight_dtype, group_size, backend, activations)
        layer._set(weight, bias)
        return layer

    @classmethod
    def _from_state(cls, in_features, out_features, dtype, weight_dtype, group_size,
                    backend, state, activations=None):
        # activations last, defaulted: pickles made before it existed still load.
        layer = cls.__new__(cls)
        layer._in, layer._out = in_features, out_features
        layer._configure(dtype, weight_dtype, group_size, backend, activations)
        layer._load(state)
        return layer

    def __reduce__(self):
        # The stored form, not the packed one: it is packed on load for the CPU there.
        return (Linear._from_state, (self._in, self._out, self._dtype.name,
                                     self._format.name, self.group_size, self._backend,
                                     self.state_dict(), self._activations))

    def __repr__(self) -> str:
        backend = repr(self._backend)
        if self._backend == "auto":
            backend += f" ({self.resolved_backend})"
        fmt = "" if self._dtype == np.float32 else f", dtype={self._dtype.name!r}"
        if self._format.name != self._dtype.name:
            fmt += f", weight_dtype={self._format.name!r}"
            if self._group:
                fmt += f", group_size={self._group}"
        if self._activations != self._dtype.name:
            fmt += f", activations={self._activations!r}"
        return (f"Linear(in_features={self._in}, out_features={self._out}, "
                f"bias={self._has_bias}{fmt}, backend={backend})")


def state_shapes(fmt, group, out_features, in_features, bias):
    """{key: (shape, dtype)} of a Linear's state_dict(), in torch's order, for the
    layer's settings: dtype is the stored type where load_state_dict takes exactly the
    stored form (scaled formats), None where it converts any real array."""
    shapes = {"weight": ((out_features, fmt.cols(in_features)),
                         fmt.stored if fmt.scale else None)}
    if fmt.scale:
        shapes["weight_scale"] = (fmt.scale_shape(out_features, in_features, group),
                                  np.dtype(np.float32))
    if bias:
        shapes["bias"] = ((out_features,), None)
    return shapes
