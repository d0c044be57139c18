"""The operator behind every fastlinear.torch module: `torch.ops.fastlinear.linear(x,
handle)`, a torch custom operator (torch.library.custom_op) with a fake implementation,
so that torch.compile and torch.export trace through it as one node.

Custom operators take tensors and scalars, not Python objects: a layer is named by an
int `handle`, given when the module registers it (register()) and looked up here. The
registry holds its layers weakly: a layer lives as long as the module that holds it, and
a handle is never reused, so a stale one fails loudly (KeyError) instead of finding
another layer. A graph traced by torch.compile or torch.export holds the handle as a
constant: it runs in this process, against the layer as it is now (new weights assigned
to the module after tracing are used, as a Parameter's would be).
"""
from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

if TYPE_CHECKING:
    from ..linear import Linear as _Layer

__all__ = ["register", "layer", "compute_dtype", "run", "linear", "eager"]

_layers: weakref.WeakValueDictionary[int, _Layer] = weakref.WeakValueDictionary()
_handles = itertools.count(1)


def register(layer: _Layer) -> int:
    """A new handle naming `layer` for the operator (held weakly)."""
    handle = next(_handles)
    _layers[handle] = layer
    return handle


def layer(handle: int) -> _Layer:
    """The layer a handle names; KeyError when it was garbage-collected."""
    try:
        return _layers[handle]
    except KeyError:
        raise KeyError(f"fastlinear::linear: no layer with handle {handle} (its module "
                       f"was garbage-collected: a graph traced from a module runs only "
                       f"while that module lives)") from None


def compute_dtype(fl_layer: _Layer) -> torch.dtype:
    """The torch dtype a layer computes in: float64 for a float64 layer, else float32."""
    return torch.float64 if fl_layer.dtype == np.float64 else torch.float32


def run(fl_layer: _Layer, x: torch.Tensor, compute: torch.dtype | None = None
        ) -> torch.Tensor:
    """fl_layer on a CPU tensor x (*, in_features): float32 read in place (numpy shares
    its memory; a layout the kernel cannot read is copied there), bfloat16 and float16
    widened exactly to float32 first; the result, a new tensor sharing the kernel's
    output array, rounded back to x's dtype where that is narrower. `compute`:
    compute_dtype(fl_layer), where the caller has it."""
    if compute is None:
        compute = compute_dtype(fl_layer)
    xc = x if x.dtype == compute else x.to(compute)
    if xc.requires_grad:  # autograd off (the modules check): numpy() wants it detached
        xc = xc.detach()
    try:
        xa = xc.numpy()
    except RuntimeError:  # a lazily negated view (torch's neg bit)
        xa = xc.resolve_neg().numpy()
    y = torch.from_numpy(fl_layer(xa))
    return y if x.dtype == compute else y.to(x.dtype)


@torch.library.custom_op("fastlinear::linear", mutates_args=(), device_types="cpu")
def linear(x: torch.Tensor, handle: int) -> torch.Tensor:
    """y = x @ W.T + b by the fastlinear layer `handle` names (see register())."""
    return run(layer(handle), x)


@linear.register_fake
def _linear_fake(x: torch.Tensor, handle: int) -> torch.Tensor:
    fl_layer = layer(handle)
    torch._check(x.shape[-1] == fl_layer.in_features,
                 lambda: f"fastlinear::linear: x has {x.shape[-1]} features, the layer "
                         f"takes {fl_layer.in_features}")
    return x.new_empty((*x.shape[:-1], fl_layer.out_features))


def eager(x: torch.Tensor) -> bool:
    """Whether a forward may call run() itself instead of the operator: x is a plain
    tensor (not a fake or functional one of a tracer), and nothing traces or intercepts
    the call (torch.compile, torch.export, torch.jit.trace, a dispatch mode). The same
    function computes either way, so the bits are the same; the direct call saves the
    dispatcher's few microseconds per layer."""
    return (not torch.compiler.is_compiling() and type(x) is torch.Tensor
            and not torch.jit.is_tracing() and not is_in_torch_dispatch_mode())
