"""load_onnx: an ONNX file holding an MLP, as a fastlinear.Sequential.

The graph must be one chain of layers from its single input to its output: its only
one, or the value named by load_onnx's `output` (nodes that do not feed that value, such
as a classifier's label branch, are ignored). The file must declare its opsets. It maps,
in ONNX's default domain unless named:

* Gemm (transA=0; alpha and beta folded in), MatMul by a constant (K, N) matrix, and an
  Add of a constant right after either (its bias) -> Linear
* com.microsoft FusedGemm (ONNX Runtime's optimizer output) -> Linear and its activation
* Relu, LeakyRelu, Sigmoid, Tanh, Gelu, com.microsoft Gelu, BiasGelu and FastGelu
  -> ReLU, LeakyReLU, Sigmoid, Tanh, GELU (a BiasGelu's or FastGelu's bias goes into
  the Linear before it); com.microsoft QuickGelu with alpha=1 (ONNX Runtime's fusion of
  x * Sigmoid(x)) -> SiLU
* a binary classifier's probabilities, Concat(1 - Sigmoid(z), Sigmoid(z)) of the one
  output z of a Linear (skl2onnx, hummingbird) -> that Linear with a row of zeros
  before z, then Softmax: Softmax([0, z]) is the same pair, within float32 rounding
* activations written out in element-wise nodes, as older exporters write them:
  x * Sigmoid(x) -> SiLU; GELU's erf and tanh forms -> GELU. They are recognised by
  evaluating the nodes, so the order of the operands does not matter.
* BatchNormalization (inference) of (N, C) or (N, C, L) data -> BatchNorm1d, which
  normalizes dim 1 as torch's does
* LayerNormalization, and LayerNorm written out (ReduceMean, Sub, Pow, ReduceMean, Add,
  Sqrt, Div, then Mul and Add by its weight and bias: opsets < 17) -> LayerNorm
* Softmax and LogSoftmax over the last axis, Flatten and Reshape that merge the
  trailing dimensions (-> Flatten) or regroup rows keeping the last one (ONNX Runtime
  wraps a Gemm in those), Identity, Dropout
* Cast of the data to float32 or float64 -> Identity; Cast to float16 or bfloat16 as
  the graph's last node (see below).

Types at the edges: the model computes in its dtype and returns float32 or float64,
whatever types the graph declares. Its input may be float16 or bfloat16 (a graph that
casts its input up from those reads it exactly so); a Cast down to float16 or bfloat16
at the end is left to the caller: round the result with y.astype(np.float16) (or
ml_dtypes.bfloat16) to get the graph's output. A model with a Linear returns the
Linear's dtype; one without returns float64 for float64 input and float32 for any
other, as a Sequential does.

Constants may be initializers, Constant nodes, or Identity, Cast and Transpose of those;
a Reshape's target may also be computed from the input's shape (Shape, Gather, Concat).
Each tensor's data is checked against its declared dims before it is read; external
data is read only from files inside the model's folder. Anything else raises ValueError
(TypeError for data types) naming the file and the node.

The package, by job: _tensors (tensors from a file that may be hostile), _graph (the
graph indexed, constants folded), _shapes (the Reshape and Flatten rules), _patterns
(layers written out), _handlers (what each operator is read as), _walker (the walk
from input to output).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .. import _config, _formats
from .._validate import layer_dtype
from ..linear import check_activations
from ._graph import FileError, Graph
from ._tensors import DOUBLE, FLOATS
from ._walker import Walker

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from .._typing import Activations, Backend
    from ..sequential import Sequential

__all__ = ["load_onnx"]


def load_onnx(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *,
              output: str | None = None, dtype: DTypeLike | None = None,
              weight_dtype: DTypeLike | None = None, group_size: int | None = None,
              backend: Backend = "auto",
              activations: Activations | None = None) -> Sequential:
    """A Sequential running the MLP in the ONNX file at `path` (see
    help(fastlinear.onnx) for the operators it reads, and the types the model takes and
    returns). output: the name of the value the chain ends at, needed where the graph
    has several outputs (a classifier's labels and probabilities: output="probabilities"
    for skl2onnx's); any value the graph computes may be named, and nodes that do not
    feed it are ignored. dtype: float64 when the file's weights are float64, else
    float32, unless given. weight_dtype, group_size, backend and activations apply to
    every Linear as in Linear.from_torch: by default float16 and bfloat16 weights are
    kept as they are in a float32 model, other weights take the model's dtype;
    activations="int8" (with weight_dtype "int8" or "int4") quantizes each layer's input
    rows.
    Raises ValueError or TypeError naming the file and the node it cannot read, and
    ImportError when the onnx package is not installed."""
    try:
        import onnx
        from google.protobuf.message import Error as ProtobufError
    except ImportError:
        raise ImportError("load_onnx needs the onnx package: "
                          "pip install fastlinear[onnx]") from None
    try:
        name = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a file path, got {type(path).__name__}") from None
    if isinstance(name, bytes):
        if b"\0" in name:  # a model's bytes rather than a path
            raise TypeError("path must be a file path, got bytes holding a NUL (the bytes "
                            "of a model? load_onnx reads a file: write them to one)")
        name = os.fsdecode(name)
    if output is not None and not isinstance(output, str):
        raise TypeError(f"output must be the name of a value (a str), got "
                        f"{type(output).__name__}")
    _config.check_backend(backend)
    if dtype is not None:
        dtype = layer_dtype(dtype)
    try:
        model = onnx.load(name, load_external_data=False)  # weights are read as needed
    except (ProtobufError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: not a readable ONNX model, or a truncated one "
                         f"({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph"):
        raise ValueError(f"{name}: holds no ONNX graph (an empty file, or not an ONNX "
                         f"model)")
    if dtype is None:
        dtype = _default_dtype(model.graph)
    # argument errors before any layer (a layer's width is checked when it is built)
    fmt = _formats.check(weight_dtype, dtype, group_size)[0]
    check_activations(activations, np.dtype(dtype), fmt, backend)
    options = dict(dtype=dtype, weight_dtype=weight_dtype, group_size=group_size,
                   backend=backend, activations=activations)
    try:
        graph = Graph(onnx, model, os.path.dirname(os.path.abspath(name)), output)
        return Walker(graph, options).run()
    except FileError as err:
        raise err.kind(f"{name}: {err}") from None


def _default_dtype(graph):
    """float64 where the float weights are, else float32 (the input's type decides for a
    graph without initializers)."""
    kinds = {t.data_type for t in graph.initializer if t.data_type in FLOATS}
    if not kinds:
        kinds = {i.type.tensor_type.elem_type for i in graph.input}
    return np.dtype(np.float64 if kinds == {DOUBLE} else np.float32)
