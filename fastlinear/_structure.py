"""A model's structure, saved beside its tensors so that fl.load_model rebuilds the model:
each module's kind and settings as versioned JSON, which fastlinear.io keeps in the
file's own metadata. The JSON is data only: a kind is looked up in a table built from
the module classes (never imported or called by name), every setting is checked, and
every tensor's key, shape and type against the settings before any module is built, so
that a hostile file gets a ValueError before anything is allocated for it.

    {"version": 1 or 2, "model": MODULE}
    MODULE = {"kind": "Sequential", "modules": [MODULE, ...]}
           | {"kind": CLASS NAME, "settings": {NAME: VALUE, ...}}

The settings of a kind: Linear's in_features, out_features, bias, dtype, weight_dtype,
group_size and backend, and from version 2 on its activations (the layer's dtype name,
or "int8"); LayerNorm's normalized_shape (an int), eps, elementwise_affine,
bias and dtype; BatchNorm1d's num_features, eps, momentum, affine and dtype; every other
module's torch_args (the arguments its constructor takes, in order: LeakyReLU's
negative_slope, GELU's approximate, Dropout's p, Flatten's start_dim and end_dim, the
softmaxes' dim). The tensors are the model's state_dict(), under its keys.

Versions: a file holds exactly the settings of its version. A model is saved with the
lowest version that describes it (version 1 unless a Linear has int8 activations), so
that files of models without the newer settings still load in older fastlinear; a
version 1 file loads with the defaults of the settings added since (float activations).
"""
import json

import numpy as np

from . import _formats
from ._validate import check_keys, check_state, positive_int, split_state
from ._version import __version__
from .linear import Linear, check_activations, state_shapes
from .modules import BatchNorm1d, LayerNorm
from .sequential import _MODULES, Sequential

VERSION = 2  # the newest this fastlinear reads and writes
MAX_DEPTH = 64  # of nested Sequentials; JSON deeper than Python's recursion fails first


class _Kind:
    """How one module class is saved and rebuilt. names: its settings, in order;
    settings(module): their values; shapes(settings): the checked settings' tensors,
    {key: (shape, dtype)} as _validate.check_state takes them (TypeError or ValueError
    for a setting of the wrong type); build(settings, state): the module, its tensors
    already checked. The default: a module without parameters, its settings its
    torch_args, which its constructor checks. added: {name: (version, at_default)} for
    settings that came after version 1: the version that added it, and whether a
    module's settings hold the value that a file without it means (it is then left
    out of files of older versions); build() takes their absence as that value."""

    def __init__(self, cls, names=None, settings=None, shapes=None, build=None, added=None):
        self.cls = cls
        self.names = cls.torch_args if names is None else names
        self.settings = settings or self._torch_args
        self.shapes = shapes or self._checked_by_constructor
        self.build = build or self._constructed
        self.added = added or {}

    def names_in(self, version):
        """The settings a file of that version holds, in order."""
        return tuple(name for name in self.names
                     if self.added.get(name, (1, None))[0] <= version)

    def version(self, settings):
        """The lowest version that holds these settings."""
        return max([1, *(v for name, (v, at_default) in self.added.items()
                         if not at_default(settings))])

    def _torch_args(self, module):
        return {name: getattr(module, name) for name in self.names}

    def _constructed(self, settings, state):
        return self.cls(*(settings[name] for name in self.names))

    def _checked_by_constructor(self, settings):
        self._constructed(settings, {})  # no parameters: nothing of any size is made
        return {}


def _bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return value


def _dtype(value):
    if value not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {value!r}")
    return np.dtype(value)


def _linear_shapes(s):
    k, n = positive_int(s["in_features"], "in_features"), positive_int(
        s["out_features"], "out_features")
    if not isinstance(s["weight_dtype"], str):
        raise TypeError(f"weight_dtype must be a string, got {s['weight_dtype']!r}")
    if not isinstance(s["backend"], str):
        raise TypeError(f"backend must be a string, got {s['backend']!r}")
    group = s["group_size"]
    if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
        raise TypeError(f"group_size must be an integer or null, got {group!r}")
    dtype = _dtype(s["dtype"])
    fmt, group = _formats.check(s["weight_dtype"], dtype, group)
    activations = s.get("activations")  # absent before version 2
    if "activations" in s and not isinstance(activations, str):
        raise TypeError(f"activations must be a string, got {activations!r}")
    check_activations(activations, dtype, fmt, s["backend"], k)
    return state_shapes(fmt, group, n, k, _bool(s["bias"], "bias"))


def _layernorm_shapes(s):
    n = positive_int(s["normalized_shape"], "normalized_shape")
    _number(s["eps"], "eps"), _dtype(s["dtype"])
    affine = _bool(s["elementwise_affine"], "elementwise_affine")
    keys = ("weight", "bias") if affine else ()
    keys = keys if _bool(s["bias"], "bias") else keys[:1]
    return {key: ((n,), None) for key in keys}


def _batchnorm_shapes(s):
    n = positive_int(s["num_features"], "num_features")
    _number(s["eps"], "eps"), _dtype(s["dtype"])
    if s["momentum"] is not None:
        _number(s["momentum"], "momentum")
    keys = ("weight", "bias") if _bool(s["affine"], "affine") else ()
    return {**{key: ((n,), None) for key in (*keys, "running_mean", "running_var")},
            "num_batches_tracked": ((), None)}


def _constructed_and_loaded(cls):
    """build for a class whose settings are its constructor's keywords: the module
    with its default parameters (small: their sizes were checked against the
    tensors), then its tensors loaded."""
    def build(settings, state):
        module = cls(**settings)
        module.load_state_dict(state)
        return module
    return build


_WITH_PARAMETERS = {
    Linear: _Kind(
        Linear, ("in_features", "out_features", "bias", "dtype", "weight_dtype",
                 "group_size", "backend", "activations"),
        lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                   "bias": m.bias is not None, "dtype": m.dtype.name,
                   "weight_dtype": m.weight_dtype, "group_size": m.group_size,
                   "backend": m.backend, "activations": m.activations},
        _linear_shapes,
        # The stored form loaded as it is: no weights drawn first, only to be replaced.
        lambda s, state: Linear._from_state(
            s["in_features"], s["out_features"], s["dtype"], s["weight_dtype"],
            s["group_size"], s["backend"], state, s.get("activations")),
        added={"activations": (2, lambda s: s["activations"] == s["dtype"])}),
    LayerNorm: _Kind(
        LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias", "dtype"),
        lambda m: {"normalized_shape": m.normalized_shape[0], "eps": m.eps,
                   "elementwise_affine": m.elementwise_affine, "bias": m._with_bias,
                   "dtype": m.dtype.name},
        _layernorm_shapes, _constructed_and_loaded(LayerNorm)),
    BatchNorm1d: _Kind(
        BatchNorm1d, ("num_features", "eps", "momentum", "affine", "dtype"),
        lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                   "affine": m.affine, "dtype": m.dtype.name},
        _batchnorm_shapes, _constructed_and_loaded(BatchNorm1d)),
}
# class name -> how it is saved and rebuilt, for every module class a Sequential holds
KINDS = {cls.__name__: _WITH_PARAMETERS.get(cls) or _Kind(cls) for cls in _MODULES}


# -- saving -------------------------------------------------------------------------
def describe(obj):
    """The structure of a fastlinear module or Sequential as JSON text; None for
    anything else (a dict, a torch module, a subclass of a module), whose state dict
    is saved alone."""
    model = _entry(obj)
    if model is None:
        return None
    version = _version(model)
    return json.dumps({"version": version, "model": _for_version(model, version)},
                      separators=(",", ":"), default=_plain)


def _version(entry):
    """The lowest version that holds an entry of _entry() and those inside it."""
    if "modules" in entry:
        return max([1, *map(_version, entry["modules"])])
    return KINDS[entry["kind"]].version(entry["settings"])


def _for_version(entry, version):
    """The entry with the settings of that version only."""
    if "modules" in entry:
        return {**entry, "modules": [_for_version(e, version) for e in entry["modules"]]}
    names = KINDS[entry["kind"]].names_in(version)
    return {**entry, "settings": {name: entry["settings"][name] for name in names}}


def _plain(value):
    # numpy scalars (a BatchNorm1d's momentum as given) as the Python numbers they hold
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save the setting {value!r} of type {type(value).__name__}")


def _entry(m):
    if type(m) is Sequential:
        children = [_entry(child) for child in m.modules]
        return None if None in children else {"kind": "Sequential", "modules": children}
    kind = KINDS.get(type(m).__name__)
    if kind is None or kind.cls is not type(m):
        return None
    return {"kind": type(m).__name__, "settings": kind.settings(m)}


# -- loading ------------------------------------------------------------------------
class _Node:
    """One module of a structure read back: its path in the model ('' for the model
    itself), kind, checked settings and the tensors it needs (or its children)."""
    __slots__ = ("path", "kind", "settings", "shapes", "children")

    def __init__(self, path, kind, settings=None, shapes=None, children=None):
        self.path, self.kind, self.settings = path, kind, settings
        self.shapes, self.children = shapes, children

    @property
    def prefix(self):
        return f"{self.path}." if self.path else ""

    def where(self):
        return f"module {self.path} ({self.kind})" if self.path else f"the {self.kind}"

    def walk(self):
        yield self
        for child in self.children or ():
            yield from child.walk()


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def read(text):
    """The structure in `text`, checked, as a tree of _Node. ValueError (TypeError for
    a setting of the wrong type) says what is wrong, and where."""
    try:
        top = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("the structure is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"the structure is not valid JSON: {exc}") from None
    if not isinstance(top, dict) or "version" not in top:
        raise ValueError("the structure is not an object with a version")
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"unknown structure version {version!r}: fastlinear writes "
                         f"version {VERSION}")
    if version > VERSION:
        raise ValueError(f"the structure has version {version}, from a newer fastlinear; "
                         f"this one ({__version__}) reads version {VERSION}: upgrade "
                         f"fastlinear, or build the model and load its tensors with "
                         f"model.load_state_dict(fl.load(path))")
    if set(top) != {"version", "model"}:
        raise ValueError(f"the structure must have exactly the keys version and model, "
                         f"got {sorted(top)}")
    return _read(top["model"], "", 0, version)


def _read(entry, path, depth, version):
    where = f"module {path}" if path else "the model"
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise ValueError(f"{where}: expected an object with a kind, got {entry!r:.80}")
    kind = entry["kind"]
    if kind == "Sequential":
        if set(entry) != {"kind", "modules"} or not isinstance(entry["modules"], list):
            raise ValueError(f"{where} (Sequential): expected exactly the keys kind and "
                             f"modules (a list)")
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: Sequentials nested more than {MAX_DEPTH} deep")
        children = [_read(child, f"{path}.{i}" if path else str(i), depth + 1, version)
                    for i, child in enumerate(entry["modules"])]
        return _Node(path, kind, children=children)
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r:.80}; fastlinear knows "
                         f"{', '.join(['Sequential', *KINDS])}")
    settings, names = entry.get("settings"), KINDS[kind].names_in(version)
    if set(entry) != {"kind", "settings"} or not isinstance(settings, dict):
        raise ValueError(f"{where} ({kind}): expected exactly the keys kind and "
                         f"settings (an object)")
    if set(settings) != set(names):
        raise ValueError(f"{where} ({kind}): expected the settings {list(names)}, got "
                         f"{sorted(settings)}")
    try:
        shapes = KINDS[kind].shapes(settings)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where} ({kind}): {exc}") from None
    return _Node(path, kind, settings, shapes)


def check_tensors(root, state):
    """KeyError, ValueError or TypeError naming the key unless `state` (arrays, or
    stand-ins with the file's shapes and types) holds exactly the tensors the
    structure needs, of their shapes and types."""
    stateful = [node for node in root.walk() if node.shapes]
    parts, others = split_state(state, [node.prefix for node in stateful])
    if others:
        check_keys(state, [node.prefix + key for node in stateful for key in node.shapes])
    for node in stateful:
        check_state(parts[node.prefix], node.shapes, node.prefix)


def build(node, state):
    """The module of a checked structure, with its tensors from `state` (checked)."""
    if node.children is not None:
        try:
            return Sequential(*(build(child, state) for child in node.children))
        except TypeError as exc:  # Linear layers of two dtypes
            raise ValueError(f"{node.where()}: {exc}") from None
    parts, _ = split_state(state, [node.prefix])
    try:
        return KINDS[node.kind].build(node.settings, parts[node.prefix])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{node.where()}: {exc}") from None
