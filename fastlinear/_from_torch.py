"""torch.nn modules -> fastlinear modules: Sequential.from_torch. An importer sits above
the container it fills: this module imports fastlinear.sequential, never the reverse."""
import warnings

import numpy as np

from .linear import Linear
from .modules import BatchNorm1d, LayerNorm
from .sequential import _MODULES, Sequential


def _array(t):
    return None if t is None else t.detach().cpu().double().numpy()


def _float_dtype(module, dtype):
    """float64 for a float64 module, else float32, unless `dtype` is given."""
    if dtype is not None:
        return dtype
    p = next(iter(module.parameters()), None)
    return np.float64 if p is not None and str(p.dtype) == "torch.float64" else np.float32


def _layernorm(m, kw):
    shape = tuple(m.normalized_shape)
    with_bias = m.bias is not None or not m.elementwise_affine
    layer = LayerNorm(shape, m.eps, m.elementwise_affine, with_bias,
                      dtype=_float_dtype(m, kw["dtype"]))
    if m.elementwise_affine:
        layer.weight = _array(m.weight)
        if m.bias is not None:
            layer.bias = _array(m.bias)
    return layer


def _batchnorm(m, kw):
    layer = BatchNorm1d(m.num_features, m.eps, m.momentum, m.affine,
                        m.track_running_stats, dtype=_float_dtype(m, kw["dtype"]))
    n = m.num_features
    layer._load(_array(m.weight) if m.affine else np.ones(n),
                _array(m.bias) if m.affine else np.zeros(n),
                _array(m.running_mean), _array(m.running_var),
                int(m.num_batches_tracked) if m.num_batches_tracked is not None else 0)
    return layer


def _from_attributes(cls):
    """A module without parameters: its class built from the torch attributes it names."""
    return lambda m, kw: cls(*(getattr(m, name) for name in cls.torch_args))


# Modules converted with their parameters; every other class from its torch_args.
_WITH_PARAMETERS = {Linear: lambda m, kw: Linear.from_torch(m, **kw),
                    LayerNorm: _layernorm, BatchNorm1d: _batchnorm}
# torch module class name -> how to convert one instance, from each class's torch_names
_CONVERT = {name: _WITH_PARAMETERS.get(cls) or _from_attributes(cls)
            for cls in _MODULES for name in cls.torch_names}


def from_torch(cls, module, *, dtype=None, weight_dtype=None, group_size=None,
               backend="auto", activations=None):
    """From a torch.nn.Sequential (nested ones too) of the modules fastlinear has
    (see fastlinear.Sequential), as in eval mode whatever module.training says.
    dtype, weight_dtype, group_size, backend and activations apply to every Linear (see
    Linear.from_torch). The result has the same indices and state_dict keys. A
    module it cannot convert raises TypeError naming its path in the model."""
    return convert(module, dict(dtype=dtype, weight_dtype=weight_dtype,
                                group_size=group_size, backend=backend,
                                activations=activations))


# Sequential.from_torch is written here and attached to the class, rather than defined in
# sequential.py and importing this module from there (even lazily, inside the method,
# that is a circle): so imports run one way, importer -> container, as the ONNX reader's
# do. fastlinear/__init__ imports this module, so the method is there whenever
# fastlinear is.
Sequential.from_torch = classmethod(from_torch)  # type: ignore[method-assign,assignment]


def convert(module, kw, prefix=""):
    if type(module).__name__ != "Sequential":
        raise TypeError(f"expected a torch.nn.Sequential, got {type(module).__name__}")
    if not prefix and any(m.training for m in module.modules()
                          if type(m).__name__ in ("Dropout", "BatchNorm1d")):
        warnings.warn("the torch model is in training mode; fastlinear converts it as in "
                      "eval mode (Dropout the identity, BatchNorm1d with its running "
                      "statistics): call model.eval() first to silence this", stacklevel=3)
    converted = []
    for name, m in module.named_children():
        path, kind = f"{prefix}{name}", type(m).__name__
        if kind == "Sequential":
            converted.append(convert(m, kw, f"{path}."))
        elif kind in _CONVERT:
            try:
                converted.append(_CONVERT[kind](m, kw))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"module '{path}' ({kind}): {exc}") from None
        else:
            raise TypeError(f"cannot convert module '{path}' ({kind}); supported: "
                            f"{', '.join(sorted(_CONVERT))}, Sequential")
    return Sequential(*converted)
