"""The shape rules of Flatten and Reshape: which target shape a node asks for (a
constant, or computed from the data's own shape as exporters write x.view(x.size(0),
-1)), and whether it merges the trailing dims (a fastlinear Flatten) or regroups the
rows keeping the last dim (which row-wise modules need not see). A shape is a list of
ints and symbolic dims: the graph's dim names, or Dim where it gives none."""
import math

from ._graph import DEFAULT

_MAX_DEPTH = 32                 # nodes followed back from a shape vector


class Dim:
    """A dimension the graph does not give a size or name to: equal only to itself, so
    that one copied through Shape and Reshape is still recognised."""

    def __repr__(self):
        return "?"


def prod(dims):
    """The product of the dims where all are numbers, else None."""
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def dims_of(graph, shapes, name, depth=0):
    """The integer vector `name` holds, its entries ints or symbolic dims: a constant,
    or computed from the shape of the data (Shape, Gather, Concat...; `shapes` holds
    the data's shape at each value the walk has passed). None where it is neither."""
    arr = graph.const(name)
    if arr is not None:
        return [int(v) for v in arr.reshape(-1)] if arr.dtype.kind in "iu" else None
    node = graph.producer.get(name)
    if node is None or node.domain not in DEFAULT or not node.input or depth > _MAX_DEPTH:
        return None
    op, inputs = node.op_type, list(node.input)
    if op == "Shape":
        shape = shapes.get(inputs[0])
        start, end = graph.attr(node, "start", 0), graph.attr(node, "end", None, int)
        return None if shape is None else list(shape[start:end])
    if op in ("Squeeze", "Unsqueeze", "Identity", "Cast", "Reshape", "Flatten"):
        return dims_of(graph, shapes, inputs[0], depth + 1)  # a vector's entries stay
    if op == "Concat":
        parts = [dims_of(graph, shapes, i, depth + 1) for i in inputs]
        return None if any(p is None for p in parts) else sum(parts, [])
    if op == "Gather" and len(inputs) == 2:
        data, idx = dims_of(graph, shapes, inputs[0], depth + 1), graph.const(inputs[1])
        if data is None or idx is None or idx.dtype.kind not in "iu" or \
                not all(-len(data) <= i < len(data) for i in idx.reshape(-1)):
            return None
        return [data[int(i)] for i in idx.reshape(-1)]
    return None


def flattened(shape, axis):
    """The 2-D shape ONNX's Flatten(axis) makes of `shape`, or None where it is
    fastlinear's Flatten(1, -1) on dims the graph does not give (axis 1, the shape or
    its trailing dims unknown). ValueError for an axis that does not fit."""
    if shape is None:
        if axis != 1:
            raise ValueError(f"axis={axis} needs the input's shape, which the graph does "
                             f"not declare")
        return None
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ValueError(f"axis={axis} on {rank}-D data")
    if axis == 1 and prod(shape[1:]) is None:
        return None
    head = shape[:1] if axis == 1 else [prod(shape[:axis])]
    return [Dim() if d is None else d for d in head + [prod(shape[axis:])]]


def reshaped(shape, target, allowzero):
    """The shape a Reshape to `target` makes of `shape`: 0 copies the dim (unless
    allowzero), -1 is inferred from the others. ValueError where it is not a shape."""
    new = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:  # 0: this dim as it was
            if i >= len(shape):
                raise ValueError(f"target {target}: no dim {i} to copy")
            t = shape[i]
        new.append(t)
    holes = [i for i, t in enumerate(new) if isinstance(t, int) and t == -1]
    if len(holes) > 1 or any(isinstance(t, int) and t < -1 for t in new):
        raise ValueError(f"target {target} is not a shape")
    if holes:
        new[holes[0]] = _inferred(shape, [t for i, t in enumerate(new) if i != holes[0]])
    return new


def _inferred(shape, known):
    """The dim a Reshape's -1 stands for, given the target's other dims."""
    old = list(shape)
    known = list(known)
    for d in list(known):  # a named dim on both sides cancels
        if not isinstance(d, int) and d in old:
            old.remove(d)
            known.remove(d)
    p_old = prod([d for d in old if isinstance(d, int)])
    p_new = prod([d for d in known if isinstance(d, int)])
    names_old = [d for d in old if not isinstance(d, int)]
    if any(not isinstance(d, int) for d in known):
        return Dim()
    if not names_old:
        if p_new == 0 or p_old % p_new:
            raise ValueError(f"cannot reshape {shape} to {known} and -1")
        return p_old // p_new
    return names_old[0] if len(names_old) == 1 and p_old == p_new else Dim()


def keeps_rows(old, new):
    """Whether reshaping `old` to `new` only regroups the rows (the last dim kept)."""
    return bool(new) and new[-1] == old[-1]


def merge_start(old, new):
    """s where reshaping `old` to `new` merges dims s.. into the last one (a
    Flatten(s, -1)), else None."""
    s = len(new) - 1
    if 1 <= s < len(old) and all(a == b for a, b in zip(new[:s], old[:s])) and \
            isinstance(new[-1], int) and new[-1] == prod(old[s:]):
        return s
    return None


def same(a, b):
    """Whether two shapes are the same dim by dim."""
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))
