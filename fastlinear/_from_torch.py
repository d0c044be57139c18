"""torch.nn modules -> fastlinear modules (fastlinear.Sequential.from_torch)."""
import warnings

import numpy as np

from .activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Tanh
from .linear import Linear
from .modules import BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LogSoftmax, Softmax


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


# torch module class name -> how to convert one instance
_CONVERT = {
    "Linear": lambda m, kw: Linear.from_torch(m, **kw),
    "ReLU": lambda m, kw: ReLU(),
    "LeakyReLU": lambda m, kw: LeakyReLU(m.negative_slope),
    "GELU": lambda m, kw: GELU(m.approximate),
    "SiLU": lambda m, kw: SiLU(),
    "Sigmoid": lambda m, kw: Sigmoid(),
    "Tanh": lambda m, kw: Tanh(),
    "Identity": lambda m, kw: Identity(),
    "Dropout": lambda m, kw: Dropout(m.p),
    "Flatten": lambda m, kw: Flatten(m.start_dim, m.end_dim),
    "LayerNorm": _layernorm,
    "Softmax": lambda m, kw: Softmax(m.dim),
    "LogSoftmax": lambda m, kw: LogSoftmax(m.dim),
    "BatchNorm1d": _batchnorm,
}


def convert(module, kw, prefix=""):
    from .sequential import Sequential
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
