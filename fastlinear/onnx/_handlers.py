"""What each ONNX operator is read as: HANDLERS maps an operator (its op_type, prefixed
with its domain outside ONNX's default one) to the function that reads such a node into
modules, given the walk (_walker.Walker). An operator that some module class declares in
its `onnx_ops` and that has no attributes to read is that class's module, built with no
arguments; the others have their own functions below."""
from typing import Callable, NamedTuple

import numpy as np

from ..activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Tanh
from ..modules import (BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LogSoftmax,
                       Softmax)
from ..sequential import _MODULES
from . import _shapes
from ._graph import DEFAULT
from ._tensors import BFLOAT16, DOUBLE, FLOAT, FLOAT16, f32


class Handler(NamedTuple):
    read: Callable          # (walker, node) -> None, or False where the node is not one
                            # this reads (then it may belong to a layer written out)
    most_inputs: int = 1    # ONNX Runtime refuses more too


# -- Linear -------------------------------------------------------------------------
def gemm(w, node):
    w.data_input(node)
    trans_a, trans_b = w.attr(node, "transA", 0), w.attr(node, "transB", 0)
    if trans_a or trans_b not in (0, 1):
        w.fail(node, f"transA={trans_a}, transB={trans_b}: load_onnx reads transA=0 and "
                     f"transB 0 or 1")
    if w.shape is not None and len(w.shape) != 2:
        w.fail(node, f"Gemm takes 2-D data, it gets shape {w.shape}")
    b = w.const_input(node, 1, "B")
    if b.ndim != 2:
        w.fail(node, f"its B must be 2-D, got shape {b.shape}")
    weight = b if trans_b else b.T
    alpha = f32(w.attr(node, "alpha", 1.0))
    beta = f32(w.attr(node, "beta", 1.0))
    if alpha != 1:
        weight = weight.astype(np.float64) * alpha
    c = w.const_input(node, 2, "C", optional=True)
    bias = None if c is None else w.bias(node, c, weight.shape[0]) * beta
    w.linear(node, weight, bias)


def fused_gemm(w, node):
    """com.microsoft.FusedGemm (ONNX Runtime's optimizer: a Gemm and the activation
    after it, as one node) -> Linear and the activation."""
    kind = w.attr(node, "activation", "", str)
    acts = {"Relu": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh,
            "LeakyRelu": lambda: LeakyReLU(f32(w.attr(node, "activation_alpha", 0.01)))}
    if kind not in acts:
        w.fail(node, f"its activation {kind!r} is not one load_onnx reads "
                     f"({', '.join(sorted(acts))})")
    gemm(w, node)
    w.emit(acts[kind]())


def matmul(w, node):
    if len(node.input) == 2 and node.input[1] == w.value:
        w.fail(node, "multiplies a constant by the data; load_onnx reads MatMul(data, "
                     "weight)")
    w.data_input(node)
    weight = w.const_input(node, 1, "weight")
    if weight.ndim != 2:
        w.fail(node, f"its weight must be 2-D (in, out), got shape {weight.shape}")
    w.linear(node, weight.T, None)


def add(w, node):
    """An Add of a constant right after a Linear is its bias; any other Add may belong
    to a written-out activation (returns False to try those)."""
    if not w.open_linear() or len(node.input) != 2 or node.input[0] == node.input[1]:
        return False
    other = node.input[1] if node.input[0] == w.value else node.input[0]
    c = w.graph.const(other)
    if c is None:
        return False
    w.add_bias(node, c)
    w.advance(node)
    w.linear_out = w.value
    return None


# -- activations --------------------------------------------------------------------
def simple(w, node, module):
    """A node that is one module, reading the data alone."""
    w.data_input(node)
    w.unused_outputs(node)
    w.emit(module)
    w.advance(node)


def leaky_relu(w, node):
    simple(w, node, LeakyReLU(f32(w.attr(node, "alpha", 0.01))))


def gelu(w, node):
    simple(w, node, GELU(w.attr(node, "approximate", "none")))


def quick_gelu(w, node):
    """com.microsoft.QuickGelu, x * Sigmoid(alpha * x): ONNX Runtime's optimizer writes
    x * Sigmoid(x) so, with alpha=1, which is SiLU."""
    alpha = f32(w.attr(node, "alpha", 1.702))  # ONNX Runtime's default
    if alpha != 1:
        w.fail(node, f"alpha={alpha}: x * Sigmoid(alpha * x) is SiLU only for alpha=1, "
                     f"and fastlinear has no activation for other alphas")
    simple(w, node, SiLU())


def sigmoid(w, node):
    """Sigmoid, or a binary classifier's two probabilities as skl2onnx and hummingbird
    write them, Concat(1 - Sigmoid(z), Sigmoid(z)) of one value z per row: that is
    Softmax([0, z]) (1 - Sigmoid(z) = Sigmoid(-z)), read as a row of zeros added to the
    Linear that computes z, then Softmax. The zero row's output is exactly 0 and z's
    bits do not change, so only Softmax's rounding differs from the file's nodes."""
    pair = _probability_pair(w.graph, node)
    if pair is None:
        simple(w, node, Sigmoid())
        return
    concat, zero_first = pair
    w.data_input(node)
    axis = w.attr(concat, "axis", 0)
    rank = w.rank if w.rank is not None else 2
    if w.width != 1 or axis not in (-1, rank - 1) or not w.data_is_linear():
        out = node.output[0]
        w.fail(node, f"it and the nodes after it compute Concat(1 - Sigmoid(z), "
                     f"Sigmoid(z)) (the two probabilities of a binary classifier), which "
                     f"load_onnx reads where z is one value per row written by a Linear, "
                     f"joined along the last axis; read the chain to the Sigmoid "
                     f"instead, output={out!r}")
    w.zero_row(zero_first)
    w.emit(Softmax(-1))
    w.advance(concat, 2)


def _probability_pair(graph, node):
    """(the Concat, whether 1 - Sigmoid(z) comes first) where node's output s feeds
    exactly Sub(1, s) and a Concat of s and that, else None."""
    s = node.output[0]
    users = graph.data_users(s)
    if len(users) != 2 or any(u.domain not in DEFAULT for u in users):
        return None
    sub = next((u for u in users if u.op_type == "Sub"), None)
    concat = next((u for u in users if u.op_type == "Concat"), None)
    if sub is None or concat is None or len(sub.input) != 2 or sub.input[1] != s:
        return None
    one = graph.const(sub.input[0])
    if one is None or one.size != 1 or float(np.asarray(one, np.float64).flat[0]) != 1:
        return None
    neg = sub.output[0]
    if graph.data_users(neg) != [concat] or neg == graph.output or \
            list(concat.input) not in ([neg, s], [s, neg]):
        return None
    return concat, concat.input[0] == neg


def biased(w, node, act):
    """com.microsoft BiasGelu / FastGelu: act(x + bias), bias into the Linear."""
    w.data_input(node)
    if len(node.input) > 1 and node.input[1]:
        if not w.open_linear():
            w.fail(node, "its bias input goes into a Linear, and none comes right before "
                         "it")
        w.add_bias(node, w.const_input(node, 1, "bias"))
    simple(w, node, act)


# -- row-wise modules ---------------------------------------------------------------
def _last_axis(w, node, axis):
    rank = w.rank
    if axis != -1 and (rank is None or axis != rank - 1):
        w.fail(node, f"axis={axis} on {rank if rank else 'N'}-D data; fastlinear computes "
                     f"it over the last axis only")


def softmax(w, node, cls):
    # Before opset 13 the default axis was 1 (and the trailing axes were merged from
    # it): the last axis alone either way
    default = 1 if w.graph.opset < 13 else -1
    _last_axis(w, node, w.attr(node, "axis", default))
    simple(w, node, cls(-1))


def _scalar(w, node, arr, what):
    if arr.size != 1:
        w.fail(node, f"its {what} must be a single number, got shape {arr.shape}")
    return float(np.asarray(arr, np.float64).reshape(()))


def dropout(w, node):
    ratio = w.attr(node, "ratio", 0.5)  # an attribute before opset 12
    r = w.const_input(node, 1, "ratio", optional=True)
    if r is not None:
        ratio = _scalar(w, node, r, "ratio")
    mode = w.const_input(node, 2, "training_mode", optional=True)
    if mode is not None and _scalar(w, node, mode, "training_mode"):
        w.fail(node, "runs in training mode; load_onnx reads inference models")
    simple(w, node, Dropout(f32(ratio)))


def cast(w, node):
    """A Cast of the data to float32 or float64 -> Identity: the model computes in its
    own dtype, and a Sequential turns float16 or bfloat16 input into float32. A Cast to
    float16 or bfloat16 is read as the graph's last node only, and left to the caller:
    the model returns its dtype, the values unrounded."""
    to = w.attr(node, "to", None, int)
    last = node.output[0] == w.graph.output
    if to not in (FLOAT, DOUBLE) and not (last and to in (FLOAT16, BFLOAT16)):
        w.fail(node, f"casts to type {to}; load_onnx reads casts to float32 and float64, "
                     f"and to float16 or bfloat16 as the graph's last node (the model "
                     f"computes in {w.dtype.name})", TypeError)
    w.data_input(node)
    if to in (FLOAT, DOUBLE):
        w.emit(Identity())
    w.advance(node)


def batch_normalization(w, node):
    """Inference BatchNormalization of (N, C) or (N, C, L) data -> BatchNorm1d, which
    normalizes dim 1 as torch's does (on (N, C) data a Linear right before it takes it
    into its epilogue)."""
    w.data_input(node)
    if w.attr(node, "training_mode", 0, int):
        w.fail(node, "runs in training mode; load_onnx reads inference models")
    w.unused_outputs(node)
    rank = w.rank
    if rank is not None and rank not in (2, 3):
        w.fail(node, f"normalizes dim 1 of {rank}-D data; load_onnx reads it on (N, C) "
                     f"and (N, C, L) data, as torch's BatchNorm1d")
    if rank == 3 and w.regrouped_by is not None:
        w.fail(node, f"normalizes dim 1 of rows that {w.graph.desc(w.regrouped_by)} "
                     f"regrouped; load_onnx cannot follow that")
    names = ("scale", "B", "input_mean", "input_var")
    params = [w.const_input(node, i, what) for i, what in enumerate(names, 1)]
    if rank == 3:  # the channels are dim 1; the rows keep their width
        n = w.shape[1] if isinstance(w.shape[1], int) else params[0].size
    else:
        n = w.width if w.width is not None else params[0].size
    for p, what in zip(params, names):
        if p.size != n:
            w.fail(node, f"its {what} of shape {p.shape} does not match the {n} "
                         f"{'channels' if rank == 3 else 'features'}")
    values = [np.asarray(p, np.float64).reshape(n) for p in params]
    if not (values[3] >= 0).all():
        w.fail(node, "its input_var has negative or NaN values")
    layer = BatchNorm1d(n, f32(w.attr(node, "epsilon", 1e-5)), dtype=w.dtype)
    layer._load(*values, 0)
    w.emit(layer)
    if rank != 3:
        w.width = n
    w.advance(node)


def layer_normalization(w, node):
    w.data_input(node)
    _last_axis(w, node, w.attr(node, "axis", -1))
    w.unused_outputs(node)
    layernorm(w, node, w.const_input(node, 1, "scale"),
              w.const_input(node, 2, "B", optional=True),
              f32(w.attr(node, "epsilon", 1e-5)), node)


def layernorm(w, node, scale, bias, eps, last):
    """A LayerNorm over the last axis from node to node `last` (one node, or the
    nodes of one written out), scale and bias None where it has none."""
    n = w.width
    for what, p in (("scale", scale), ("bias", bias)):
        if p is None:
            continue
        n = p.size if n is None else n
        if p.size != n or any(d != 1 for d in p.shape[:-1]):
            w.fail(node, f"its {what} of shape {p.shape} does not match the {n} values "
                         f"per row")
    if n is None:
        w.fail(node, "the number of values per row is not known: the graph declares no "
                     "input shape and no weight shows it")
    affine = scale is not None or bias is not None
    layer = LayerNorm(n, eps, affine, bias is not None, dtype=w.dtype)
    if scale is not None:
        layer.weight = np.asarray(scale, np.float64).reshape(n)
    if bias is not None:
        layer.bias = np.asarray(bias, np.float64).reshape(n)
    w.emit(layer)
    w.width = n
    w.advance(last)


# -- shapes -------------------------------------------------------------------------
def flatten(w, node):
    w.data_input(node)
    new = _shapes.flattened(w.shape, w.attr(node, "axis", 1))
    if new is not None:
        _reshape_to(w, node, new)
        return
    # axis 1 where the trailing dims are not known: fastlinear's Flatten(1, -1) still
    _not_regrouped(w, node)
    w.emit(Flatten(1, -1))
    w.shape = w.fl_shape = None if w.shape is None else [w.shape[0], _shapes.Dim()]
    w.width = None
    w.advance(node)


def reshape(w, node):
    w.data_input(node)
    target = _shapes.dims_of(w.graph, w.shapes, node.input[1]) \
        if len(node.input) > 1 else None
    if target is None:
        w.fail(node, "its target shape is neither a constant nor computed from the "
                     "data's shape")
    if w.shape is None:
        w.fail(node, "needs the input's shape, which the graph does not declare")
    new = _shapes.reshaped(w.shape, target, w.attr(node, "allowzero", 0))
    _reshape_to(w, node, new)


def _reshape_to(w, node, new):
    """The data reshaped to `new`: a regrouping of rows (the last dim kept), which
    row-wise modules need not see, or a merge of the trailing dims, a Flatten."""
    old = w.shape
    if _shapes.keeps_rows(old, new):
        w.shape = new
        w.regrouped_by = None if _shapes.same(new, w.fl_shape) else node
        w.advance(node)
        return
    s = _shapes.merge_start(old, new)
    if s is None:
        w.fail(node, f"reshapes {old} to {new}; load_onnx reads only a merge of the "
                     f"trailing dims (a Flatten) or a regrouping of the rows that keeps "
                     f"the last dim")
    _not_regrouped(w, node)
    w.emit(Flatten(s, -1))
    w.shape = w.fl_shape = new
    w.width = new[-1]
    w.advance(node)


def _not_regrouped(w, node):
    if w.regrouped_by is not None:
        w.fail(node, f"merges dims of rows that {w.graph.desc(w.regrouped_by)} "
                     f"regrouped; load_onnx cannot follow that")


# -- the table ----------------------------------------------------------------------
def _plain(cls):
    """The handler of an operator that is one `cls` module without arguments."""
    return Handler(lambda w, node: simple(w, node, cls()))


# Operators with attributes or constant inputs to read, or read as several modules
_OWN = {
    "Gemm": Handler(gemm, 3), "MatMul": Handler(matmul, 2), "Add": Handler(add, 2),
    "com.microsoft.FusedGemm": Handler(fused_gemm, 3),
    "LeakyRelu": Handler(leaky_relu), "Gelu": Handler(gelu),
    "com.microsoft.BiasGelu": Handler(lambda w, node: biased(w, node, GELU()), 2),
    "com.microsoft.FastGelu": Handler(lambda w, node: biased(w, node, GELU("tanh")), 2),
    "com.microsoft.QuickGelu": Handler(quick_gelu), "Sigmoid": Handler(sigmoid),
    "Softmax": Handler(lambda w, node: softmax(w, node, Softmax)),
    "LogSoftmax": Handler(lambda w, node: softmax(w, node, LogSoftmax)),
    "Dropout": Handler(dropout, 3), "Cast": Handler(cast),
    "LayerNormalization": Handler(layer_normalization, 3),
    "BatchNormalization": Handler(batch_normalization, 5),
    "Flatten": Handler(flatten), "Reshape": Handler(reshape, 2),
}
# Operators refused with a way out: what to say about such a node
REFUSED = {
    "ai.onnx.ml.ZipMap": lambda node: (
        f"turns the probabilities {node.input[0]!r} into a list of dicts; read the chain "
        f"to them instead, output={node.input[0]!r} (or convert with skl2onnx's "
        f"options={{'zipmap': False}})"),
    "ArgMax": lambda node: (
        f"picks a label; load_onnx reads chains of layers, such as the one to the "
        f"values it picks from, output={node.input[0]!r}"),
}
# operator -> its handler: each module class's onnx_ops, then the operators above
HANDLERS = {op: _plain(cls) for cls in _MODULES for op in cls.onnx_ops}
HANDLERS.update(_OWN)
