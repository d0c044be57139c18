"""The walk along the chain, from the graph's input to its output, one value at a time:
the data's shape as the graph sees it and as the modules built so far give it, the
modules, and the Linear read last, kept open so that an Add of a constant right after it
can still go into its bias. Each node is read by its operator's handler (_handlers);
nodes that no handler reads may be a layer written out (_patterns)."""
import numpy as np

from .. import _formats
from ..linear import Linear
from ..sequential import Sequential
from . import _handlers, _patterns
from ._graph import FileError, op_name
from ._shapes import Dim
from ._tensors import FLOATS


class Walker:
    """Builds the modules of one graph (a _graph.Graph) with the layer options of
    load_onnx (dtype, weight_dtype, group_size, backend, activations)."""

    def __init__(self, graph, options):
        self.graph, self.options = graph, options
        self.dtype = options["dtype"]
        self.value, self.shape = self._read_input()
        self.fl_shape = self.shape            # the shape the modules give
        last = self.shape[-1] if self.shape else None
        self.width = last if isinstance(last, int) else None  # values per row, if known
        self.regrouped_by = None              # the node whose regrouping of rows is open
        self.shapes = {}                      # the data's shape at each value passed
        self.modules, self.pending = [], None
        self.linear_out = None                # the value holding the open Linear's result
        self.at = None                        # the node being read, for errors

    def _read_input(self):
        """(name, shape) of the graph's input; shape None where the graph declares
        none, a dim without a size its name or a Dim."""
        value = self.graph.input
        if not value.type.HasField("tensor_type"):
            raise FileError(TypeError, f"the graph's input {value.name!r} is not a tensor")
        tt = value.type.tensor_type
        if tt.elem_type not in FLOATS:
            names = self.graph.onnx.TensorProto.DataType
            kind = names.Name(tt.elem_type) if tt.elem_type in names.values() \
                else tt.elem_type
            raise FileError(TypeError, f"the graph's input {value.name!r} holds {kind}; "
                                       f"load_onnx reads models of float tensors")
        if not tt.HasField("shape"):
            return value.name, None
        return value.name, [d.dim_value if d.HasField("dim_value") else
                            (d.dim_param or Dim()) for d in tt.shape.dim]

    # -- the walk -----------------------------------------------------------------
    def run(self):
        """The Sequential of the whole chain."""
        graph, seen = self.graph, set()
        while self.value != graph.output:
            if self.value in seen:
                raise FileError(ValueError, f"the graph has a cycle through {self.value!r}")
            seen.add(self.value)
            self.shapes[self.value] = self.shape  # for Shape nodes reading it
            users = graph.data_users(self.value)
            if not users:
                self._dead_end()
            try:
                self._step(users)
            except (ValueError, TypeError) as exc:  # from a tensor or a module's checks
                raise FileError(type(exc), f"{graph.desc(self.at)}: {exc}") from None
        try:
            self.flush()
        except (ValueError, TypeError) as exc:
            raise FileError(type(exc), f"{graph.desc(self.at)}: {exc}") from None
        if self.regrouped_by is not None:
            self.fail(self.regrouped_by, f"regroups the rows to {self.shape}, and nothing "
                      f"after it restores their shape {self.fl_shape}")
        return Sequential(*self.modules)

    def _dead_end(self):
        """Fails where no node reads the data: a Shape reading it is named (only a
        Reshape's target may be computed from the data's shape)."""
        graph = self.graph
        shape_of = graph.users.get(self.value)
        if shape_of:
            self.fail(shape_of[0], f"reads the shape of {self.value!r}; Shape is not "
                                   f"supported here: load_onnx reads it only inside the "
                                   f"target shape of a Reshape")
        writer = graph.producer.get(self.value)
        by = f" (written by {graph.desc(writer)})" if writer is not None else ""
        read = "feeds only nodes that do not lead to the output" \
            if graph.all_users.get(self.value) else "is read by no node"
        raise FileError(ValueError, f"{self.value!r}{by} {read}: the output "
                                    f"{graph.output!r} is not reached from the graph's "
                                    f"input")

    def _step(self, users):
        """Reads the node or nodes after the data: one node its operator's handler
        reads, else a layer written out."""
        node = users[0]  # the first in the graph's order
        self.at = node
        if len(users) == 1:
            op = op_name(node)
            advice = _handlers.REFUSED.get(op)
            if advice is not None:
                self.fail(node, advice(node))
            handler = _handlers.HANDLERS.get(op)
            if handler is not None:
                if len(node.input) > handler.most_inputs:
                    self.fail(node, f"has {len(node.input)} inputs; {op} takes at most "
                                    f"{handler.most_inputs}")
                if handler.read(self, node) is not False:
                    return
        mean = next((u for u in users if u.op_type == "ReduceMean"), None)
        if mean is not None:
            self.at = mean
            scale, bias, eps, last = _patterns.layernorm(self.graph, self.value, users,
                                                         mean, self.rank)
            _handlers.layernorm(self, mean, scale, bias, eps, last)
        else:
            module, last = _patterns.activation(self.graph, self.value, users,
                                                _handlers.HANDLERS)
            self.emit(module)
            self.advance(last)

    # -- what handlers use --------------------------------------------------------
    @property
    def rank(self):
        """The number of dims of the data as the graph sees it, None where unknown."""
        return len(self.shape) if self.shape is not None else None

    def fail(self, node, message, kind=ValueError):
        self.graph.fail(node, message, kind)

    def attr(self, node, name, default, kind=None):
        return self.graph.attr(node, name, default, kind)

    def data_input(self, node):
        if not node.input or node.input[0] != self.value:
            self.fail(node, f"must read the data ({self.value!r}) as its first input")

    def unused_outputs(self, node):
        for extra in node.output[1:]:
            if extra and (extra == self.graph.output or self.graph.users.get(extra)):
                self.fail(node, f"its output {extra!r} is used; load_onnx reads only "
                                f"its first")

    def const_input(self, node, i, what, optional=False):
        """The constant that node's input i holds; `what` names it in errors."""
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            if optional:
                return None
            self.fail(node, f"has no {what} input")
        if name == self.value:
            self.fail(node, f"reads the data as its {what}; load_onnx needs a constant "
                            f"there")
        arr = self.graph.const(name)
        if arr is None:
            self.fail(node, f"its {what} {name!r} is computed by the graph; load_onnx "
                            f"needs a constant (an initializer or a Constant node)")
        return arr

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

    # -- the open Linear ----------------------------------------------------------
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
        self.linear_out = self.value

    def open_linear(self):
        """Whether the data is the output of the Linear read last, still open."""
        return self.pending is not None and self.pending[0].output[0] == self.value

    def data_is_linear(self):
        """Whether the data is the open Linear's result, its bias added or not."""
        return self.pending is not None and self.linear_out == self.value

    def zero_row(self, first):
        """Adds an output of constant 0 to the open Linear, first or last: a row of
        zeros and a bias of 0 give exactly 0 for any finite input, in any weight format,
        and the other outputs keep their bits (each one's sum depends on its row alone)."""
        node, weight, bias = self.pending
        zeros = np.zeros((1, weight.shape[1]), weight.dtype)
        parts = (zeros, weight) if first else (weight, zeros)
        if bias is not None:
            bias = np.concatenate((np.zeros(1), bias) if first else (bias, np.zeros(1)))
        self.pending = (node, np.concatenate(parts), bias)

    def bias(self, node, c, n):
        """Constant c as a bias of n values: broadcast along the rows only."""
        if c.dtype.kind != "f" and c.dtype.name != "bfloat16":
            self.fail(node, f"its bias holds {c.dtype}, not floats", TypeError)
        rank = self.rank if self.rank is not None else 2
        if c.ndim > rank or any(d != 1 for d in c.shape[:-1]) or \
                (c.ndim and c.shape[-1] not in (1, n)):
            self.fail(node, f"its bias of shape {c.shape} does not match the {n} "
                            f"outputs per row")
        return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n,))

    def add_bias(self, node, c):
        """Adds constant c to the bias of the Linear read last."""
        first, weight, bias = self.pending
        extra = self.bias(node, c, weight.shape[0])
        self.pending = (first, weight, extra if bias is None else bias + extra)

    def flush(self):
        """Builds the Linear read last: it was kept open for a bias after it."""
        if self.pending is None:
            return
        node, weight, bias = self.pending
        self.pending, at, self.at = None, self.at, node  # errors name the Linear's node
        self.linear_out = None
        o = self.options
        # float16 and bfloat16 weights kept as they are, as from_torch keeps them
        weight_dtype = _formats.keep_given(o["weight_dtype"], weight.dtype.name, self.dtype)
        self.modules.append(Linear._from_parameters(weight, bias, self.dtype, o["backend"],
                                                    weight_dtype, o["group_size"],
                                                    o["activations"]))
        self.at = at
