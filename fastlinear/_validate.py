"""Checks and conversions at the API boundary: arrays in, arrays the kernels can read
without copies where the layout allows. Inputs are never modified."""
import operator

import ml_dtypes
import numpy as np

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_REAL_KINDS = "biuf"  # bool, signed, unsigned, float


def layer_dtype(dtype):
    """np.float32 or np.float64, as a np.dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def positive_int(value, name):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n}")
    return n


def as_array(value, name):
    """A real numeric ndarray from an array, a sequence or a torch tensor (not copied
    when it already is one)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
        value = value.detach().cpu()
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a tensor of dtype {value.dtype}")
        if str(value.dtype) == "torch.bfloat16":  # numpy's is ml_dtypes': same bits
            import torch
            value = value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == ml_dtypes.bfloat16:
        return arr
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    if kind not in _REAL_KINDS:
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def as_weight(value):
    """A weight as a real ndarray shaped (out_features, in_features)."""
    w = as_array(value, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
    return w


def as_rows(x, dtype, in_features, fortran_ok=False):
    """(x2, batch_shape): x (*, in_features) as an (M, in_features) array of `dtype`
    that the kernel reads in place (see kernel_ready), and the leading shape."""
    arr = as_array(x, "input")
    if arr.ndim == 0:
        raise ValueError("input must have at least 1 dimension (*, in_features), "
                         "got a 0-d array")
    if arr.shape[-1] != in_features:
        raise ValueError(f"input's last dimension must be in_features={in_features}, "
                         f"got {arr.shape[-1]} (input shape {arr.shape})")
    batch = arr.shape[:-1]
    rows = arr.reshape(int(np.prod(batch, dtype=np.int64)), in_features)
    return kernel_ready(rows, dtype, fortran_ok), batch


def kernel_ready(a, dtype, fortran_ok):
    """`a` as-is when it has `dtype`, is aligned and has unit stride along its last axis
    (or, with fortran_ok, its first), with non-negative strides in whole elements;
    otherwise an aligned C-contiguous copy."""
    size = a.itemsize
    s0, s1 = a.strides
    ok = (a.dtype == dtype and a.flags.aligned and s0 >= 0 and s1 >= 0
          and s0 % size == 0 and s1 % size == 0)
    if ok and (s1 == size or a.shape[1] <= 1 or (fortran_ok and s0 == size)):
        return a
    return np.array(a, dtype=dtype, order="C")  # always a fresh, aligned copy


def parameter(value, shape, dtype, name):
    """A private, read-only, C-contiguous copy of a weight or bias."""
    arr = as_array(value, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    arr = np.array(arr, dtype=dtype, order="C", copy=True)
    arr.flags.writeable = False
    return arr


def check_out(out, shape, dtype):
    """`out` as given, after checking it can receive a result of `shape` and `dtype`."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out must have dtype {dtype}, got {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.aligned):
        raise ValueError("out must be C-contiguous and aligned")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def check_keys(state_dict, expected, prefix="", hint=None):
    """KeyError naming the missing and unexpected keys (as prefix + key) unless they are
    `expected`; hint(), where given and not None, comes first: what to do."""
    keys, expected = set(state_dict), set(expected)
    if keys != expected:
        note = hint() if hint is not None else None
        raise KeyError(f"{note + '; ' if note else ''}state_dict mismatch: missing keys "
                       f"{sorted(prefix + k for k in expected - keys)}, unexpected keys "
                       f"{sorted(prefix + str(k) for k in keys - expected)}")


def split_state(state_dict, prefixes):
    """({prefix: {name: value}}, others): a model's state dict split among its modules,
    each key a module's prefix (its path and a dot; '' for a lone module) and a name
    without a dot; `others`, the keys of no module."""
    parts, others = {prefix: {} for prefix in prefixes}, []
    for key, value in state_dict.items():
        head, dot, name = key.rpartition(".") if isinstance(key, str) else ("", "", None)
        if name is not None and head + dot in parts:
            parts[head + dot][name] = value
        else:
            others.append(key)
    return parts, others


def check_state(state_dict, shapes, prefix="", hint=None):
    """A module's state dict as arrays, checked against `shapes` ({key: (shape, dtype)},
    dtype None where any real array is converted on loading): its keys (check_keys),
    then each array's type and shape. Errors name each key as prefix + key, so that a
    key inside a model is named as the model's state dict spells it; hint() (a state
    dict of another weight format: what to do) comes first where it says something."""
    check_keys(state_dict, shapes, prefix, hint)
    arrays, wrong = {}, []
    for key, (shape, dtype) in shapes.items():
        name = prefix + key
        arr = arrays[key] = as_array(state_dict[key], name)
        if dtype is not None and (arr.dtype != dtype or arr.shape != shape):
            wrong.append(f"{name} must be {np.dtype(dtype)} of shape {shape}, got "
                         f"{arr.dtype} of shape {arr.shape}")
        elif arr.shape != shape:
            wrong.append(f"{name} must have shape {shape}, got {arr.shape}")
    if wrong:
        note = hint() if hint is not None else None
        raise ValueError("; ".join([note] + wrong if note else wrong))
    return arrays
