"""Weight formats: how float weights become stored ones (rounding, quantization) and
back (the float values a layer computes with). Everything here is elementwise numpy run
once per layer, a block of rows at a time; the arithmetic at inference is the C
kernel's (src_c/fastlinear.h states it).

  float32, float64  the values themselves.
  bfloat16, float16 each weight rounded to nearest, ties to even; widened exactly.
  int8              symmetric, one float32 scale per output row: s = max|w| / 127,
                    q = round_half_even(w / s) in [-127, 127]. The kernel sums x * q
                    and multiplies the sum by s once (then adds the bias); the values
                    reported as `weight` are float32(q * s).
  int4              symmetric, one float32 scale per block of `group` values along k
                    (the last block of a row may be shorter): s = -w_m / 8, w_m the
                    block's value of largest magnitude (the first such), its magnitude
                    rounded up to 21 significant bits; q = round_half_even(w / s) in
                    [-8, 7], so w_m becomes -8 (ONNX Runtime's choice of range). q * s is
                    exact in float32: the layer equals a float32 layer on those values.
A scale is never 0: a block of zeros gets scale 1 (all q = 0), a block too tiny for
max|w| / 127 or / 8 to be a float32 gets the smallest one. Stored as two per byte, the
even k in the low nibble.
"""
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from . import _core

# Values converted per block of rows: a few MiB of temporaries, whatever the layer.
BLOCK_VALUES = 1 << 20
_TINY = np.float32(np.finfo(np.float32).smallest_subnormal)


@dataclass(frozen=True)
class Format:
    """One weight format's facts, which every other place reads from here (as ggml's
    type_traits); the C kernel keeps its own record of the same format under `code`."""
    name: str             # the weight_dtype users write
    code: int             # the C kernel's fl_dtype
    stored: np.dtype      # numpy type of the stored weights (state_dict's 'weight')
    kernel: np.dtype      # numpy type of the rows the C kernel takes (bfloat16 and
                          # float16: their bits)
    bits: int             # per weight: a row of K weights is ceil(K * bits / 8) bytes
    activations: np.dtype  # numpy type of x, the bias and y
    widens: bool = False  # a narrower float the kernel widens exactly
    scale: "str | None" = None  # None, "row" (one float32 per output row) or
                                # "group" (one per `group` values along k)
    quantize: object = None  # scaled formats: (float32 rows, group) -> (stored, scale)
    integers: object = None  # scaled formats: (stored rows, k) -> their values, int8
    int8_code: "int | None" = None  # the C code of these weights with int8 activations

    @property
    def compressed(self):
        """Narrower than float32: float32 layers only, native backend only."""
        return self.widens or self.scale is not None

    @property
    def values(self):
        """Name of the float type that holds the weights' values exactly."""
        return "float32" if self.scale else self.name

    def cols(self, k):
        """Elements of `stored` per row of k weights."""
        return -(-k * self.bits // (8 * self.stored.itemsize))

    def scale_shape(self, rows, k, group):
        """Shape of the float32 scales of `rows` rows, None without scales."""
        if self.scale is None:
            return None
        return (rows,) if self.scale == "row" else (rows, groups(k, group))


def _quantize_int8(w, group):
    amax = np.abs(w).max(axis=1)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.where(amax > 0, _TINY, 1))
    scale = scale.astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None].astype(np.float64)), -127, 127)
    return q.astype(np.int8), scale


def _quantize_int4(w, group):
    rows, k = w.shape
    ng = groups(k, group)
    blocks = np.zeros((rows, ng * group), np.float32)
    blocks[:, :k] = w
    blocks = blocks.reshape(rows, ng, group)
    w_m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[..., None], 2)[..., 0]
    scale = (w_m / np.float32(-8)).astype(np.float32)
    # Magnitude rounded up to 21 significant bits (the float32 sign is its own bit).
    bits = scale.view(np.uint32)
    bits = np.where(bits & 7, (bits | 7) + 1, bits).astype(np.uint32)
    scale = bits.view(np.float32)
    scale = np.where(scale != 0, scale, np.where(w_m != 0, _TINY, 1)).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None].astype(np.float64)), -8, 7)
    q = q.astype(np.int8).reshape(rows, ng * group)[:, :k]
    nibbles = (q & 15).astype(np.uint8)
    if k % 2:
        nibbles = np.concatenate([nibbles, np.zeros((rows, 1), np.uint8)], axis=1)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale


def unpack_int4(stored, k):
    """int4 values (int8 array, rows x k) from their bytes."""
    lo = (stored & 15).astype(np.int8)
    hi = (stored >> 4).astype(np.int8)
    q = np.empty((stored.shape[0], 2 * stored.shape[1]), np.int8)
    q[:, 0::2], q[:, 1::2] = lo, hi
    q = q[:, :k]
    return q - ((q & 8) << 1)


_BF16, _F16, _U16 = (np.dtype(t) for t in (ml_dtypes.bfloat16, np.float16, np.uint16))
_F32, _F64, _I8, _U8 = (np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8))
# name -> its record, in the order users see them listed.
FORMAT = {f.name: f for f in (
    #      name        C code         stored kernel bits activations
    Format("float32",  _core.FL_F32,  _F32,  _F32,  32,  _F32),
    Format("float64",  _core.FL_F64,  _F64,  _F64,  64,  _F64),
    Format("bfloat16", _core.FL_BF16, _BF16, _U16,  16,  _F32, widens=True),
    Format("float16",  _core.FL_F16,  _F16,  _U16,  16,  _F32, widens=True),
    Format("int8",     _core.FL_I8,   _I8,   _I8,    8,  _F32, scale="row",
           quantize=_quantize_int8, integers=lambda stored, k: stored,
           int8_code=_core.FL_I8Q),
    Format("int4",     _core.FL_I4,   _U8,   _U8,    4,  _F32, scale="group",
           quantize=_quantize_int4, integers=unpack_int4, int8_code=_core.FL_I4Q),
)}
FORMATS = tuple(FORMAT)
COMPRESSED = tuple(name for name, f in FORMAT.items() if f.compressed)
GROUP_SIZES = (32, 64, 128)  # for "group" scales
DEFAULT_GROUP = 32


def check(weight_dtype, dtype, group_size):
    """(format, group) checked: the Format of weight_dtype (the layer's dtype when None)
    and its group (0 unless its scales are per group)."""
    if weight_dtype is None:
        weight_dtype = np.dtype(dtype).name
    if not isinstance(weight_dtype, str):
        try:
            weight_dtype = np.dtype(weight_dtype).name
        except TypeError:
            raise TypeError(f"weight_dtype must be one of {FORMATS}, "
                            f"got {weight_dtype!r}") from None
    if weight_dtype not in FORMATS:
        raise ValueError(f"weight_dtype must be one of {FORMATS}, got {weight_dtype!r}")
    fmt = FORMAT[weight_dtype]
    if np.dtype(dtype) == np.float64 and fmt.activations != np.float64:
        raise ValueError(f"a float64 layer keeps float64 weights; weight_dtype "
                         f"{weight_dtype!r} needs dtype=np.float32")
    if np.dtype(dtype) == np.float32 and fmt.activations == np.float64:
        raise ValueError("weight_dtype 'float64' needs dtype=np.float64")
    if fmt.scale != "group":
        if group_size is not None:
            raise ValueError(f"group_size applies to int4 weights only, not {weight_dtype}")
        return fmt, 0
    group = DEFAULT_GROUP if group_size is None else group_size
    if isinstance(group, bool) or group not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    return fmt, int(group)


def keep_given(weight_dtype, given, dtype):
    """The rule for weights given in a narrower float type (a torch module's, an ONNX
    initializer's): weight_dtype, or when it is None and the layer is float32, the
    given type's own name where it is a format that widens (bfloat16, float16), so the
    weights are kept as they are, without a float32 copy; else None (the layer's)."""
    fmt = FORMAT.get(given)
    if weight_dtype is None and fmt is not None and fmt.widens and \
            np.dtype(dtype) == np.float32:
        return given
    return weight_dtype


def block_rows(k):
    """Rows converted at a time."""
    return max(1, BLOCK_VALUES // max(k, 1))


def groups(k, group):
    return -(-k // group)


def encode(w, fmt, group):
    """(stored, scale) for rows w (float32 or float64, C order; or already of a widening
    format's type, then kept as they are): the stored weights in their numpy type and
    the float32 scales (None for float formats)."""
    if not fmt.compressed:
        return np.require(w, fmt.stored, ["C", "A"]), None
    if not (fmt.widens and w.dtype == fmt.stored):
        w = np.asarray(w, np.float32)  # the layer's dtype first, then the format
    if not np.isfinite(w).all():
        raise ValueError(f"weight has NaN or Inf values, which {fmt.name} weights "
                         f"cannot hold")
    if fmt.quantize is not None:
        return fmt.quantize(w, group)
    if w.dtype == fmt.stored:
        return w, None
    with np.errstate(over="ignore"):  # checked just below
        stored = w.astype(fmt.stored)
    if not np.isfinite(stored).all():
        raise ValueError(f"weight has values beyond the range of {fmt.name} "
                         f"(largest {float(np.finfo(stored.dtype).max):g})")
    return stored, None


def check_stored(w, scale, fmt, group, n, k):
    """Weights of a scaled format and their scales as state_dict() gives them, checked:
    a ValueError names what is wrong. Returns both C-contiguous."""
    cols, name = fmt.cols(k), fmt.name
    if w.dtype != fmt.stored or w.shape != (n, cols):
        raise ValueError(f"{name} 'weight' must be {fmt.stored} of shape {(n, cols)}, got "
                         f"{w.dtype} of shape {w.shape}")
    shape = fmt.scale_shape(n, k, group)
    if scale.dtype != np.float32 or scale.shape != shape:
        raise ValueError(f"{name} 'weight_scale' must be float32 of shape {shape}"
                         f"{' (group_size ' + str(group) + ')' if group else ''}, got "
                         f"{scale.dtype} of shape {scale.shape}")
    if not (np.isfinite(scale).all() and (scale != 0).all()):
        raise ValueError(f"{name} 'weight_scale' must be finite and nonzero")
    if fmt.scale == "group" and (scale.view(np.uint32) & 7).any():
        raise ValueError(f"{name} 'weight_scale' values must have at most 21 significant "
                         "bits (as fastlinear's quantization writes them), so that each "
                         "q * scale is exact in float32")
    return np.require(w, requirements=["C", "A"]), np.require(scale, requirements=["C", "A"])


def identify(weight, scale, k):
    """(format, group) of stored weights as a state dict holds them (weight, and
    weight_scale or None; arrays) for rows of k values: the format whose stored type and
    kind of scale they have, and for group scales the first group size their shape fits
    (None if none fits; sizes with as many groups store the same bits); None when no
    format stores them so."""
    for fmt in FORMAT.values():
        if weight.dtype != fmt.stored or (scale is None) != (fmt.scale is None):
            continue
        if fmt.scale != "group":
            return fmt, 0
        fits = [g for g in GROUP_SIZES if scale.shape[1:] == (groups(k, g),)]
        return fmt, fits[0] if fits else None
    return None


def decode(stored, scale, fmt, group, k):
    """The float values (float32, or float64 for float64 weights) of stored rows."""
    if fmt.scale is None:
        return stored.astype(fmt.activations, copy=False)
    q = fmt.integers(stored, k).astype(np.float32)
    if fmt.scale == "row":
        return q * scale[:, None]
    return q * np.repeat(scale, group, axis=1)[:, :k]


def kernel_rows(stored, fmt):
    """The stored rows as the C kernel takes them (bfloat16 and float16 as raw bits),
    C-contiguous and aligned (copied where they are not)."""
    return _as_type(np.require(stored, requirements=["C", "A"]), fmt.kernel)


def from_kernel(stored, fmt):
    """The inverse of kernel_rows."""
    return _as_type(stored, fmt.stored)


def _as_type(a, dtype):
    # `a` itself where no view is needed: a caller may mark it read-only (no view of it
    # can then be made writeable again).
    return a if a.dtype == dtype else a.view(dtype)
