"""fastlinear.Sequential: a chain of modules run in one native call per forward (the
Linear layers with their activations fused, LayerNorm, softmax ... between them), built
directly or converted from a torch.nn.Sequential."""
from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, overload

import numpy as np

from . import _core, _optional, _runner, _steps
from . import activations as _activations, modules as _modules
from ._validate import as_array, check_keys, split_state
from .linear import Linear
from .modules import BatchNorm1d, Flatten, _RowSoftmax

_params_getter = operator.attrgetter("_params")  # a module's parameters (one object)

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike, DTypeLike

    from ._typing import Activations, Backend, Module

__all__ = ["Sequential"]

# The module classes a Sequential holds: Linear and every class activations.py and
# modules.py export, so that a new one is held, and converted (the importers build their
# tables from this and each class's torch_names and onnx_ops), once written there.
_MODULES = (Linear, *(getattr(_activations, name) for name in _activations.__all__),
            *(getattr(_modules, name) for name in _modules.__all__))


def _describe(m):
    kind = type(m).__qualname__
    if type(m).__module__ not in ("builtins",) and not type(m).__module__.startswith(
            "fastlinear"):
        kind = f"{type(m).__module__}.{kind}"
    return kind


def _check_module(i, m):
    """TypeError unless m is one of fastlinear's modules, so that a wrong one fails when
    the Sequential is built rather than at its first call."""
    if isinstance(m, (*_MODULES, Sequential)):
        return
    torch = sys.modules.get("torch")
    hint = ("; fl.Sequential.from_torch(torch.nn.Sequential(...)) converts torch modules"
            if torch is not None and isinstance(m, torch.nn.Module) else "")
    raise TypeError(f"a Sequential holds fastlinear modules "
                    f"({', '.join(c.__name__ for c in _MODULES)}, Sequential); module {i} "
                    f"is {_describe(m)}{hint}")


class _Segment:
    """Modules between two Flattens, run as one native model (built per input width
    and cached)."""

    def __init__(self, entries, dtype=None):
        self.entries = entries  # [(path, module)]
        dtypes = {m.dtype for _, m in entries if isinstance(m, Linear)}
        # A piece of a split segment (see split) computes in the whole segment's dtype.
        self.dtype = dtype if dtype is not None else (dtypes.pop() if dtypes else None)
        self.softmax_dims = [(p, m) for p, m in entries if isinstance(m, _RowSoftmax)]
        self.batchnorms = [(p, m) for p, m in entries if isinstance(m, BatchNorm1d)]
        self.models = {}
        self.pieces = None  # the split for (N, C, L) input, built on first use
        # The model for plain inputs, which run() tries first: the width the first
        # Linear takes, its dtype. Where a module's rule depends on the input's
        # dimensions (BatchNorm1d, a softmax over dim 1) it takes 2-D input only.
        self.plain = None
        self.plain_2d = bool(self.batchnorms) or any(
            m.dim not in (None, -1) for _, m in self.softmax_dims)
        if (entries and isinstance(entries[0][1], Linear)
                and all(m.dim in (None, -1, 1) for _, m in self.softmax_dims)):
            try:
                self.plain = self.model(entries[0][1].in_features, self.dtype)
            except ValueError:
                # The widths do not chain on 2-D input, as where a BatchNorm1d is meant
                # for the channels of (N, C, L) data: run() says so for 2-D input.
                pass

    def model(self, width, dtype):
        key = (width, dtype)
        if key not in self.models:
            self.models[key] = _core.Model(self.steps(width, dtype), dtype, width)
        return self.models[key]

    def steps(self, width, dtype):
        """The native steps: each Linear takes the BatchNorm1d and then the activation
        right after it into its epilogue; other modules are steps of their own."""
        steps = []
        for path, m in self.entries:
            if isinstance(m, Linear):
                if width != m.in_features:
                    raise ValueError(f"module {path} ({m!r}) takes {m.in_features} values "
                                     f"per row and gets {width}")
                packed, bias = m._native()
                steps.append(_steps.Step(_core.FL_STEP_LINEAR, linear=packed, bias=bias))
                width = m.out_features
                continue
            try:
                new = m._steps(width, dtype)
            except ValueError as exc:
                raise ValueError(f"module {path} ({m!r}): {exc}") from None
            for step in new:
                fused = _steps.fuse(steps[-1] if steps else None, step)
                if fused is None:
                    steps.append(step)
                else:
                    steps[-1] = fused
        return steps

    def run(self, x, out=None):
        """The segment over x: a new array, or `out` filled (see Sequential.__call__)."""
        if out is None and self.plain is not None and (not self.plain_2d or (
                type(x) is np.ndarray and x.ndim == 2)):
            y = self.plain.forward_fast(x)  # the common case, without Python steps
            if y is not None:
                return y
        arr = as_array(x, "input")
        if not self.entries:
            return arr if out is None else _runner.fill(out, arr)
        if arr.ndim == 0:
            raise ValueError("input must have at least 1 dimension (*, features), got a "
                             "0-d array")
        for path, m in self.softmax_dims:
            try:
                m.check(arr.ndim)
            except ValueError as exc:
                raise ValueError(f"module {path}: {exc}") from None
        if self.batchnorms and arr.ndim != 2:
            if arr.ndim != 3:
                path, m = self.batchnorms[0]
                raise ValueError(f"module {path} ({m!r}) takes (N, C) or (N, C, L) input, "
                                 f"got a {arr.ndim}-D input of shape {arr.shape}")
            y = self.run_split(arr)
            return y if out is None else _runner.fill(out, y)
        dtype = self.dtype or _runner.data_dtype(arr)
        return _runner.model(self.model(arr.shape[-1], dtype), arr, out)

    def split(self):
        """The pieces for (N, C, L) input: the segment cut at each BatchNorm1d, which
        normalizes the channels (dim 1) there, not the rows' last dimension that a
        Linear's epilogue sees; the parts between run natively as ever."""
        pieces, part = [], []
        for path, m in self.entries:
            if isinstance(m, BatchNorm1d):
                pieces += [_Segment(part, self.dtype), (path, m)]
                part = []
            else:
                part.append((path, m))
        return pieces + [_Segment(part, self.dtype)]

    def run_split(self, arr):
        if self.pieces is None:
            self.pieces = self.split()
        dtype = self.dtype or _runner.data_dtype(arr)
        for piece in self.pieces:
            if isinstance(piece, _Segment):
                arr = piece.run(arr)
                continue
            path, m = piece
            if arr.shape[1] != m.num_features:
                raise ValueError(f"module {path} ({m!r}) takes (N, {m.num_features}, L) "
                                 f"input, got shape {arr.shape}")
            # In the segment's dtype, as in a Linear's epilogue on 2-D input.
            y = _runner.module(m, np.moveaxis(arr, 1, 2), dtype)
            arr = np.moveaxis(y, 2, 1)
        return arr


class Sequential:
    """Calls its modules in order: y = modules[-1](... modules[0](x)), as one native
    call: each Linear's BatchNorm1d and activation right after it applied as its tiles
    are written, the rows between layers in per-call buffers, one team of threads for
    all. A row's result does not depend on the batch or the thread count. Where a Linear
    runs on BLAS (backend "blas", or "auto" on a CPU without a tuned kernel) the modules
    run one by one.

    Modules: Linear, ReLU, LeakyReLU, GELU, SiLU, Sigmoid, Tanh, Identity, Dropout,
    Flatten, LayerNorm, Softmax, LogSoftmax, BatchNorm1d and nested Sequentials, fixed
    when built. Input: (*, features), any real dtype (cast to the Linear layers' dtype,
    float32 or float64); LayerNorm, Softmax and LogSoftmax act on the last dimension
    (dim=None: 1-D and 2-D input only, as torch's legacy rule), BatchNorm1d over dim 1
    of (N, C) input (in the epilogue) or of (N, C, L) input (the chain cut there: the
    modules before and after it run natively, it on its own), as torch's."""

    def __init__(self, *modules: Module) -> None:
        for i, m in enumerate(modules):
            _check_module(i, m)
        self.modules: tuple[Module, ...] = tuple(modules)  # fixed: the compiled program follows them
        linears = [(p, m) for p, m in self._flat() if isinstance(m, Linear)]
        if len({m.dtype for _, m in linears}) > 1:
            raise TypeError("the Linear layers of a Sequential must share one dtype, got "
                            + ", ".join(f"{p}: {m.dtype}" for p, m in linears))
        self._params_of = [m for _, m in self._flat() if hasattr(m, "_params")]
        self._cache = None

    def __reduce__(self):
        # The modules only: the compiled program is rebuilt on the first call.
        return (Sequential, self.modules)

    def _flat(self, prefix=""):
        for i, m in enumerate(self.modules):
            if isinstance(m, Sequential):
                yield from m._flat(f"{prefix}{i}.")
            else:
                yield f"{prefix}{i}", m

    def _program(self):
        """The segments to run, rebuilt when a module's parameters were replaced (the
        modules themselves are fixed); None where the modules must run one by one."""
        # parameter objects compare by identity: one C-level pass (0.3 us a call for
        # four layers; a Python loop took 0.7)
        state = tuple(map(_params_getter, self._params_of))
        cache = self._cache
        if cache is not None and cache[0] == state:
            return cache[1]
        flat = list(self._flat())
        program = []
        if all(m.resolved_backend == "native" for _, m in flat if isinstance(m, Linear)):
            entries = []
            for path, m in flat:
                if isinstance(m, Flatten):
                    program += [_Segment(entries), m]
                    entries = []
                else:
                    entries.append((path, m))
            program.append(_Segment(entries))
        else:
            program = None
        self._cache = (state, program)
        return program

    def __call__(self, x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
        """The modules over x: a new array, or `out` filled and returned (C-contiguous,
        the result's shape and dtype, checked as Linear checks its `out`). The native
        call writes into `out`; where the modules run one by one (BLAS layers) or the
        model is cut (BatchNorm1d on (N, C, L) input), the result is copied there."""
        program = self._program()
        if program is None:  # module by module, the norms in the Linear layers' dtype
            dtype = next((m.dtype for _, m in self._flat() if isinstance(m, Linear)), None)
            for path, m in self._flat():
                try:
                    x = m._apply(x, dtype) if dtype and hasattr(m, "_apply") else m(x)
                except ValueError as exc:
                    raise ValueError(f"module {path} ({m!r}): {exc}") from None
            y = as_array(x, "input")
            return y if out is None else _runner.fill(out, y)
        for part in program[:-1]:
            x = part(x) if isinstance(part, Flatten) else part.run(x)
        return program[-1].run(x, out)  # a program ends in a segment, maybe empty

    forward = __call__

    if TYPE_CHECKING:  # written in fastlinear._from_torch (importers sit above the container)
        @classmethod
        def from_torch(cls, module: torch.nn.Sequential, *, dtype: DTypeLike | None = None,
                       weight_dtype: DTypeLike | None = None, group_size: int | None = None,
                       backend: Backend = "auto",
                       activations: Activations | None = None) -> Sequential: ...

    def __len__(self) -> int:
        return len(self.modules)

    @overload
    def __getitem__(self, i: int) -> Module: ...
    @overload
    def __getitem__(self, i: slice) -> Sequential: ...

    def __getitem__(self, i: int | slice) -> Module | Sequential:
        if isinstance(i, slice):
            return Sequential(*self.modules[i])
        return self.modules[i]

    def quantize(self, weight_dtype: DTypeLike, group_size: int | None = None, *,
                 activations: Activations | None = None) -> Sequential:
        """A new Sequential whose Linear layers store their weight values as
        `weight_dtype`, with `activations` (see Linear.quantize: "int8" with int8 or int4
        weights quantizes each layer's input rows); the other modules are copies (their
        parameters are replaced, never written, so they share the arrays), nested
        Sequentials stay nested. This model is left as it is."""
        return self._quantized(weight_dtype, group_size, activations, "")

    def _quantized(self, weight_dtype: DTypeLike, group_size: int | None,
                   activations: Activations | None, prefix: str) -> Sequential:
        modules: list[Module] = []
        for i, m in enumerate(self.modules):
            path = f"{prefix}{i}"
            if isinstance(m, Sequential):
                modules.append(m._quantized(weight_dtype, group_size, activations,
                                            f"{path}."))
            elif isinstance(m, Linear):
                try:
                    modules.append(m.quantize(weight_dtype, group_size,
                                              activations=activations))
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"module {path} ({m!r}): {exc}") from None
            else:
                modules.append(copy.copy(m))
        return Sequential(*modules)

    def to_torch(self) -> torch.nn.Sequential:
        """A torch.nn.Sequential of plain torch modules (each module's to_torch()),
        nested as this one, in eval mode, with the same state_dict keys. Where the model
        has Linear layers, every parameter is in their dtype: float32 weights equal to
        each layer.weight (bfloat16, float16, int8 and int4 weights as their float32
        values), as the model computes."""
        torch = _optional.torch("to_torch")
        dtype = next((m.dtype for _, m in self._flat() if isinstance(m, Linear)), None)
        return self._torch(torch, dtype).eval()

    def _torch(self, torch, dtype):
        # Linear layers made in the model's dtype at once: a bfloat16 torch.nn.Linear
        # would round the bias too.
        module = torch.nn.Sequential(*(
            m._torch(torch, dtype) if isinstance(m, Sequential)
            else m._torch_linear(dtype.name) if isinstance(m, Linear)
            else m.to_torch() for m in self.modules))
        return module if dtype is None else module.to(getattr(torch, dtype.name))

    def _stateful(self):
        return [(p, m) for p, m in self._flat() if hasattr(m, "_state_keys")]

    def state_dict(self) -> dict[str, np.ndarray]:
        """torch's keys: '<index>.<name>' for each module's parameters ('0.weight',
        '0.bias', '3.running_mean', ...), '<index>.<sub>.<name>' inside nested ones."""
        return {f"{p}.{key}": value for p, m in self._stateful()
                for key, value in m.state_dict().items()}

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Loads each module's keys ('<path>.<name>'). Other keys, or missing ones,
        raise KeyError; an array of the wrong shape or type, ValueError or TypeError;
        each naming the key (and, for a Linear given weights of another format, the
        weight_dtype that takes them). Every key is checked before any module changes."""
        stateful = self._stateful()
        parts, others = split_state(state_dict, [f"{p}." for p, _ in stateful])
        if others:  # keys of no module: name them, and any missing ones
            check_keys(state_dict, [f"{p}.{key}" for p, m in stateful
                                    for key in m._state_keys()])
        for p, m in stateful:
            m._checked_state(parts[f"{p}."], f"{p}.")
        for p, m in stateful:
            try:
                m.load_state_dict(parts[f"{p}."])
            except (ValueError, TypeError) as exc:  # a value: NaN in bfloat16 weights ...
                raise type(exc)(f"module {p} ({type(m).__name__}): {exc}") from None

    def __repr__(self) -> str:
        lines = []
        for i, m in enumerate(self.modules):
            inner = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({i}): {inner}\n")
        return f"Sequential(\n{''.join(lines)})"
