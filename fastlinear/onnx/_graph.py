"""An ONNX graph indexed for reading: which node writes and which nodes read each value,
its constants (initializers, Constant nodes, and Identity, Cast or Transpose of those,
folded once and kept), the nodes' attributes checked by type, and the errors that name
a node."""
import numpy as np

from ._tensors import TYPES, decode, numpy_type

DEFAULT = ("", "ai.onnx")       # the names of ONNX's default domain
_MAX_DEPTH = 32                 # nodes followed back from a constant
# AttributeProto types of the attributes read, by the kind asked for
_ATTRIBUTE_TYPES = {float: (1, "a float"), int: (2, "an int"), str: (3, "a string"),
                    "tensor": (4, "a tensor"), "floats": (6, "floats"), "ints": (7, "ints")}


class FileError(Exception):
    """A problem found in the file; load_onnx raises it as `kind` with the file's name."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def op_name(node):
    """The node's op_type, prefixed with its domain outside the default one."""
    return node.op_type if node.domain in DEFAULT else f"{node.domain}.{node.op_type}"


class Graph:
    """The nodes of one graph with one input, indexed, read up to one output: the
    graph's only one, or the value named by `output`. Nodes that do not feed that value
    are left out of the index: branches such as a classifier's labels are ignored."""

    def __init__(self, onnx, model, folder, output=None):
        self.onnx, self.folder = onnx, folder
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT),
                          None)
        if self.opset is None:  # onnx.checker refuses such a model too
            have = sorted(o.domain for o in model.opset_import)
            listed = f"lists only {have}" if have else "is empty"
            raise FileError(ValueError, f"declares no opset of ONNX's default domain (its "
                            f"opset_import {listed}): a truncated file, or a model made "
                            f"without opset_imports; a model must declare the opsets it "
                            f"uses")
        self.nodes = list(graph.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {}
        for node in self.nodes:
            for v in node.output:
                if v in self.producer:
                    self.fail(node, f"writes {v!r}, which another node writes too")
                if v:
                    self.producer[v] = node
        self.inits = {t.name: t for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.inits]
        outputs = [o.name for o in graph.output]
        if len(inputs) != 1:
            raise FileError(ValueError, f"the graph has {len(inputs)} inputs "
                            f"{[i.name for i in inputs]}; load_onnx reads one chain of "
                            f"layers from one input")
        self.input = inputs[0]
        self.output = self._chosen(output, outputs)
        self.feeding = self._feeding()
        self.users, self.all_users = {}, {}
        for node in self.nodes:
            for v in dict.fromkeys(v for v in node.input if v):
                self.all_users.setdefault(v, []).append(node)
                if id(node) in self.feeding:
                    self.users.setdefault(v, []).append(node)
        self.consts = {}

    def _chosen(self, output, outputs):
        """The value the chain ends at: `output`, which may name any value the graph
        computes (a graph output, or one inside, such as the probabilities a ZipMap
        reads), else the graph's one output."""
        if output is None:
            if len(outputs) != 1:
                raise FileError(ValueError, f"the graph has {len(outputs)} outputs "
                                f"{outputs}; load_onnx reads one chain of layers to one "
                                f"output: choose it with load_onnx(path, output=NAME) "
                                f"(a classifier's probabilities, say), and the branches "
                                f"that do not feed it are ignored")
            return outputs[0]
        if output not in outputs and output not in self.producer and \
                output != self.input.name:
            raise FileError(ValueError, f"output={output!r} is no value of the graph; its "
                            f"outputs are {outputs}")
        return output

    def _feeding(self):
        """The ids of the nodes the output depends on, found walking back from it."""
        found, todo = set(), [self.output]
        while todo:
            node = self.producer.get(todo.pop())
            if node is not None and id(node) not in found:
                found.add(id(node))
                todo.extend(v for v in node.input if v)
        return found

    def desc(self, node):
        if node.name:
            return f"node {node.name!r} ({op_name(node)})"
        return f"node #{self.index[id(node)]} ({op_name(node)})"

    def fail(self, node, message, kind=ValueError):
        raise FileError(kind, f"{self.desc(node)}: {message}")

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
        if len(users) == 1 and users[0].op_type == op and users[0].domain in DEFAULT \
                and value != self.output:
            return users[0]
        return None

    def const(self, name, depth=0):
        """The constant array `name` holds, or None where the graph computes it."""
        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            arr = decode(self.inits[name], f"initializer {name!r}", self.folder)
        else:
            node = self.producer.get(name)
            if node is None or node.domain not in DEFAULT or depth > _MAX_DEPTH:
                return None
            arr = self._fold(node, depth)
            if arr is None:
                return None
        self.consts[name] = arr
        return arr

    def _fold(self, node, depth):
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
                return decode(value, f"the value of {self.desc(node)}", self.folder)
            return None
        if op not in ("Identity", "Cast", "Transpose") or not node.input:
            return None
        x = self.const(node.input[0], depth + 1)
        if x is None:
            return None
        if op == "Cast":
            to = self.attr(node, "to", None, int)
            return x.astype(numpy_type(to)) if to in TYPES else None
        if op == "Transpose":
            perm = self.attr(node, "perm", list(range(x.ndim))[::-1], "ints")
            if sorted(perm) != list(range(x.ndim)):
                self.fail(node, f"perm {perm} does not fit a {x.ndim}-D constant")
            return np.transpose(x, perm)
        return x

    def other_const(self, node, value):
        """The constant that a binary node combines with `value`, if it is one."""
        ins = list(node.input)
        if len(ins) != 2 or ins.count(value) != 1:
            return None
        return self.const(ins[1 - ins.index(value)])
