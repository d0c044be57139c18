"""Tensors from an ONNX file that may be hostile: each TensorProto's byte or value count
is checked against its dims before anything is read or allocated, and external data is
read only from regular files inside the model's folder."""
import math
import os

import numpy as np

# TensorProto data types read: the numpy type (ONNX stores little-endian) and the typed
# field that holds the values when raw_data does not
TYPES = {1: ("<f4", "float_data"), 11: ("<f8", "double_data"),
         10: ("<f2", "int32_data"), 16: ("bfloat16", "int32_data"),
         7: ("<i8", "int64_data"), 6: ("<i4", "int32_data"), 9: ("?", "int32_data")}
FLOAT, DOUBLE, FLOAT16, BFLOAT16 = 1, 11, 10, 16
FLOATS = (FLOAT, DOUBLE, FLOAT16, BFLOAT16)
_EXTERNAL = 1                   # TensorProto.EXTERNAL


def numpy_type(code):
    """The numpy type of TensorProto data type `code` (one of TYPES)."""
    if code == BFLOAT16:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(TYPES[code][0])


def f32(value):
    """A float32 attribute as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06): the number the model was written with, which a float64
    model should use."""
    return float(str(np.float32(value)))


def decode(tensor, what, folder):
    """The array a TensorProto holds; `what` names it in errors, `folder` is the model's.
    The byte or value count its dims call for is checked against what it holds before
    anything is read or allocated, so that a hostile file cannot claim a huge tensor."""
    code, dims = tensor.data_type, [int(d) for d in tensor.dims]
    if code not in TYPES:
        raise TypeError(f"{what} has data type {code}, which load_onnx does not read")
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension: dims {dims}")
    dt = numpy_type(code)
    count = math.prod(dims)
    if tensor.data_location == _EXTERNAL:
        raw = _external(tensor, count * dt.itemsize, what, folder)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        values = getattr(tensor, TYPES[code][1])
        if len(values) != count:
            raise ValueError(f"{what}: dims {dims} call for {count} values, it holds "
                             f"{len(values)}")
        if TYPES[code][1] != "int32_data":
            return np.array(values, dt).reshape(dims)
        values = np.array(values, np.int64)
        if code in (FLOAT16, BFLOAT16):  # 16-bit floats travel as their bits
            return values.astype(np.uint16).view(dt).reshape(dims)
        return (values != 0 if code == 9 else values.astype(dt)).reshape(dims)
    if len(raw) != count * dt.itemsize:
        raise ValueError(f"{what}: dims {dims} of {dt.name} call for "
                         f"{count * dt.itemsize} bytes, it holds {len(raw)}")
    return np.frombuffer(raw, dt).reshape(dims)


def _external(tensor, nbytes, what, folder):
    """The bytes of a tensor stored outside the model, from a file that must lie inside
    the model's folder (a location such as ../../etc/passwd, or a link leading out of
    the folder, is refused)."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, location))
    # a regular file only: opening a FIFO or a device could block or never end
    if not location or os.path.isabs(location) or not os.path.isfile(target) or \
            os.path.commonpath([base, target]) != base:
        raise ValueError(f"{what}: its external data {location!r} is not a file inside "
                         f"the model's folder {base}")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise ValueError(f"{what}: its external data's offset or length is not an "
                         f"integer") from None
    if length != nbytes:
        raise ValueError(f"{what}: its dims call for {nbytes} bytes, its external data "
                         f"has {length}")
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset < 0 or offset + nbytes > size:
                raise ValueError(f"{what}: needs bytes {offset} to {offset + nbytes} of "
                                 f"{location!r}, which holds {size}")
            f.seek(offset)
            return f.read(nbytes)
    except OSError as exc:
        raise ValueError(f"{what}: cannot read its external data {location!r}: "
                         f"{exc.strerror}") from None
