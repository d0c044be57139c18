"""Layers that older exporters write out in elementary nodes, recognised: LayerNorm
(ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, then Mul and Add by its weight and
bias) by its structure, and the activations (x * Sigmoid(x), GELU's erf and tanh forms)
by evaluating their nodes, so that the order of the operands does not matter."""
import math

import numpy as np

from ..activations import GELU, Sigmoid, SiLU, Tanh
from ._graph import DEFAULT
from ._tensors import f32

_MAX_NODES = 40                 # nodes in one written-out activation (GELU's tanh form: 11)


def _erf(x):
    from scipy.special import erf
    return erf(x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# The element-wise ops a written-out activation may use, evaluated in float64
ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
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


# -- LayerNorm ----------------------------------------------------------------------
def layernorm(graph, x, users, mean, rank):
    """(scale, bias, eps, last node) of LayerNorm written out from the data x read by
    `users`, the ReduceMean `mean` among them: (x - mean) / sqrt(mean((x - mean)^2) +
    eps), then optionally * weight and + bias (scale and bias None where absent). rank:
    the data's, None where unknown."""
    found = _normalisation(graph, x, users, mean, rank)
    if found is None:
        graph.fail(mean, "it and the nodes after it do not form a LayerNorm, (x - mean) "
                         "/ sqrt(mean((x - mean)^2) + eps) over the last axis; load_onnx "
                         "reads no other ReduceMean")
    eps, last = found
    scale = bias = None
    mul = graph.only_user(last.output[0], "Mul")
    if mul is not None:
        scale = graph.other_const(mul, last.output[0])
        last = mul if scale is not None else last
    add = graph.only_user(last.output[0], "Add")
    if add is not None:
        bias = graph.other_const(add, last.output[0])
        last = add if bias is not None else last
    return scale, bias, eps, last


def _reduces_last(graph, node, rank):
    """Whether a ReduceMean averages the last axis alone, keeping it."""
    axes = graph.attr(node, "axes", None, "ints")
    if axes is None and len(node.input) > 1 and node.input[1]:  # opset 18 on
        axes = graph.const(node.input[1])
        axes = None if axes is None else [int(v) for v in axes.reshape(-1)]
    return graph.attr(node, "keepdims", 1) == 1 and axes is not None and \
        len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _normalisation(graph, x, users, mean, rank):
    """(eps, the Div node) where the nodes from `mean` form the normalisation."""
    sub = next((u for u in users if u.op_type == "Sub"), None)
    if len(users) != 2 or sub is None or list(sub.input) != [x, mean.output[0]] or \
            list(mean.input[:1]) != [x] or not _reduces_last(graph, mean, rank):
        return None
    d = sub.output[0]
    d_users = graph.data_users(d)
    square = next((u for u in d_users if u.op_type in ("Pow", "Mul")), None)
    div = next((u for u in d_users if u.op_type == "Div"), None)
    if len(d_users) != 2 or square is None or div is None:
        return None
    if square.op_type == "Mul" and list(square.input) != [d, d]:
        return None
    if square.op_type == "Pow":
        p = graph.other_const(square, d)
        if square.input[0] != d or p is None or p.size != 1 or \
                float(np.asarray(p, np.float64).reshape(())) != 2:
            return None
    var = graph.only_user(square.output[0], "ReduceMean")
    if var is None or not _reduces_last(graph, var, rank):
        return None
    add = graph.only_user(var.output[0], "Add")
    eps = None if add is None else graph.other_const(add, var.output[0])
    if eps is None or eps.size != 1:
        return None
    sqrt = graph.only_user(add.output[0], "Sqrt")
    if sqrt is None or list(div.input) != [d, sqrt.output[0]] or d == graph.output:
        return None
    eps = float(np.asarray(eps, np.float64).reshape(()))
    return (f32(eps) if eps == np.float32(eps) else eps), div


# -- activations --------------------------------------------------------------------
def activation(graph, x, users, handled):
    """(module, last node) of an activation written out in element-wise nodes from the
    data x read by `users`: grows the set of nodes reading the data and what they
    write, until one value is all that leaves it, then evaluates that set and compares
    it with the activations fastlinear has. Where none matches, fails naming the first
    node; `handled` lists the operators load_onnx reads, for that message."""
    start = min(users, key=lambda n: graph.index[id(n)])
    taken, done, avail = [], set(), {x}
    while len(taken) < _MAX_NODES:
        ready = [n for v in avail for n in graph.data_users(v)
                 if id(n) not in done and _operand(graph, n, avail)]
        if not ready:
            break
        node = min(ready, key=lambda n: graph.index[id(n)])
        taken.append(node)
        done.add(id(node))
        avail.add(node.output[0])
        live = [v for v in avail if v == graph.output or
                any(id(u) not in done for u in graph.data_users(v))]
        if live == [node.output[0]]:
            module = _identify(graph, x, taken)
            if module is not None:
                return module, node
    _not_an_activation(graph, x, users, start, handled)


def _operand(graph, node, avail):
    """Whether node may be part of a written-out activation, given the values `avail`
    computed from the data so far: one element-wise op on those and scalar constants."""
    op = node.op_type
    if node.domain not in DEFAULT or op not in ELEMENTWISE or \
            len(node.input) != (2 if op in _BINARY else 1) or \
            len([o for o in node.output if o]) != 1:
        return False
    for name in node.input:
        if name not in avail:
            c = graph.const(name)
            if c is None or c.size != 1 or c.dtype.kind not in "fiu":
                return False
    return True


def _identify(graph, x, nodes):
    values = {x: _PROBE}
    with np.errstate(all="ignore"):
        for node in nodes:
            args = [values[i] if i in values else
                    float(np.asarray(graph.const(i), np.float64).reshape(()))
                    for i in node.input]
            values[node.output[0]] = ELEMENTWISE[node.op_type](*args)
    y = values[nodes[-1].output[0]]
    for expected, make in _ACTIVATIONS:
        if np.allclose(y, expected, rtol=1e-5, atol=1e-5):
            return make()
    return None


def _not_an_activation(graph, x, users, start, handled):
    if len(users) > 1 and not all(u.op_type in ELEMENTWISE for u in users):
        names = ", ".join(graph.desc(u) for u in users)
        graph.fail(start, f"{x!r} feeds {len(users)} nodes ({names}); load_onnx reads "
                          f"one chain of layers (a value may feed several nodes only "
                          f"inside an activation written out, like x * Sigmoid(x))")
    if start.op_type not in ELEMENTWISE or start.domain not in DEFAULT:
        ops = sorted(set(handled) | {"ReduceMean"} | set(ELEMENTWISE))
        graph.fail(start, f"this operator is not supported; load_onnx reads "
                          f"{', '.join(ops)} (the element-wise ones inside an activation "
                          f"written out)")
    graph.fail(start, "it and the element-wise nodes after it do not compute an "
                      "activation fastlinear has (GELU, its tanh form, SiLU, Sigmoid, "
                      "Tanh); an Add of a constant is read only right after a Linear, as "
                      "its bias")
