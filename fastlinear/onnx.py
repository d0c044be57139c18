"""load_onnx: an ONNX file holding an MLP, as a fastlinear.Sequential.

The graph must be one chain of layers from its single input to its single output. It
maps, in ONNX's default domain unless named:

* Gemm (transA=0; alpha and beta folded in), MatMul by a constant (K, N) matrix, and an
  Add of a constant right after either (its bias) -> Linear
* com.microsoft FusedGemm (ONNX Runtime's optimizer output) -> Linear and its activation
* Relu, LeakyRelu, Sigmoid, Tanh, Gelu, com.microsoft Gelu, BiasGelu and FastGelu
  -> ReLU, LeakyReLU, Sigmoid, Tanh, GELU (a BiasGelu's or FastGelu's bias goes into
  the Linear before it)
* activations written out in element-wise nodes, as older exporters write them:
  x * Sigmoid(x) -> SiLU; GELU's erf and tanh forms -> GELU. They are recognised by
  evaluating the nodes, so the order of the operands does not matter.
* BatchNormalization (inference, of (N, C) data) -> BatchNorm1d
* LayerNormalization, and LayerNorm written out (ReduceMean, Sub, Pow, ReduceMean, Add,
  Sqrt, Div, then Mul and Add by its weight and bias: opsets < 17) -> LayerNorm
* Softmax and LogSoftmax over the last axis, Flatten and Reshape that merge the
  trailing dimensions (-> Flatten) or regroup rows keeping the last one (ONNX Runtime
  wraps a Gemm in those), Identity, Dropout, Cast between float32 and float64.

Constants may be initializers, Constant nodes, or Identity, Cast and Transpose of those;
a Reshape's target may also be computed from the input's shape (Shape, Gather, Concat).
Each tensor's data is checked against its declared dims before it is read; external
data is read only from files inside the model's folder. Anything else raises ValueError
(TypeError for data types) naming the file and the node.
"""
import math
import os

import numpy as np

from . import _config, _formats
from ._validate import layer_dtype
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Tanh
from .linear import Linear
from .modules import (BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LogSoftmax,
                      Softmax)

__all__ = ["load_onnx"]

# TensorProto data types read: the numpy type (ONNX stores little-endian) and the typed
# field that holds the values when raw_data does not
_TYPES = {1: ("<f4", "float_data"), 11: ("<f8", "double_data"),
          10: ("<f2", "int32_data"), 16: ("bfloat16", "int32_data"),
          7: ("<i8", "int64_data"), 6: ("<i4", "int32_data"), 9: ("?", "int32_data")}
_FLOATS = (1, 11, 10, 16)       # float32, float64, float16, bfloat16
_EXTERNAL = 1                   # TensorProto.EXTERNAL
_DEFAULT = ("", "ai.onnx")      # the names of ONNX's default domain
_MAX_PATTERN = 40               # nodes in one written-out activation (GELU's tanh form: 11)
# The most inputs each operator read takes (ONNX Runtime refuses more too)
_MOST_INPUTS = {"Gemm": 3, "com.microsoft.FusedGemm": 3, "MatMul": 2, "Add": 2, "Dropout": 3, "LayerNormalization": 3,
                "BatchNormalization": 5,
                "Reshape": 2, "com.microsoft.BiasGelu": 2, "com.microsoft.FastGelu": 2}
# AttributeProto types of the attributes read, by the kind asked for
_ATTRIBUTE_TYPES = {float: (1, "a float"), int: (2, "an int"), str: (3, "a string"),
                    "tensor": (4, "a tensor"), "floats": (6, "floats"), "ints": (7, "ints")}


def load_onnx(path, *, dtype=None, weight_dtype=None, group_size=None, backend="auto"):
    """A Sequential running the MLP in the ONNX file at `path` (see
    help(fastlinear.onnx) for the operators it reads). dtype: float64 when the file's weights are
    float64, else float32, unless given. weight_dtype, group_size and backend apply to
    every Linear as in Linear.from_torch: by default float16 and bfloat16 weights are
    kept as they are in a float32 model, other weights take the model's dtype.
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
    _formats.check(weight_dtype, dtype, group_size)  # argument errors before any layer
    options = dict(dtype=dtype, weight_dtype=weight_dtype, group_size=group_size,
                   backend=backend)
    try:
        return _Converter(onnx, model, os.path.dirname(os.path.abspath(name)),
                          options).run()
    except _Error as err:
        raise err.kind(f"{name}: {err}") from None


def _default_dtype(graph):
    """float64 where the float weights are, else float32 (the input's type decides for a
    graph without initializers)."""
    kinds = {t.data_type for t in graph.initializer if t.data_type in _FLOATS}
    if not kinds:
        kinds = {i.type.tensor_type.elem_type for i in graph.input}
    return np.dtype(np.float64 if kinds == {11} else np.float32)


class _Error(Exception):
    """A problem found in the file; load_onnx raises it as `kind` with the file's name."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class _Dim:
    """A dimension the graph does not give a size or name to: equal only to itself, so
    that one copied through Shape and Reshape is still recognised."""

    def __repr__(self):
        return "?"


def _prod(dims):
    """The product of the dims where all are numbers, else None."""
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _f32(value):
    """A float32 attribute as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06): the number the model was written with, which a float64
    model should use."""
    return float(str(np.float32(value)))


def _numpy_type(code):
    if code == 16:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_TYPES[code][0])


def _decode(tensor, what, folder):
    """The array a TensorProto holds. The byte or value count its dims call for is
    checked against what it holds before anything is read or allocated, so that a
    hostile file cannot claim a huge tensor."""
    code, dims = tensor.data_type, [int(d) for d in tensor.dims]
    if code not in _TYPES:
        raise TypeError(f"{what} has data type {code}, which load_onnx does not read")
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension: dims {dims}")
    dt = _numpy_type(code)
    count = math.prod(dims)
    if tensor.data_location == _EXTERNAL:
        raw = _external(tensor, count * dt.itemsize, what, folder)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        values = getattr(tensor, _TYPES[code][1])
        if len(values) != count:
            raise ValueError(f"{what}: dims {dims} call for {count} values, it holds "
                             f"{len(values)}")
        if _TYPES[code][1] != "int32_data":
            return np.array(values, dt).reshape(dims)
        values = np.array(values, np.int64)
        if code in (10, 16):  # 16-bit floats travel as their bits
            return values.astype(np.uint16).view(dt).reshape(dims)
        return (values != 0 if code == 9 else values.astype(dt)).reshape(dims)
    if len(raw) != count * dt.itemsize:
        raise ValueError(f"{what}: dims {dims} of {dt.name} call for "
                         f"{count * dt.itemsize} bytes, it holds {len(raw)}")
    return np.frombuffer(raw, dt).reshape(dims)


def _external(tensor, nbytes, what, folder):
    """The bytes of a tensor stored outside the model, from a file that must lie inside
    the model's folder (a location such as ../../etc/passwd, or a link leading out of
    the folder, is refused)."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, location))
    # a regular file only: opening a FIFO or a device could block or never end
    if not location or os.path.isabs(location) or not os.path.isfile(target) or \
            os.path.commonpath([base, target]) != base:
        raise ValueError(f"{what}: its external data {location!r} is not a file inside "
                         f"the model's folder {base}")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise ValueError(f"{what}: its external data's offset or length is not an "
                         f"integer") from None
    if length != nbytes:
        raise ValueError(f"{what}: its dims call for {nbytes} bytes, its external data "
                         f"has {length}")
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset < 0 or offset + nbytes > size:
                raise ValueError(f"{what}: needs bytes {offset} to {offset + nbytes} of "
                                 f"{location!r}, which holds {size}")
            f.seek(offset)
            return f.read(nbytes)
    except OSError as exc:
        raise ValueError(f"{what}: cannot read its external data {location!r}: "
                         f"{exc.strerror}") from None


def _erf(x):
    from scipy.special import erf
    return erf(x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# The element-wise ops a written-out activation may use, evaluated in float64
_ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                "Div": np.divide, "Pow": np.power, "Sqrt": np.sqrt, "Erf": _erf,
                "Tanh": np.tanh, "Sigmoid": _sigmoid, "Neg": np.negative, "Exp": np.exp,
                "Reciprocal": np.reciprocal}
_BINARY = ("Add", "Sub", "Mul", "Div", "Pow")

# What such nodes may compute, and the module for it. The probe points cover the range
# where the functions differ; a tolerance of 1e-5 admits the float32 rounding of their
# constants (1/sqrt(2), 0.044715, ...) yet tells erf GELU from tanh GELU (5e-4 apart).
_PROBE = np.linspace(-6.0, 6.0, 97)
_ACTIVATIONS = [
    (0.5 * _PROBE * (1 + _erf(_PROBE / math.sqrt(2))), lambda: GELU()),
    (0.5 * _PROBE * (1 + np.tanh(math.sqrt(2 / math.pi)
                                 * (_PROBE + 0.044715 * _PROBE ** 3))),
     lambda: GELU("tanh")),
    (_PROBE * _sigmoid(_PROBE), SiLU),
    (_sigmoid(_PROBE), Sigmoid),
    (np.tanh(_PROBE), Tanh),
]


class _Converter:
    """Walks the graph from its input, node by node, building the modules."""

    def __init__(self, onnx, model, folder, options):
        self.onnx, self.folder, self.options = onnx, folder, options
        self.dtype = options["dtype"]
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT),
                          None)
        self.nodes = list(graph.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer, self.users = {}, {}
        for node in self.nodes:
            for v in node.output:
                if v in self.producer:
                    self.fail(node, f"writes {v!r}, which another node writes too")
                if v:
                    self.producer[v] = node
            for v in dict.fromkeys(v for v in node.input if v):
                self.users.setdefault(v, []).append(node)
        self.inits = {t.name: t for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise _Error(ValueError, f"the graph has {len(inputs)} inputs "
                         f"{[i.name for i in inputs]} and {len(graph.output)} outputs "
                         f"{[o.name for o in graph.output]}; load_onnx reads one chain "
                         f"of layers from one input to one output")
        self.output = graph.output[0].name
        self.value, self.shape = self.read_input(inputs[0])
        self.fl_shape = self.shape            # the shape the modules give
        self.width = self.last_dim()          # values per row, where known
        self.regrouped_by = None              # the node whose regrouping of rows is open
        self.shapes, self.consts = {}, {}
        self.modules, self.pending = [], None
        self.at = None                        # the node being read, for errors
        self.handlers = {
            "Gemm": self.gemm, "MatMul": self.matmul, "Add": self.add,
            "Relu": lambda n: self.simple(n, ReLU()),
            "LeakyRelu": lambda n: self.simple(
                n, LeakyReLU(_f32(self.attr(n, "alpha", 0.01)))),
            "Sigmoid": lambda n: self.simple(n, Sigmoid()),
            "Tanh": lambda n: self.simple(n, Tanh()),
            "Gelu": lambda n: self.simple(n, GELU(self.attr(n, "approximate", "none"))),
            "com.microsoft.Gelu": lambda n: self.simple(n, GELU()),
            "com.microsoft.BiasGelu": lambda n: self.biased(n, GELU()),
            "com.microsoft.FastGelu": lambda n: self.biased(n, GELU("tanh")),
            "com.microsoft.FusedGemm": self.fused_gemm,
            "Softmax": lambda n: self.softmax(n, Softmax),
            "LogSoftmax": lambda n: self.softmax(n, LogSoftmax),
            "LayerNormalization": self.layer_normalization,
            "BatchNormalization": self.batch_normalization,
            "Flatten": self.flatten, "Reshape": self.reshape,
            "Identity": lambda n: self.simple(n, Identity()),
            "Dropout": self.dropout, "Cast": self.cast,
        }

    # -- helpers ------------------------------------------------------------------
    def desc(self, node):
        op = node.op_type if node.domain in _DEFAULT else f"{node.domain}.{node.op_type}"
        if node.name:
            return f"node {node.name!r} ({op})"
        return f"node #{self.index[id(node)]} ({op})"

    def fail(self, node, message, kind=ValueError):
        raise _Error(kind, f"{self.desc(node)}: {message}")

    def read_input(self, value):
        if not value.type.HasField("tensor_type"):
            raise _Error(TypeError, f"the graph's input {value.name!r} is not a tensor")
        tt = value.type.tensor_type
        if tt.elem_type not in _FLOATS:
            kind = self.onnx.TensorProto.DataType.Name(tt.elem_type) \
                if tt.elem_type in self.onnx.TensorProto.DataType.values() else tt.elem_type
            raise _Error(TypeError, f"the graph's input {value.name!r} holds {kind}; "
                                    f"load_onnx reads models of float tensors")
        if not tt.HasField("shape"):
            return value.name, None
        return value.name, [d.dim_value if d.HasField("dim_value") else
                            (d.dim_param or _Dim()) for d in tt.shape.dim]

    def last_dim(self):
        last = self.shape[-1] if self.shape else None
        return last if isinstance(last, int) else None

    def attr(self, node, name, default, kind=None):
        """The attribute `name` of node, checked to be of `kind` (the default's type
        unless given), or `default` where the node has none."""
        code, what = _ATTRIBUTE_TYPES[kind or type(default)]
        for a in node.attribute:
            if a.name == name:
                if a.type != code:
                    self.fail(node, f"its attribute {name!r} is not {what}", TypeError)
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode(errors="replace") if code == 3 else value
        return default

    def data_users(self, value):
        # A Shape node reads only the shape: it is no branch of the data
        return [n for n in self.users.get(value, ()) if n.op_type != "Shape"]

    def only_user(self, value, op):
        """The one node reading `value`, where it is a default-domain `op`."""
        users = self.data_users(value)
        if len(users) == 1 and users[0].op_type == op and users[0].domain in _DEFAULT \
                and value != self.output:
            return users[0]
        return None

    def const(self, name, depth=0):
        """The constant array `name` holds, or None where the graph computes it."""
        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            arr = _decode(self.inits[name], f"initializer {name!r}", self.folder)
        else:
            node = self.producer.get(name)
            if node is None or node.domain not in _DEFAULT or depth > 32:
                return None
            arr = self.fold(node, depth)
            if arr is None:
                return None
        self.consts[name] = arr
        return arr

    def fold(self, node, depth):
        """The value of a Constant node, or of Identity, Cast and Transpose of constants
        (exporters write weights that way)."""
        op = node.op_type
        if op == "Constant":
            for key, kind, dt in (("value_float", float, np.float32),
                                  ("value_floats", "floats", np.float32),
                                  ("value_int", int, np.int64),
                                  ("value_ints", "ints", np.int64)):
                value = self.attr(node, key, None, kind)
                if value is not None:
                    return np.array(value, dt)
            value = self.attr(node, "value", None, "tensor")
            if value is not None:
                return _decode(value, f"the value of {self.desc(node)}", self.folder)
            return None
        if op not in ("Identity", "Cast", "Transpose") or not node.input:
            return None
        x = self.const(node.input[0], depth + 1)
        if x is None:
            return None
        if op == "Cast":
            to = self.attr(node, "to", None, int)
            return x.astype(_numpy_type(to)) if to in _TYPES else None
        if op == "Transpose":
            perm = self.attr(node, "perm", list(range(x.ndim))[::-1], "ints")
            if sorted(perm) != list(range(x.ndim)):
                self.fail(node, f"perm {perm} does not fit a {x.ndim}-D constant")
            return np.transpose(x, perm)
        return x

    def const_input(self, node, i, what, optional=False):
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            if optional:
                return None
            self.fail(node, f"has no {what} input")
        if name == self.value:
            self.fail(node, f"reads the data as its {what}; load_onnx needs a constant "
                            f"there")
        arr = self.const(name)
        if arr is None:
            self.fail(node, f"its {what} {name!r} is computed by the graph; load_onnx "
                            f"needs a constant (an initializer or a Constant node)")
        return arr

    def scalar(self, node, arr, what):
        if arr.size != 1:
            self.fail(node, f"its {what} must be a single number, got shape {arr.shape}")
        return float(np.asarray(arr, np.float64).reshape(()))

    def dims_of(self, name, depth=0):
        """The integer vector `name` holds, its entries ints or symbolic dims: a
        constant, or computed from the shape of the data (Shape, Gather, Concat...), as
        an exporter writes x.view(x.size(0), -1). None where it is neither."""
        arr = self.const(name)
        if arr is not None:
            return [int(v) for v in arr.reshape(-1)] if arr.dtype.kind in "iu" else None
        node = self.producer.get(name)
        if node is None or node.domain not in _DEFAULT or not node.input or depth > 32:
            return None
        op, inputs = node.op_type, list(node.input)
        if op == "Shape":
            shape = self.shapes.get(inputs[0])
            start, end = self.attr(node, "start", 0), self.attr(node, "end", None, int)
            return None if shape is None else list(shape[start:end])
        if op in ("Squeeze", "Unsqueeze", "Identity", "Cast", "Reshape", "Flatten"):
            return self.dims_of(inputs[0], depth + 1)  # a vector's entries stay
        if op == "Concat":
            parts = [self.dims_of(i, depth + 1) for i in inputs]
            return None if any(p is None for p in parts) else sum(parts, [])
        if op == "Gather" and len(inputs) == 2:
            data, idx = self.dims_of(inputs[0], depth + 1), self.const(inputs[1])
            if data is None or idx is None or idx.dtype.kind not in "iu" or \
                    not all(-len(data) <= i < len(data) for i in idx.reshape(-1)):
                return None
            return [data[int(i)] for i in idx.reshape(-1)]
        return None

    def data_input(self, node):
        if not node.input or node.input[0] != self.value:
            self.fail(node, f"must read the data ({self.value!r}) as its first input")

    def unused_outputs(self, node):
        for extra in node.output[1:]:
            if extra and (extra == self.output or self.users.get(extra)):
                self.fail(node, f"its output {extra!r} is used; load_onnx reads only "
                                f"its first")

    def advance(self, node, width=None):
        """The data is now node's first output; a Linear changes the last dim."""
        self.value = node.output[0]
        if width is not None:
            self.width = width
            for key in ("shape", "fl_shape"):
                shape = getattr(self, key)
                if shape:
                    setattr(self, key, shape[:-1] + [width])

    def emit(self, module):
        self.flush()
        self.modules.append(module)

    def flush(self):
        """Builds the Linear read last: it was kept open for a bias after it."""
        if self.pending is None:
            return
        node, weight, bias = self.pending
        self.pending, at, self.at = None, self.at, node  # errors name the Linear's node
        o = self.options
        weight_dtype = o["weight_dtype"]
        if weight_dtype is None and weight.dtype.name in ("float16", "bfloat16") and \
                self.dtype == np.float32:
            weight_dtype = weight.dtype.name  # kept as they are, as from_torch does
        self.modules.append(Linear._from_parameters(weight, bias, self.dtype, o["backend"],
                                                    weight_dtype, o["group_size"]))
        self.at = at

    # -- the walk -----------------------------------------------------------------
    def run(self):
        from .sequential import Sequential
        seen = set()
        while self.value != self.output:
            if self.value in seen:
                raise _Error(ValueError, f"the graph has a cycle through {self.value!r}")
            seen.add(self.value)
            self.shapes[self.value] = self.shape  # for Shape nodes reading it
            users = self.data_users(self.value)
            if not users:
                writer = self.producer.get(self.value)
                by = f" (written by {self.desc(writer)})" if writer is not None else ""
                raise _Error(ValueError, f"{self.value!r}{by} is read by no node: the "
                             f"graph's output {self.output!r} is not reached from its "
                             f"input")
            try:
                self.step(users)
            except (ValueError, TypeError) as exc:  # from a tensor or a module's checks
                raise _Error(type(exc), f"{self.desc(self.at)}: {exc}") from None
        if self.data_users(self.value):
            self.fail(self.data_users(self.value)[0],
                      f"reads the graph's output {self.output!r}; load_onnx reads one "
                      f"chain of layers ending at the output")
        try:
            self.flush()
        except (ValueError, TypeError) as exc:
            raise _Error(type(exc), f"{self.desc(self.at)}: {exc}") from None
        if self.regrouped_by is not None:
            self.fail(self.regrouped_by, f"regroups the rows to {self.shape}, and nothing "
                      f"after it restores their shape {self.fl_shape}")
        return Sequential(*self.modules)

    def step(self, users):
        node = users[0]
        self.at = node
        if len(users) == 1:
            key = node.op_type if node.domain in _DEFAULT else \
                f"{node.domain}.{node.op_type}"
            handler = self.handlers.get(key)
            if handler is not None:
                most = _MOST_INPUTS.get(key, 1)
                if len(node.input) > most:
                    self.fail(node, f"has {len(node.input)} inputs; {key} takes at most "
                                    f"{most}")
                if handler(node) is not False:
                    return
        if any(u.op_type == "ReduceMean" for u in users):
            self.layernorm_pattern(users)
        else:
            self.elementwise(users)

    # -- layers -------------------------------------------------------------------
    def linear(self, node, weight, bias):
        """A Linear of weight (out, in); built at the next step, so that an Add of a
        constant right after it can still go into its bias."""
        if weight.ndim != 2:
            self.fail(node, f"its weight must be 2-D, got shape {weight.shape}")
        if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
            self.fail(node, f"its weight holds {weight.dtype}, not floats", TypeError)
        n, k = weight.shape
        if self.width is not None and k != self.width:
            self.fail(node, f"its weight takes {k} inputs, the data before it has "
                            f"{self.width} per row")
        self.flush()
        self.pending = (node, weight, bias)
        self.advance(node, n)

    def bias(self, node, c, n):
        """Constant c as a bias of n values: broadcast along the rows only."""
        if c.dtype.kind != "f" and c.dtype.name != "bfloat16":
            self.fail(node, f"its bias holds {c.dtype}, not floats", TypeError)
        rank = len(self.shape) if self.shape is not None else 2
        if c.ndim > rank or any(d != 1 for d in c.shape[:-1]) or \
                (c.ndim and c.shape[-1] not in (1, n)):
            self.fail(node, f"its bias of shape {c.shape} does not match the {n} "
                            f"outputs per row")
        return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n,))

    def gemm(self, node):
        self.data_input(node)
        trans_a, trans_b = self.attr(node, "transA", 0), self.attr(node, "transB", 0)
        if trans_a or trans_b not in (0, 1):
            self.fail(node, f"transA={trans_a}, transB={trans_b}: load_onnx reads "
                            f"transA=0 and transB 0 or 1")
        if self.shape is not None and len(self.shape) != 2:
            self.fail(node, f"Gemm takes 2-D data, it gets shape {self.shape}")
        b = self.const_input(node, 1, "B")
        if b.ndim != 2:
            self.fail(node, f"its B must be 2-D, got shape {b.shape}")
        weight = b if trans_b else b.T
        alpha = _f32(self.attr(node, "alpha", 1.0))
        beta = _f32(self.attr(node, "beta", 1.0))
        if alpha != 1:
            weight = weight.astype(np.float64) * alpha
        c = self.const_input(node, 2, "C", optional=True)
        bias = None if c is None else self.bias(node, c, weight.shape[0]) * beta
        self.linear(node, weight, bias)

    def fused_gemm(self, node):
        """com.microsoft.FusedGemm (ONNX Runtime's optimizer: a Gemm and the activation
        after it, as one node) -> Linear and the activation."""
        kind = self.attr(node, "activation", "", str)
        acts = {"Relu": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh,
                "LeakyRelu": lambda: LeakyReLU(_f32(self.attr(node, "activation_alpha",
                                                              0.01)))}
        if kind not in acts:
            self.fail(node, f"its activation {kind!r} is not one load_onnx reads "
                            f"({', '.join(sorted(acts))})")
        self.gemm(node)
        self.emit(acts[kind]())

    def matmul(self, node):
        if len(node.input) == 2 and node.input[1] == self.value:
            self.fail(node, "multiplies a constant by the data; load_onnx reads "
                            "MatMul(data, weight)")
        self.data_input(node)
        w = self.const_input(node, 1, "weight")
        if w.ndim != 2:
            self.fail(node, f"its weight must be 2-D (in, out), got shape {w.shape}")
        self.linear(node, w.T, None)

    def add(self, node):
        """An Add of a constant right after a Linear is its bias; any other Add may
        belong to a written-out activation (returns False to try those)."""
        if self.pending is None or self.pending[0].output[0] != self.value or \
                len(node.input) != 2 or node.input[0] == node.input[1]:
            return False
        other = node.input[1] if node.input[0] == self.value else node.input[0]
        c = self.const(other)
        if c is None:
            return False
        self.add_bias(node, c)
        self.advance(node)
        return None

    def add_bias(self, node, c):
        """Adds constant c to the bias of the Linear read last."""
        first, weight, bias = self.pending
        extra = self.bias(node, c, weight.shape[0])
        self.pending = (first, weight, extra if bias is None else bias + extra)

    def biased(self, node, act):
        """com.microsoft BiasGelu / FastGelu: act(x + bias), bias into the Linear."""
        self.data_input(node)
        if len(node.input) > 1 and node.input[1]:
            if self.pending is None or self.pending[0].output[0] != self.value:
                self.fail(node, "its bias input goes into a Linear, and none comes right "
                                "before it")
            self.add_bias(node, self.const_input(node, 1, "bias"))
        self.simple(node, act)

    def simple(self, node, module):
        self.data_input(node)
        self.unused_outputs(node)
        self.emit(module)
        self.advance(node)

    def last_axis(self, node, axis):
        rank = len(self.shape) if self.shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            self.fail(node, f"axis={axis} on {rank if rank else 'N'}-D data; fastlinear "
                            f"computes it over the last axis only")

    def softmax(self, node, cls):
        # Before opset 13 the default axis was 1 (and the trailing axes were merged
        # from it): the last axis alone either way
        default = 1 if self.opset is not None and self.opset < 13 else -1
        self.last_axis(node, self.attr(node, "axis", default))
        self.simple(node, cls(-1))

    def dropout(self, node):
        ratio = self.attr(node, "ratio", 0.5)  # an attribute before opset 12
        r = self.const_input(node, 1, "ratio", optional=True)
        if r is not None:
            ratio = self.scalar(node, r, "ratio")
        mode = self.const_input(node, 2, "training_mode", optional=True)
        if mode is not None and self.scalar(node, mode, "training_mode"):
            self.fail(node, "runs in training mode; load_onnx reads inference models")
        self.simple(node, Dropout(_f32(ratio)))

    def cast(self, node):
        to = self.attr(node, "to", None, int)
        if to not in (1, 11):
            self.fail(node, f"casts to type {to}; load_onnx reads casts between float32 "
                            f"and float64 only (the model computes in {self.dtype.name})",
                      TypeError)
        self.data_input(node)
        self.advance(node)

    def batch_normalization(self, node):
        """Inference BatchNormalization of (N, C) data -> BatchNorm1d (which a Linear
        right before it takes into its epilogue)."""
        self.data_input(node)
        if self.attr(node, "training_mode", 0, int):
            self.fail(node, "runs in training mode; load_onnx reads inference models")
        self.unused_outputs(node)
        rank = len(self.shape) if self.shape is not None else None
        if rank is not None and rank != 2:
            self.fail(node, f"normalizes dim 1 of {rank}-D data; load_onnx reads it on "
                            f"(N, features) data only")
        names = ("scale", "B", "input_mean", "input_var")
        params = [self.const_input(node, i, what) for i, what in enumerate(names, 1)]
        n = self.width if self.width is not None else params[0].size
        for p, what in zip(params, names):
            if p.size != n:
                self.fail(node, f"its {what} of shape {p.shape} does not match the {n} "
                                f"features")
        values = [np.asarray(p, np.float64).reshape(n) for p in params]
        if not (values[3] >= 0).all():
            self.fail(node, "its input_var has negative or NaN values")
        layer = BatchNorm1d(n, _f32(self.attr(node, "epsilon", 1e-5)), dtype=self.dtype)
        layer._load(*values, 0)
        self.emit(layer)
        self.width = n
        self.advance(node)

    def layer_normalization(self, node):
        self.data_input(node)
        self.last_axis(node, self.attr(node, "axis", -1))
        self.unused_outputs(node)
        self.layernorm(node, self.const_input(node, 1, "scale"),
                       self.const_input(node, 2, "B", optional=True),
                       _f32(self.attr(node, "epsilon", 1e-5)), node)

    def layernorm(self, node, scale, bias, eps, last):
        n = self.width
        for what, p in (("scale", scale), ("bias", bias)):
            if p is None:
                continue
            n = p.size if n is None else n
            if p.size != n or any(d != 1 for d in p.shape[:-1]):
                self.fail(node, f"its {what} of shape {p.shape} does not match the {n} "
                                f"values per row")
        if n is None:
            self.fail(node, "the number of values per row is not known: the graph "
                            "declares no input shape and no weight shows it")
        affine = scale is not None or bias is not None
        layer = LayerNorm(n, eps, affine, bias is not None, dtype=self.dtype)
        if scale is not None:
            layer.weight = np.asarray(scale, np.float64).reshape(n)
        if bias is not None:
            layer.bias = np.asarray(bias, np.float64).reshape(n)
        self.emit(layer)
        self.width = n
        self.advance(last)

    def reduces_last(self, node):
        """Whether a ReduceMean averages the last axis alone, keeping it."""
        axes = self.attr(node, "axes", None, "ints")
        if axes is None and len(node.input) > 1 and node.input[1]:  # opset 18 on
            axes = self.const(node.input[1])
            axes = None if axes is None else [int(v) for v in axes.reshape(-1)]
        rank = len(self.shape) if self.shape is not None else None
        return self.attr(node, "keepdims", 1) == 1 and axes is not None and \
            len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))

    def layernorm_pattern(self, users):
        """LayerNorm written out: (x - mean) / sqrt(mean((x - mean)^2) + eps), then
        optionally * weight and + bias."""
        x = self.value
        mean = next(u for u in users if u.op_type == "ReduceMean")
        self.at = mean
        found = self.match_layernorm(x, users, mean)
        if found is None:
            self.fail(mean, "it and the nodes after it do not form a LayerNorm, (x - "
                            "mean) / sqrt(mean((x - mean)^2) + eps) over the last axis; "
                            "load_onnx reads no other ReduceMean")
        eps, last = found
        scale = bias = None
        mul = self.only_user(last.output[0], "Mul")
        if mul is not None:
            scale = self.other_const(mul, last.output[0])
            last = mul if scale is not None else last
        add = self.only_user(last.output[0], "Add")
        if add is not None:
            bias = self.other_const(add, last.output[0])
            last = add if bias is not None else last
        self.layernorm(mean, scale, bias, eps, last)

    def other_const(self, node, value):
        """The constant that a binary node combines with `value`, if it is one."""
        ins = list(node.input)
        if len(ins) != 2 or ins.count(value) != 1:
            return None
        return self.const(ins[1 - ins.index(value)])

    def match_layernorm(self, x, users, mean):
        """(eps, the Div node) where the nodes from `mean` form the normalisation."""
        sub = next((u for u in users if u.op_type == "Sub"), None)
        if len(users) != 2 or sub is None or list(sub.input) != [x, mean.output[0]] or \
                list(mean.input[:1]) != [x] or not self.reduces_last(mean):
            return None
        d = sub.output[0]
        d_users = self.data_users(d)
        square = next((u for u in d_users if u.op_type in ("Pow", "Mul")), None)
        div = next((u for u in d_users if u.op_type == "Div"), None)
        if len(d_users) != 2 or square is None or div is None:
            return None
        if square.op_type == "Mul" and list(square.input) != [d, d]:
            return None
        if square.op_type == "Pow":
            p = self.other_const(square, d)
            if square.input[0] != d or p is None or p.size != 1 or \
                    float(np.asarray(p, np.float64).reshape(())) != 2:
                return None
        var = self.only_user(square.output[0], "ReduceMean")
        if var is None or not self.reduces_last(var):
            return None
        add = self.only_user(var.output[0], "Add")
        eps = None if add is None else self.other_const(add, var.output[0])
        if eps is None or eps.size != 1:
            return None
        sqrt = self.only_user(add.output[0], "Sqrt")
        if sqrt is None or list(div.input) != [d, sqrt.output[0]] or d == self.output:
            return None
        eps = float(np.asarray(eps, np.float64).reshape(()))
        return (_f32(eps) if eps == np.float32(eps) else eps), div

    def elementwise(self, users):
        """An activation written out in element-wise nodes (x * Sigmoid(x), GELU's erf
        and tanh forms): grows the set of nodes reading the data and what they write,
        until one value is all that leaves it, then evaluates that set and compares it
        with the activations fastlinear has."""
        start = min(users, key=lambda n: self.index[id(n)])
        self.at = start
        taken, done, avail = [], set(), {self.value}
        while len(taken) < _MAX_PATTERN:
            ready = [n for v in avail for n in self.data_users(v)
                     if id(n) not in done and self.pattern_node(n, avail)]
            if not ready:
                break
            node = min(ready, key=lambda n: self.index[id(n)])
            taken.append(node)
            done.add(id(node))
            avail.add(node.output[0])
            live = [v for v in avail if v == self.output or
                    any(id(u) not in done for u in self.data_users(v))]
            if live == [node.output[0]]:
                module = self.identify(taken)
                if module is not None:
                    self.emit(module)
                    self.advance(node)
                    return
        self.not_a_pattern(users, start)

    def pattern_node(self, node, avail):
        op = node.op_type
        if node.domain not in _DEFAULT or op not in _ELEMENTWISE or \
                len(node.input) != (2 if op in _BINARY else 1) or \
                len([o for o in node.output if o]) != 1:
            return False
        for name in node.input:
            if name not in avail:
                c = self.const(name)
                if c is None or c.size != 1 or c.dtype.kind not in "fiu":
                    return False
        return True

    def identify(self, nodes):
        values = {self.value: _PROBE}
        with np.errstate(all="ignore"):
            for node in nodes:
                args = [values[i] if i in values else
                        float(np.asarray(self.const(i), np.float64).reshape(()))
                        for i in node.input]
                values[node.output[0]] = _ELEMENTWISE[node.op_type](*args)
        y = values[nodes[-1].output[0]]
        for expected, make in _ACTIVATIONS:
            if np.allclose(y, expected, rtol=1e-5, atol=1e-5):
                return make()
        return None

    def not_a_pattern(self, users, start):
        if len(users) > 1 and not all(u.op_type in _ELEMENTWISE for u in users):
            names = ", ".join(self.desc(u) for u in users)
            self.fail(start, f"{self.value!r} feeds {len(users)} nodes ({names}); "
                             f"load_onnx reads one chain of layers (a value may feed "
                             f"several nodes only inside an activation written out, "
                             f"like x * Sigmoid(x))")
        if start.op_type not in _ELEMENTWISE or start.domain not in _DEFAULT:
            ops = sorted(set(self.handlers) | {"ReduceMean"} | set(_ELEMENTWISE))
            self.fail(start, f"this operator is not supported; load_onnx reads "
                             f"{', '.join(ops)} (the element-wise ones inside an "
                             f"activation written out)")
        self.fail(start, "it and the element-wise nodes after it do not compute an "
                         "activation fastlinear has (GELU, its tanh form, SiLU, Sigmoid, "
                         "Tanh); an Add of a constant is read only right after a Linear, "
                         "as its bias")

    # -- shapes -------------------------------------------------------------------
    def flatten(self, node):
        self.data_input(node)
        axis = self.attr(node, "axis", 1)
        rank = len(self.shape) if self.shape is not None else None
        if rank is not None:
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis <= rank:
                self.fail(node, f"axis={axis} on {rank}-D data")
            if axis != 1 or _prod(self.shape[1:]) is not None:
                head = self.shape[:1] if axis == 1 else [_prod(self.shape[:axis])]
                new = head + [_prod(self.shape[axis:])]
                return self.reshape_to(node, [_Dim() if d is None else d for d in new])
        if axis != 1:
            self.fail(node, f"axis={axis} needs the input's shape, which the graph does "
                            f"not declare")
        # axis 1 where the trailing dims are not known: fastlinear's Flatten(1, -1) still
        if self.regrouped_by is not None:
            self.fail(node, f"merges dims of rows that {self.desc(self.regrouped_by)} "
                            f"regrouped; load_onnx cannot follow that")
        self.emit(Flatten(1, -1))
        self.shape = self.fl_shape = None if self.shape is None else [self.shape[0], _Dim()]
        self.width = None
        self.advance(node)
        return None

    def reshape(self, node):
        self.data_input(node)
        target = self.dims_of(node.input[1]) if len(node.input) > 1 else None
        if target is None:
            self.fail(node, "its target shape is neither a constant nor computed from "
                            "the data's shape")
        if self.shape is None:
            self.fail(node, "needs the input's shape, which the graph does not declare")
        allowzero = self.attr(node, "allowzero", 0)
        new = []
        for i, t in enumerate(target):
            if t == 0 and not allowzero:  # 0: this dim as it was
                if i >= len(self.shape):
                    self.fail(node, f"target {target}: no dim {i} to copy")
                t = self.shape[i]
            new.append(t)
        holes = [i for i, t in enumerate(new) if isinstance(t, int) and t == -1]
        if len(holes) > 1 or any(isinstance(t, int) and t < -1 for t in new):
            self.fail(node, f"target {target} is not a shape")
        if holes:
            new[holes[0]] = self.inferred(node, [t for i, t in enumerate(new)
                                                 if i != holes[0]])
        self.reshape_to(node, new)

    def inferred(self, node, known):
        """The dim a Reshape's -1 stands for, given the target's other dims."""
        old = list(self.shape)
        known = list(known)
        for d in list(known):  # a named dim on both sides cancels
            if not isinstance(d, int) and d in old:
                old.remove(d)
                known.remove(d)
        p_old = _prod([d for d in old if isinstance(d, int)])
        p_new = _prod([d for d in known if isinstance(d, int)])
        names_old = [d for d in old if not isinstance(d, int)]
        if any(not isinstance(d, int) for d in known):
            return _Dim()
        if not names_old:
            if p_new == 0 or p_old % p_new:
                self.fail(node, f"cannot reshape {self.shape} to {known} and -1")
            return p_old // p_new
        return names_old[0] if len(names_old) == 1 and p_old == p_new else _Dim()

    def reshape_to(self, node, new):
        """Data of self.shape reshaped to `new`: a regrouping of rows (the last dim
        kept), which row-wise modules need not see, or a merge of the trailing dims,
        which is a Flatten."""
        old = self.shape
        if new and new[-1] == old[-1]:
            self.shape = new
            same = len(new) == len(self.fl_shape) and all(
                a == b for a, b in zip(new, self.fl_shape))
            self.regrouped_by = None if same else node
            self.advance(node)
            return
        s = len(new) - 1
        if 1 <= s < len(old) and all(a == b for a, b in zip(new[:s], old[:s])) and \
                isinstance(new[-1], int) and new[-1] == _prod(old[s:]):
            if self.regrouped_by is not None:
                self.fail(node, f"merges dims of rows that {self.desc(self.regrouped_by)} "
                                f"regrouped; load_onnx cannot follow that")
            self.emit(Flatten(s, -1))
            self.shape = self.fl_shape = new
            self.width = new[-1]
            self.advance(node)
            return
        self.fail(node, f"reshapes {old} to {new}; load_onnx reads only a merge of the "
                        f"trailing dims (a Flatten) or a regrouping of the rows that keeps "
                        f"the last dim")
