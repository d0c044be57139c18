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
import ml_dtypes
import numpy as np

FORMATS = ("float32", "float64", "bfloat16", "float16", "int8", "int4")
COMPRESSED = ("bfloat16", "float16", "int8", "int4")
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP = 32
# numpy type of the stored weights, per format
STORED = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16),
          "int8": np.dtype(np.int8), "int4": np.dtype(np.uint8)}
# Values converted per block of rows: a few MiB of temporaries, whatever the layer.
BLOCK_VALUES = 1 << 20
_TINY = np.float32(np.finfo(np.float32).smallest_subnormal)


def check(weight_dtype, dtype, group_size):
    """(weight_dtype, group) checked: the format's name and int4's group (else 0)."""
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
    if np.dtype(dtype) == np.float64 and weight_dtype != "float64":
        raise ValueError(f"a float64 layer keeps float64 weights; weight_dtype "
                         f"{weight_dtype!r} needs dtype=np.float32")
    if np.dtype(dtype) == np.float32 and weight_dtype == "float64":
        raise ValueError("weight_dtype 'float64' needs dtype=np.float64")
    if weight_dtype != "int4":
        if group_size is not None:
            raise ValueError(f"group_size applies to int4 weights only, not {weight_dtype}")
        return weight_dtype, 0
    group = DEFAULT_GROUP if group_size is None else group_size
    if isinstance(group, bool) or group not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    return weight_dtype, int(group)


def block_rows(k):
    """Rows converted at a time."""
    return max(1, BLOCK_VALUES // max(k, 1))


def groups(k, group):
    return -(-k // group)


def encode(w, weight_dtype, group):
    """(stored, scale) for rows w (float32 or float64, C order): the stored weights in
    their numpy type and the float32 scales (None for float formats)."""
    if weight_dtype in ("float32", "float64"):
        return np.require(w, STORED[weight_dtype], ["C", "A"]), None
    w = np.asarray(w, np.float32)  # the layer's dtype first, then the format
    if not np.isfinite(w).all():
        raise ValueError(f"weight has NaN or Inf values, which {weight_dtype} weights "
                         f"cannot hold")
    if weight_dtype in ("bfloat16", "float16"):
        with np.errstate(over="ignore"):  # checked just below
            stored = w.astype(STORED[weight_dtype])
        if not np.isfinite(stored).all():
            raise ValueError(f"weight has values beyond the range of {weight_dtype} "
                             f"(largest {float(np.finfo(stored.dtype).max):g})")
        return stored, None
    if weight_dtype == "int8":
        amax = np.abs(w).max(axis=1)
        scale = (amax / np.float32(127)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.where(amax > 0, _TINY, 1))
        scale = scale.astype(np.float32)
        q = np.clip(np.rint(w / scale[:, None].astype(np.float64)), -127, 127)
        return q.astype(np.int8), scale
    return _encode_int4(w, group)


def _encode_int4(w, group):
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


def check_stored(w, scale, weight_dtype, group, n, k):
    """int8 or int4 weights and their scales as state_dict() gives them, checked: a
    ValueError names what is wrong. Returns both C-contiguous."""
    cols = -(-k // 2) if weight_dtype == "int4" else k
    if w.dtype != STORED[weight_dtype] or w.shape != (n, cols):
        raise ValueError(f"{weight_dtype} 'weight' must be {STORED[weight_dtype]} of shape "
                         f"{(n, cols)}, got {w.dtype} of shape {w.shape}")
    shape = (n,) if weight_dtype == "int8" else (n, groups(k, group))
    if scale.dtype != np.float32 or scale.shape != shape:
        raise ValueError(f"{weight_dtype} 'weight_scale' must be float32 of shape {shape}"
                         f"{' (group_size ' + str(group) + ')' if group else ''}, got "
                         f"{scale.dtype} of shape {scale.shape}")
    if not (np.isfinite(scale).all() and (scale != 0).all()):
        raise ValueError(f"{weight_dtype} 'weight_scale' must be finite and nonzero")
    if weight_dtype == "int4" and (scale.view(np.uint32) & 7).any():
        raise ValueError("int4 'weight_scale' values must have at most 21 significant bits "
                         "(as fastlinear's quantization writes them), so that each q * scale "
                         "is exact in float32")
    return np.require(w, requirements=["C", "A"]), np.require(scale, requirements=["C", "A"])


def decode(stored, scale, weight_dtype, group, k):
    """The float values (float32, or float64 for float64 weights) of stored rows."""
    if weight_dtype in ("float32", "float64", "bfloat16", "float16"):
        return stored.astype(np.float64 if weight_dtype == "float64" else np.float32,
                             copy=False)
    if weight_dtype == "int8":
        return stored.astype(np.float32) * scale[:, None]
    q = unpack_int4(stored, k).astype(np.float32)
    return q * np.repeat(scale, group, axis=1)[:, :k]


def unpack_int4(stored, k):
    """int4 values (int8 array, rows x k) from their bytes."""
    lo = (stored & 15).astype(np.int8)
    hi = (stored >> 4).astype(np.int8)
    q = np.empty((stored.shape[0], 2 * stored.shape[1]), np.int8)
    q[:, 0::2], q[:, 1::2] = lo, hi
    q = q[:, :k]
    return q - ((q & 8) << 1)


def kernel_rows(stored, weight_dtype):
    """The stored rows as the C kernel takes them (bfloat16 and float16 as raw bits),
    C-contiguous and aligned (copied where they are not)."""
    stored = np.require(stored, requirements=["C", "A"])
    if weight_dtype in ("bfloat16", "float16"):
        return stored.view(np.uint16)
    return stored


def from_kernel(stored, weight_dtype):
    """The inverse of kernel_rows."""
    if weight_dtype in ("bfloat16", "float16"):
        return stored.view(STORED[weight_dtype])
    return stored
